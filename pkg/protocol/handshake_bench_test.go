package protocol

import "testing"

// BenchmarkParseHandshakeQuery is the query's share of an upgrade, which
// is on the accept path of every connection. "channels[]" is the common
// form (every SDK before 1.9.5); "indexed" is http_build_query's, "slots"
// Web SDK 24's; "message mode" is SDK 25's project and JWT alone.
//
//	go test -run '^$' -bench BenchmarkParseHandshakeQuery -benchmem -count 6 ./pkg/protocol/
func BenchmarkParseHandshakeQuery(b *testing.B) {
	for _, bc := range []struct{ name, query string }{
		{"channels[]", "project=p1&channels[]=files&channels[]=databases.db1.collections.c1.documents"},
		{"indexed", "project=p1&channels%5B0%5D=files&channels%5B1%5D=databases.db1.collections.c1.documents"},
		{"slots", "project=p1&channels[]=files&channels[]=documents&files[1][]=%7B%22method%22%3A%22equal%22%2C%22attribute%22%3A%22status%22%2C%22values%22%3A%5B%22done%22%5D%7D&documents[0][]=%7B%22method%22%3A%22select%22%2C%22values%22%3A%5B%22*%22%5D%7D"},
		{"message mode", "project=p1&jwt=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJl"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := ParseHandshakeQuery(bc.query); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

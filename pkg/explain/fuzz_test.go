package explain

import "testing"

// FuzzParseConnID: a connection id comes from outside (the explain body,
// the after parameter). Parsing never panics, and what parses writes back
// as an id that parses to the same connection.
func FuzzParseConnID(f *testing.F) {
	for _, s := range []string{"host:9505 pid 12/7", "a/b/42", "/1", "n/", "n/007", "n/+1", "n/4294967295", "é/1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := ParseConnID(s)
		if err != nil {
			return
		}
		again, err := ParseConnID(id.String())
		if err != nil || again != id {
			t.Fatalf("%q parsed as %+v, which writes %q and reads back as %+v (%v)", s, id, id.String(), again, err)
		}
		if CompareConnIDs(s, id.String()) != 0 {
			t.Fatalf("%q and %q name one connection but do not compare equal", s, id.String())
		}
	})
}

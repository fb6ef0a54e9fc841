package query

import "testing"

// FuzzCompileMatch feeds arbitrary query texts and payloads through Compile
// and Match: neither may panic, and a filter must give the same answer when
// asked twice about one decoded payload.
func FuzzCompileMatch(f *testing.F) {
	f.Add(`{"method":"equal","attribute":"status","values":["done"]}`, `{"status":"done"}`)
	f.Add(`{"method":"or","values":[{"method":"lessThan","attribute":"n","values":[5]},{"method":"isNull","attribute":"n"}]}`, `{"n":null}`)
	f.Add(`{"method":"select","values":["*"]}`, `[]`)
	f.Add(`{"method":"greaterThanEqual","attribute":"at","values":["2026-01-01"]}`, `{"at":"2026-11-25T10:00:00Z"}`)
	f.Add(`{"method":"and","values":[{"method":"and","values":[{"method":"notEqual","attribute":"a","values":[1e400]}]}]}`, `{"a":-0}`)
	f.Fuzz(func(t *testing.T, query, payload string) {
		filter, err := Compile([]string{query})
		if err != nil {
			if filter != nil {
				t.Fatalf("Compile returned a filter with error %v", err)
			}
			return
		}
		var d Document
		d.Reset([]byte(payload))
		first := filter.Match(&d)
		if filter.Match(&d) != first {
			t.Fatal("Match is not stable on one document")
		}
		if _, ok := filter.Explain(&d); ok != first {
			t.Fatal("Explain and Match disagree")
		}
	})
}

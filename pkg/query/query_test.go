package query

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// q builds a query's JSON text as the SDKs' Query helpers do.
func q(method, attr string, values ...any) string {
	m := map[string]any{"method": method}
	if attr != "" {
		m["attribute"] = attr
	}
	if values != nil {
		m["values"] = values
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// nested turns query texts into the raw values of an and/or query.
func nested(texts ...string) []any {
	out := make([]any, len(texts))
	for i, t := range texts {
		out[i] = json.RawMessage(t)
	}
	return out
}

func match(t *testing.T, queries []string, payload string) bool {
	t.Helper()
	f, err := Compile(queries)
	if err != nil {
		t.Fatalf("Compile(%q): %v", queries, err)
	}
	var d Document
	d.Reset([]byte(payload))
	return f.Match(&d)
}

func TestMatch(t *testing.T) {
	const doc = `{"$id":"F1","status":"done","n":5,"f":2.5,"ok":true,"none":null,"tags":["a"],"obj":{"x":1},"at":"2026-11-25T10:00:00.000+00:00","one":1.0}`
	tests := []struct {
		name    string
		queries []string
		want    bool
	}{
		{"no queries", nil, true},
		{"select all", []string{q("select", "", "*")}, true},
		{"select all wins over a failing query", []string{q("equal", "status", "x"), q("select", "", "*")}, true},
		{"equal string", []string{q("equal", "status", "done")}, true},
		{"equal any of", []string{q("equal", "status", "x", "done")}, true},
		{"equal none of", []string{q("equal", "status", "x", "y")}, false},
		{"equal is typed", []string{q("equal", "n", "5")}, false},
		{"equal number", []string{q("equal", "n", 5)}, true},
		{"1.0 equals 1", []string{q("equal", "one", 1)}, true},
		{"equal bool", []string{q("equal", "ok", true)}, true},
		{"equal bool false", []string{q("equal", "ok", false)}, false},
		{"equal null", []string{q("equal", "none", nil)}, true},
		{"equal on array attribute", []string{q("equal", "tags", "a")}, false},
		{"equal missing attribute", []string{q("equal", "missing", "done")}, false},
		{"notEqual", []string{q("notEqual", "status", "x")}, true},
		{"notEqual hit", []string{q("notEqual", "status", "x", "done")}, false},
		{"notEqual other type", []string{q("notEqual", "n", "5")}, true},
		{"notEqual missing attribute", []string{q("notEqual", "missing", "x")}, false},
		{"lessThan", []string{q("lessThan", "n", 6)}, true},
		{"lessThan equal", []string{q("lessThan", "n", 5)}, false},
		{"lessThanEqual", []string{q("lessThanEqual", "n", 5)}, true},
		{"greaterThan float", []string{q("greaterThan", "f", 2)}, true},
		{"greaterThanEqual", []string{q("greaterThanEqual", "f", 2.5)}, true},
		{"greaterThan any of", []string{q("greaterThan", "n", 10, 1)}, true},
		{"compare string with number", []string{q("lessThan", "status", 5)}, false},
		{"compare strings", []string{q("greaterThan", "at", "2026-11-24")}, true},
		{"compare strings byte-wise", []string{q("lessThan", "status", "e")}, true},
		{"compare bool attribute", []string{q("lessThan", "ok", 5)}, false},
		{"isNull", []string{q("isNull", "none")}, true},
		{"isNull on value", []string{q("isNull", "n")}, false},
		{"isNull missing", []string{q("isNull", "missing")}, false},
		{"isNotNull", []string{q("isNotNull", "obj")}, true},
		{"isNotNull null", []string{q("isNotNull", "none")}, false},
		{"isNotNull missing", []string{q("isNotNull", "missing")}, false},
		{"and of queries", []string{q("equal", "status", "done"), q("greaterThan", "n", 4)}, true},
		{"and fails on one", []string{q("equal", "status", "done"), q("greaterThan", "n", 5)}, false},
		{"and()", []string{q("and", "", nested(q("equal", "status", "done"), q("equal", "ok", true))...)}, true},
		{"and() fails", []string{q("and", "", nested(q("equal", "status", "done"), q("equal", "ok", false))...)}, false},
		{"or()", []string{q("or", "", nested(q("equal", "status", "x"), q("equal", "ok", true))...)}, true},
		{"or() fails", []string{q("or", "", nested(q("equal", "status", "x"), q("equal", "ok", false))...)}, false},
		{"nested or in and", []string{q("and", "", nested(q("or", "", nested(q("equal", "n", 1), q("equal", "n", 5))...), q("isNull", "none"))...)}, true},
		{"dotted attribute is a top-level key", []string{q("equal", "obj.x", 1)}, false},
		{"$id", []string{q("equal", "$id", "F1")}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := match(t, tt.queries, doc); got != tt.want {
				t.Fatalf("match(%s) = %v, want %v", strings.Join(tt.queries, " "), got, tt.want)
			}
		})
	}
}

func TestMatchPayloadShapes(t *testing.T) {
	eq := []string{q("equal", "a", 1)}
	for _, payload := range []string{`null`, `[]`, `"a"`, `1`, `{}`, `{"b":1}`, `not json`, ``} {
		if match(t, eq, payload) {
			t.Errorf("equal(a,1) matched payload %q", payload)
		}
	}
	if !match(t, eq, `{"a":1,"a":1}`) {
		t.Error("duplicate key payload did not match")
	}
	if !match(t, []string{q("greaterThan", "a", 1)}, `{"a":1e400}`) {
		t.Error("a number beyond float64 does not compare as +Inf")
	}
	if !match(t, []string{q("equal", "s", "é\n")}, `{"s":"\u00e9\n"}`) {
		t.Error("escaped payload string not decoded")
	}
}

func TestCompileNilForSelectAllAndEmpty(t *testing.T) {
	for _, queries := range [][]string{nil, {}, {q("select", "", "*")}, {q("equal", "a", 1), q("select", "", "*")}} {
		f, err := Compile(queries)
		if err != nil || f != nil {
			t.Errorf("Compile(%q) = %v, %v; want nil, nil", queries, f, err)
		}
	}
}

func TestCompileErrors(t *testing.T) {
	bad := []struct {
		query, reason string
	}{
		{q("contains", "a", "x"), "not supported"},
		{q("select", "", "a"), `Only select("*")`},
		{`{"method":`, "query"},
		{`[]`, "object"},
		{q("equal", "", "x"), "needs an attribute"},
		{q("equal", "a"), "at least one value"},
		{q("equal", "a", []any{1}), "values must be"},
		{q("equal", "a", map[string]any{"x": 1}), "values must be"},
		{q("lessThan", "a", true), "strings or numbers"},
		{q("greaterThan", "a", nil), "strings or numbers"},
		{q("and", ""), "at least one query"},
		{q("or", "", nested(q("select", "", "*"))...), "top level"},
		{q("and", "", nested(q("equal", "a"))...), "at least one value"},
		{q("or", "", 1), ""},
	}
	for _, b := range bad {
		_, err := Compile([]string{q("equal", "ok", 1), b.query})
		var pe *protocol.Error
		if !errors.As(err, &pe) || pe.Code != protocol.CodeInvalidMessage {
			t.Errorf("Compile(%s) = %v, want a 1003 error", b.query, err)
			continue
		}
		if !strings.Contains(pe.Message, b.reason) {
			t.Errorf("Compile(%s) message %q lacks %q", b.query, pe.Message, b.reason)
		}
		if !strings.Contains(pe.Message, truncateForTest(b.query)) {
			t.Errorf("Compile(%s) message %q does not name the query", b.query, pe.Message)
		}
	}
}

func truncateForTest(s string) string {
	if len(s) > 100 {
		return s[:100]
	}
	return s
}

func TestCompileQuotesLongQueryTruncated(t *testing.T) {
	long := q("contains", strings.Repeat("é", 500), "x")
	_, err := Compile([]string{long})
	if err == nil || len(err.Error()) > 600 {
		t.Fatalf("error for a long query: %v", err)
	}
}

func TestDocumentDecodedOnceAndReset(t *testing.T) {
	f, err := Compile([]string{q("equal", "a", 1)})
	if err != nil {
		t.Fatal(err)
	}
	var d Document
	d.Reset([]byte(`{"a":1}`))
	if !f.Match(&d) || !f.Match(&d) {
		t.Fatal("first payload did not match")
	}
	d.Reset([]byte(`{"b":1}`))
	if f.Match(&d) {
		t.Fatal("attribute of the previous payload leaked into the next")
	}
	d.Reset([]byte(`null`))
	if f.Match(&d) {
		t.Fatal("null payload matched")
	}
	d.Reset([]byte(`{"a":1}`))
	if !f.Match(&d) {
		t.Fatal("payload after a null payload did not match")
	}
	var nilFilter *Filter
	d.Reset([]byte(`garbage`))
	if !nilFilter.Match(&d) || d.decoded {
		t.Fatal("a nil filter must match without decoding")
	}
}

// TestMatchAgainstReference compares Match with a plain evaluator over
// encoding/json's generic values, on random queries and payloads.
func TestMatchAgainstReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 20000; i++ {
		payload := randomPayload(rng)
		pb, _ := json.Marshal(payload)
		var queries []string
		var refs []refQuery
		for j := rng.IntN(3) + 1; j > 0; j-- {
			r := randomRefQuery(rng, 0)
			refs = append(refs, r)
			queries = append(queries, r.text())
		}
		want := true
		for _, r := range refs {
			want = want && r.eval(payload)
		}
		if got := match(t, queries, string(pb)); got != want {
			t.Fatalf("payload %s queries %s: Match = %v, reference = %v", pb, strings.Join(queries, " "), got, want)
		}
		// Explain agrees, and names the first query the reference fails.
		f, _ := Compile(queries)
		var d Document
		d.Reset(pb)
		miss, ok := f.Explain(&d)
		firstFail := -1
		for k, r := range refs {
			if !r.eval(payload) {
				firstFail = k
				break
			}
		}
		if ok != want || (!ok && miss.Query != firstFail) || (!ok && miss.Detail == "") {
			t.Fatalf("payload %s queries %s: Explain = %+v %v, reference fails query %d", pb, strings.Join(queries, " "), miss, ok, firstFail)
		}
	}
}

var (
	refAttrs  = []string{"a", "b", "c"}
	refValues = []any{nil, true, false, 0.0, 1.0, 2.5, -1.0, "", "a", "b", "1"}
)

func randomPayload(rng *rand.Rand) map[string]any {
	m := map[string]any{}
	for _, a := range refAttrs {
		switch rng.IntN(6) {
		case 0: // absent
		case 1:
			m[a] = []any{"a"}
		default:
			m[a] = refValues[rng.IntN(len(refValues))]
		}
	}
	return m
}

type refQuery struct {
	method string
	attr   string
	values []any
	kids   []refQuery
}

func (r refQuery) text() string {
	if r.kids != nil {
		kids := make([]string, len(r.kids))
		for i, k := range r.kids {
			kids[i] = k.text()
		}
		return q(r.method, "", nested(kids...)...)
	}
	return q(r.method, r.attr, r.values...)
}

var refMethods = []string{"equal", "notEqual", "lessThan", "lessThanEqual", "greaterThan", "greaterThanEqual", "isNull", "isNotNull", "and", "or"}

func randomRefQuery(rng *rand.Rand, depth int) refQuery {
	m := refMethods[rng.IntN(len(refMethods))]
	if depth >= 2 && (m == "and" || m == "or") {
		m = "equal"
	}
	r := refQuery{method: m, attr: refAttrs[rng.IntN(len(refAttrs))]}
	switch m {
	case "and", "or":
		for j := rng.IntN(3) + 1; j > 0; j-- {
			r.kids = append(r.kids, randomRefQuery(rng, depth+1))
		}
	case "isNull", "isNotNull":
	default:
		for j := rng.IntN(3) + 1; j > 0; j-- {
			v := refValues[rng.IntN(len(refValues))]
			if m != "equal" && m != "notEqual" {
				for {
					if _, ok := v.(bool); !ok && v != nil {
						break
					}
					v = refValues[rng.IntN(len(refValues))]
				}
			}
			r.values = append(r.values, v)
		}
	}
	return r
}

func (r refQuery) eval(p map[string]any) bool {
	switch r.method {
	case "and":
		for _, k := range r.kids {
			if !k.eval(p) {
				return false
			}
		}
		return true
	case "or":
		for _, k := range r.kids {
			if k.eval(p) {
				return true
			}
		}
		return false
	}
	x, ok := p[r.attr]
	if !ok {
		return false
	}
	switch r.method {
	case "isNull":
		return x == nil
	case "isNotNull":
		return x != nil
	case "notEqual":
		for _, v := range r.values {
			if refEqual(x, v) {
				return false
			}
		}
		return true
	}
	for _, v := range r.values {
		if r.method == "equal" && refEqual(x, v) {
			return true
		}
		if c, ok := refCompare(x, v); ok {
			switch {
			case r.method == "lessThan" && c < 0, r.method == "lessThanEqual" && c <= 0,
				r.method == "greaterThan" && c > 0, r.method == "greaterThanEqual" && c >= 0:
				return true
			}
		}
	}
	return false
}

func refEqual(x, v any) bool {
	switch x.(type) {
	case []any, map[string]any:
		return false
	}
	return fmt.Sprintf("%T", x) == fmt.Sprintf("%T", v) && x == v
}

func refCompare(x, v any) (int, bool) {
	switch xv := x.(type) {
	case float64:
		vv, ok := v.(float64)
		if !ok {
			return 0, false
		}
		switch {
		case xv < vv:
			return -1, true
		case xv > vv:
			return 1, true
		}
		return 0, true
	case string:
		vv, ok := v.(string)
		if !ok {
			return 0, false
		}
		return strings.Compare(xv, vv), true
	}
	return 0, false
}

func BenchmarkMatch(b *testing.B) {
	payload := []byte(`{"$id":"F1","$collectionId":"c","status":"done","n":5,"name":"report.pdf","size":12345,"ok":true,"at":"2026-11-25T10:00:00.000+00:00"}`)
	f, err := Compile([]string{q("equal", "status", "done", "open"), q("greaterThan", "size", 1000)})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("decode+match", func(b *testing.B) {
		var d Document
		b.ReportAllocs()
		for b.Loop() {
			d.Reset(payload)
			if !f.Match(&d) {
				b.Fatal("no match")
			}
		}
	})
	b.Run("match-decoded", func(b *testing.B) {
		var d Document
		d.Reset(payload)
		f.Match(&d)
		b.ReportAllocs()
		for b.Loop() {
			if !f.Match(&d) {
				b.Fatal("no match")
			}
		}
	})
}

func TestExplainNamesTheFailingQuery(t *testing.T) {
	const doc = `{"status":"done","n":5,"none":null,"tags":["a"]}`
	tests := []struct {
		name    string
		queries []string
		ok      bool
		query   int
		detail  string
	}{
		{"no filter", nil, true, 0, ""},
		{"all pass", []string{q("equal", "status", "done"), q("greaterThan", "n", 4)}, true, 0, ""},
		{"second fails", []string{q("equal", "status", "done"), q("greaterThan", "n", 5)}, false, 1, `"n" is 5, and greaterThan [5] is false`},
		{"first of two fails", []string{q("equal", "status", "x", "y"), q("greaterThan", "n", 5)}, false, 0, `"status" is "done", and equal ["x","y"] is false`},
		{"missing attribute", []string{q("notEqual", "gone", 1)}, false, 0, `"gone" is not in the payload`},
		{"isNull", []string{q("isNull", "n")}, false, 0, `"n" is 5, not null`},
		{"isNotNull", []string{q("isNotNull", "none")}, false, 0, `"none" is null`},
		{"notEqual", []string{q("notEqual", "status", "done")}, false, 0, `"status" is "done", which notEqual excludes`},
		{"array attribute", []string{q("equal", "tags", "a")}, false, 0, `"tags" is an array or object, and equal ["a"] is false`},
		{"and names its nested query", []string{q("and", "", nested(q("equal", "status", "done"), q("lessThan", "n", 1))...)}, false, 0, `and: query 1: "n" is 5, and lessThan [1] is false`},
		{"or", []string{q("or", "", nested(q("equal", "status", "x"), q("lessThan", "n", 1))...)}, false, 0, "or: none of its 2 queries matched"},
	}
	for _, tt := range tests {
		f, err := Compile(tt.queries)
		if err != nil {
			t.Fatal(err)
		}
		var d Document
		d.Reset([]byte(doc))
		miss, ok := f.Explain(&d)
		if ok != tt.ok || miss.Query != tt.query || miss.Detail != tt.detail {
			t.Errorf("%s: Explain = %+v %v, want query %d %q %v", tt.name, miss, ok, tt.query, tt.detail, tt.ok)
		}
		if ok != f.Match(&d) {
			t.Errorf("%s: Explain and Match disagree", tt.name)
		}
	}
}

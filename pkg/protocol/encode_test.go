package protocol

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// jsonEqual fails t unless got is valid JSON equal in structure to want.
func jsonEqual(t *testing.T, got []byte, want string) {
	t.Helper()
	var g, w any
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("output is not valid JSON: %v\n%s", err, got)
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad test expectation: %v\n%s", err, want)
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("JSON mismatch\n got: %s\nwant: %s", got, want)
	}
}

func TestAppendJSONString(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string // exact encoding
	}{
		{"empty", "", `""`},
		{"plain", "files", `"files"`},
		{"quote and backslash", `a"b\c`, `"a\"b\\c"`},
		{"common controls", "a\nb\rc\td", `"a\nb\rc\td"`},
		{"other controls", "\x00\x01\x1f\x7f", `"\u0000\u0001\u001f` + "\x7f" + `"`},
		{"html is not escaped", "<a&b>", `"<a&b>"`},
		{"unicode kept", "héllo 世界 🎉", `"héllo 世界 🎉"`},
		{"invalid utf8", "a\xffb\xc3", `"a\ufffdb\ufffd"`},
		{"surrogate half", "\xed\xa0\x80", `"\ufffd\ufffd\ufffd"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := appendJSONString([]byte("x"), tt.in)
			if string(got) != "x"+tt.want {
				t.Errorf("appendJSONString(%q) = %s, want %s", tt.in, got[1:], tt.want)
			}
			// Whatever the bytes, decoding must give what encoding/json's
			// own encoding decodes to.
			assertSameAsEncodingJSON(t, tt.in, got[1:])
		})
	}
}

func assertSameAsEncodingJSON(t *testing.T, s string, encoded []byte) {
	t.Helper()
	ref, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var want, got string
	if err := json.Unmarshal(ref, &want); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(encoded, &got); err != nil {
		t.Fatalf("not a valid JSON string: %v: %s", err, encoded)
	}
	if got != want {
		t.Errorf("decodes to %q, encoding/json round trip gives %q", got, want)
	}
}

func TestAppendFrames(t *testing.T) {
	user := json.RawMessage(`{"$id":"u1","name":"Ann"}`)
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"pong", AppendPong(nil), `{"type":"pong"}`},
		{"error", AppendError(nil, CodeInvalidMessage, `Bad "thing"`),
			`{"type":"error","data":{"code":1003,"message":"Bad \"thing\""}}`},
		{"connected guest message mode", AppendConnected(nil, nil, nil, nil, nil),
			`{"type":"connected","data":{"channels":[],"subscriptions":[],"user":null}}`},
		{"connected with slots", AppendConnected(nil, []string{"files", "account", "account.u1"}, []int{0, 3}, []string{"s0", "s3"}, user),
			`{"type":"connected","data":{"channels":["files","account","account.u1"],"subscriptions":{"0":"s0","3":"s3"},"user":{"$id":"u1","name":"Ann"}}}`},
		{"connected mismatched lengths", AppendConnected(nil, []string{"a"}, []int{1, 2}, []string{"x"}, nil),
			`{"type":"connected","data":{"channels":["a"],"subscriptions":{"1":"x"},"user":null}}`},
		{"auth response", AppendAuthResponse(nil, user),
			`{"type":"response","data":{"to":"authentication","success":true,"user":{"$id":"u1","name":"Ann"}}}`},
		{"subscribe response", AppendSubscribeResponse(nil, []Subscription{
			{ID: "a", Channels: []string{"files"}, Queries: []string{`{"method":"select","values":["*"]}`}},
			{ID: "b", Channels: []string{"documents", "rows"}},
		}),
			`{"type":"response","data":{"to":"subscribe","success":true,"subscriptions":[
			  {"subscriptionId":"a","channels":["files"],"queries":["{\"method\":\"select\",\"values\":[\"*\"]}"]},
			  {"subscriptionId":"b","channels":["documents","rows"],"queries":[]}]}}`},
		{"subscribe response empty", AppendSubscribeResponse(nil, nil),
			`{"type":"response","data":{"to":"subscribe","success":true,"subscriptions":[]}}`},
		{"unsubscribe response", AppendUnsubscribeResponse(nil, []string{"a", "b", "c"}, []bool{true, false}),
			`{"type":"response","data":{"to":"unsubscribe","success":true,"subscriptions":[
			  {"subscriptionId":"a","removed":true},{"subscriptionId":"b","removed":false},{"subscriptionId":"c","removed":false}]}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { jsonEqual(t, tt.got, tt.want) })
	}
}

func TestAppendKeepsPrefix(t *testing.T) {
	dst := []byte("HEAD")
	for name, got := range map[string][]byte{
		"pong":      AppendPong(dst),
		"error":     AppendError(dst, 1, "m"),
		"connected": AppendConnected(dst, nil, nil, nil, nil),
		"auth":      AppendAuthResponse(dst, nil),
		"subscribe": AppendSubscribeResponse(dst, nil),
		"unsub":     AppendUnsubscribeResponse(dst, nil, nil),
		"event":     AppendEventTail(AppendEventPrefix(dst, &Event{}), nil),
	} {
		if !bytes.HasPrefix(got, []byte("HEAD")) || !json.Valid(got[4:]) {
			t.Errorf("%s: got %s", name, got)
		}
	}
}

func TestEventFrameRoundTrip(t *testing.T) {
	e := &Event{
		Project:   "p1",
		Roles:     []string{"any"},
		Events:    []string{"buckets.b1.files.f1.create", "buckets.*.files.*"},
		Channels:  []string{"files", "buckets.b1.files", "buckets.b1.files.f1"},
		Timestamp: json.RawMessage(`"2026-01-01T12:00:00.000+00:00"`),
		Payload:   json.RawMessage(`{"$id":"f1","name":"a \"quoted\"\n\u00e9 name","size":12,"tags":["x"],"meta":null}`),
	}
	prefix := AppendEventPrefix(nil, e)
	if !strings.HasSuffix(string(prefix), `"subscriptions":[`) {
		t.Fatalf("prefix does not end with the subscriptions opener: %s", prefix)
	}

	tests := []struct {
		name string
		ids  []string
		want string
	}{
		{"none", nil, `[]`},
		{"one", []string{"s1"}, `["s1"]`},
		{"escaped", []string{"a\"b", "c\\d", "\x01", "é"}, `["a\"b","c\\d","\u0001","é"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Build on a copy so each recipient starts from the same prefix.
			frame := AppendEventTail(append([]byte(nil), prefix...), tt.ids)
			jsonEqual(t, frame, `{"type":"event","data":{
				"events":["buckets.b1.files.f1.create","buckets.*.files.*"],
				"channels":["files","buckets.b1.files","buckets.b1.files.f1"],
				"timestamp":"2026-01-01T12:00:00.000+00:00",
				"payload":{"$id":"f1","name":"a \"quoted\"\n\u00e9 name","size":12,"tags":["x"],"meta":null},
				"subscriptions":`+tt.want+`}}`)
		})
	}
}

func TestEventFrameDefaults(t *testing.T) {
	frame := AppendEventTail(AppendEventPrefix(nil, &Event{Channels: []string{"c"}}), []string{"s"})
	jsonEqual(t, frame, `{"type":"event","data":{"events":[],"channels":["c"],"timestamp":null,"payload":{},"subscriptions":["s"]}}`)

	// Numeric timestamps (older Appwrite publishes time()) pass through.
	frame = AppendEventTail(AppendEventPrefix(nil, &Event{Timestamp: json.RawMessage(`1700000000`), Payload: json.RawMessage(`[1,2]`)}), nil)
	jsonEqual(t, frame, `{"type":"event","data":{"events":[],"channels":[],"timestamp":1700000000,"payload":[1,2],"subscriptions":[]}}`)
}

func TestEventFrameZeroAllocs(t *testing.T) {
	e := benchEvent()
	buf := make([]byte, 0, 4096)
	ids := []string{"sub_a1f9", "sub_b83c"}
	allocs := testing.AllocsPerRun(100, func() {
		b := AppendEventPrefix(buf[:0], e)
		_ = AppendEventTail(b, ids)
	})
	if allocs != 0 {
		t.Errorf("event frame encoding allocates %v times per run, want 0", allocs)
	}
}

func benchEvent() *Event {
	return &Event{
		Project:   "p1",
		Roles:     []string{"any"},
		Events:    []string{"databases.db.collections.col.documents.doc.update", "databases.db.collections.col.documents.*.update", "databases.db.collections.col.documents.*", "databases.*.collections.*.documents.*.update"},
		Channels:  []string{"documents", "databases.db.collections.col.documents", "databases.db.collections.col.documents.doc", "rows", "databases.db.tables.col.rows", "databases.db.tables.col.rows.doc"},
		Timestamp: json.RawMessage(`"2026-01-01T12:00:00.000+00:00"`),
		Payload: json.RawMessage(`{"$id":"doc","$collectionId":"col","$databaseId":"db","$createdAt":"2026-01-01T12:00:00.000+00:00",` +
			`"$updatedAt":"2026-01-01T12:00:00.000+00:00","$permissions":["read(\"any\")"],"title":"Hello, world","count":42,"done":false}`),
	}
}

func BenchmarkAppendEventPrefix(b *testing.B) {
	e := benchEvent()
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEventPrefix(buf[:0], e)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkAppendEventTail(b *testing.B) {
	// Measures the tail alone: buf keeps the prefix, as a per-recipient
	// buffer built on a shared prefix would.
	buf := AppendEventPrefix(make([]byte, 0, 4096), benchEvent())
	n := len(buf)
	ids := []string{"6a0f3c2e9b1d4f7a8c5e", "7b1e4d3f0c2e5a8b9d6f"}
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendEventTail(buf[:n], ids)
	}
	b.SetBytes(int64(len(buf) - n))
}

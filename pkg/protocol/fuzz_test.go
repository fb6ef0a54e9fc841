package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"slices"
	"testing"
	"unicode/utf8"
)

func FuzzParseClientMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"ping"}`,
		`{"type":"authentication","data":{"session":"abc"}}`,
		`{"type":"subscribe","data":[{"subscriptionId":"a","channels":["files"],"queries":["{\"method\":\"select\",\"values\":[\"*\"]}"]}]}`,
		`{"type":"unsubscribe","data":[{"subscriptionId":"a"}]}`,
		`{"type":42}`, `[]`, `null`, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseClientMessage(b)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Code != CodeInvalidMessage {
				t.Fatalf("error %v is not a 1003 *Error", err)
			}
			return
		}
		// Accepted: an object with a type or data key (Appwrite's format
		// rule); a Type that is not empty is the string it sent.
		var obj map[string]json.RawMessage
		if json.Unmarshal(b, &obj) != nil {
			t.Fatalf("accepted %q, which is not a JSON object", b)
		}
		_, hasType := obj["type"]
		_, hasData := obj["data"]
		if !hasType && !hasData {
			t.Fatalf("accepted %q, which has neither type nor data", b)
		}
		// (The server passes only valid UTF-8 text; elsewhere the JSON
		// decoder's replacement characters would differ from the bytes.)
		if m.Type != "" && utf8.Valid(b) {
			var typ string
			if json.Unmarshal(obj["type"], &typ) != nil || typ != m.Type {
				t.Fatalf("type %q from %q", m.Type, b)
			}
		}
		if m.Data != nil && !json.Valid(m.Data) {
			t.Fatalf("Data is not valid JSON: %q", m.Data)
		}
		// The data parsers must never panic, and what they accept must
		// encode into valid frames.
		_, _ = ParseAuthentication(m.Data)
		if subs, err := ParseSubscribe(m.Data); err == nil {
			for _, s := range subs {
				if len(s.Channels) > MaxChannels {
					t.Fatalf("%d channels accepted", len(s.Channels))
				}
				if s.ID != "" && !ValidUID(s.ID) {
					t.Fatalf("subscription id %q accepted", s.ID)
				}
				for _, q := range s.Queries {
					_, _ = ParseQuery(q)
				}
			}
			if frame := AppendSubscribeResponse(nil, subs); !json.Valid(frame) {
				t.Fatalf("invalid subscribe response: %s", frame)
			}
		}
		if ids, err := ParseUnsubscribe(m.Data); err == nil {
			if frame := AppendUnsubscribeResponse(nil, ids, nil); !json.Valid(frame) {
				t.Fatalf("invalid unsubscribe response: %s", frame)
			}
		}
	})
}

// FuzzObjectMembers checks the scanner that cuts members and elements out
// of client JSON against encoding/json decoding the same bytes into a map
// (whose keys are exact) and a slice.
func FuzzObjectMembers(f *testing.F) {
	for _, s := range []string{
		`{"a":1,"b":[1,{"c":"]"}],"a":"x\"y"}`, `{"\u0061":{}," b":null}`, `[1,"2",[3],{"4":5}]`,
		`{"type":"subscribe","data":[{"channels":["files"]}]}`, `{}`, `[]`, `{"a":1`, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !utf8.Valid(b) {
			return // the server passes only valid UTF-8 text
		}
		var obj map[string]json.RawMessage
		isObj := isObject(b) && json.Unmarshal(b, &obj) == nil
		names := make([]string, 0, len(obj)+1)
		for k := range obj {
			names = append(names, k)
		}
		names = append(names, "absent\x00")
		vals, ok := objectMembers(b, names...)
		if ok != isObj {
			t.Fatalf("objectMembers(%q) ok = %v, encoding/json says %v", b, ok, isObj)
		}
		for i, name := range names {
			if ok && string(vals[i]) != string(obj[name]) {
				t.Fatalf("member %q of %q = %q, encoding/json says %q", name, b, vals[i], obj[name])
			}
		}
		var arr []json.RawMessage
		isArr := len(bytes.TrimSpace(b)) > 0 && bytes.TrimSpace(b)[0] == '[' && json.Unmarshal(b, &arr) == nil
		elems, ok := arrayElements(b)
		if ok != isArr || len(elems) != len(arr) {
			t.Fatalf("arrayElements(%q) = %d elements, %v; encoding/json says %d, %v", b, len(elems), ok, len(arr), isArr)
		}
		for i := range elems {
			if string(elems[i]) != string(arr[i]) {
				t.Fatalf("element %d of %q = %q, encoding/json says %q", i, b, elems[i], arr[i])
			}
		}
	})
}

func FuzzParseEvent(f *testing.F) {
	for _, s := range []string{
		`{"project":"P","roles":["any"],"permissionsChanged":false,"userId":null,"data":{"events":["e"],"channels":["files"],"timestamp":"2026-01-01T12:00:00.000+00:00","payload":{"$id":"F"}}}`,
		`{"project":"P","roles":[],"permissionsChanged":true,"userId":"U","data":{}}`,
		`{"project":"P","roles":["a\"b"],"data":{"channels":["c\u0000"],"timestamp":1,"payload":[null]}}`,
		`{"project":"P"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := ParseEvent(b)
		if err != nil {
			return
		}
		frame := AppendEventTail(AppendEventPrefix(nil, e), []string{"s1", "s\"2"})
		var decoded struct {
			Type string `json:"type"`
			Data struct {
				Channels      []string `json:"channels"`
				Subscriptions []string `json:"subscriptions"`
			} `json:"data"`
		}
		if err := json.Unmarshal(frame, &decoded); err != nil {
			t.Fatalf("event frame is not valid JSON: %v\n%s", err, frame)
		}
		if decoded.Type != TypeEvent || !slices.Equal(decoded.Data.Subscriptions, []string{"s1", "s\"2"}) {
			t.Fatalf("bad frame: %s", frame)
		}
		m, err := MarshalEvent(e)
		if err != nil {
			t.Fatalf("MarshalEvent of a parsed event: %v", err)
		}
		again, err := ParseEvent(m)
		if err != nil {
			t.Fatalf("ParseEvent(MarshalEvent): %v\n%s", err, m)
		}
		// Strings that were valid UTF-8 survive exactly; invalid bytes are
		// replaced by both encoders, so compare after one normalising trip.
		m2, _ := MarshalEvent(again)
		if string(m2) != string(m) {
			t.Fatalf("MarshalEvent not stable:\n%s\n%s", m, m2)
		}
	})
}

func FuzzParseHandshakeQuery(f *testing.F) {
	for _, s := range []string{
		"project=p1&channels[]=files&channels[]=documents",
		"project=p1&channels[]=files&channels[]=documents&files[1][]=%7B%22method%22%3A%22equal%22%7D&documents[0][]=x",
		"channels[]=a.b&a_b[3][]=q&channels%5B%5D=c",
		"project=%zz", "channels[]=&&&=", "x[1][]=y[2][]",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		h, err := ParseHandshakeQuery(q)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Code != CodeInvalidMessage {
				t.Fatalf("error %v is not a 1003 *Error", err)
			}
			return
		}
		if len(h.Channels) > MaxChannels || len(h.Slots) != len(h.SlotIndexes) || len(h.Slots) > maxSlots {
			t.Fatalf("bounds: %d channels, %d slots, %d indexes", len(h.Channels), len(h.Slots), len(h.SlotIndexes))
		}
		if !slices.IsSorted(h.SlotIndexes) || len(slices.Compact(slices.Clone(h.SlotIndexes))) != len(h.SlotIndexes) {
			t.Fatalf("slot indexes not strictly ascending: %v", h.SlotIndexes)
		}
		seen := map[string]bool{}
		for _, c := range h.Channels {
			if seen[c] || !validName(c, MaxChannelLength) {
				t.Fatalf("bad or duplicate channel %q", c)
			}
			seen[c] = true
		}
		// Every requested channel is in at least one slot, and slots hold
		// only requested channels.
		inSlot := map[string]bool{}
		for _, s := range h.Slots {
			for _, c := range s.Channels {
				if !seen[c] {
					t.Fatalf("slot holds unrequested channel %q", c)
				}
				inSlot[c] = true
			}
		}
		if len(inSlot) != len(seen) {
			t.Fatalf("channels %v, slotted %v", h.Channels, inSlot)
		}
		ids := make([]string, len(h.SlotIndexes))
		frame := AppendConnected(nil, ConvertAccountChannels(h.Channels, "u"), h.SlotIndexes, ids, nil)
		if !json.Valid(frame) {
			t.Fatalf("invalid connected frame: %s", frame)
		}
	})
}

// FuzzPHPQuery checks the handshake's PHP query parsing against a parse
// that keeps everything: the two passes, which keep only what Appwrite
// reads and no deeper than it reads, must give the Handshake that reading
// the whole $_GET gives, and every array must be a well-formed PHP array.
func FuzzPHPQuery(f *testing.F) {
	for _, s := range []string{
		"project=p1&channels%5B0%5D=documents&channels%5B1%5D=account",
		"channels[]=a&channels[5]=b&channels[0]=c&channels[]=d&channels[7][]=n&channels[ ]=e",
		"channels%5B0%5D=documents&channels[1]=files&documents%5B1%5D%5B0%5D=q1&files=q3&files[-1][]=q5",
		"channels[]=a.b&a_b[3][]=q&a.b[2][0]=r&channels[]=project&project=p",
		"a[b.c[d e=1&x.y[=2&a[x][y=1&b[][=2&a[ ]=1&a[[q]=4",
		"a[9223372036854775807]=x&a[]=y&a[-5]=x&a[]=y&a[99999999999999999999]=z",
		"a%00b[]=1&c=x%00y&+++a=1&=1&[x]=2",
		"channels[]=f&f[1][0][]=q&f[1]=s&f[x][]=t",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		got, err := ParseHandshakeQuery(q)

		full := &phpArray{limit: phpMaxNestingLevel + 2}
		pq := newPHPQuery(q)
		for {
			p, ok, perr := pq.next(true)
			if perr != nil {
				if err == nil {
					t.Fatalf("the full parse fails (%v), ParseHandshakeQuery did not", perr)
				}
				return
			}
			if !ok {
				break
			}
			p.register(full)
		}
		checkPHPArray(t, full)
		var want Handshake
		want.Project, want.JWT = full.stringAt("project"), full.stringAt("jwt")
		werr := want.readChannels(full)
		if werr == nil && len(want.Channels) > 0 {
			werr = want.buildSlots(full)
		}
		if (err == nil) != (werr == nil) {
			t.Fatalf("ParseHandshakeQuery error %v, from the full $_GET %v", err, werr)
		}
		if err != nil {
			return
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("ParseHandshakeQuery\n got  %#v\n full %#v", got, want)
		}
	})
}

// checkPHPArray checks that keys are unique, the index (when built) agrees
// with the entries, and no integer key is at or past the next append key.
func checkPHPArray(t *testing.T, a *phpArray) {
	t.Helper()
	seen := make(map[phpKey]bool, len(a.entries))
	for i, e := range a.entries {
		if seen[e.key] {
			t.Fatalf("duplicate key %+v", e.key)
		}
		seen[e.key] = true
		if e.key.isInt && (!a.hasNext || (e.key.n >= a.next && a.next != math.MaxInt64)) {
			t.Fatalf("int key %d, next %d (set %v)", e.key.n, a.next, a.hasNext)
		}
		if !e.key.isInt {
			if _, isInt := phpIntKey(e.key.str); isInt {
				t.Fatalf("string key %q is an integer in PHP", e.key.str)
			}
		}
		if a.index != nil && a.index[e.key] != i {
			t.Fatalf("index says %d for entry %d", a.index[e.key], i)
		}
		if e.val.kind == phpArrayKind {
			if e.val.arr.depth != a.depth+1 {
				t.Fatalf("depth %d under %d", e.val.arr.depth, a.depth)
			}
			checkPHPArray(t, e.val.arr)
		}
	}
	if a.index != nil && len(a.index) != len(a.entries) {
		t.Fatalf("index of %d for %d entries", len(a.index), len(a.entries))
	}
}

// FuzzAppendJSONString checks the hand-written string encoder against
// encoding/json on arbitrary bytes.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "q\"b\\", "\x00\x1f\x7f", "é世🎉", "\xff\xed\xa0\x80", "\u2028"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := appendJSONString(nil, s)
		ref, _ := json.Marshal(s)
		var a, b string
		if err := json.Unmarshal(got, &a); err != nil {
			t.Fatalf("invalid JSON string %s: %v", got, err)
		}
		if err := json.Unmarshal(ref, &b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("%q encodes to %s, decoding to %q; encoding/json gives %q", s, got, a, b)
		}
	})
}

package protocol

import (
	"encoding/json"
	"reflect"
	"testing"
)

func TestObjectMembers(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []string // "" is absent
	}{
		{`{"a":1,"b":"x"}`, []string{`1`, `"x"`}},
		{` { "b" : [1, {"a":2}] , "a" : null } `, []string{`null`, `[1, {"a":2}]`}},
		{`{"A":1,"B":2}`, []string{"", ""}},                                  // case-sensitive, as PHP's keys
		{`{"a":1,"a":2}`, []string{`2`, ""}},                                 // the last one, as json_decode
		{`{"\u0061":"}\"]","b":{"a":"{"}}`, []string{`"}\"]"`, `{"a":"{"}`}}, // escapes in keys and strings
		{`{"x":[[[]]],"b":-1.5e3,"a":true}`, []string{`true`, `-1.5e3`}},
		{`{}`, []string{"", ""}},
	} {
		vals, ok := objectMembers([]byte(tc.in), "a", "b")
		if !ok {
			t.Errorf("%s: not an object", tc.in)
			continue
		}
		for i, w := range tc.want {
			if string(vals[i]) != w || (w == "") != (vals[i] == nil) {
				t.Errorf("%s: member %d = %q, want %q", tc.in, i, vals[i], w)
			}
		}
	}
	for _, in := range []string{``, `[]`, `"a"`, `null`, `{"a":1`, `{"a":1} {}`, `{"a":}`} {
		if _, ok := objectMembers([]byte(in), "a"); ok {
			t.Errorf("%q taken as an object", in)
		}
	}
}

func TestArrayElements(t *testing.T) {
	elems, ok := arrayElements([]byte(` [ 1 , "a]" ,{"b":[2]}, [] ,null] `))
	want := []json.RawMessage{[]byte(`1`), []byte(`"a]"`), []byte(`{"b":[2]}`), []byte(`[]`), []byte(`null`)}
	if !ok || !reflect.DeepEqual(elems, want) {
		t.Fatalf("arrayElements = %q, %v", elems, ok)
	}
	if elems, ok := arrayElements([]byte(`[]`)); !ok || elems == nil || len(elems) != 0 {
		t.Fatalf("arrayElements([]) = %#v, %v; want an empty list", elems, ok)
	}
	for _, in := range []string{``, `{}`, `"[]"`, `null`, `[1,]`, `[1] [2]`} {
		if _, ok := arrayElements([]byte(in)); ok {
			t.Errorf("%q taken as an array", in)
		}
	}
}

package protocol

import (
	"bytes"
	"encoding/json"
)

// Client messages are read as Appwrite's PHP reads them: json_decode into
// arrays, whose keys are case-sensitive. encoding/json matches struct fields
// regardless of case, so {"Channels":[...]} would fill a field that PHP's
// $payload['channels'] leaves unset; and decoding into json.RawMessage
// copies every value. objectMembers and arrayElements instead cut the
// values out of the message where they are: exact names, nothing copied.

// objectMembers reports whether raw is one valid JSON object and returns the
// values of its members named names[i] in vals[i], nil where there is no
// such member. A member named twice has its last value, as in json_decode.
// The values are sub-slices of raw.
func objectMembers(raw []byte, names ...string) (vals []json.RawMessage, ok bool) {
	i := skipSpace(raw, 0)
	if i == len(raw) || raw[i] != '{' || !json.Valid(raw) {
		return nil, false
	}
	vals = make([]json.RawMessage, len(names))
	for i = skipSpace(raw, i+1); raw[i] != '}'; {
		keyEnd := stringEnd(raw, i)
		key := raw[i:keyEnd]
		i = skipSpace(raw, skipSpace(raw, keyEnd)+1) // past the ':'
		end := valueEnd(raw, i)
		for n, name := range names {
			if keyIs(key, name) {
				vals[n] = raw[i:end]
			}
		}
		if i = skipSpace(raw, end); raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
	}
	return vals, true
}

// arrayElements reports whether raw is one valid JSON array and returns its
// elements, sub-slices of raw.
func arrayElements(raw []byte) (elems []json.RawMessage, ok bool) {
	i := skipSpace(raw, 0)
	if i == len(raw) || raw[i] != '[' || !json.Valid(raw) {
		return nil, false
	}
	elems = []json.RawMessage{} // [] is a list, not an absent one
	for i = skipSpace(raw, i+1); raw[i] != ']'; {
		end := valueEnd(raw, i)
		elems = append(elems, raw[i:end])
		if i = skipSpace(raw, end); raw[i] == ',' {
			i = skipSpace(raw, i+1)
		}
	}
	return elems, true
}

// keyIs reports whether the JSON string key (quotes included) decodes to
// name. Only a key with an escape is decoded ("\u0074ype" is "type" to PHP
// too).
func keyIs(key []byte, name string) bool {
	body := key[1 : len(key)-1]
	if bytes.IndexByte(body, '\\') < 0 {
		return string(body) == name
	}
	var s string
	return json.Unmarshal(key, &s) == nil && s == name
}

// The scanners below walk JSON that json.Valid has accepted, so they need
// not check its syntax.

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd returns the index just past the string that starts at b[i].
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// valueEnd returns the index just past the value that starts at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = stringEnd(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				if depth--; depth == 0 {
					return i + 1
				}
			}
		}
		return len(b)
	}
	// A number, true, false or null: it ends at the next delimiter.
	for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r' {
		i++
	}
	return i
}

package protocol

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The Append* functions write one complete server->client message. Each
// appends to dst and returns the extended slice, like strconv.Append*, so
// a caller can reuse one buffer across frames and allocate nothing.
//
// Raw JSON arguments (users, payloads, timestamps) are copied verbatim and
// must be valid JSON; an empty one is written as the field's default.

// AppendPong appends {"type":"pong"}.
func AppendPong(dst []byte) []byte {
	return append(dst, `{"type":"pong"}`...)
}

// AppendError appends {"type":"error","data":{"code":CODE,"message":MESSAGE}}.
func AppendError(dst []byte, code int, message string) []byte {
	dst = append(dst, `{"type":"error","data":{"code":`...)
	dst = strconv.AppendInt(dst, int64(code), 10)
	dst = append(dst, `,"message":`...)
	dst = appendJSONString(dst, message)
	return append(dst, "}}"...)
}

// AppendConnected appends the `connected` frame:
//
//	{"type":"connected","data":{"channels":[...],"subscriptions":{"SLOT":"ID",...},"user":USER}}
//
// slots[i] is the URL slot number of subscription ids[i]; pairs beyond the
// shorter of the two are ignored. With no pairs "subscriptions" is [] (what
// Appwrite's json_encode of an empty PHP array gives, and what SDKs accept).
// A nil user is written as null (a guest).
//
// Appwrite echoes the channels after its account-channel conversion, so
// callers pass ConvertAccountChannels(h.Channels, uid), not the raw list.
func AppendConnected(dst []byte, channels []string, slots []int, ids []string, user json.RawMessage) []byte {
	dst = append(dst, `{"type":"connected","data":{"channels":`...)
	dst = appendStringArray(dst, channels)
	dst = append(dst, `,"subscriptions":`...)
	n := min(len(slots), len(ids))
	if n == 0 {
		dst = append(dst, "[]"...)
	} else {
		dst = append(dst, '{')
		for i := range n {
			if i > 0 {
				dst = append(dst, ',')
			}
			// Object keys are strings; SDKs read them back with Number().
			dst = append(dst, '"')
			dst = strconv.AppendInt(dst, int64(slots[i]), 10)
			dst = append(dst, `":`...)
			dst = appendJSONString(dst, ids[i])
		}
		dst = append(dst, '}')
	}
	dst = append(dst, `,"user":`...)
	dst = appendRaw(dst, user, "null")
	return append(dst, "}}"...)
}

// AppendAuthResponse appends the answer to a successful `authentication`:
//
//	{"type":"response","data":{"to":"authentication","success":true,"user":USER}}
func AppendAuthResponse(dst []byte, user json.RawMessage) []byte {
	dst = append(dst, `{"type":"response","data":{"to":"authentication","success":true,"user":`...)
	dst = appendRaw(dst, user, "null")
	return append(dst, "}}"...)
}

// AppendSubscribeResponse appends the answer to a `subscribe`:
//
//	{"type":"response","data":{"to":"subscribe","success":true,
//	 "subscriptions":[{"subscriptionId":ID,"channels":[...],"queries":[...]},...]}}
//
// Queries are written as JSON strings holding the query JSON, as Appwrite
// does, whatever form the client sent them in.
func AppendSubscribeResponse(dst []byte, subs []Subscription) []byte {
	dst = append(dst, `{"type":"response","data":{"to":"subscribe","success":true,"subscriptions":[`...)
	for i := range subs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"subscriptionId":`...)
		dst = appendJSONString(dst, subs[i].ID)
		dst = append(dst, `,"channels":`...)
		dst = appendStringArray(dst, subs[i].Channels)
		dst = append(dst, `,"queries":`...)
		dst = appendStringArray(dst, subs[i].Queries)
		if r := subs[i].Resume; r != nil {
			status, reason, _ := strings.Cut(r.Status, "_")
			dst = append(dst, `,"resume":{"status":`...)
			dst = appendJSONString(dst, status)
			if reason != "" {
				dst = append(dst, `,"reason":`...)
				dst = appendJSONString(dst, reason)
			}
			dst = append(dst, '}')
		}
		dst = append(dst, '}')
	}
	return append(dst, "]}}"...)
}

// AppendUnsubscribeResponse appends the answer to an `unsubscribe`:
//
//	{"type":"response","data":{"to":"unsubscribe","success":true,
//	 "subscriptions":[{"subscriptionId":ID,"removed":BOOL},...]}}
//
// removed[i] reports whether ids[i] existed; a missing entry counts as false.
func AppendUnsubscribeResponse(dst []byte, ids []string, removed []bool) []byte {
	dst = append(dst, `{"type":"response","data":{"to":"unsubscribe","success":true,"subscriptions":[`...)
	for i, id := range ids {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, `{"subscriptionId":`...)
		dst = appendJSONString(dst, id)
		dst = append(dst, `,"removed":`...)
		dst = strconv.AppendBool(dst, i < len(removed) && removed[i])
		dst = append(dst, '}')
	}
	return append(dst, "]}}"...)
}

// AppendEventPrefix appends the part of an `event` frame shared by every
// recipient, up to and including the opening bracket of the subscription id
// list:
//
//	{"type":"event","data":{"events":[...],"channels":[...],"timestamp":TS,"payload":PAYLOAD,"subscriptions":[
//
// The router encodes it once per event; AppendEventTail completes it per
// recipient. A nil Timestamp is written as null and a nil Payload as {}.
func AppendEventPrefix(dst []byte, e *Event) []byte {
	dst = append(dst, `{"type":"event","data":{"events":`...)
	dst = appendStringArray(dst, e.Events)
	dst = append(dst, `,"channels":`...)
	dst = appendStringArray(dst, e.Channels)
	dst = append(dst, `,"timestamp":`...)
	dst = appendRaw(dst, e.Timestamp, "null")
	dst = append(dst, `,"payload":`...)
	dst = appendRaw(dst, e.Payload, "{}")
	return append(dst, `,"subscriptions":[`...)
}

// AppendEventTail appends the per-recipient end of an `event` frame: the
// matched subscription ids and the closing brackets.
//
//	"id1","id2"]}}
func AppendEventTail(dst []byte, subscriptionIDs []string) []byte {
	for i, id := range subscriptionIDs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, id)
	}
	return append(dst, "]}}"...)
}

// appendRaw appends raw JSON, or def when raw is empty.
func appendRaw(dst []byte, raw json.RawMessage, def string) []byte {
	if len(bytes.TrimSpace(raw)) == 0 {
		return append(dst, def...)
	}
	return append(dst, raw...)
}

// appendStringArray appends ss as a JSON array; nil is written as [] since
// every array field of the protocol is a list, never null.
func appendStringArray(dst []byte, ss []string) []byte {
	dst = append(dst, '[')
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, s)
	}
	return append(dst, ']')
}

const hexDigits = "0123456789abcdef"

// safeASCII[c] reports whether ASCII byte c may appear unescaped inside a
// JSON string.
var safeASCII = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString appends s as a JSON string. Like encoding/json it
// replaces each byte of invalid UTF-8 with U+FFFD, so the output is always
// valid JSON; unlike it, it does not escape <, > and & (frames are never
// embedded in HTML) and copies runs of plain text in one append.
func appendJSONString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if safeASCII[c] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i++
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

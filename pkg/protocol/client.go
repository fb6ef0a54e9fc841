package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Error messages. Where Appwrite has one (its realtime message dispatcher,
// src/Appwrite/Realtime/Message/Dispatcher.php, the validators beside it and
// utopia's Text validator) it is kept word for word, because SDKs surface
// them to developers; the "items: " and "session: " prefixes name the
// parameter that failed.
const (
	msgFormatInvalid      = "Message format is not valid."
	msgSessionRequired    = "Payload is not valid. Session is required"
	msgSessionInvalid     = "session: Value must be a valid string and at least 1 chars and no longer than 2048 chars"
	msgItemsRequired      = "Payload is not valid. Items is required"
	msgItemsInvalid       = "items: Payload is not valid."
	msgSubscribeObject    = "items: Each subscribe payload must be an object."
	msgChannelsMissing    = "items: channels is not present in payload."
	msgChannelsInvalid    = "items: channels is not a valid array."
	msgChannelsStrings    = "items: channels must contain only strings."
	msgQueriesInvalid     = "items: queries is not a valid array."
	msgSubscriptionID     = "items: subscriptionId is not a valid id."
	msgUnsubscribeEntries = "items: Each unsubscribe payload must include a non-empty subscriptionId."
)

// maxSessionLength is the limit of Appwrite's session parameter (Text(2048),
// in characters).
const maxSessionLength = 2048

// ClientMessage is a parsed client->server message.
type ClientMessage struct {
	Type string
	// Data is the raw "data" member, a sub-slice of the parsed message; nil
	// when it is absent or null.
	Data json.RawMessage
}

// ParseClientMessage parses one text frame. As Appwrite's onMessage
// (app/realtime.php) does, bad JSON, or an object with neither a "type" nor
// a "data" member, is an *Error with code 1003 and "Message format is not
// valid."; so is JSON that is not an object (Appwrite answers those with
// PHP's TypeError text and code 0, which no client can act on). A message
// with a type that is not a string (or only data) parses with Type "": the
// server answers it, as any unknown type, with 1003 "Message type is not
// valid." (Appwrite's Dispatcher). Member names match exactly, as PHP's
// array keys do: {"TYPE":"ping"} has no type.
func ParseClientMessage(b []byte) (ClientMessage, error) {
	m, ok := objectMembers(b, "type", "data")
	if !ok {
		return ClientMessage{}, invalid(msgFormatInvalid)
	}
	// A member that is there but null is there (PHP's array_key_exists).
	if m[0] == nil && m[1] == nil {
		return ClientMessage{}, invalid(msgFormatInvalid)
	}
	t, _ := rawString(m[0])
	return ClientMessage{Type: t, Data: nonNull(m[1])}, nil
}

// ParseAuthentication extracts the session of an `authentication` message's
// data. Errors are *Error with code 1003 and Appwrite's texts: "Payload is
// not valid. Session is required" when data or its session member is
// absent, and "session: Value must be a valid string and at least 1 chars
// and no longer than 2048 chars" when the session is present but null,
// empty, not a string or longer than 2048 characters. Whether the session
// is valid is the auth resolver's business.
func ParseAuthentication(data json.RawMessage) (session string, err error) {
	m, ok := objectMembers(data, "session")
	if !ok || m[0] == nil {
		return "", invalid(msgSessionRequired)
	}
	s, ok := rawString(m[0])
	if !ok || s == "" || utf8.RuneCountInString(s) > maxSessionLength {
		return "", invalid(msgSessionInvalid)
	}
	return s, nil
}

// Subscription is one entry of a subscribe message, or one URL slot.
type Subscription struct {
	// ID is the subscriptionId; empty when the client gave none, and the
	// server generates one.
	ID string
	// Channels are the channel names, de-duplicated, in the client's order.
	Channels []string
	// Queries each hold one query's JSON text, e.g.
	// {"method":"select","values":["*"]}. None means select-all.
	Queries []string
	// Resume, in a subscribe response, tells what became of a
	// subscription made under an id new on its connection (RESUME.md);
	// nil leaves the field out.
	Resume *ResumeStatus
}

// ParseSubscribe parses the data of a `subscribe` message: a JSON array of
// {"subscriptionId"?, "channels":[...], "queries"?:[...]}.
//
// Queries on the wire are strings holding JSON (the Web SDK sends
// Query.toString()); an object is accepted too and its raw text kept.
// Queries are not validated here: the server compiles them with ParseQuery.
//
// Errors are *Error with code 1003. First Appwrite's, in the order of its
// SubscribePayload validator, entry by entry: absent or null data, data
// that is not an array, an entry that is not an object, no channels, channels
// that are not an array, a channel that is not a string, queries that are
// not an array, a subscriptionId (even null or "") that is not a valid id
// (ValidUID). Then, once every entry has passed those, Switchboard's bounds,
// which Appwrite does not have: a channel name that is not valid, more than
// MaxChannels channels in one entry, a query that is neither a string nor
// an object. An empty array is no subscription at all and an empty channels
// array a subscription to nothing, as in Appwrite.
func ParseSubscribe(data json.RawMessage) ([]Subscription, error) {
	items, err := parseItems(data)
	if err != nil {
		return nil, err
	}
	type entry struct{ channels, queries []json.RawMessage }
	entries := make([]entry, len(items))
	subs := make([]Subscription, len(items))
	for i, item := range items {
		m, ok := objectMembers(item, "subscriptionId", "channels", "queries")
		if !ok {
			return nil, invalid(msgSubscribeObject)
		}
		if m[1] == nil {
			return nil, invalid(msgChannelsMissing)
		}
		if entries[i].channels, ok = arrayElements(m[1]); !ok {
			return nil, invalid(msgChannelsInvalid)
		}
		for _, c := range entries[i].channels {
			if _, ok := rawString(c); !ok {
				return nil, invalid(msgChannelsStrings)
			}
		}
		if m[2] != nil {
			if entries[i].queries, ok = arrayElements(m[2]); !ok {
				return nil, invalid(msgQueriesInvalid)
			}
		}
		if m[0] != nil {
			// Present is present: null and "" are ids that are not valid.
			id, ok := rawString(m[0])
			if !ok || !ValidUID(id) {
				return nil, invalid(msgSubscriptionID)
			}
			subs[i].ID = id
		}
	}
	for i, e := range entries {
		if subs[i].Channels, err = parseChannels(e.channels); err != nil {
			return nil, err
		}
		if subs[i].Queries, err = parseQueryList(e.queries); err != nil {
			return nil, err
		}
	}
	return subs, nil
}

// ParseUnsubscribe parses the data of an `unsubscribe` message,
// [{"subscriptionId":ID},...], into the ids in order; [] is none. Errors
// are *Error with code 1003, Appwrite's texts (its UnsubscribePayload
// validator).
func ParseUnsubscribe(data json.RawMessage) ([]string, error) {
	items, err := parseItems(data)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(items))
	for _, item := range items {
		m, ok := objectMembers(item, "subscriptionId")
		if !ok {
			return nil, invalid(msgUnsubscribeEntries)
		}
		id, ok := rawString(m[0])
		if !ok || id == "" {
			return nil, invalid(msgUnsubscribeEntries)
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// parseItems splits the list-shaped data of subscribe and unsubscribe.
func parseItems(data json.RawMessage) ([]json.RawMessage, error) {
	data = nonNull(data)
	if data == nil {
		return nil, invalid(msgItemsRequired)
	}
	items, ok := arrayElements(data)
	if !ok {
		return nil, invalid(msgItemsInvalid)
	}
	return items, nil
}

// parseChannels bounds one entry's channels, JSON strings already checked:
// valid names, at most MaxChannels distinct; duplicates dropped, order kept
// (Appwrite's convertChannels flips the list into keys, the same set).
func parseChannels(raw []json.RawMessage) ([]string, error) {
	out := make([]string, 0, min(len(raw), MaxChannels))
	for _, r := range raw {
		name, _ := rawString(r)
		if !validName(name, MaxChannelLength) {
			return nil, invalid(fmt.Sprintf("items: channel %q is not valid. Channel names are 1 to %d bytes of UTF-8 without control characters.",
				truncate(name, 64), MaxChannelLength))
		}
		if contains(out, name) {
			continue
		}
		if len(out) == MaxChannels {
			return nil, invalid(fmt.Sprintf("items: too many channels, at most %d are allowed.", MaxChannels))
		}
		out = append(out, name)
	}
	return out, nil
}

// parseQueryList takes the elements of a queries member: strings holding
// query JSON, or query objects, whose raw text is kept. None means none.
func parseQueryList(elems []json.RawMessage) ([]string, error) {
	if len(elems) == 0 {
		return nil, nil
	}
	queries := make([]string, 0, len(elems))
	for _, e := range elems {
		if q, ok := rawString(e); ok {
			queries = append(queries, q)
			continue
		}
		if !isObject(e) {
			return nil, invalid(msgQueriesInvalid)
		}
		queries = append(queries, string(e))
	}
	return queries, nil
}

// contains is a linear scan: entries hold at most MaxChannels names, where
// a map would cost more than it saves.
func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// rawString decodes raw as a JSON string; ok is false for any other value.
func rawString(raw json.RawMessage) (s string, ok bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) < 2 || raw[0] != '"' {
		return "", false
	}
	// Fast path: nothing to unescape.
	if bytes.IndexByte(raw, '\\') < 0 {
		return string(raw[1 : len(raw)-1]), true
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", false
	}
	return s, true
}

// nonNull returns nil for an absent or JSON null value, raw otherwise.
func nonNull(raw json.RawMessage) json.RawMessage {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		return nil
	}
	return raw
}

// isObject reports whether raw holds a JSON object (it is assumed to be
// valid JSON, as everything cut out of a decoded message is).
func isObject(raw json.RawMessage) bool {
	t := bytes.TrimSpace(raw)
	return len(t) > 0 && t[0] == '{'
}

// ResumeStatus is the subscribe response's "resume" field: "resumed" (the
// missed events follow), "new", or "live" with a reason ("window",
// "incomplete", "user", "open", "size") when the subscription could not
// resume and starts with live events only. SDKs ignore it (RESUME.md).
type ResumeStatus struct {
	Status string
}

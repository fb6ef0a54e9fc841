package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// Error messages. Where Appwrite has one (its realtime message dispatcher,
// src/Appwrite/Realtime/Message/Dispatcher.php, the validators beside it and
// utopia's Text validator) it is kept word for word, because SDKs surface
// them to developers; the "items: " and "session: " prefixes name the
// parameter that failed. msgItemsEmpty and msgSubscriptionID are
// Switchboard's: Appwrite accepts those inputs.
const (
	msgFormatInvalid      = "Message format is not valid."
	msgSessionRequired    = "Payload is not valid. Session is required"
	msgSessionInvalid     = "session: Value must be a valid string and at least 1 chars and no longer than 2048 chars"
	msgItemsRequired      = "Payload is not valid. Items is required"
	msgItemsInvalid       = "items: Payload is not valid."
	msgItemsEmpty         = "items: Payload is not valid. At least one entry is required."
	msgSubscribeObject    = "items: Each subscribe payload must be an object."
	msgChannelsMissing    = "items: channels is not present in payload."
	msgChannelsInvalid    = "items: channels is not a valid array."
	msgQueriesInvalid     = "items: queries is not a valid array."
	msgSubscriptionID     = "items: subscriptionId must be a string of 1 to 256 bytes without control characters."
	msgUnsubscribeEntries = "items: Each unsubscribe payload must include a non-empty subscriptionId."
)

// maxSessionLength is the limit of Appwrite's session parameter (Text(2048)).
const maxSessionLength = 2048

// ClientMessage is a parsed client->server message.
type ClientMessage struct {
	Type string
	// Data is the raw "data" member; nil when it is absent or null.
	Data json.RawMessage
}

// ParseClientMessage parses one text frame. As Appwrite's onMessage
// (app/realtime.php) does, bad JSON, or an object with neither a "type" nor
// a "data" member, is an *Error with code 1003 and "Message format is not
// valid."; so is JSON that is not an object (Appwrite answers those with
// PHP's TypeError text and code 0, which no client can act on). A message
// with a type that is not a string (or only data) parses with Type "": the
// server answers it, as any unknown type, with 1003 "Message type is not
// valid." (Appwrite's Dispatcher).
func ParseClientMessage(b []byte) (ClientMessage, error) {
	// The keys first, exactly as written: encoding/json matches struct
	// fields without regard to case, and {"TYPE":"ping"} is no ping to
	// Appwrite. Their values are skipped, not copied (a 4 MiB pad stays
	// where it is).
	var keys map[string]skippedValue
	if !isObject(b) || json.Unmarshal(b, &keys) != nil {
		return ClientMessage{}, invalid(msgFormatInvalid)
	}
	// A member that is there but null is there (PHP's array_key_exists).
	_, hasType := keys["type"]
	_, hasData := keys["data"]
	if !hasType && !hasData {
		return ClientMessage{}, invalid(msgFormatInvalid)
	}
	var w struct {
		Type json.RawMessage `json:"type"`
		Data json.RawMessage `json:"data"`
	}
	if foldedKey(keys) {
		// A "Type" or "DATA" beside: the struct would take it too.
		var exact map[string]json.RawMessage
		_ = json.Unmarshal(b, &exact) // it decoded once already
		w.Type, w.Data = exact["type"], exact["data"]
	} else if json.Unmarshal(b, &w) != nil {
		return ClientMessage{}, invalid(msgFormatInvalid)
	}
	t, _ := rawString(w.Type)
	return ClientMessage{Type: t, Data: nonNull(w.Data)}, nil
}

// skippedValue decodes any JSON value into nothing: a map of them lists an
// object's keys.
type skippedValue struct{}

func (*skippedValue) UnmarshalJSON([]byte) error { return nil }

// foldedKey reports whether keys hold "type" or "data" in another case.
func foldedKey(keys map[string]skippedValue) bool {
	for k := range keys {
		if (k != "type" && strings.EqualFold(k, "type")) || (k != "data" && strings.EqualFold(k, "data")) {
			return true
		}
	}
	return false
}

// ParseAuthentication extracts the session of an `authentication` message's
// data. Errors are *Error with code 1003 and Appwrite's texts: "Payload is
// not valid. Session is required" when data or its session member is
// absent, and "session: Value must be a valid string and at least 1 chars
// and no longer than 2048 chars" when the session is present but null,
// empty, not a string or longer than 2048 bytes. Whether the session is
// valid is the auth resolver's business.
func ParseAuthentication(data json.RawMessage) (session string, err error) {
	if !isObject(data) {
		return "", invalid(msgSessionRequired)
	}
	var w struct {
		Session json.RawMessage `json:"session"`
	}
	if err := json.Unmarshal(data, &w); err != nil {
		return "", invalid(msgSessionRequired)
	}
	if w.Session == nil {
		return "", invalid(msgSessionRequired)
	}
	s, ok := rawString(w.Session)
	if !ok || s == "" || len(s) > maxSessionLength {
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
}

// ParseSubscribe parses the data of a `subscribe` message: a JSON array of
// {"subscriptionId"?, "channels":[...], "queries"?:[...]}.
//
// Queries on the wire are strings holding JSON (the Web SDK sends
// Query.toString()); an object is accepted too and its raw text kept.
// Queries are not validated here: the server compiles them with ParseQuery.
//
// Errors are *Error with code 1003: absent or non-array data, an empty
// array (Appwrite accepts it as a no-op; nothing sends it), an entry that is
// not an object, has no channels array, more than MaxChannels channels, an
// invalid channel name, a non-array queries member or a bad subscriptionId.
// An empty channels array is accepted, as Appwrite does.
func ParseSubscribe(data json.RawMessage) ([]Subscription, error) {
	items, err := parseItems(data)
	if err != nil {
		return nil, err
	}
	subs := make([]Subscription, 0, len(items))
	for _, item := range items {
		if !isObject(item) {
			return nil, invalid(msgSubscribeObject)
		}
		var w struct {
			SubscriptionID json.RawMessage `json:"subscriptionId"`
			Channels       json.RawMessage `json:"channels"`
			Queries        json.RawMessage `json:"queries"`
		}
		if err := json.Unmarshal(item, &w); err != nil {
			return nil, invalid(msgSubscribeObject)
		}
		var sub Subscription
		if sub.ID, err = parseSubscriptionID(w.SubscriptionID); err != nil {
			return nil, err
		}
		if sub.Channels, err = parseChannels(w.Channels); err != nil {
			return nil, err
		}
		if sub.Queries, err = parseQueryList(w.Queries); err != nil {
			return nil, err
		}
		subs = append(subs, sub)
	}
	return subs, nil
}

// ParseUnsubscribe parses the data of an `unsubscribe` message,
// [{"subscriptionId":ID},...], into the ids in order. Errors are *Error with
// code 1003, Appwrite's texts.
func ParseUnsubscribe(data json.RawMessage) ([]string, error) {
	items, err := parseItems(data)
	if err != nil {
		return nil, err
	}
	ids := make([]string, 0, len(items))
	for _, item := range items {
		var w struct {
			SubscriptionID json.RawMessage `json:"subscriptionId"`
		}
		if !isObject(item) || json.Unmarshal(item, &w) != nil {
			return nil, invalid(msgUnsubscribeEntries)
		}
		id, ok := rawString(w.SubscriptionID)
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
	var items []json.RawMessage
	if err := json.Unmarshal(data, &items); err != nil {
		return nil, invalid(msgItemsInvalid)
	}
	if len(items) == 0 {
		return nil, invalid(msgItemsEmpty)
	}
	return items, nil
}

func parseSubscriptionID(raw json.RawMessage) (string, error) {
	if nonNull(raw) == nil {
		return "", nil
	}
	id, ok := rawString(raw)
	if !ok {
		return "", invalid(msgSubscriptionID)
	}
	if id != "" && !validName(id, maxSubscriptionIDLength) {
		return "", invalid(msgSubscriptionID)
	}
	return id, nil
}

// parseChannels decodes one entry's channels: present, an array of valid
// names, at most MaxChannels distinct; duplicates dropped, order kept.
func parseChannels(raw json.RawMessage) ([]string, error) {
	if raw == nil {
		return nil, invalid(msgChannelsMissing)
	}
	var names []string
	if nonNull(raw) == nil || json.Unmarshal(raw, &names) != nil {
		return nil, invalid(msgChannelsInvalid)
	}
	out := names[:0] // filtered in place: out never overtakes the loop
	for _, name := range names {
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

// parseQueryList decodes a queries member: an array of strings holding
// query JSON, or of query objects, whose raw text is kept. Absent or null
// means none (Appwrite refuses null; being lenient costs nothing).
func parseQueryList(raw json.RawMessage) ([]string, error) {
	if nonNull(raw) == nil {
		return nil, nil
	}
	var elems []json.RawMessage
	if json.Unmarshal(raw, &elems) != nil {
		return nil, invalid(msgQueriesInvalid)
	}
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
		queries = append(queries, string(bytes.TrimSpace(e)))
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

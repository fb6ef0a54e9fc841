package protocol

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// Handshake is what the upgrade request's URL carries.
//
// Three generations of clients use it differently (read in the npm
// package's dist/esm/sdk.js, createSocket):
//
//   - Before Appwrite 1.9.0 (Web SDK up to 22.0.0): project=P&channels[]=C&...;
//     every channel is in one subscription.
//   - 1.9.0-1.9.4 (Web SDK 22.3.0-24.2.0): channels[]=C for every channel,
//     plus slot parameters. createSocket appends, for each subscription
//     slot and each of its channels and queries,
//     "&" + encodeURIComponent(channel) + "[" + slot + "][]=" + encodeURIComponent(query),
//     using {"method":"select","values":["*"]} when the subscription has no
//     queries. The slot is the SDK's counter: from 0 in Client.subscribe,
//     from 1 in the Realtime service. The brackets are not escaped and the
//     channel keeps its dots, which PHP's query-string parser turns into
//     underscores (hence PROTOCOL.md's "`.` replaced by `_`"). Both
//     spellings are accepted here, so "a.b" and "a_b" share slot
//     parameters, as they do in PHP.
//   - 1.9.5 and later (Web SDK 25.0.0+): project=P (and jwt=J) only; the client
//     sends `subscribe` messages once connected ("message mode").
type Handshake struct {
	// Project is the `project` query parameter. The server applies the
	// x-appwrite-project header override itself.
	Project string
	// JWT is the `jwt` query parameter.
	JWT string
	// Channels are all channels[] requested, in request order, without
	// duplicates. Appwrite's `connected` frame echoes them after
	// ConvertAccountChannels.
	Channels []string
	// Slots are the URL subscriptions in ascending slot order. Channels
	// without a slot parameter are in slot 0 with no queries (select-all).
	// ID is always empty: the server generates the ids. Channels of a slot
	// are raw: the server applies ConvertAccountChannels to each.
	Slots []Subscription
	// SlotIndexes[i] is the slot number of Slots[i]; `connected` reports
	// the generated ids keyed by it.
	SlotIndexes []int
}

// ParseHandshakeQuery parses a raw URL query string (r.URL.RawQuery form,
// percent-encoded). At most MaxChannels distinct channels, each 1 to
// MaxChannelLength bytes of UTF-8 without control characters, and at most
// 100 slots are accepted; anything else, or a malformed percent-escape, is an
// *Error with code 1003 and the caller decides whether to close. Queries are
// kept as text; the server validates them with ParseQuery. Parameters other
// than project, jwt, channels[] and slot parameters are ignored, like
// Appwrite does.
func ParseHandshakeQuery(rawQuery string) (Handshake, error) {
	var h Handshake
	var params []slotParam
	for pair := range strings.SplitSeq(rawQuery, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		key, err := url.QueryUnescape(k)
		if err != nil {
			return Handshake{}, invalid("Query string is not valid: malformed percent-encoding.")
		}
		value, err := url.QueryUnescape(v)
		if err != nil {
			return Handshake{}, invalid("Query string is not valid: malformed percent-encoding.")
		}
		switch key {
		case "project":
			h.Project = value // the last one wins, as in PHP
		case "jwt":
			h.JWT = value
		case "channels[]":
			if !validName(value, MaxChannelLength) {
				return Handshake{}, invalid(fmt.Sprintf("Channel %q is not valid. Channel names are 1 to %d bytes of UTF-8 without control characters.",
					truncate(value, 64), MaxChannelLength))
			}
			if contains(h.Channels, value) {
				continue
			}
			if len(h.Channels) == MaxChannels {
				return Handshake{}, invalid(fmt.Sprintf("Too many channels, at most %d are allowed.", MaxChannels))
			}
			h.Channels = append(h.Channels, value)
		default:
			if name, slot, ok := parseSlotKey(key); ok {
				params = append(params, slotParam{name: phpVarName(name), slot: slot, query: value})
			}
		}
	}
	if len(h.Channels) == 0 {
		return h, nil // message mode
	}
	if err := h.buildSlots(params); err != nil {
		return Handshake{}, err
	}
	return h, nil
}

// slotParam is one `<channel>[<slot>][]=<query>` parameter.
type slotParam struct {
	name  string // channel, PHP-mangled (see phpVarName)
	slot  int
	query string
}

type slotBuild struct {
	channels []string
	queries  []string
	// queriesSet: the first channel to join a slot decides its queries, even
	// when that is "none" (select-all), as in Appwrite's
	// Realtime::constructSubscriptions.
	queriesSet bool
}

// buildSlots groups h.Channels into slots following Appwrite's
// constructSubscriptions: each channel, in request order, joins every slot
// it has parameters for, or slot 0 when it has none.
func (h *Handshake) buildSlots(params []slotParam) error {
	byName := make(map[string][]slotParam)
	for _, p := range params {
		byName[p.name] = append(byName[p.name], p)
	}
	slots := make(map[int]*slotBuild)
	join := func(n int, channel string) (*slotBuild, error) {
		s := slots[n]
		if s == nil {
			if len(slots) == maxSlots {
				return nil, invalid(fmt.Sprintf("Too many subscriptions, at most %d are allowed.", maxSlots))
			}
			s = &slotBuild{}
			slots[n] = s
		}
		s.channels = append(s.channels, channel)
		return s, nil
	}
	for _, ch := range h.Channels {
		own := byName[phpVarName(ch)]
		if len(own) == 0 {
			s, err := join(0, ch)
			if err != nil {
				return err
			}
			s.queriesSet = true
			continue
		}
		// Group this channel's queries by slot, slots in the order its
		// parameters first name them (PHP array order).
		var order []int
		bySlot := make(map[int][]string)
		for _, p := range own {
			qs, seen := bySlot[p.slot]
			if !seen {
				order = append(order, p.slot)
			}
			bySlot[p.slot] = append(qs, p.query)
		}
		for _, n := range order {
			s, err := join(n, ch)
			if err != nil {
				return err
			}
			if !s.queriesSet {
				s.queriesSet = true
				s.queries = bySlot[n]
			}
		}
	}
	h.SlotIndexes = slices.Sorted(maps.Keys(slots))
	h.Slots = make([]Subscription, len(h.SlotIndexes))
	for i, n := range h.SlotIndexes {
		h.Slots[i] = Subscription{Channels: slots[n].channels, Queries: slots[n].queries}
	}
	return nil
}

// parseSlotKey splits a decoded parameter name of the form
// NAME[SLOT][] with SLOT a decimal number. Anything else is not a slot
// parameter.
func parseSlotKey(key string) (name string, slot int, ok bool) {
	rest, ok := strings.CutSuffix(key, "[]")
	if !ok {
		return "", 0, false
	}
	rest, ok = strings.CutSuffix(rest, "]")
	if !ok {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, '[')
	if i <= 0 {
		return "", 0, false
	}
	digits := rest[i+1:]
	// Nine digits cannot overflow an int; the SDKs count from 0 or 1.
	if len(digits) == 0 || len(digits) > 9 || strings.Trim(digits, "0123456789") != "" {
		return "", 0, false
	}
	slot, err := strconv.Atoi(digits)
	if err != nil {
		return "", 0, false
	}
	return rest[:i], slot, true
}

// phpVarName applies PHP's mangling of query parameter names, which turns
// '.' and ' ' into '_'. Appwrite looks a channel's slot parameters up under
// the mangled name, so channels "a.b" and "a_b" share them; comparing
// mangled names on both sides keeps that behaviour.
func phpVarName(s string) string {
	if !strings.ContainsAny(s, ". ") {
		return s
	}
	return strings.Map(func(r rune) rune {
		if r == '.' || r == ' ' {
			return '_'
		}
		return r
	}, s)
}

// accountActions are the action suffixes Appwrite rewrites in account
// channels (Realtime::SUPPORTED_ACTIONS).
var accountActions = [...]string{"create", "update", "upsert", "delete"}

// ConvertAccountChannels applies Appwrite's account-channel rules
// (Realtime::convertChannels) for user id uid, "" when anonymous:
//
//   - "account" stays and, with a uid, also brings "account.<uid>";
//   - "account.<action>", action one of create, update, upsert, delete,
//     becomes "account.<uid>.<action>"; a guest keeps it literally, since
//     Appwrite also publishes the unscoped form for top-level user events;
//   - any other "account.*" is dropped, including "account.<uid>" and
//     "account.<uid>.<action>" spelled out by the client (Appwrite's tests
//     assert that), so no one can listen to another user's account.
//
// It returns a new slice without duplicates. Order is kept, with
// "account.<uid>" right after "account" (Appwrite appends it at the end;
// clients do not depend on the order).
func ConvertAccountChannels(channels []string, uid string) []string {
	out := make([]string, 0, len(channels)+1)
	// A linear scan beats a map for the usual handful of channels; long
	// lists (a connection's whole channel set) get a map.
	var seen map[string]struct{}
	if len(channels) > 16 {
		seen = make(map[string]struct{}, len(channels)+1)
	}
	add := func(c string) {
		if seen != nil {
			if _, dup := seen[c]; dup {
				return
			}
			seen[c] = struct{}{}
		} else if contains(out, c) {
			return
		}
		out = append(out, c)
	}
	for _, c := range channels {
		switch {
		case c == "account":
			add(c)
			if uid != "" {
				add("account." + uid)
			}
		case strings.HasPrefix(c, "account."):
			action := c[len("account."):]
			if !slices.Contains(accountActions[:], action) {
				continue
			}
			if uid == "" {
				add(c)
			} else {
				add("account." + uid + "." + action)
			}
		default:
			add(c)
		}
	}
	return out
}

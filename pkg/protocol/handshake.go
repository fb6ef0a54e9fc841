package protocol

import (
	"cmp"
	"fmt"
	"net/url"
	"slices"
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
//     underscores (hence PROTOCOL.md's "`.` replaced by `_`"). Slot
//     parameters are looked up under the renamed channel, so "a.b" and
//     "a_b" share them (slotParamName says where Appwrite differs).
//   - 1.9.5 and later (Web SDK 25.0.0+): project=P (and jwt=J) only; the client
//     sends `subscribe` messages once connected ("message mode").
type Handshake struct {
	// Project is the `project` query parameter. The server applies the
	// x-appwrite-project header override itself.
	Project string
	// JWT is the `jwt` query parameter.
	JWT string
	// Channels are the string values of the `channels` array (channels[]=,
	// channels[N]=), in PHP array order, without duplicates. Appwrite's `connected` frame echoes them after
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
// percent-encoded) with PHP's rules (phpquery.go), then reads it as
// Appwrite's onOpen does: the channels are the string values of the
// `channels` array in PHP array order, so channels[]=, channels[N]= and
// their percent-encoded forms are one list, and a later channels[N]
// overwrites an earlier one; each channel's subscription slots come from
// the parameter named after it, as Realtime::constructSubscriptions reads
// them (buildSlots).
//
// At most MaxChannels distinct channels, each 1 to MaxChannelLength bytes
// of UTF-8 without control characters, and at most 100 slots are
// accepted; anything else, a malformed percent-escape, a `channels` that is
// not an array, or a slot's query that is an array is an *Error with code
// 1003 and the caller decides whether to close. Queries are kept as text;
// the server validates them with ParseQuery. Parameters other than
// project, jwt, channels and the channels' own are ignored, like Appwrite
// does, and only their names are read.
func ParseHandshakeQuery(rawQuery string) (Handshake, error) {
	// The first pass keeps project, jwt and channels; only when other
	// parameters were seen does a second pass keep those named after a
	// channel. A $_GET entry depends only on the parameters of its own
	// name, so two passes build what one would.
	if h, ok, err := parseSimpleQuery(rawQuery); ok {
		return h, err
	}
	// Room for project, jwt and channels: one allocation.
	get := phpArray{entries: make([]phpEntry, 0, 3), limit: phpKeptDepth}
	others := false
	q := newPHPQuery(rawQuery)
	for {
		p, ok, err := q.next(true)
		if err != nil {
			return Handshake{}, err
		}
		if !ok {
			break
		}
		switch p.top {
		case "project", "jwt", "channels":
			p.register(&get)
		default:
			others = true
		}
	}
	var h Handshake
	h.Project = get.stringAt("project")
	h.JWT = get.stringAt("jwt")
	if err := h.readChannels(&get); err != nil {
		return Handshake{}, err
	}
	if len(h.Channels) == 0 {
		return h, nil // message mode
	}
	if others {
		names := make(map[string]struct{}, len(h.Channels))
		for _, ch := range h.Channels {
			names[slotParamName(ch)] = struct{}{}
		}
		q := newPHPQuery(rawQuery)
		for {
			p, ok, _ := q.next(false) // the first pass found every escape valid
			if !ok {
				break
			}
			switch p.top {
			case "project", "jwt", "channels":
				continue // registered by the first pass
			}
			if _, kept := names[p.top]; kept {
				p.register(&get)
			}
		}
	}
	if err := h.buildSlots(&get); err != nil {
		return Handshake{}, err
	}
	return h, nil
}

// parseSimpleQuery is ParseHandshakeQuery for the URLs SDKs send before
// 1.9.0 and from 1.9.5: project, jwt and channels[] (encoded or not) and
// nothing else. $_GET is then project, jwt and one list, and no tree is
// needed: this path allocates the Handshake's own slices and nothing else,
// which keeps the common upgrade as cheap as it was. ok is false for any
// other query, which the general path reads.
func parseSimpleQuery(rawQuery string) (h Handshake, ok bool, err error) {
	list := false   // $_GET['channels'] is an array of h.Channels
	scalar := false // $_GET['channels'] is a string
	q := newPHPQuery(rawQuery)
	for {
		// Values are checked here, each read once: the JWT is the longest.
		p, more, err := q.next(false)
		if err != nil {
			return Handshake{}, true, err
		}
		if !more {
			break
		}
		var dst *string
		switch {
		case p.brackets < 0 && p.top == "project":
			dst = &h.Project
		case p.brackets < 0 && p.top == "jwt":
			dst = &h.JWT
		case p.brackets < 0 && p.top == "channels":
			if !validEscapes(p.rawValue) {
				return Handshake{}, true, errMalformed()
			}
			scalar, list, h.Channels = true, false, h.Channels[:0]
			continue
		case p.name == "channels[]":
			if !list {
				scalar, list, h.Channels = false, true, h.Channels[:0]
			}
			h.Channels = append(h.Channels, "")
			dst = &h.Channels[len(h.Channels)-1]
		default:
			return Handshake{}, false, nil
		}
		if *dst, err = url.QueryUnescape(p.rawValue); err != nil {
			return Handshake{}, true, errMalformed()
		}
	}
	if scalar {
		return Handshake{}, true, errChannelsNotList()
	}
	// As readChannels: in order, the first invalid value or the 101st
	// distinct channel is the error; duplicates are dropped in place.
	n := 0
	for _, c := range h.Channels {
		if !validName(c, MaxChannelLength) {
			return Handshake{}, true, errChannelName(c)
		}
		if contains(h.Channels[:n], c) {
			continue
		}
		if n == MaxChannels {
			return Handshake{}, true, errTooManyChannels()
		}
		h.Channels[n] = c
		n++
	}
	if n == 0 {
		h.Channels = nil
		return h, true, nil // message mode
	}
	h.Channels = h.Channels[:n:n]
	for _, c := range h.Channels {
		switch slotParamName(c) {
		case "project", "jwt", "channels":
			// Its slot parameter is one the loop above read: the
			// general path knows what to make of it.
			return Handshake{}, false, nil
		}
	}
	h.Slots = []Subscription{{Channels: h.Channels}}
	h.SlotIndexes = []int{0}
	return h, true, nil
}

func errChannelName(c string) *Error {
	return invalid(fmt.Sprintf("Channel %q is not valid. Channel names are 1 to %d bytes of UTF-8 without control characters.",
		truncate(c, 64), MaxChannelLength))
}

func errTooManyChannels() *Error {
	return invalid(fmt.Sprintf("Too many channels, at most %d are allowed.", MaxChannels))
}

func errChannelsNotList() *Error {
	// Appwrite passes it to convertChannels(array ...), a TypeError:
	// README, "Where Switchboard differs from Appwrite".
	return invalid("Query string is not valid: channels must be a list (channels[]=...).")
}

// stringAt is $_GET[name] when it is a string, else "". The last value
// wins, as in PHP; a project or jwt sent as an array is missing.
func (a *phpArray) stringAt(name string) string {
	if v, ok := a.get(phpKeyOf(name)); ok && v.kind == phpString {
		return v.str
	}
	return ""
}

// readChannels sets h.Channels from $_GET['channels']: its string values
// in array order without duplicates, as Appwrite's convertChannels
// (array_flip, which skips array values) leaves them.
func (h *Handshake) readChannels(get *phpArray) error {
	v, ok := get.get(phpKey{str: "channels"})
	if !ok {
		return nil
	}
	if !v.isArray() {
		return errChannelsNotList()
	}
	h.Channels = make([]string, 0, len(v.arr.entries))
	for _, e := range v.arr.entries {
		if e.val.kind != phpString {
			continue
		}
		c := e.val.str
		if !validName(c, MaxChannelLength) {
			return errChannelName(c)
		}
		if contains(h.Channels, c) {
			continue
		}
		if len(h.Channels) == MaxChannels {
			return errTooManyChannels()
		}
		h.Channels = append(h.Channels, c)
	}
	return nil
}

// slotParamName is the $_GET name a channel's slot parameters are looked
// up under. Appwrite calls $request->getQuery($channel) with the channel
// as it is, and PHP has renamed '.' and ' ' in parameter names to '_', so
// in Appwrite a channel with a dot (databases.D.collections.C.documents,
// as Web SDK 22.3-24.2 sends it) never finds its slot parameters and gets
// select-all. Switchboard looks them up under the renamed channel, so
// those SDKs' filters apply; "a.b" and "a_b" share slot parameters.
func slotParamName(channel string) string {
	return phpMangle(channel, false)
}

type slotBuild struct {
	n        int
	channels []string
	queries  []string
	// queriesSet: the first channel to join a slot decides its queries, even
	// when that is "none" (select-all), as in Appwrite's
	// Realtime::constructSubscriptions.
	queriesSet bool
}

// buildSlots groups h.Channels into slots following Appwrite's
// constructSubscriptions: each channel, in request order, reads
// $_GET[channel]. Absent, it joins slot 0 with select-all; a string is
// slot 0 with that one query; an array's integer keys are its slots, in
// array order, each holding one query (a string) or a list of them.
// String keys (channel[x][]=, or an index too large for an integer) are
// ignored, and a channel left with no slot joins slot 0.
func (h *Handshake) buildSlots(get *phpArray) error {
	found := false
	for _, ch := range h.Channels {
		if get.find(phpKeyOf(slotParamName(ch))) >= 0 {
			found = true
			break
		}
	}
	if !found {
		// The pre-1.9.0 URL: one select-all slot with every channel.
		h.Slots = []Subscription{{Channels: h.Channels[:len(h.Channels):len(h.Channels)]}}
		h.SlotIndexes = []int{0}
		return nil
	}
	type param struct {
		v  phpValue
		ok bool
	}
	params := make([]param, len(h.Channels))
	for i, ch := range h.Channels {
		params[i].v, params[i].ok = get.get(phpKeyOf(slotParamName(ch)))
	}
	var slots []*slotBuild
	join := func(n int, channel string) (*slotBuild, error) {
		for _, s := range slots {
			if s.n == n {
				s.channels = append(s.channels, channel)
				return s, nil
			}
		}
		if len(slots) == maxSlots {
			return nil, invalid(fmt.Sprintf("Too many subscriptions, at most %d are allowed.", maxSlots))
		}
		s := &slotBuild{n: n, channels: []string{channel}}
		slots = append(slots, s)
		return s, nil
	}
	for i, ch := range h.Channels {
		var own []phpEntry
		switch v := params[i].v; {
		case !params[i].ok:
		case v.kind == phpString:
			// constructSubscriptions wraps a string as [$value]: slot 0.
			own = []phpEntry{{key: phpKey{isInt: true}, val: v}}
		default:
			own = v.arr.entries // $_GET[name] is never deep enough to be opaque
		}
		joined := false
		for _, e := range own {
			if !e.key.isInt || int64(int(e.key.n)) != e.key.n {
				continue
			}
			queries, err := slotQueries(ch, e)
			if err != nil {
				return err
			}
			s, err := join(int(e.key.n), ch)
			if err != nil {
				return err
			}
			joined = true
			if !s.queriesSet {
				s.queriesSet, s.queries = true, queries
			}
		}
		if !joined {
			s, err := join(0, ch)
			if err != nil {
				return err
			}
			s.queriesSet = true
		}
	}
	slices.SortFunc(slots, func(a, b *slotBuild) int { return cmp.Compare(a.n, b.n) })
	h.Slots = make([]Subscription, len(slots))
	h.SlotIndexes = make([]int, len(slots))
	for i, s := range slots {
		h.Slots[i] = Subscription{Channels: s.channels, Queries: s.queries}
		h.SlotIndexes[i] = s.n
	}
	return nil
}

// slotQueries is the query list of one slot parameter: a string is one
// query, an array its string values in order. A query that is itself an
// array is a TypeError in Appwrite's Query::parseQueries (README, "Where
// Switchboard differs from Appwrite").
func slotQueries(channel string, e phpEntry) ([]string, error) {
	if e.val.kind == phpString {
		return []string{e.val.str}, nil
	}
	if e.val.kind != phpArrayKind {
		return nil, nil // unreachable: a slot's array is kept
	}
	queries := make([]string, 0, len(e.val.arr.entries))
	for _, q := range e.val.arr.entries {
		if q.val.kind != phpString {
			return nil, invalid(fmt.Sprintf("Query string is not valid: the queries of %s[%d] must be strings.",
				truncate(channel, 64), e.key.n))
		}
		queries = append(queries, q.val.str)
	}
	return queries, nil
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

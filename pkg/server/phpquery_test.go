package server

import (
	"encoding/json"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

// connectedData is the `connected` message's data.
type connectedData struct {
	Channels      []string          `json:"channels"`
	Subscriptions map[string]string `json:"subscriptions"`
}

func expectConnected(t *testing.T, c *client) connectedData {
	t.Helper()
	m := c.expect("connected")
	var d connectedData
	if err := json.Unmarshal(m.Data, &d); err != nil {
		t.Fatalf("connected %s: %v", m.Data, err)
	}
	return d
}

// Follows tests/e2e/Services/Realtime/RealtimeBase.php, getWebsocket: the
// URL is http_build_query(['project' => P, 'channels' => [...]]), so the
// channels arrive as channels%5B0%5D=...; app/realtime.php's onOpen reads
// them with $request->getQuery('channels') as one PHP list and passes them
// to Realtime::convertChannels ("account" brings "account.<uid>").
func TestIndexedChannelsAreAppwritesList(t *testing.T) {
	s, tok := jwtNode(t, nil)
	c := dial(t, s, "project=p1&channels%5B0%5D=documents&channels%5B1%5D=account&jwt="+tok("u1"), nil)
	d := expectConnected(t, c)
	if want := []string{"documents", "account", "account.u1"}; !reflect.DeepEqual(d.Channels, want) {
		t.Fatalf("connected with channels %q, want %q", d.Channels, want)
	}
	publish(t, s, event("p1", []string{"any"}, []string{"documents"}, `{"n":1}`))
	c.expectPayload(`{"n":1}`)
	publish(t, s, event("p1", []string{"user:u1"}, []string{"account.u1"}, `{"n":2}`))
	c.expectPayload(`{"n":2}`)
}

// Follows src/Appwrite/Messaging/Adapter/Realtime.php,
// constructSubscriptions, fed by app/realtime.php's onOpen with
// $request->getQuery($channel): each channel's parameter is a PHP value,
// so its slots and queries may be written with indexes as well as with
// "[]" (http_build_query writes lists as [0], [1], ...), and a plain
// string is slot 0 holding that one query.
func TestIndexedSlotQueriesFilter(t *testing.T) {
	done := url.QueryEscape(qtext("equal", "status", "done"))
	big := url.QueryEscape(qtext("greaterThan", "size", 100))
	for _, tc := range []struct {
		name, query, slot string
	}{
		{"documents[1][]= after indexed channels", "channels%5B0%5D=documents&documents%5B1%5D%5B%5D=" + done, "1"},
		{"documents[1][0]=, as http_build_query writes it", "channels%5B0%5D=documents&documents%5B1%5D%5B0%5D=" + done, "1"},
		{"documents[2][0]= and [2][1]= after channels[]", "channels[]=documents&documents[2][0]=" + done + "&documents[2][1]=" + big, "2"},
		{"documents[3]=, one query", "channels[]=documents&documents[3]=" + done, "3"},
		{"documents=, slot 0", "channels[]=documents&documents=" + done, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testNode(t, nil)
			c := dial(t, s, "project=p1&"+tc.query, nil)
			d := expectConnected(t, c)
			id, ok := d.Subscriptions[tc.slot]
			if len(d.Subscriptions) != 1 || !ok || !reflect.DeepEqual(d.Channels, []string{"documents"}) {
				t.Fatalf("connected %+v, want documents in slot %s alone", d, tc.slot)
			}
			publish(t, s, event("p1", []string{"any"}, []string{"documents"}, `{"status":"open","size":500}`))
			publish(t, s, event("p1", []string{"any"}, []string{"documents"}, `{"status":"done","size":500}`))
			if e := c.expectPayload(`{"status":"done","size":500}`); !reflect.DeepEqual(e.Subscriptions, []string{id}) {
				t.Fatalf("event for subscriptions %v, want slot %s's %s", e.Subscriptions, tc.slot, id)
			}
		})
	}
}

// app/realtime.php's onOpen passes $request->getQuery('channels') to
// Realtime::convertChannels(array $channels, ...): a `channels` that PHP
// read as a string is a TypeError there, answered with code 0 and "Error:
// Server Error". Switchboard names the fault with 1003 and closes (README,
// "Where Switchboard differs from Appwrite"); before, it connected the
// client to no channel and said nothing.
func TestChannelsNotAListIsRefused(t *testing.T) {
	s := testNode(t, nil)
	for _, q := range []string{"channels=documents", "channels[]=documents&channels=files"} {
		c := dial(t, s, "project=p1&"+q, nil)
		m := c.expect("error")
		if !strings.Contains(string(m.Data), `"code":1003`) || !strings.Contains(string(m.Data), "channels must be a list") {
			t.Fatalf("%s: error %s", q, m.Data)
		}
		if code, _ := c.expectClose(); code != 1008 {
			t.Fatalf("%s: close code %d", q, code)
		}
	}
}

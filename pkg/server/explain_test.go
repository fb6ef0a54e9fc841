package server

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/explain"
)

// explainAnswer is the body of POST /v1/explain.
type explainAnswer struct {
	Connections []explain.Explained `json:"connections"`
	Truncated   bool                `json:"truncated"`
	Nodes       explain.Nodes       `json:"nodes"`
}

// connectionsAnswer is the body of GET /v1/connections.
type connectionsAnswer struct {
	Connections []explain.Connection `json:"connections"`
	Next        string               `json:"next"`
	Nodes       explain.Nodes        `json:"nodes"`
}

// adminJSON calls the admin API, wants 200, and decodes the answer.
func adminJSON[T any](t *testing.T, s *Server, method, path, body, key string) T {
	t.Helper()
	code, resp := adminRequest(t, s, method, path, body, key)
	var out T
	if code != http.StatusOK {
		t.Fatalf("%s %s: %d %s", method, path, code, resp)
	}
	if err := json.Unmarshal([]byte(resp), &out); err != nil {
		t.Fatalf("%s %s: answer %s: %v", method, path, resp, err)
	}
	return out
}

func explainRequest(t *testing.T, s *Server, key string, req map[string]any) explainAnswer {
	t.Helper()
	b, _ := json.Marshal(req)
	return adminJSON[explainAnswer](t, s, "POST", "/v1/explain", string(b), key)
}

func listConnections(t *testing.T, s *Server, key, query string) connectionsAnswer {
	t.Helper()
	return adminJSON[connectionsAnswer](t, s, "GET", "/v1/connections?"+query, "", key)
}

// verdicts maps subscription id to reason, for one connection's answer.
func verdicts(e explain.Explained) map[string]explain.Reason {
	out := map[string]explain.Reason{}
	for _, v := range e.Subscriptions {
		out[v.ID] = v.Reason
	}
	return out
}

// TestExplainOverTheWire: explain through the admin API, for a user's
// connections and for one connection by its id, compared with what the
// clients then receive when the same event is published; the explain
// itself delivers nothing.
func TestExplainOverTheWire(t *testing.T) {
	const key = "k"
	res := &teamResolver{teams: map[string]map[string]bool{"u1": {"t1": true}}}
	s := testNode(t, func(c *Config) { c.Resolver, c.APIKey = res, key })
	a := dial(t, s, "project=p1&channels[]=files", http.Header{"X-Appwrite-Session": {"s-u1"}})
	a.expect("connected")
	a.send(`{"type":"subscribe","data":[{"subscriptionId":"q1","channels":["docs"],"queries":["{\"method\":\"equal\",\"attribute\":\"k\",\"values\":[\"a\"]}"]}]}`)
	a.expect("response")
	b := dial(t, s, "project=p1&channels[]=docs", http.Header{"X-Appwrite-Session": {"s-u1"}})
	b.expect("connected")
	g := dial(t, s, "project=p1&channels[]=files", nil)
	g.expect("connected")

	// The connections: all three, then the user's two.
	all := listConnections(t, s, key, "project=p1")
	if len(all.Connections) != 3 || all.Next != "" || !slices.Equal(all.Nodes.Answered, []string{s.node}) {
		t.Fatalf("connections of p1: %+v", all)
	}
	var guest explain.Connection
	for _, c := range all.Connections {
		if c.Node != s.node || !strings.HasPrefix(c.Connection, s.node+"/") || c.State != "live" || c.AgeSeconds < 0 || c.LastActivity == 0 || len(c.Subscriptions) == 0 {
			t.Fatalf("connection %+v", c)
		}
		if c.UserID == "" {
			guest = c
		}
	}
	if !slices.Equal(guest.Roles, []string{"guests"}) || !slices.Equal(guest.Subscriptions[0].Channels, []string{"files"}) {
		t.Fatalf("guest %+v", guest)
	}
	if u := listConnections(t, s, key, "project=p1&userId=u1"); len(u.Connections) != 2 || u.Connections[0].UserID != "u1" || !slices.Contains(u.Connections[0].Roles, "team:t1") {
		t.Fatalf("connections of u1: %+v", u)
	}

	// u1's connections, for an event of team t1 on docs that q1's query
	// refuses: a's files slot is not on docs, q1 is false, b receives.
	ev := event("p1", []string{"team:t1"}, []string{"docs"}, `{"k":"b","n":1}`)
	ans := explainRequest(t, s, key, map[string]any{"event": json.RawMessage(ev), "project": "p1", "userId": "u1"})
	if len(ans.Connections) != 2 {
		t.Fatalf("explain for u1: %+v", ans)
	}
	var forA, forB explain.Explained
	for _, e := range ans.Connections {
		if _, ok := verdicts(e)["q1"]; ok {
			forA = e
		} else {
			forB = e
		}
	}
	va := verdicts(forA)
	if forA.Delivered || va["q1"] != explain.QueryFalse || len(va) != 2 {
		t.Fatalf("a: %+v", forA)
	}
	for _, v := range forA.Subscriptions {
		switch v.ID {
		case "q1":
			if v.Query == nil || v.Query.Index != 0 || !strings.Contains(v.Query.Text, `"equal"`) || v.Query.Detail != `"k" is "b", and equal ["a"] is false` {
				t.Fatalf("q1's query: %+v", v.Query)
			}
		default:
			if v.Reason != explain.ChannelNotSubscribed {
				t.Fatalf("a's slot: %+v", v)
			}
		}
	}
	if !forB.Delivered || len(forB.Subscriptions) != 1 || !forB.Subscriptions[0].Delivered {
		t.Fatalf("b: %+v", forB)
	}
	// The guest by its id: no role of the team.
	ansG := explainRequest(t, s, key, map[string]any{"event": json.RawMessage(event("p1", []string{"team:t1"}, []string{"files"}, `{"n":2}`)), "connection": guest.Connection})
	if len(ansG.Connections) != 1 || ansG.Connections[0].Connection != guest.Connection || verdicts(ansG.Connections[0])[guest.Subscriptions[0].ID] != explain.RoleNotHeld {
		t.Fatalf("explain for the guest: %+v", ansG)
	}

	// Now for real. b's next message is the event, once: the explain
	// queued nothing. a and the guest receive nothing, so their next
	// message is the marker after it (a's files slot is the team's).
	for _, e := range []string{ev, event("p1", []string{"team:t1"}, []string{"files"}, `{"n":2}`), event("p1", []string{"any"}, []string{"files", "docs"}, `{"marker":1}`)} {
		if code, body := adminRequest(t, s, "POST", "/v1/publish", e, key); code != http.StatusAccepted {
			t.Fatalf("publish: %d %s", code, body)
		}
	}
	b.expectPayload(`{"k":"b","n":1}`)
	b.expectPayload(`{"marker":1}`)
	a.expectPayload(`{"n":2}`) // on files, for its team: not what was explained for it
	a.expectPayload(`{"marker":1}`)
	g.expectPayload(`{"marker":1}`)
}

// TestConnectionsPagesSkipNothing: pages of one connection each walk every
// connection of the project once, in (node, id) order, and the cursor of
// the last page is empty.
func TestConnectionsPagesSkipNothing(t *testing.T) {
	s := testNode(t, nil)
	for range 5 {
		dial(t, s, "project=p1&channels[]=files", nil).expect("connected")
	}
	dial(t, s, "project=p2&channels[]=files", nil).expect("connected")
	var got []string
	after := ""
	for range 10 {
		page := listConnections(t, s, "", "project=p1&limit=2&after="+url.QueryEscape(after))
		for _, c := range page.Connections {
			got = append(got, c.Connection)
		}
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	if len(got) != 5 || !slices.IsSortedFunc(got, explain.CompareConnIDs) || len(slices.Compact(slices.Clone(got))) != 5 {
		t.Fatalf("pages gave %v", got)
	}
}

// TestExplainRefusesBadRequests: each bad body or query is a 400 naming
// the fault, and both routes need the API key.
func TestExplainRefusesBadRequests(t *testing.T) {
	const key = "k"
	s := testNode(t, func(c *Config) { c.APIKey = key })
	ev := event("p1", []string{"any"}, []string{"files"}, `{}`)
	for _, tt := range []struct {
		body, want string
	}{
		{``, "not an explain request"},
		{`[]`, "not an explain request"},
		{`{"event":` + ev + `,"project":"p1","userId":"u1"} {}`, "more after the object"},
		{`{"event":` + ev + `,"project":"p1","userId":"u1","extra":1}`, "unknown field"},
		{`{"project":"p1","userId":"u1"}`, "event is required"},
		{`{"event":{"project":"p1"},"project":"p1","userId":"u1"}`, "event: "},
		{`{"event":"x","project":"p1","userId":"u1"}`, "event: "},
		{`{"event":` + ev + `}`, "connection, or project and userId, are required"},
		{`{"event":` + ev + `,"project":"p1"}`, "connection, or project and userId, are required"},
		{`{"event":` + ev + `,"userId":"u1"}`, "connection, or project and userId, are required"},
		{`{"event":` + ev + `,"connection":"n/1","project":"p1","userId":"u1"}`, "not both"},
		{`{"event":` + ev + `,"connection":"17"}`, "is not <node>/<id>"},
		{`{"event":` + ev + `,"connection":"n/x"}`, "the id is not a number"},
	} {
		code, body := adminRequest(t, s, "POST", "/v1/explain", tt.body, key)
		var e struct{ Error string }
		_ = json.Unmarshal([]byte(body), &e)
		if code != http.StatusBadRequest || !strings.Contains(e.Error, tt.want) {
			t.Errorf("body %s: %d %s, want 400 with %q", tt.body, code, body, tt.want)
		}
	}
	for _, q := range []string{"", "userId=u1", "project=p1&limit=0", "project=p1&limit=1001", "project=p1&limit=x", "project=p1&after=nope"} {
		if code, body := adminRequest(t, s, "GET", "/v1/connections?"+q, "", key); code != http.StatusBadRequest {
			t.Errorf("connections?%s: %d %s, want 400", q, code, body)
		}
	}
	if code, _ := adminRequest(t, s, "POST", "/v1/explain", `{"event":`+ev+`,"project":"p1","userId":"u1"}`, ""); code != http.StatusUnauthorized {
		t.Errorf("explain without the key: %d", code)
	}
	if code, _ := adminRequest(t, s, "GET", "/v1/connections?project=p1", "", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("connections with a wrong key: %d", code)
	}
	// A connection on a node that is not there: nobody answers within
	// the bound, and the answer says so.
	start := time.Now()
	a := explainRequest(t, s, key, map[string]any{"event": json.RawMessage(ev), "connection": "elsewhere/3"})
	if len(a.Connections) != 0 || !slices.Equal(a.Nodes.Missing, []string{"elsewhere"}) {
		t.Fatalf("explain for another node's connection without peers: %+v", a)
	}
	if time.Since(start) > 5*time.Second {
		t.Fatalf("took %v", time.Since(start))
	}
}

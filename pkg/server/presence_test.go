package server

import (
	"encoding/json"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/switchboard-rt/switchboard/pkg/auth"
)

// presenceDoc is the presence document as clients receive it.
type presenceDoc struct {
	ID          string          `json:"$id"`
	CreatedAt   string          `json:"$createdAt"`
	UpdatedAt   string          `json:"$updatedAt"`
	Permissions []string        `json:"$permissions"`
	UserID      string          `json:"userId"`
	Status      string          `json:"status"`
	Source      string          `json:"source"`
	ExpiresAt   string          `json:"expiresAt"`
	Metadata    json.RawMessage `json:"metadata"`
}

// expectPresence reads the response to a presence message.
func (c *client) expectPresence() presenceDoc {
	c.t.Helper()
	m := c.expect("response")
	var d struct {
		To       string      `json:"to"`
		Presence presenceDoc `json:"presence"`
	}
	if err := json.Unmarshal(m.Data, &d); err != nil || d.To != "presence" {
		c.t.Fatalf("presence response %s: %v", m.Data, err)
	}
	return d.Presence
}

// expectError reads an error frame and checks its code and message.
func (c *client) expectError(code int, message string) {
	c.t.Helper()
	m := c.expect("error")
	var d struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal(m.Data, &d); err != nil || d.Code != code || d.Message != message {
		c.t.Fatalf("error %s, want %d %q", m.Data, code, message)
	}
}

// expectPresenceEvent reads an event and checks it is action on presence id.
func (c *client) expectPresenceEvent(action, id string) presenceDoc {
	c.t.Helper()
	ev := c.expectEvent()
	one := "presences." + id
	if !reflect.DeepEqual(ev.Events, []string{one + "." + action, "presences.*." + action, one, "presences.*"}) ||
		!reflect.DeepEqual(ev.Channels, []string{"presences", one, "presences." + action, one + "." + action}) {
		c.t.Fatalf("presence event %+v, want %s of %s", ev, action, id)
	}
	var d presenceDoc
	if err := json.Unmarshal(ev.Payload, &d); err != nil {
		c.t.Fatal(err)
	}
	return d
}

func jwtNode(t *testing.T, mod func(*Config)) (*Server, func(uid string, roles ...string) string) {
	t.Helper()
	r, err := auth.NewJWT([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	s := testNode(t, func(c *Config) {
		c.Resolver = r
		if mod != nil {
			mod(c)
		}
	})
	return s, func(uid string, roles ...string) string {
		return jwtFor(t, "k", jwt.MapClaims{"sub": uid, "roles": roles})
	}
}

// marker publishes an event every client on "presences" in p1 receives:
// whoever sees it first did not receive what was sent before it.
func marker(t *testing.T, s *Server, n string) {
	publish(t, s, event("p1", []string{"any"}, []string{"presences"}, `{"marker":"`+n+`"}`))
}

func TestPresenceMessageOverTheWire(t *testing.T) {
	s, tok := jwtNode(t, func(c *Config) { c.MaxPresenceBytes = 64 })
	a := dial(t, s, "project=p1&jwt="+tok("u1", "team:t1"), nil)
	a.expect("connected")
	watcher := dial(t, s, "project=p1&channels[]=presences&jwt="+tok("u2"), nil)
	watcher.expect("connected")
	guest := dial(t, s, "project=p1&channels[]=presences", nil)
	guest.expect("connected")
	online := dial(t, s, "project=p1&jwt="+tok("u3"), nil)
	online.expect("connected")
	online.send(subscribeMsg(t, "on", []string{"presences"}, qtext("equal", "status", "online")))
	online.expect("response")

	// Errors keep the connection open and emit nothing.
	guest.send(`{"type":"presence","data":{"status":"online"}}`)
	guest.expectError(401, "User must be authorized")
	a.send(`{"type":"presence","data":{"status":"online","permissions":["read(\"team:t2\")"]}}`)
	a.expectError(401, "Permissions must be one of: (any, users, user:u1, team:t1)")
	a.send(`{"type":"presence","data":{"presenceId":"p1"}}`)
	a.expectError(1003, "Payload is not valid. Status is required")
	a.send(`{"type":"presence","data":{"status":"online","metadata":"` + strings.Repeat("x", 80) + `"}}`)
	a.expectError(1003, "metadata: Value must be JSON of at most 64 bytes.")
	marker(t, s, "0")
	watcher.expectPayload(`{"marker":"0"}`)
	guest.expectPayload(`{"marker":"0"}`)

	// The upsert: a response with the document, and an event to those the
	// read permissions admit.
	a.send(`{"type":"presence","data":{"status":"online","presenceId":"p1","metadata":{"typing":true},"permissions":["read(\"users\")","write(\"user:u1\")"]}}`)
	d := a.expectPresence()
	want := presenceDoc{ID: "p1", CreatedAt: d.CreatedAt, UpdatedAt: d.CreatedAt, UserID: "u1", Status: "online", Source: "realtime",
		ExpiresAt: d.ExpiresAt, Metadata: json.RawMessage(`{"typing":true}`),
		Permissions: []string{`delete("user:u1")`, `read("users")`, `update("user:u1")`}}
	if !reflect.DeepEqual(d, want) || d.ExpiresAt <= d.CreatedAt {
		t.Fatalf("presence %+v\nwant %+v", d, want)
	}
	if got := watcher.expectPresenceEvent("upsert", "p1"); !reflect.DeepEqual(got, d) {
		t.Fatalf("event payload %+v, want %+v", got, d)
	}
	online.expectPresenceEvent("upsert", "p1")
	marker(t, s, "1")
	guest.expectPayload(`{"marker":"1"}`)
	watcher.expectPayload(`{"marker":"1"}`)

	// One record per user and project: another presenceId keeps the first
	// id and creation time. The query filter leaves "away" out.
	a.send(`{"type":"presence","data":{"status":"away","presenceId":"p2","permissions":["read(\"users\")"]}}`)
	d2 := a.expectPresence()
	if d2.ID != "p1" || d2.CreatedAt != d.CreatedAt || d2.Status != "away" || d2.Metadata != nil && string(d2.Metadata) != "null" {
		t.Fatalf("second upsert %+v", d2)
	}
	watcher.expectPresenceEvent("upsert", "p1")
	marker(t, s, "2")
	watcher.expectPayload(`{"marker":"2"}`)

	// A second tab of u1: the same record. Closing one tab keeps it.
	b := dial(t, s, "project=p1&jwt="+tok("u1"), nil)
	b.expect("connected")
	b.send(`{"type":"presence","data":{"status":"online","permissions":["read(\"users\")"]}}`)
	if d3 := b.expectPresence(); d3.ID != "p1" {
		t.Fatalf("second tab got %+v", d3)
	}
	watcher.expectPresenceEvent("upsert", "p1")
	if d := online.expectPresenceEvent("upsert", "p1"); d.Status != "online" { // "away" never reached it
		t.Fatalf("filtered subscription got %+v", d)
	}
	listed := listPresences(t, s, "p1")
	if len(listed) != 1 || listed[0].ID != "p1" || listed[0].Status != "online" {
		t.Fatalf("listed %+v", listed)
	}
	a.conn.Close()
	marker(t, s, "3")
	watcher.expectPayload(`{"marker":"3"}`)
	b.conn.Close()
	if got := watcher.expectPresenceEvent("delete", "p1"); got.Status != "online" {
		t.Fatalf("delete payload %+v", got)
	}
	if listed := listPresences(t, s, "p1"); len(listed) != 0 {
		t.Fatalf("listed after the last tab closed: %+v", listed)
	}

	// Default permissions: the user alone sees it. Signing in as someone
	// else ends it.
	c := dial(t, s, "project=p1&channels[]=presences&jwt="+tok("u4"), nil)
	c.expect("connected")
	c.send(`{"type":"presence","data":{"status":"online"}}`)
	d4 := c.expectPresence()
	if len(d4.ID) != 20 || !reflect.DeepEqual(d4.Permissions, []string{`delete("user:u4")`, `read("user:u4")`, `update("user:u4")`}) {
		t.Fatalf("default presence %+v", d4)
	}
	c.expectPresenceEvent("upsert", d4.ID)
	c.send(`{"type":"authentication","data":{"session":"` + tok("u4") + `"}}`)
	c.expect("response") // the same user: the presence stays
	c.send(`{"type":"authentication","data":{"session":"` + tok("u5") + `"}}`)
	c.expect("response")
	marker(t, s, "4")
	watcher.expectPayload(`{"marker":"4"}`) // u4's events were never for u2
	c.expectPayload(`{"marker":"4"}`)       // and the delete is no longer for c, now u5
	// The record is released on u4's lane, after the re-authentication's
	// response: no event tells this test when, so it waits for the list.
	deadline := time.Now().Add(5 * time.Second)
	for listed := listPresences(t, s, "p1"); len(listed) != 0; listed = listPresences(t, s, "p1") {
		if time.Now().After(deadline) {
			t.Fatalf("listed after re-authentication: %+v", listed)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// listPresences reads GET /v1/presences?project=P.
func listPresences(t *testing.T, s *Server, project string) []presenceDoc {
	t.Helper()
	resp, err := http.Get("http://" + s.AdminAddr().String() + "/v1/presences?project=" + project)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var l struct {
		Total     int           `json:"total"`
		Presences []presenceDoc `json:"presences"`
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || json.Unmarshal(b, &l) != nil || l.Total != len(l.Presences) {
		t.Fatalf("list: %d %s", resp.StatusCode, b)
	}
	return l.Presences
}

func TestPresenceAdminAPI(t *testing.T) {
	s, tok := jwtNode(t, func(c *Config) { c.APIKey = "key" })
	watcher := dial(t, s, "project=p1&channels[]=presences&jwt="+tok("u2"), nil)
	watcher.expect("connected")
	a := dial(t, s, "project=p1&jwt="+tok("u1"), nil)
	a.expect("connected")
	a.send(`{"type":"presence","data":{"status":"online","presenceId":"p1","permissions":["read(\"users\")"]}}`)
	a.expectPresence()
	watcher.expectPresenceEvent("upsert", "p1")

	if code, _ := adminRequest(t, s, "GET", "/v1/presences?project=p1", "", ""); code != 401 {
		t.Fatalf("list without the key: %d", code)
	}
	// The backend sets "away": the same record, an upsert event.
	code, body := adminRequest(t, s, "POST", "/v1/presences", `{"project":"p1","userId":"u1","status":"away","permissions":["read(\"users\")"]}`, "key")
	if code != 200 || !strings.Contains(body, `"$id":"p1"`) || !strings.Contains(body, `"status":"away"`) || !strings.Contains(body, `"source":"api"`) {
		t.Fatalf("admin upsert: %d %s", code, body)
	}
	if d := watcher.expectPresenceEvent("upsert", "p1"); d.Status != "away" {
		t.Fatalf("away event %+v", d)
	}
	if code, body := adminRequest(t, s, "POST", "/v1/presences", `{"project":"p1","userId":"u1"}`, "key"); code != 400 || !strings.Contains(body, "Status is required") {
		t.Fatalf("bad admin upsert: %d %s", code, body)
	}
	if code, body := adminRequest(t, s, "POST", "/v1/presences", `{"project":"p1","userId":"u9","presenceId":"p1","status":"x"}`, "key"); code != 409 {
		t.Fatalf("someone else's id: %d %s", code, body)
	}
	// The backend deletes it: a delete event; then there is nothing to delete.
	if code, body := adminRequest(t, s, "DELETE", "/v1/presences/p1?project=p1", "", "key"); code != 200 || !strings.Contains(body, `"$id":"p1"`) {
		t.Fatalf("admin delete: %d %s", code, body)
	}
	watcher.expectPresenceEvent("delete", "p1")
	if code, _ := adminRequest(t, s, "DELETE", "/v1/presences/p1?project=p1", "", "key"); code != 404 {
		t.Fatalf("second delete: %d", code)
	}
	// The connection that held it closes: nothing more is announced.
	a.conn.Close()
	code, _ = adminRequest(t, s, "POST", "/v1/presences", `{"project":"p1","userId":"u7","presenceId":"x7","status":"busy","permissions":["read(\"any\")"]}`, "key")
	if code != 200 {
		t.Fatalf("admin upsert of an unconnected user: %d", code)
	}
	watcher.expectPresenceEvent("upsert", "x7")
}

package main

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// presenceFleetToken signs a JWT for uid with the fleet's secret.
func presenceFleetToken(t *testing.T, uid string) string {
	t.Helper()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": uid, "exp": time.Now().Add(time.Hour).Unix()}).
		SignedString([]byte("fleet-secret"))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// presenceClient dials n as uid, subscribed to presences, and waits for
// `connected`.
func presenceClient(t *testing.T, n *node, uid string) *wsConn {
	t.Helper()
	c, err := wsDial(n.addr, "project=p1&channels[]=presences&jwt="+presenceFleetToken(t, uid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	if typ, data, _, err := c.next(5 * time.Second); err != nil || typ != "connected" {
		t.Fatalf("connect: %s %s %v", typ, data, err)
	}
	return c
}

// upsertPresence sends a presence readable by every signed-in user and
// returns its id from the response.
func upsertPresence(t *testing.T, c *wsConn, status string) string {
	t.Helper()
	msg := `{"type":"presence","data":{"status":"` + status + `","permissions":["read(\"users\")"]}}`
	if err := wsutil.WriteClientText(c.conn, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	for {
		typ, data, _, err := c.next(5 * time.Second)
		if err != nil {
			t.Fatalf("presence response: %v", err)
		}
		if typ != "response" {
			continue // its own upsert event may come first
		}
		var d struct {
			Presence struct {
				ID string `json:"$id"`
			} `json:"presence"`
		}
		if err := json.Unmarshal(data, &d); err != nil || d.Presence.ID == "" {
			t.Fatalf("presence response %s: %v", data, err)
		}
		return d.Presence.ID
	}
}

// nextPresenceEvent returns the action and id of the next presence event c
// receives.
func nextPresenceEvent(t *testing.T, c *wsConn, timeout time.Duration) (action, id string) {
	t.Helper()
	typ, data, _, err := c.next(timeout)
	if err != nil || typ != "event" {
		t.Fatalf("want a presence event, got %s %s %v", typ, data, err)
	}
	var d struct {
		Events  []string `json:"events"`
		Payload struct {
			ID string `json:"$id"`
		} `json:"payload"`
	}
	if err := json.Unmarshal(data, &d); err != nil || len(d.Events) == 0 {
		t.Fatalf("event %s: %v", data, err)
	}
	parts := strings.Split(d.Events[0], ".")
	return parts[len(parts)-1], d.Payload.ID
}

// presenceIDs lists project p1's presences through n's admin API.
func presenceIDs(t *testing.T, n *node) []string {
	t.Helper()
	resp, err := http.Get("http://" + n.admin + "/v1/presences?project=p1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var l struct {
		Presences []struct {
			ID string `json:"$id"`
		} `json:"presences"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(b, &l) != nil {
		t.Fatalf("list: %d %s", resp.StatusCode, b)
	}
	var ids []string
	for _, p := range l.Presences {
		ids = append(ids, p.ID)
	}
	return ids
}

// TestPresenceAcrossNodes: two nodes on one real redis-server. A presence
// set on A is listed through B's admin API and announced to B's clients;
// a user connected to both stays present until both connections close;
// and when A is killed (SIGKILL: no drain, no goodbye) B's clients get the
// delete events of A's presences within the grace period.
func TestPresenceAcrossNodes(t *testing.T) {
	rs := redistest.Start(t)
	const grace = 2 * time.Second
	args := []string{"--redis-url", rs.URL(), "--auth", "jwt", "--jwt-secret", "fleet-secret", "--presence-grace", grace.String(), "--connects-per-ip", "-1"}
	a := startNode(t, args...)
	b := startNode(t, args...)
	waitReady(t, a, b)
	watcher := presenceClient(t, b, "watcher")

	// u1 on A: listed through B, announced on B.
	u1a := presenceClient(t, a, "u1")
	id1 := upsertPresence(t, u1a, "online")
	if action, id := nextPresenceEvent(t, watcher, 5*time.Second); action != "upsert" || id != id1 {
		t.Fatalf("watcher on B got %s %s, want upsert %s", action, id, id1)
	}
	if ids := presenceIDs(t, b); len(ids) != 1 || ids[0] != id1 {
		t.Fatalf("B lists %v, want [%s]", ids, id1)
	}

	// u2 on both nodes: one record; closing B's tab keeps it.
	u2a := presenceClient(t, a, "u2")
	u2b := presenceClient(t, b, "u2")
	id2 := upsertPresence(t, u2a, "online")
	if action, id := nextPresenceEvent(t, watcher, 5*time.Second); action != "upsert" || id != id2 {
		t.Fatalf("got %s %s, want upsert %s", action, id, id2)
	}
	if id := upsertPresence(t, u2b, "online"); id != id2 {
		t.Fatalf("u2's second tab got %s, want %s", id, id2)
	}
	if action, id := nextPresenceEvent(t, watcher, 5*time.Second); action != "upsert" || id != id2 {
		t.Fatalf("got %s %s, want upsert %s", action, id, id2)
	}
	u2b.conn.Close()
	// u3 on B, a presence that stays: the next event proves u2's did not end.
	u3b := presenceClient(t, b, "u3")
	id3 := upsertPresence(t, u3b, "online")
	if action, id := nextPresenceEvent(t, watcher, 5*time.Second); action != "upsert" || id != id3 {
		t.Fatalf("after u2's tab on B closed: got %s %s, want upsert %s (u2 still on A)", action, id, id3)
	}
	if ids := presenceIDs(t, a); len(ids) != 3 {
		t.Fatalf("A lists %v, want 3", ids)
	}

	// A dies. Its presences (u1; u2, whose only tab left was on A) are
	// deleted by B within the grace period, once each; u3's stays.
	killed := time.Now()
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for range 2 {
		action, id := nextPresenceEvent(t, watcher, 2*grace)
		if action != "delete" {
			t.Fatalf("after the kill: %s %s", action, id)
		}
		got[id]++
	}
	took := time.Since(killed)
	if got[id1] != 1 || got[id2] != 1 {
		t.Fatalf("delete events %v, want %s and %s once", got, id1, id2)
	}
	if took > grace {
		t.Fatalf("delete events came %v after the kill; grace is %v", took, grace)
	}
	t.Logf("delete events of the killed node's presences arrived %v after SIGKILL (grace %v)", took, grace)
	if ids := presenceIDs(t, b); len(ids) != 1 || ids[0] != id3 {
		t.Fatalf("B lists %v, want [%s]", ids, id3)
	}
	// Nothing more: no second delete from anyone.
	if typ, data, _, err := watcher.next(grace); err == nil {
		t.Fatalf("unexpected %s %s", typ, data)
	}
}

package main

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// TestPresenceFootprint measures what presences cost a node, for
// PRESENCE.md: RSS per connection holding a presence against the same
// connections without, the rate at which one node answers a burst of
// upserts (embedded and with Redis), and the Redis commands per second a
// node sends to keep its presences alive. It opens SWITCHBOARD_PRESENCE_CONNS
// (default 19,000) sockets per run, so it runs only when
// SWITCHBOARD_PRESENCE_BENCH=1:
//
//	SWITCHBOARD_PRESENCE_BENCH=1 go test -run TestPresenceFootprint -v -timeout 30m ./cmd/switchboard/
func TestPresenceFootprint(t *testing.T) {
	if os.Getenv("SWITCHBOARD_PRESENCE_BENCH") != "1" {
		t.Skip("set SWITCHBOARD_PRESENCE_BENCH=1 to run (opens 19,000 sockets per scenario)")
	}
	conns := 19000
	if v, err := strconv.Atoi(os.Getenv("SWITCHBOARD_PRESENCE_CONNS")); err == nil && v > 0 {
		conns = v
	}
	rs := redistest.Start(t)
	for _, sc := range []struct {
		name     string
		redis    bool
		presence bool
	}{
		{"embedded, no presence", false, false},
		{"embedded, a presence per connection", false, true},
		{"redis, no presence", true, false},
		{"redis, a presence per connection", true, true},
	} {
		t.Run(sc.name, func(t *testing.T) {
			args := []string{"--auth", "jwt", "--jwt-secret", "bench", "--connects-per-ip", "-1", "--messages-per-minute", "-1"}
			if sc.redis {
				args = append(args, "--redis-url", rs.URL())
			}
			n := startNode(t, args...)
			waitReady(t, n)
			if resp, err := http.Get("http://" + n.admin + "/debug/pprof/heap?gc=1"); err == nil {
				resp.Body.Close()
			}
			rssBefore := n.metric(t, "process_resident_memory_bytes")
			heapBefore := n.metric(t, "go_memstats_heap_inuse_bytes")
			clients := make([]*rawClient, 0, conns)
			defer func() {
				for _, c := range clients {
					c.conn.Close()
				}
			}()
			key := []byte("bench")
			exp := time.Now().Add(time.Hour).Unix()
			for i := range conns {
				tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u" + strconv.Itoa(i), "exp": exp}).SignedString(key)
				if err != nil {
					t.Fatal(err)
				}
				c, err := rawDial(n.addr, "project=p1&jwt="+tok)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				clients = append(clients, c)
			}
			if sc.presence {
				msg := []byte(`{"type":"presence","data":{"status":"online","metadata":{"page":"/docs/getting-started","device":"web"}}}`)
				start := time.Now()
				for i, c := range clients {
					if err := wsutil.WriteClientText(c.conn, msg); err != nil {
						t.Fatalf("client %d: %v", i, err)
					}
				}
				for i, c := range clients {
					if err := c.readUntil([]byte(`"to":"presence"`)); err != nil {
						t.Fatalf("client %d: %v", i, err)
					}
				}
				took := time.Since(start)
				t.Logf("%d upserts answered in %v: %.0f upserts/s", conns, took, float64(conns)/took.Seconds())
				if got := n.metric(t, "switchboard_presences"); got != float64(conns) {
					t.Fatalf("switchboard_presences = %v, want %d", got, conns)
				}
			}
			// A collection first (pprof's gc=1), so the heap figure is what
			// stays live, not the burst's garbage.
			if resp, err := http.Get("http://" + n.admin + "/debug/pprof/heap?gc=1"); err == nil {
				resp.Body.Close()
			}
			rssAfter := n.metric(t, "process_resident_memory_bytes")
			heapAfter := n.metric(t, "go_memstats_heap_inuse_bytes")
			t.Logf("RSS %+.0f bytes per connection at %d connections (live Go heap after a collection %+.0f)",
				(rssAfter-rssBefore)/float64(conns), conns, (heapAfter-heapBefore)/float64(conns))
			if sc.redis && sc.presence {
				window := 30 * time.Second
				before := redisCalls(t, rs.URL())
				time.Sleep(window)
				after := redisCalls(t, rs.URL())
				var parts []string
				total := 0.0
				for cmd, calls := range after {
					if d := calls - before[cmd]; d > 0 && cmd != "info" {
						parts = append(parts, cmd+"="+strconv.FormatFloat(float64(d)/window.Seconds(), 'f', 2, 64)+"/s")
						total += float64(d)
					}
				}
				t.Logf("Redis commands while holding %d presences for %v: %.2f/s in all (%s)", conns, window, total/window.Seconds(), strings.Join(parts, " "))
			}
		})
	}
}

// redisCalls reads INFO commandstats: calls per command.
func redisCalls(t *testing.T, url string) map[string]int64 {
	t.Helper()
	o, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	defer c.Close()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		calls, _, _ := strings.Cut(rest, ",")
		n, _ := strconv.ParseInt(calls, 10, 64)
		out[strings.TrimPrefix(name, "cmdstat_")] = n
	}
	return out
}

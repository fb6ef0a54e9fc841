package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/explain"
)

// redisNode starts a node whose backbone is the Redis at url.
func redisNode(t testing.TB, url string, mod func(*Config)) *Server {
	t.Helper()
	reg := prometheus.NewRegistry()
	b, err := broker.NewRedis(broker.RedisOptions{URL: url, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close() })
	s := testNode(t, func(c *Config) {
		c.Broker, c.Registry = b, reg
		if mod != nil {
			mod(c)
		}
	})
	redistest.Eventually(t, 10*time.Second, "node subscribed to Redis", func() bool { return b.Ready() == nil })
	return s
}

func readyStatus(t *testing.T, s *Server) int {
	t.Helper()
	code, _ := get(t, "http://"+s.AdminAddr().String()+"/readyz")
	return code
}

func TestThreeNodesShareRedis(t *testing.T) {
	rs := redistest.Start(t)
	nodes := []*Server{redisNode(t, rs.URL(), nil), redisNode(t, rs.URL(), nil), redisNode(t, rs.URL(), nil)}

	// Clients spread over the nodes: per node one that must receive, one
	// in another project and one on another channel.
	var want, others []*client
	for _, n := range nodes {
		c := dial(t, n, "project=p1&channels[]=files", nil)
		c.expect("connected")
		want = append(want, c)
		for _, q := range []string{"project=p2&channels[]=files", "project=p1&channels[]=documents"} {
			o := dial(t, n, q, nil)
			o.expect("connected")
			others = append(others, o)
		}
	}
	// Published on node 0's admin API, delivered on all three.
	publish(t, nodes[0], event("p1", []string{"any"}, []string{"files"}, `{"n":1}`))
	// Markers for the others, published on node 2.
	publish(t, nodes[2], event("p2", []string{"any"}, []string{"files"}, `{"marker":"p2"}`))
	publish(t, nodes[2], event("p1", []string{"any"}, []string{"documents"}, `{"marker":"documents"}`))
	for _, c := range want {
		c.expectPayload(`{"n":1}`)
	}
	for i, o := range others {
		if i%2 == 0 {
			o.expectPayload(`{"marker":"p2"}`)
		} else {
			o.expectPayload(`{"marker":"documents"}`)
		}
	}
	// No duplicates: the next thing each receiver sees is the next event.
	publish(t, nodes[1], event("p1", []string{"any"}, []string{"files"}, `{"n":2}`))
	for _, c := range want {
		c.expectPayload(`{"n":2}`)
	}
}

func TestRedisRestartKeepsClientsAndRecovers(t *testing.T) {
	rs := redistest.Start(t)
	nodes := []*Server{redisNode(t, rs.URL(), nil), redisNode(t, rs.URL(), nil)}
	var clients []*client
	for _, n := range nodes {
		c := dial(t, n, "project=p1&channels[]=files", nil)
		c.expect("connected")
		clients = append(clients, c)
	}
	rs.Kill()
	for i, n := range nodes {
		redistest.Eventually(t, 10*time.Second, fmt.Sprintf("node %d reports not ready", i), func() bool { return readyStatus(t, n) == http.StatusServiceUnavailable })
	}
	// Publishing during the outage is refused, not hung.
	if code, body := post(t, nodes[0], event("p1", []string{"any"}, []string{"files"}, `{}`), ""); code != http.StatusServiceUnavailable {
		t.Fatalf("publish during outage: %d %s", code, body)
	}
	// The WebSocket clients are untouched by the outage.
	for _, c := range clients {
		c.send(`{"type":"ping"}`)
		c.expect("pong")
	}
	rs.Start()
	for i, n := range nodes {
		redistest.Eventually(t, 15*time.Second, fmt.Sprintf("node %d ready again", i), func() bool { return readyStatus(t, n) == http.StatusOK })
	}
	publish(t, nodes[1], event("p1", []string{"any"}, []string{"files"}, `{"after":"restart"}`))
	for _, c := range clients {
		c.expectPayload(`{"after":"restart"}`)
	}
	for i, n := range nodes {
		if got := counterValue(t, n, "broker_reconnects_total"); got < 1 {
			t.Fatalf("node %d broker_reconnects_total = %v", i, got)
		}
	}
}

func TestGarbageOnTheRedisChannelIsCounted(t *testing.T) {
	rs := redistest.Start(t)
	n := redisNode(t, rs.URL(), nil)
	c := dial(t, n, "project=p1&channels[]=files", nil)
	c.expect("connected")
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	defer rc.Close()
	ctx := context.Background()
	huge := `{"project":"p1","roles":["any"],"data":{"channels":["files"],"payload":{"x":"` + strings.Repeat("y", 4<<20) + `"` // unterminated
	for _, g := range []string{"not json", `{"roles":["any"],"data":{"channels":["files"]}}`, `{"project":"p1","roles":[],"data":{"channels":["files"]}}`, huge, "\x00\xff"} {
		if err := rc.Publish(ctx, "realtime", g).Err(); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, n, event("p1", []string{"any"}, []string{"files"}, `{"valid":true}`))
	c.expectPayload(`{"valid":true}`)
	if got := counterValue(t, n, "broker_invalid_messages_total"); got != 5 {
		t.Fatalf("broker_invalid_messages_total = %v, want 5", got)
	}
	if got := counterValue(t, n, "broker_messages_total"); got != 6 {
		t.Fatalf("broker_messages_total = %v, want 6", got)
	}
}

// A permission change published on one node revokes a team role for the
// user's connections on every node.
func TestPermissionChangeAcrossNodes(t *testing.T) {
	rs := redistest.Start(t)
	backend := &mutableBackend{roles: map[string][]string{}}
	backend.set("u1", "team:t1")
	url := backend.start(t)
	var nodes []*Server
	for range 2 {
		nodes = append(nodes, redisNode(t, rs.URL(), func(c *Config) { c.Resolver = newHTTPResolver(t, url) }))
	}
	var u1 []*client
	for _, n := range nodes {
		c := dial(t, n, "project=p1&channels[]=documents", http.Header{"X-Appwrite-Session": {"s-u1"}})
		c.expect("connected")
		u1 = append(u1, c)
	}
	publish(t, nodes[0], event("p1", []string{"team:t1"}, []string{"documents"}, `{"n":1}`))
	for _, c := range u1 {
		c.expectPayload(`{"n":1}`)
	}
	backend.set("u1")
	publish(t, nodes[1], permissionChange("p1", "u1", []string{"team:t1"}, []string{"documents"}, `{"removed":"u1"}`))
	publish(t, nodes[0], event("p1", []string{"team:t1"}, []string{"documents"}, `{"n":2}`))
	publish(t, nodes[0], event("p1", []string{"user:u1"}, []string{"documents"}, `{"n":3}`))
	// Both nodes re-resolve u1 before they match the announcing event:
	// neither it nor the team's next event reaches u1.
	for _, c := range u1 {
		c.expectPayload(`{"n":3}`)
	}
}

func TestShardedClusterDeliversOnlyWhereWanted(t *testing.T) {
	cl := redistest.StartCluster(t)
	// Two projects in different partitions.
	const parts = 16
	pa, pb := "pa", "pb"
	for i := 0; broker.Partition(pa, parts) == broker.Partition(pb, parts); i++ {
		pb = fmt.Sprintf("pb%d", i)
	}
	shardedNode := func() (*Server, *prometheus.Registry) {
		reg := prometheus.NewRegistry()
		b, err := broker.NewRedisSharded(broker.RedisShardedOptions{RedisOptions: broker.RedisOptions{URL: cl.URL(), Registerer: reg}, Partitions: parts})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		s := testNode(t, func(c *Config) { c.Broker, c.Registry = b, reg })
		redistest.Eventually(t, 15*time.Second, "sharded node ready", func() bool { return b.Ready() == nil })
		return s, reg
	}
	a, _ := shardedNode()
	b, _ := shardedNode()
	ca := dial(t, a, "project="+pa+"&channels[]=files", nil)
	ca.expect("connected")
	cb := dial(t, b, "project="+pb+"&channels[]=files", nil)
	cb.expect("connected")
	// A new project's partition subscription is confirmed asynchronously:
	// probe until it is delivered.
	probe := func(n *Server, c *client, project string) {
		for i := 0; ; i++ {
			publish(t, n, event(project, []string{"any"}, []string{"files"}, fmt.Sprintf(`{"probe":%d}`, i)))
			if m, err := c.tryRead(300 * time.Millisecond); err == nil && m.Type == "event" {
				return
			}
			if i > 50 {
				t.Fatalf("project %s never delivered", project)
			}
		}
	}
	probe(b, ca, pa) // published on B, delivered on A
	probe(a, cb, pb)
	before := counterValue(t, b, "broker_messages_total")
	for i := 0; i < 5; i++ {
		publish(t, b, event(pa, []string{"any"}, []string{"files"}, fmt.Sprintf(`{"a":%d}`, i)))
	}
	for i := 0; i < 5; i++ {
		for {
			d := ca.expectEvent()
			if !strings.Contains(string(d.Payload), "probe") {
				if !jsonEqual(d.Payload, fmt.Sprintf(`{"a":%d}`, i)) {
					t.Fatalf("got %s, want a:%d", d.Payload, i)
				}
				break
			}
		}
	}
	// Node B holds no connection of project A: its broker never saw them.
	if got := counterValue(t, b, "broker_messages_total"); got != before {
		t.Fatalf("node B received %v messages for a project it does not serve", got-before)
	}
}

// clusterNode starts a node on the Redis at url with the dashboard's and
// the admin API's peers channels, as serve does with --redis-url.
func clusterNode(t *testing.T, url string, mod func(*Config)) *Server {
	t.Helper()
	peers := func(channel string) broker.Broker {
		b, err := broker.NewRedis(broker.RedisOptions{URL: url, Channel: channel, Buffer: 256})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = b.Close() })
		return b
	}
	return redisNode(t, url, func(c *Config) {
		c.Peers, c.AdminPeers = peers("realtime.nodes"), peers("realtime.admin")
		if mod != nil {
			mod(c)
		}
	})
}

// TestExplainAcrossTheCluster: two nodes on one Redis. Asked on either
// node, the connections list and explain cover both nodes' connections and
// say which nodes answered; explain is then compared with what the
// clients receive. A node that stops is named missing.
func TestExplainAcrossTheCluster(t *testing.T) {
	rs := redistest.Start(t)
	res := &teamResolver{teams: map[string]map[string]bool{"u1": {}}}
	mod := func(c *Config) { c.Resolver = res }
	a, b := clusterNode(t, rs.URL(), mod), clusterNode(t, rs.URL(), mod)
	both := []string{a.node, b.node}
	slices.Sort(both)
	for _, n := range []*Server{a, b} {
		redistest.Eventually(t, 10*time.Second, "the nodes hear each other", func() bool { return slices.Equal(n.dashboard.Nodes(), both) })
	}
	ua := dial(t, a, "project=p1&channels[]=docs", http.Header{"X-Appwrite-Session": {"s-u1"}})
	ub := dial(t, b, "project=p1&channels[]=files", http.Header{"X-Appwrite-Session": {"s-u1"}})
	gb := dial(t, b, "project=p1&channels[]=docs", nil)
	for _, c := range []*client{ua, ub, gb} {
		c.expect("connected")
	}

	// The list, asked on a, in pages of one: every connection of both
	// nodes once, in (node, id) order.
	var got []explain.Connection
	after := ""
	for range 5 {
		page := listConnections(t, a, "", "project=p1&limit=1&after="+url.QueryEscape(after))
		if !slices.Equal(page.Nodes.Answered, both) || len(page.Nodes.Missing) != 0 {
			t.Fatalf("nodes %+v", page.Nodes)
		}
		got = append(got, page.Connections...)
		if page.Next == "" {
			break
		}
		after = page.Next
	}
	if len(got) != 3 || !slices.IsSortedFunc(got, func(x, y explain.Connection) int { return explain.CompareConnIDs(x.Connection, y.Connection) }) {
		t.Fatalf("connections across the cluster: %+v", got)
	}
	var guest explain.Connection
	for _, c := range got {
		if c.UserID == "" {
			guest = c
		}
	}
	if guest.Node != b.node {
		t.Fatalf("the guest on %q, want b %q", guest.Node, b.node)
	}

	// u1's connections, asked on b: a's is on docs and receives, b's is
	// not on docs.
	ev := event("p1", []string{"user:u1"}, []string{"docs"}, `{"n":1}`)
	ans := explainRequest(t, b, "", map[string]any{"event": json.RawMessage(ev), "project": "p1", "userId": "u1"})
	if len(ans.Connections) != 2 || !slices.Equal(ans.Nodes.Answered, both) {
		t.Fatalf("explain for u1: %+v", ans)
	}
	for _, e := range ans.Connections {
		want := e.Node == a.node
		if e.Delivered != want || len(e.Subscriptions) != 1 || (!want && e.Subscriptions[0].Reason != explain.ChannelNotSubscribed) {
			t.Fatalf("explain for u1's connection on %s: %+v", e.Node, e)
		}
	}
	// The guest on b, by its id, asked on a: only b answers.
	ansG := explainRequest(t, a, "", map[string]any{"event": json.RawMessage(ev), "connection": guest.Connection})
	if len(ansG.Connections) != 1 || ansG.Connections[0].Subscriptions[0].Reason != explain.RoleNotHeld || !slices.Equal(ansG.Nodes.Answered, []string{b.node}) {
		t.Fatalf("explain for the guest: %+v", ansG)
	}
	publish(t, a, ev)
	publish(t, b, event("p1", []string{"any"}, []string{"docs", "files"}, `{"marker":1}`))
	ua.expectPayload(`{"n":1}`)
	ua.expectPayload(`{"marker":1}`)
	ub.expectPayload(`{"marker":1}`)
	gb.expectPayload(`{"marker":1}`)

	// b stops; a still believes it alive for a few seconds, waits out its
	// bound for it, and names it missing.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := b.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	page := listConnections(t, a, "", "project=p1")
	if len(page.Connections) != 1 || !slices.Equal(page.Nodes.Answered, []string{a.node}) {
		t.Fatalf("after b stopped: %+v", page)
	}
	if slices.Contains(a.dashboard.Nodes(), b.node) && !slices.Equal(page.Nodes.Missing, []string{b.node}) {
		t.Fatalf("b is believed alive but not named missing: %+v", page.Nodes)
	}
	t.Logf("asked with b gone: %v", time.Since(start).Round(time.Millisecond))
}

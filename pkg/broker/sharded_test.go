package broker

import (
	"context"
	"errors"
	"fmt"
	"github.com/switchboard-rt/switchboard/internal/redistest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func newTestSharded(t testing.TB, url string, n int) (*RedisSharded, *prometheus.Registry, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	reg := prometheus.NewRegistry()
	s, err := NewRedisSharded(RedisShardedOptions{
		RedisOptions: RedisOptions{URL: url, Logger: zap.New(core), Registerer: reg},
		Partitions:   n,
	})
	if err != nil {
		t.Fatalf("NewRedisSharded: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s, reg, logs
}

func waitSubscribed(t testing.TB, name string, reg *prometheus.Registry, partitions float64) {
	t.Helper()
	redistest.Eventually(t, 15*time.Second, fmt.Sprintf("%s is subscribed to %v partitions", name, partitions), func() bool {
		return metricValue(t, reg, "broker_subscribed_partitions") == partitions
	})
}

func TestRedisShardedPublishNeedsProject(t *testing.T) {
	// Refused before any I/O, so no cluster is needed.
	s, _, _ := newTestSharded(t, "redis://127.0.0.1:1", 8)
	for _, msg := range []string{
		`{"roles":["any"],"data":{"channels":["files"]}}`,
		`{"project":"","roles":["any"]}`,
		`{"project":42}`,
		`not json`,
		``,
	} {
		if err := s.Publish(context.Background(), []byte(msg)); !errors.Is(err, ErrNoProject) {
			t.Errorf("Publish(%q) = %v, want ErrNoProject", msg, err)
		}
	}
	if _, err := NewRedisSharded(RedisShardedOptions{}); err == nil {
		t.Error("NewRedisSharded without URL or Addrs succeeded")
	}
	if s.Partitions() != 8 {
		t.Errorf("Partitions() = %d", s.Partitions())
	}
}

// TestRedisShardedRoutesByProject runs two sharded nodes on a three-master
// cluster: each receives only the partitions of the projects it wants, and
// follows Want/Unwant.
func TestRedisShardedRoutesByProject(t *testing.T) {
	cl := redistest.StartCluster(t)

	// The smallest N that puts projects a and b in different partitions.
	n := 2
	for Partition("a", n) == Partition("b", n) {
		n++
	}
	chA, chB := ShardChannel(DefaultChannel, Partition("a", n)), ShardChannel(DefaultChannel, Partition("b", n))
	t.Logf("N=%d: project a -> %s, project b -> %s", n, chA, chB)

	nodeA, regA, _ := newTestSharded(t, cl.URL(), n)
	nodeB, regB, _ := newTestSharded(t, cl.URL(), n)
	if err := nodeA.Ready(); err == nil {
		t.Fatal("Ready is nil before Run")
	}
	nodeA.Want("a") // before Run: recorded, subscribed when Run starts
	msgsA, msgsB := runBroker(t, nodeA), runBroker(t, nodeB)
	nodeB.Want("b") // during Run
	waitReady(t, "node A", nodeA)
	waitReady(t, "node B", nodeB)
	// Ready does not wait for a partition's first subscription (that
	// would flap /readyz on each new project); the gauge does.
	waitSubscribed(t, "node A", regA, 1)
	waitSubscribed(t, "node B", regB, 1)

	raw := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{cl.Nodes[0].Addr()}})
	defer raw.Close()
	ctx := context.Background()
	// subscribers counts the shard subscribers of ch on the node owning
	// its slot (PUBSUB SHARDNUMSUB is node-local).
	subscribers := func(ch string) int64 {
		owner, err := raw.MasterForKey(ctx, ch)
		if err != nil {
			t.Fatalf("MasterForKey(%s): %v", ch, err)
		}
		counts, err := owner.PubSubShardNumSub(ctx, ch).Result()
		if err != nil {
			t.Fatalf("PUBSUB SHARDNUMSUB %s: %v", ch, err)
		}
		return counts[ch]
	}
	// spublish sends a raw SPUBLISH and checks how many subscribers Redis
	// delivered it to: the proof that no other node subscribed.
	spublish := func(ch, msg string, receivers int64) {
		t.Helper()
		got, err := raw.SPublish(ctx, ch, msg).Result()
		if err != nil {
			t.Fatalf("SPUBLISH %s: %v", ch, err)
		}
		if got != receivers {
			t.Fatalf("SPUBLISH %s reached %d subscribers, want %d", ch, got, receivers)
		}
	}
	msg := func(project, id string) string {
		return fmt.Sprintf(`{"project":%q,"roles":["any"],"data":{"channels":["files"],"payload":{"id":%q}}}`, project, id)
	}

	// Each project's messages reach only the node that wants it, whichever
	// node publishes them.
	publish(t, nodeB, msg("a", "a1"))
	publish(t, nodeA, msg("b", "b1"))
	publish(t, nodeA, msg("a", "a2"))
	spublish(chA, "probe-a", 1)
	spublish(chB, "probe-b", 1)
	expect(t, "node A", msgsA, msg("a", "a1"), msg("a", "a2"), "probe-a")
	expect(t, "node B", msgsB, msg("b", "b1"), "probe-b")
	expectNothingQueued(t, "node A", msgsA)
	expectNothingQueued(t, "node B", msgsB)
	if got := metricValue(t, regA, "broker_subscribed_partitions"); got != 1 {
		t.Errorf("node A broker_subscribed_partitions = %v, want 1", got)
	}

	// Node A's last "a" connection leaves and a "b" one arrives: A now
	// gets b's messages and nobody gets a's.
	nodeA.Unwant("a")
	nodeA.Want("b")
	redistest.Eventually(t, 10*time.Second, "node A moves from a's partition to b's", func() bool {
		return subscribers(chA) == 0 && subscribers(chB) == 2 && nodeA.Ready() == nil
	})
	publish(t, nodeB, msg("b", "b2"))
	if err := nodeB.Publish(ctx, []byte(msg("a", "a3"))); err != nil {
		t.Fatalf("Publish for a project nobody wants: %v", err)
	}
	spublish(chA, "probe-a2", 0)
	spublish(chB, "probe-b2", 2)
	expect(t, "node A", msgsA, msg("b", "b2"), "probe-b2")
	expect(t, "node B", msgsB, msg("b", "b2"), "probe-b2")
	expectNothingQueued(t, "node A", msgsA)
	expectNothingQueued(t, "node B", msgsB)

	// Wants are counted: two Wants need two Unwants; an extra Unwant is
	// ignored.
	nodeB.Want("b")
	nodeB.Unwant("b")
	nodeB.Unwant("a")
	if got := subscribers(chB); got != 2 {
		t.Errorf("after Want+Unwant on a wanted project, %s has %d subscribers, want 2", chB, got)
	}
	if got := metricValue(t, regA, "broker_connected"); got != 1 {
		t.Errorf("node A broker_connected = %v, want 1", got)
	}

	// A message without a project cannot be routed.
	if err := nodeA.Publish(ctx, []byte(`{"roles":["any"],"data":{"channels":["files"]}}`)); !errors.Is(err, ErrNoProject) {
		t.Errorf("Publish without project = %v, want ErrNoProject", err)
	}
}

// TestRedisShardedResubscribesAfterNodeRestart kills the master that owns a
// wanted partition and starts it again on the same port (it rejoins from its
// nodes file): the node reports not ready meanwhile, then resubscribes.
func TestRedisShardedResubscribesAfterNodeRestart(t *testing.T) {
	cl := redistest.StartCluster(t)
	const n = 4
	node, reg, _ := newTestSharded(t, cl.URL(), n)
	node.Want("a")
	msgs := runBroker(t, node)
	waitReady(t, "node", node)
	waitSubscribed(t, "node", reg, 1)

	ch := ShardChannel(DefaultChannel, Partition("a", n))
	raw := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{cl.Nodes[0].Addr()}})
	defer raw.Close()
	owner, err := raw.MasterForKey(context.Background(), ch)
	if err != nil {
		t.Fatal(err)
	}
	var victim *redistest.Server
	for _, s := range cl.Nodes {
		if s.Addr() == owner.Options().Addr {
			victim = s
		}
	}
	if victim == nil {
		t.Fatalf("no test server at %s, the owner of %s", owner.Options().Addr, ch)
	}

	victim.Kill()
	redistest.Eventually(t, 10*time.Second, "Ready reports the lost partition", func() bool { return node.Ready() != nil })
	if got := metricValue(t, reg, "broker_subscribed_partitions"); got != 0 {
		t.Errorf("broker_subscribed_partitions = %v during the outage", got)
	}
	victim.Start()
	waitReady(t, "node after the restart", node)
	waitSubscribed(t, "node after the restart", reg, 1)
	if got := metricValue(t, reg, "broker_reconnects_total"); got != 1 {
		t.Errorf("broker_reconnects_total = %v, want 1", got)
	}
	m := `{"project":"a","roles":["any"],"data":{"channels":["files"]}}`
	// The restarted master may still be catching up on cluster state
	// (CLUSTERDOWN) for a moment: retry the publish until it is accepted.
	redistest.Eventually(t, 10*time.Second, "a publish after the restart is accepted", func() bool {
		return node.Publish(context.Background(), []byte(m)) == nil
	})
	expect(t, "node", msgs, m)
}

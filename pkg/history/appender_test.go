package history

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// node is one Switchboard node's history side: its store handle, lease
// and appender.
type node struct {
	r *Redis
	l *Lease
	a *Appender
}

// newRedisClient starts a redis-server for the test and connects to it.
func newRedisClient(t testing.TB) *redis.Client {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	t.Cleanup(func() { c.Close() })
	return c
}

func newNode(t *testing.T, c redis.UniversalClient, prefix, id string, ttl time.Duration, ring int) *node {
	r, err := NewRedis(RedisOptions{Client: c, Prefix: prefix, Node: id, Config: Config{Window: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	l := NewLease(r, ttl)
	return &node{r: r, l: l, a: NewAppender(r, l, ring)}
}

func (n *node) tick(t *testing.T) {
	t.Helper()
	if err := n.l.Tick(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// feed offers the same messages, in the same order, to every node alive:
// what one Pub/Sub channel does.
func feed(t *testing.T, msgs [][]byte, nodes ...*node) {
	t.Helper()
	for _, m := range msgs {
		for _, n := range nodes {
			if err := n.a.Offer(context.Background(), "p", m); err != nil {
				t.Fatalf("%s offer: %v", n.r.node, err)
			}
		}
	}
}

// stream reads the whole of project p's stream as the messages' text.
func stream(t *testing.T, c redis.UniversalClient, r *Redis) []string {
	t.Helper()
	xs, err := c.XRange(context.Background(), r.StreamKey("p"), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, x := range xs {
		out = append(out, fmt.Sprint(x.Values["d"]))
	}
	return out
}

// positions returns the positions of project p's stream, oldest first.
func positions(t *testing.T, c redis.UniversalClient, r *Redis) []Position {
	t.Helper()
	var out []Position
	for _, x := range c.XRange(context.Background(), r.StreamKey("p"), "-", "+").Val() {
		pos, err := ParsePosition(x.ID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pos)
	}
	return out
}

// wantGap checks that project p's history has a gap between the positions
// before and after: incomplete from before, and from after exactly rest.
func wantGap(t *testing.T, r *Redis, before, after Position, rest []string) {
	t.Helper()
	if got, ok := since(t, r, "p", before, 100); ok {
		t.Fatalf("complete across the gap: %q", got)
	}
	if got, ok := since(t, r, "p", after, 100); !ok || !same(got, rest) {
		t.Fatalf("after the gap: %v %q, want %q", ok, got, rest)
	}
}

func msgs(from, to int) [][]byte {
	var m [][]byte
	for i := from; i <= to; i++ {
		m = append(m, event("p", i, 80))
	}
	return m
}

func texts(m [][]byte) []string { return want(m...) }

// TestAppenderOneLeaderAndFailover: of two nodes fed the same messages only
// the lease holder writes; when it dies, the other takes over after the
// lease lapses and, from its ring, appends what was published meanwhile:
// every event exactly once, in order, and no gap (the bound when the ring
// spans the hand-over: 0 lost, 0 duplicated).
func TestAppenderOneLeaderAndFailover(t *testing.T) {
	c := newRedisClient(t)
	// Long enough that b's first tick, after a few round trips, surely
	// comes before the lapse, even on a loaded machine.
	ttl := time.Second
	a := newNode(t, c, "fo", "a", ttl, 64)
	b := newNode(t, c, "fo", "b", ttl, 64)
	a.tick(t)
	b.tick(t)
	if !a.l.Held(0) || b.l.Held(0) {
		t.Fatalf("held: a %v, b %v", a.l.Held(0), b.l.Held(0))
	}
	all := msgs(1, 12)
	feed(t, all[:5], a, b)
	if got := stream(t, c, a.r); !same(got, texts(all[:5])) {
		t.Fatalf("with one leader: %q", got)
	}
	first, _ := ParsePosition(c.XRange(context.Background(), a.r.StreamKey("p"), "-", "+").Val()[1].ID)

	// a dies (no more ticks, no more offers); b alone hears 6..9 and,
	// while a's lease lives, writes nothing.
	feed(t, all[5:9], b)
	if got := stream(t, c, a.r); len(got) != 5 {
		t.Fatalf("a follower wrote: %q", got)
	}
	b.tick(t)
	if b.l.Held(0) {
		t.Fatal("b took a lease that had not lapsed")
	}
	time.Sleep(ttl + 50*time.Millisecond)
	b.tick(t)
	if !b.l.Held(0) {
		t.Fatal("b did not take the lapsed lease")
	}
	feed(t, all[9:], b)
	if got := stream(t, c, b.r); !same(got, texts(all)) {
		t.Fatalf("after the failover:\n got %q\nwant %q", got, texts(all))
	}
	// No gap: a reader from before the failover is served in full.
	got, ok := since(t, b.r, "p", first, 100)
	if !ok || !same(got, texts(all[2:])) {
		t.Fatalf("since before the failover: %v %q", ok, got)
	}
}

// TestAppenderFailoverBeyondRing: when the successor's ring no longer
// holds the last appended event, what was published during the hand-over
// is lost from history and a gap says so: readers from before it get
// incomplete, readers after it are served.
func TestAppenderFailoverBeyondRing(t *testing.T) {
	c := newRedisClient(t)
	ttl := 200 * time.Millisecond
	a := newNode(t, c, "fr", "a", ttl, 64)
	b := newNode(t, c, "fr", "b", ttl, 2)
	b.a.resyncWait = 0 // the gap at once (TestAppenderSuccessorBehind waits)
	a.tick(t)
	all := msgs(1, 10)
	feed(t, all[:3], a, b)
	feed(t, all[3:7], b) // a is dead; b's ring of 2 keeps only 6 and 7
	time.Sleep(ttl + 50*time.Millisecond)
	b.tick(t)
	feed(t, all[7:], b)
	want := append(texts(all[:3]), texts(all[7:])...)
	if got := stream(t, c, b.r); !same(got, want) {
		t.Fatalf("stream:\n got %q\nwant %q", got, want)
	}
	pos := positions(t, c, b.r)
	wantGap(t, b.r, pos[2], pos[3], texts(all[8:])) // between 3 and 8
}

// TestAppenderFenced: a node that wrongly believes it leads (its clock, a
// pause) cannot write: Redis checks the lease on every append.
func TestAppenderFenced(t *testing.T) {
	c := newRedisClient(t)
	a := newNode(t, c, "fe", "a", time.Minute, 64)
	b := newNode(t, c, "fe", "b", time.Minute, 64)
	a.tick(t)
	b.l.until[0] = time.Now().Add(time.Hour) // b's mistaken belief
	feed(t, msgs(1, 3), a, b)
	if got := stream(t, c, a.r); !same(got, texts(msgs(1, 3))) {
		t.Fatalf("stream: %q", got)
	}
	if _, err := b.r.Append(context.Background(), "p", []byte("x")); !errors.Is(err, ErrNotLeader) {
		t.Fatalf("append without the lease: %v", err)
	}
}

// TestAppenderFeedLost: a leader whose subscription missed messages
// records a gap at its next append; the stream cannot pretend to be whole.
func TestAppenderFeedLost(t *testing.T) {
	c := newRedisClient(t)
	a := newNode(t, c, "fl", "a", time.Minute, 64)
	a.tick(t)
	feed(t, msgs(1, 2), a)
	a.a.FeedLost()
	feed(t, msgs(4, 5), a) // 3 was missed
	pos := positions(t, c, a.r)
	wantGap(t, a.r, pos[1], pos[2], texts(msgs(5, 5))) // between 2 and 4
}

// TestLeaseRelease: a draining leader releases; the successor takes over
// at its next tick, not after the TTL, and no read sees a gap.
func TestLeaseRelease(t *testing.T) {
	c := newRedisClient(t)
	a := newNode(t, c, "rl", "a", time.Minute, 64)
	b := newNode(t, c, "rl", "b", time.Minute, 64)
	a.tick(t)
	all := msgs(1, 6)
	feed(t, all[:3], a, b)
	ctx := context.Background()
	a.l.Release(ctx)
	feed(t, all[3:4], b) // published between the release and b's tick
	b.tick(t)
	if !b.l.Held(0) || a.l.Held(0) {
		t.Fatal("the lease did not move at once")
	}
	feed(t, all[4:], b)
	if got := stream(t, c, b.r); !same(got, texts(all)) {
		t.Fatalf("stream: %q", got)
	}
	first, _ := ParsePosition(c.XRange(ctx, b.r.StreamKey("p"), "-", "+").Val()[0].ID)
	if got, ok := since(t, b.r, "p", first, 10); !ok || !same(got, texts(all[1:])) {
		t.Fatalf("since the first: %v %q", ok, got)
	}
}

// TestAppenderSuccessorBehind: a successor whose feed runs behind its
// predecessor's (a loaded node) does not record a gap when it takes over:
// it waits until its feed brings the last event history holds, then
// appends what follows it. Every event once, in order, no gap. When the
// feed never brings it, the gap comes after DefaultResyncWait.
func TestAppenderSuccessorBehind(t *testing.T) {
	c := newRedisClient(t)
	a := newNode(t, c, "sb", "a", time.Minute, 64)
	b := newNode(t, c, "sb", "b", time.Minute, 64)
	a.tick(t)
	all := msgs(1, 12)
	feed(t, all[:8], a) // a appended 1..8
	feed(t, all[:5], b) // b's feed has brought only 1..5
	a.l.Release(context.Background())
	b.tick(t)
	feed(t, all[5:6], b) // 6: b leads, history stands at 8, not in b's ring yet
	if got := stream(t, c, b.r); !same(got, texts(all[:8])) {
		t.Fatalf("while behind: %q", got)
	}
	// Still behind past the first second: its newest event (6) is in
	// history, so it keeps waiting rather than yield the lease.
	b.a.resyncWait = 2 * time.Second
	b.a.rings[0].awaitUntil = time.Now().Add(-time.Millisecond)
	feed(t, all[6:7], b) // 7
	if !b.l.Held(0) {
		t.Fatal("b yielded the lease though its feed was only behind")
	}
	feed(t, all[7:], b) // 8..12: 8 arrives, then 9.. are appended
	if got := stream(t, c, b.r); !same(got, texts(all)) {
		t.Fatalf("after catching up:\n got %q\nwant %q", got, texts(all))
	}
	first, _ := ParsePosition(c.XRange(context.Background(), b.r.StreamKey("p"), "-", "+").Val()[0].ID)
	if got, ok := since(t, b.r, "p", first, 100); !ok || !same(got, texts(all[1:])) {
		t.Fatalf("since the first: %v %q", ok, got)
	}

	// A feed that never brings it (a node started after it): the lease
	// is yielded once, for a node that has it; taken again with still
	// nobody having it, the gap comes after the wait.
	d := newNode(t, c, "sb", "d", 100*time.Millisecond, 64)
	d.a.resyncWait = 50 * time.Millisecond
	feed(t, msgs(13, 14), b) // b appends 13, 14; d never hears them
	b.l.Release(context.Background())
	d.tick(t)
	feed(t, msgs(15, 15), d)
	time.Sleep(60 * time.Millisecond)
	feed(t, msgs(16, 16), d)
	if d.l.Held(0) {
		t.Fatal("d kept a lease it could not continue")
	}
	time.Sleep(250 * time.Millisecond)
	d.tick(t)
	if !d.l.Held(0) {
		t.Fatal("d did not take the lease again after yielding")
	}
	feed(t, msgs(17, 17), d)
	time.Sleep(60 * time.Millisecond)
	feed(t, msgs(18, 18), d)
	pos := positions(t, c, d.r)
	if n := len(stream(t, c, d.r)); n != 15 {
		t.Fatalf("%d events in history, want 1..14 and 18", n)
	}
	wantGap(t, d.r, pos[13], pos[14], nil)
}

// TestAppenderBridgesAtOnce: a new leader appends what its feed holds
// after history's last event as soon as it leads (Bridge, run by the
// Feed), not at the next event: after a drain the project may be quiet.
func TestAppenderBridgesAtOnce(t *testing.T) {
	c := newRedisClient(t)
	a := newNode(t, c, "bg", "a", time.Minute, 64)
	b := newNode(t, c, "bg", "b", time.Minute, 64)
	a.tick(t)
	all := msgs(1, 7)
	feed(t, all[:5], a, b)
	feed(t, all[5:], b) // a's router had stopped: it never appended 6, 7
	a.l.Release(context.Background())
	b.tick(t)
	if err := b.a.Bridge(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := stream(t, c, b.r); !same(got, texts(all)) {
		t.Fatalf("after the bridge:\n got %q\nwant %q", got, texts(all))
	}
	first, _ := ParsePosition(c.XRange(context.Background(), b.r.StreamKey("p"), "-", "+").Val()[0].ID)
	if got, ok := since(t, b.r, "p", first, 100); !ok || !same(got, texts(all[1:])) {
		t.Fatalf("since the first: %v %q", ok, got)
	}
	// Nothing more to bridge: a second call appends nothing.
	if err := b.a.Bridge(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(stream(t, c, b.r)); n != len(all) {
		t.Fatalf("%d events after a second bridge", n)
	}
}

// handOver is what Feed's hand-over does with a's partition 0, the
// broker in between played by the test: a publishes a mark, and every
// node alive hears it in its place in the feed (after what was fed so
// far). It reports whether a sealed.
func handOver(t *testing.T, a *node, alive ...*node) bool {
	t.Helper()
	ctx := context.Background()
	ps := a.a.Sealable(ctx)
	if len(ps) == 0 {
		return false
	}
	id := a.a.NewMark(ps[0])
	for _, n := range append([]*node{a}, alive...) {
		if _, err := n.a.Mark(ctx, 0, id); err != nil {
			t.Fatalf("%s: mark: %v", n.r.node, err)
		}
	}
	return !a.l.Held(0)
}

// TestAppenderHandsOverWithAMark: a rolling deploy while the project is
// quiet. The leader a appended 1..3; b starts after them, so its ring
// never holds history's last event. When a drains it hands the lease
// over with a mark (handOver), which b hears: b continues history right
// after the mark, with no gap, and can hand over to c in turn, though c
// never heard any event before it led. A node that started after the
// mark (d) cannot prove it heard everything since, and records the gap.
func TestAppenderHandsOverWithAMark(t *testing.T) {
	c := newRedisClient(t)
	a := newNode(t, c, "ho", "a", time.Minute, 64)
	a.tick(t)
	feed(t, msgs(1, 3), a)
	b := newNode(t, c, "ho", "b", time.Minute, 64)
	if !handOver(t, a, b) {
		t.Fatal("a, leading with history whole, did not seal")
	}
	b.tick(t)
	if !b.l.Held(0) {
		t.Fatal("b did not take the lease a gave up")
	}
	// Quiet: b bridges on its tick with nothing to append, and then
	// holds history whole from the mark on.
	if err := b.a.Bridge(context.Background()); err != nil {
		t.Fatal(err)
	}
	cn := newNode(t, c, "ho", "c", time.Minute, 64)
	if !handOver(t, b, cn) {
		t.Fatal("b, which heard a's mark, did not seal in turn")
	}
	cn.tick(t)
	feed(t, msgs(4, 5), cn, a, b)
	if got := stream(t, c, cn.r); !same(got, texts(msgs(1, 5))) {
		t.Fatalf("stream:\n got %q\nwant %q", got, texts(msgs(1, 5)))
	}
	pos := positions(t, c, cn.r)
	if got, ok := since(t, cn.r, "p", pos[0], 100); !ok || !same(got, texts(msgs(2, 5))) {
		t.Fatalf("since 1, across two hand-overs: %v %q", ok, got)
	}

	// d starts after c led: c dies without a hand-over (its lease is
	// given up, no mark), and d has nothing to continue from.
	d := newNode(t, c, "ho", "d", 50*time.Millisecond, 64)
	d.a.resyncWait = 0
	cn.l.Release(context.Background())
	d.tick(t)
	feed(t, msgs(6, 6), d)
	pos = positions(t, c, d.r)
	wantGap(t, d.r, pos[4], pos[5], nil)
}

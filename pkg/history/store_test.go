package history

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// harness is one store under the shared table, with its clock.
type harness struct {
	s Store
	// advance moves the store's clock on (Memory) or waits (Redis).
	advance func(time.Duration)
	// gap declares that the feed lost events just now.
	gap func()
	// held is the bytes the store counts (the whole store, or the
	// partition of project).
	held func(project string) int64
	// overhead is what the store counts per event beside its bytes.
	overhead int64
	// virtual: advance moves a clock of the test's own.
	virtual bool
	// reopen returns a reader of the same history with nothing cached:
	// another node's view.
	reopen func() Reader
}

// newStore makes an empty store bounded by cfg.
type newStore func(t *testing.T, cfg Config) harness

// event is a distinct message of about n bytes.
func event(project string, i, n int) []byte {
	b := fmt.Appendf(nil, `{"project":%q,"roles":["any"],"data":{"channels":["files"],"payload":{"i":%d,"pad":"`, project, i)
	for len(b) < n-4 {
		b = append(b, 'x')
	}
	return append(b, `"}}}`...)
}

func mustAppend(t *testing.T, s Store, project string, data []byte) Position {
	t.Helper()
	pos, err := s.Append(context.Background(), project, data)
	if err != nil {
		t.Fatalf("append to %s: %v", project, err)
	}
	return pos
}

// since reads everything after pos and returns the events' i and
// completeness.
func since(t *testing.T, s Store, project string, after Position, limit int) ([]string, bool) {
	t.Helper()
	evs, complete, err := s.Since(context.Background(), project, after, limit)
	if err != nil {
		t.Fatalf("since %s %s: %v", project, after, err)
	}
	var got []string
	prev := after
	for _, e := range evs {
		if !prev.Less(e.Pos) {
			t.Fatalf("since %s %s: %s does not come after %s", project, after, e.Pos, prev)
		}
		prev = e.Pos
		got = append(got, string(e.Data))
	}
	return got, complete
}

// justBefore is the greatest position before p.
func justBefore(p Position) Position {
	if p.Seq == 0 {
		return Position{MS: p.MS - 1, Seq: ^uint64(0)}
	}
	return Position{MS: p.MS, Seq: p.Seq - 1}
}

func want(evs ...[]byte) []string {
	var s []string
	for _, e := range evs {
		s = append(s, string(e))
	}
	return s
}

func same(a, b []string) bool { return fmt.Sprint(a) == fmt.Sprint(b) }

// testStore runs the behaviours both stores share.
func testStore(t *testing.T, mk newStore) {
	long := Config{Window: time.Minute, MaxProjectBytes: 1 << 20, MaxBytes: 1 << 22}

	t.Run("OrderAndProjects", func(t *testing.T) {
		h := mk(t, long)
		e1, e2, e3, q1 := event("p", 1, 100), event("p", 2, 100), event("p", 3, 100), event("q", 1, 100)
		p1 := mustAppend(t, h.s, "p", e1)
		p2 := mustAppend(t, h.s, "p", e2)
		mustAppend(t, h.s, "q", q1)
		p3 := mustAppend(t, h.s, "p", e3)
		if !p1.Less(p2) || !p2.Less(p3) {
			t.Fatalf("positions do not grow: %s %s %s", p1, p2, p3)
		}
		if got, ok := since(t, h.s, "p", p1, 10); !ok || !same(got, want(e2, e3)) {
			t.Fatalf("since p1: %v %q", ok, got)
		}
		if got, ok := since(t, h.s, "p", p1, 1); !ok || !same(got, want(e2)) {
			t.Fatalf("since p1, limit 1: %v %q", ok, got)
		}
		if got, ok := since(t, h.s, "p", p3, 10); !ok || len(got) != 0 {
			t.Fatalf("since the newest: %v %q", ok, got)
		}
		// Another project's position orders against this one's.
		if got, ok := since(t, h.s, "q", p1, 10); !ok || !same(got, want(q1)) {
			t.Fatalf("q since p1: %v %q", ok, got)
		}
		// A project with nothing held, asked from inside the history.
		if got, ok := since(t, h.s, "none", p1, 10); !ok || len(got) != 0 {
			t.Fatalf("empty project: %v %q", ok, got)
		}
		// Before the history began, nothing can be proved.
		if got, ok := since(t, h.s, "p", Position{MS: p1.MS - 1}, 10); ok || len(got) != 0 {
			t.Fatalf("before the start: %v %q", ok, got)
		}
	})

	t.Run("Window", func(t *testing.T) {
		w := time.Second
		h := mk(t, Config{Window: w, MaxProjectBytes: 1 << 20, MaxBytes: 1 << 22})
		a := mustAppend(t, h.s, "p", event("p", 1, 100))
		h.advance(w / 2)
		c := mustAppend(t, h.s, "q", event("q", 1, 100))
		h.advance(w / 5)
		b := event("p", 2, 100)
		mustAppend(t, h.s, "p", b)
		h.advance(w/2 + 50*time.Millisecond) // a is out, c and b are in
		if got, ok := since(t, h.s, "p", a, 10); ok || len(got) != 0 {
			t.Fatalf("since an expired position: %v %q", ok, got)
		}
		// Redis's clock is the wall clock: a late wake-up may have taken
		// c out of the window too, which is no failure of the store.
		if inside := time.Now().UnixMilli()-int64(c.MS) < w.Milliseconds()-20 || h.virtual; inside {
			if got, ok := since(t, h.s, "p", c, 10); !ok || !same(got, want(b)) {
				t.Fatalf("since a position inside the window: %v %q", ok, got)
			}
		} else {
			t.Logf("the clock ran %d ms past c: not checked", time.Now().UnixMilli()-int64(c.MS))
		}
		before := h.held("p")
		h.advance(w)
		mustAppend(t, h.s, "r", event("r", 1, 100)) // trims the rest
		if after := h.held("p"); after >= before {
			t.Fatalf("held %d bytes after the window, %d before", after, before)
		}
	})

	t.Run("ProjectCap", func(t *testing.T) {
		// Room for three 200-byte events with their overhead, not four
		// (the first store only tells the overhead).
		h := mk(t, Config{Window: time.Minute, MaxProjectBytes: 1 << 20, MaxBytes: 1 << 22})
		h = mk(t, Config{Window: time.Minute, MaxProjectBytes: 4*(200+h.overhead) - 1, MaxBytes: 1 << 22})
		var pos []Position
		var evs [][]byte
		for i := range 6 {
			evs = append(evs, event("p", i, 200))
			pos = append(pos, mustAppend(t, h.s, "p", evs[i]))
		}
		mustAppend(t, h.s, "q", event("q", 1, 200)) // another project keeps its own
		if got, ok := since(t, h.s, "p", pos[1], 10); ok || len(got) != 0 {
			t.Fatalf("since an evicted event's predecessor: %v %q", ok, got)
		}
		got, ok := since(t, h.s, "p", pos[2], 10)
		if !ok || len(got) < 2 || !same(got[len(got)-2:], want(evs[4], evs[5])) {
			t.Fatalf("since the floor: %v %q", ok, got)
		}
		if held := h.held("p"); held > 1<<22 {
			t.Fatalf("held %d", held)
		}
	})

	t.Run("ManyProjectsBounded", func(t *testing.T) {
		capBytes := int64(8 * (300 + mk(t, long).overhead))
		h := mk(t, Config{Window: time.Minute, MaxProjectBytes: 1 << 20, MaxBytes: capBytes})
		var first, last Position
		for i := range 200 {
			p := "proj" + strconv.Itoa(i)
			pos := mustAppend(t, h.s, p, event(p, i, 300))
			if i == 0 {
				first = pos
			}
			if i == 198 {
				last = pos
			}
			if held := h.held(p); held > capBytes {
				t.Fatalf("after %d projects: %d bytes held, cap %d", i+1, held, capBytes)
			}
		}
		if got, ok := since(t, h.s, "proj0", Position{MS: first.MS, Seq: first.Seq}, 10); ok && len(got) != 0 {
			t.Fatalf("the oldest project still reads: %q", got)
		}
		if got, ok := since(t, h.s, "proj0", justBefore(first), 10); ok {
			t.Fatalf("the oldest project's evicted event reads as complete: %q", got)
		}
		if got, ok := since(t, h.s, "proj199", last, 10); !ok || !same(got, want(event("proj199", 199, 300))) {
			t.Fatalf("the newest project: %v %q", ok, got)
		}
	})

	t.Run("Gap", func(t *testing.T) {
		h := mk(t, long)
		a := mustAppend(t, h.s, "p", event("p", 1, 100))
		h.gap()
		b := event("p", 2, 100)
		pb := mustAppend(t, h.s, "p", b)
		if got, ok := since(t, h.s, "p", a, 10); ok || len(got) != 0 {
			t.Fatalf("across a gap: %v %q", ok, got)
		}
		c := event("p", 3, 100)
		mustAppend(t, h.s, "p", c)
		if got, ok := since(t, h.s, "p", pb, 10); !ok || !same(got, want(c)) {
			t.Fatalf("after the gap: %v %q", ok, got)
		}
	})
}

// fakeClock is a settable clock for Memory.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newMemoryHarness(t *testing.T, cfg Config) harness {
	c := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	m := NewMemory(cfg, c.now)
	return harness{s: m, advance: c.advance, gap: m.Gap, held: func(string) int64 { return m.Bytes() }, overhead: entryOverhead, virtual: true,
		reopen: func() Reader { return m }}
}

func TestMemoryStore(t *testing.T) { testStore(t, newMemoryHarness) }

func TestMemoryReadFrom(t *testing.T) { testReadFrom(t, newMemoryHarness) }

// TestMemorySameMillisecond: positions stay strictly ordered when the
// clock does not move, or moves back.
func TestMemorySameMillisecond(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	m := NewMemory(Config{}, c.now)
	a := mustAppend(t, m, "p", []byte("a"))
	c.advance(-time.Second)
	b := mustAppend(t, m, "p", []byte("b"))
	if !a.Less(b) {
		t.Fatalf("%s then %s", a, b)
	}
}

// redisHarness makes a Redis store under a fresh prefix on client, whose
// node holds every lease.
func redisHarness(client redis.UniversalClient, partitions int) newStore {
	var n int
	return func(t *testing.T, cfg Config) harness {
		n++
		opts := RedisOptions{Client: client, Prefix: fmt.Sprintf("t%d-%s", n, t.Name()), Partitions: partitions, Node: "n1", Config: cfg}
		r, err := NewRedis(opts)
		if err != nil {
			t.Fatal(err)
		}
		l := NewLease(r, time.Minute)
		if err := l.Tick(context.Background()); err != nil {
			t.Fatal(err)
		}
		return harness{
			s:        r,
			overhead: redisOverhead,
			advance:  time.Sleep,
			gap: func() {
				// What the Appender does after FeedLost: the next append
				// of the partition records the gap.
				if _, err := r.append(context.Background(), "p", []byte("gap"), "*", 1); err != nil {
					t.Fatal(err)
				}
			},
			held: func(project string) int64 {
				b, _ := client.HGet(context.Background(), r.tag(r.PartitionOf(project))+"p", "b").Int64()
				return b
			},
			reopen: func() Reader {
				r2, err := NewRedis(opts)
				if err != nil {
					t.Fatal(err)
				}
				return r2
			},
		}
	}
}

func TestRedisStore(t *testing.T) {
	testStore(t, redisHarness(newRedisClient(t), 0))
}

func TestRedisReadFrom(t *testing.T) {
	testReadFrom(t, redisHarness(newRedisClient(t), 0))
}

// TestRedisClusterStore runs the table on a three-master cluster with the
// sharded broker's partitions: every key of a project shares the slot of
// its sharded channel, or the scripts would fail with CROSSSLOT.
func TestRedisClusterStore(t *testing.T) {
	cl := redistest.StartCluster(t)
	c := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{cl.Nodes[0].Addr()}})
	defer c.Close()
	// One partition, so that the whole-store cap of the table holds.
	testStore(t, redisHarness(c, 1))
	t.Run("ReadFrom", func(t *testing.T) { testReadFrom(t, redisHarness(c, 16)) })
	t.Run("Records", func(t *testing.T) { testRecords(t, redisRecordsHarness(c, 16)) })

	r, err := NewRedis(RedisOptions{Client: c, Partitions: 16, Node: "n1"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, project := range []string{"a", "b", "console", "6650f1e2"} {
		p := r.PartitionOf(project)
		chSlot, err := c.ClusterKeySlot(ctx, "realtime:{"+strconv.Itoa(p)+"}").Result()
		if err != nil {
			t.Fatal(err)
		}
		rs, err := NewRedisRecords(RedisRecordsOptions{Client: c, Partitions: 16})
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{r.StreamKey(project), r.LeaseKey(p), rs.RecordKey(project, "6650f1e2a3b4c5d")} {
			if s, _ := c.ClusterKeySlot(ctx, k).Result(); s != chSlot {
				t.Fatalf("%s in slot %d, its sharded channel in %d", k, s, chSlot)
			}
		}
	}
}

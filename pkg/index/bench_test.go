package index

import (
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The benchmark world reproduces the seed's fan-out table: N subscriptions
// (connection, channel pairs) of one project, spread exactly evenly over 20
// channels, and the time to hand every recipient of one event to a callback,
// as the router does.
//
// Each connection subscribes to benchChans (4) distinct channels, so N
// subscriptions are N/4 connections and every channel has N/20
// subscribers. Roles, as a resolver hands them out:
//
//   - one connection in five is a guest: guests;
//   - the others are signed in: users, user:<own id>, and 0, 1 or 2 team:T
//     roles (a third each), out of conns/100+1 teams, so a team has about
//     80 connections.
//
// ("any" is never a connection role: an event carrying it matches every
// connection of the project.)
//
// Sizes above 1M subscriptions are built only when INDEX_BENCH_MAX_SUBS
// allows them (make bench-index sets it to 5000000), so that
// make bench-go and an accidental -bench . stay within a minute and a GB.
// Plain go test runs no benchmark at all.

const (
	benchChannels = 20
	benchChans    = 4 // channels per connection
	benchProject  = "project"
)

// benchShards is the server's default (--index-shards).
const benchShards = 64

var benchSizes = []int{10_000, 100_000, 500_000, 1_000_000, 5_000_000}

// benchMaxSubs is the largest world a benchmark builds (INDEX_BENCH_MAX_SUBS,
// default 1M).
func benchMaxSubs(b *testing.B) int {
	s := os.Getenv("INDEX_BENCH_MAX_SUBS")
	if s == "" {
		return 1_000_000
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		b.Fatalf("INDEX_BENCH_MAX_SUBS=%q: %v", s, err)
	}
	return n
}

type benchConn struct{ n int }

type benchState struct {
	roles, channels []string
}

func ch(i int) string { return fmt.Sprintf("databases.main.collections.col%02d.documents", i) }

// benchStates makes the states of the connections of a world of subs
// subscriptions at chans channels per connection, and the values the index
// will hold, before anything is measured.
//
// Channels are dealt in blocks of 20 connections: a block draws one random
// set of chans channels, and its i-th connection takes that set rotated by
// i. Every channel then gets exactly chans subscriptions per block, so the
// spread is exact, while the combinations still vary between blocks.
func benchStates(subs, chans int) ([]benchState, []benchConn) {
	names := make([]string, benchChannels)
	for i := range names {
		names[i] = ch(i)
	}
	conns := subs / chans
	teams := conns/100 + 1
	rng := rand.New(rand.NewPCG(1, 2))
	states := make([]benchState, conns)
	var pattern []int
	for i := range states {
		st := &states[i]
		if i%5 == 0 {
			st.roles = []string{"guests"}
		} else {
			st.roles = []string{"users", fmt.Sprintf("user:%020d", i)}
			for range rng.IntN(3) {
				st.roles = append(st.roles, fmt.Sprintf("team:%08d", rng.IntN(teams)))
			}
		}
		if i%benchChannels == 0 {
			pattern = rng.Perm(benchChannels)[:chans]
		}
		st.channels = make([]string, chans)
		for k, c := range pattern {
			st.channels[k] = names[(c+i)%benchChannels]
		}
	}
	return states, make([]benchConn, conns)
}

type benchWorld struct {
	subs, chans int
	x           *Index[*benchConn]
	ids         []ID
	states      []benchState
	heap        float64 // bytes of heap the index holds, after GC
}

// buildWorld builds a world and measures the heap that the index holds:
// live heap after GC once the inputs exist, and again once the index is
// built. The inputs (strings, values) are allocated first, since the server
// holds those anyway; the index's own copies of strings (interning), its
// entries, sets and maps count.
func buildWorld(subs, chans int) *benchWorld {
	states, vals := benchStates(subs, chans)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	w := &benchWorld{subs: subs, chans: chans, x: New[*benchConn](benchShards), ids: make([]ID, len(states)), states: states}
	for i := range states {
		w.ids[i] = w.x.Insert(&vals[i])
		w.x.Set(w.ids[i], benchProject, states[i].roles, states[i].channels)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	// The ids slice is the benchmark's, not the index's.
	w.heap = float64(m1.HeapAlloc) - float64(m0.HeapAlloc) - float64(cap(w.ids)*4)
	if w.x.Subscriptions() != len(states)*chans {
		panic("lost subscriptions")
	}
	return w
}

func (w *benchWorld) perSub() float64  { return w.heap / float64(w.x.Subscriptions()) }
func (w *benchWorld) perConn() float64 { return w.heap / float64(w.x.Len()) }

// expect counts the recipients of an event by brute force over the states,
// so that a benchmark checks what it times.
func (w *benchWorld) expect(roles, channels []string) int {
	n := 0
	for _, st := range w.states {
		roleOK := slices.Contains(roles, anyRole)
		for _, r := range st.roles {
			roleOK = roleOK || slices.Contains(roles, r)
		}
		chanOK := false
		for _, c := range st.channels {
			chanOK = chanOK || slices.Contains(channels, c)
		}
		if roleOK && chanOK {
			n++
		}
	}
	return n
}

var (
	worldMu sync.Mutex
	cached  *benchWorld
)

// world returns the world of (subs, chans), building it unless it is the one
// cached. Only one world is cached: a 5M one is over a GB with its inputs,
// and the heap figure of a build must not include a neighbour.
func world(subs, chans int) *benchWorld {
	worldMu.Lock()
	defer worldMu.Unlock()
	if cached != nil && cached.subs == subs && cached.chans == chans {
		return cached
	}
	cached = nil
	cached = buildWorld(subs, chans)
	return cached
}

// benchEvents are the events timed. The seed's table resolves one channel
// with a broad role, where every subscriber of the channel matches: any/1ch
// is that row. users/1ch is the same for a document readable by signed-in
// users. The 4-channel events union several channels (and roles), so that
// a recipient is reached through several sets and dedup does real work.
var benchEvents = []struct {
	name     string
	roles    []string
	channels []string
}{
	{"any/1ch", []string{"any"}, []string{ch(0)}},
	{"users/1ch", []string{"users"}, []string{ch(0)}},
	{"any/4ch", []string{"any"}, []string{ch(0), ch(1), ch(2), ch(3)}},
	// Broad: readable by users and guests (and redundantly by two teams
	// and a user), so every subscriber of the 4 channels matches; one on
	// several of them is reached through several sets.
	{"5roles/4ch", []string{"guests", "users", "team:00000001", "team:00000002", "user:00000000000000000001"},
		[]string{ch(0), ch(1), ch(2), ch(3)}},
	// Narrow: a document shared with a few teams and users.
	{"5roles-narrow/4ch", []string{"team:00000001", "team:00000002", "team:00000003", "user:00000000000000000001", "user:00000000000000000002"},
		[]string{ch(0), ch(1), ch(2), ch(3)}},
}

// BenchmarkIndex is the seed's table: for each size, the time to resolve
// one event (ms/event), how many recipients it has, and the heap the index
// holds (MB, B/sub). Run it with make bench-index.
func BenchmarkIndex(b *testing.B) {
	max := benchMaxSubs(b)
	for _, subs := range benchSizes {
		if subs > max {
			continue
		}
		for _, ev := range benchEvents {
			b.Run(fmt.Sprintf("subs=%s/%s", human(subs), ev.name), func(b *testing.B) {
				w := world(subs, benchChans)
				want := w.expect(ev.roles, ev.channels)
				n := 0
				visit := func(ID, *benchConn) { n++ }
				w.x.Lookup(benchProject, ev.roles, ev.channels, visit)
				if n != want {
					b.Fatalf("%d recipients, want %d", n, want)
				}
				n = 0
				// Each lookup is timed too: on a shared machine the mean
				// carries every preemption, and the median does not.
				lat := make([]time.Duration, b.N)
				b.ReportAllocs()
				b.ResetTimer()
				for i := range b.N {
					t0 := time.Now()
					w.x.Lookup(benchProject, ev.roles, ev.channels, visit)
					lat[i] = time.Since(t0)
				}
				b.StopTimer()
				slices.Sort(lat)
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1e6, "ms/event")
				b.ReportMetric(float64(lat[b.N/2].Nanoseconds())/1e6, "p50-ms")
				b.ReportMetric(float64(want), "recipients")
				if want > 0 {
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/recipient")
				}
				b.ReportMetric(w.heap/1e6, "MB")
				b.ReportMetric(w.perSub(), "B/sub")
				b.ReportMetric(w.perConn(), "B/conn")
			})
		}
	}
}

// BenchmarkMemory reports the heap the index holds at 1M subscriptions with
// 4 channels per connection (the table's world) and with 1, the worst case
// per subscription, where each subscription carries a whole connection.
func BenchmarkMemory(b *testing.B) {
	for _, chans := range []int{benchChans, 1} {
		b.Run(fmt.Sprintf("subs=1M/chans=%d", chans), func(b *testing.B) {
			w := world(1_000_000, chans)
			for b.Loop() {
			}
			b.ReportMetric(w.heap/1e6, "MB")
			b.ReportMetric(w.perSub(), "B/sub")
			b.ReportMetric(w.perConn(), "B/conn")
		})
	}
}

// BenchmarkWrite measures the writers in the 1M world, one operation per
// iteration:
//
//   - subscribe: Set with one more channel than the connection has (what a
//     subscribe message does: the server re-Sets the whole state);
//   - unsubscribe: Set with one channel fewer;
//   - connect: Insert then Set of a fresh connection (3-4 roles, 4
//     channels);
//   - disconnect: Delete of such a connection.
//
// Restoring the world between rounds is not timed.
func BenchmarkWrite(b *testing.B) {
	w := world(1_000_000, benchChans)
	// plus[k] has one channel that states[k] lacks; minus[k] one fewer.
	plus := make([][]string, len(w.states))
	minus := make([][]string, len(w.states))
	for k, st := range w.states {
		for c := range benchChannels {
			if !slices.Contains(st.channels, ch(c)) {
				plus[k] = append(slices.Clip(st.channels), ch(c))
				break
			}
		}
		minus[k] = st.channels[1:]
	}
	restore := func() {
		for k := range w.ids {
			w.x.Set(w.ids[k], benchProject, w.states[k].roles, w.states[k].channels)
		}
	}
	for _, op := range []struct {
		name  string
		chans [][]string
	}{{"subscribe", plus}, {"unsubscribe", minus}} {
		b.Run(op.name, func(b *testing.B) {
			b.ReportAllocs()
			k := 0
			for b.Loop() {
				if k == len(w.ids) {
					b.StopTimer()
					restore()
					b.StartTimer()
					k = 0
				}
				w.x.Set(w.ids[k], benchProject, w.states[k].roles, op.chans[k])
				k++
			}
			b.StopTimer()
			restore()
		})
	}
	// A batch of connections at a time, so the world does not grow by b.N.
	const batch = 50_000
	ids := make([]ID, 0, batch)
	vals := make([]benchConn, batch)
	b.Run("connect", func(b *testing.B) {
		b.ReportAllocs()
		k := 0
		for b.Loop() {
			if len(ids) == batch {
				b.StopTimer()
				for _, id := range ids {
					w.x.Delete(id)
				}
				ids = ids[:0]
				b.StartTimer()
			}
			st := &w.states[k%len(w.states)]
			id := w.x.Insert(&vals[len(ids)])
			w.x.Set(id, benchProject, st.roles, st.channels)
			ids = append(ids, id)
			k++
		}
		b.StopTimer()
		for _, id := range ids {
			w.x.Delete(id)
		}
		ids = ids[:0]
	})
	b.Run("disconnect", func(b *testing.B) {
		b.ReportAllocs()
		k := 0
		for b.Loop() {
			if len(ids) == 0 {
				b.StopTimer()
				for i := range batch {
					st := &w.states[(k+i)%len(w.states)]
					id := w.x.Insert(&vals[i])
					w.x.Set(id, benchProject, st.roles, st.channels)
					ids = append(ids, id)
				}
				b.StartTimer()
			}
			w.x.Delete(ids[len(ids)-1])
			ids = ids[:len(ids)-1]
			k++
		}
		b.StopTimer()
		for _, id := range ids {
			w.x.Delete(id)
		}
		ids = ids[:0]
	})
}

// BenchmarkLookupUnderChurn times the any/1ch lookup of the 1M world while
// another goroutine re-Sets connections of a second project as fast as it
// can (subscribe/unsubscribe and a team change, alternately), against the
// same lookup with no churn. It reports mean, p50 and p99 lookup latency and
// the churn rate achieved.
//
// Shards are chosen by connection ID (round robin at Insert), not by
// project, so every project spans every shard. Two placements:
//
//   - disjoint: the looked-up project's connections live on the even
//     shards and the churned ones on the odd shards, so churn never
//     write-locks a shard the lookup has to walk recipients on (the lookup
//     still read-locks the odd shards to find nothing there);
//   - shared: the churned connections are spread over every shard, as in a
//     running server, so the lookup meets writers on every shard;
//   - separate: the churned connections are in another Index altogether.
//     Nothing is shared but the CPU, the memory bus and the garbage
//     collector (Set allocates): the control that tells lock waits from
//     plain competition for a 2-core machine.
//
// disjoint and shared also share the interner's mutex (Set takes it, and
// so does Lookup to resolve the event's strings). B/op and allocs/op under
// churn are the churning goroutine's: the lookup allocates nothing.
func BenchmarkLookupUnderChurn(b *testing.B) {
	const churnConns = 20_000
	ev := benchEvents[0]
	for _, placement := range []string{"disjoint", "shared", "separate"} {
		var (
			x     *Index[*benchConn] // the looked-up index
			cx    *Index[*benchConn] // the churned one
			churn []ID
		)
		setup := func(b *testing.B) {
			if x != nil {
				return
			}
			if placement != "disjoint" {
				w := world(1_000_000, benchChans)
				x, cx = w.x, w.x
				if placement == "separate" {
					cx = New[*benchConn](benchShards)
				}
				for range churnConns {
					churn = append(churn, cx.Insert(nil))
				}
				return
			}
			// Build a world on the even shards only: an ID whose shard is
			// odd becomes a churned connection (or is deleted again).
			states, vals := benchStates(1_000_000, benchChans)
			x = New[*benchConn](benchShards)
			cx = x
			for i := 0; i < len(states); {
				id := x.Insert(&vals[i])
				if uint32(id)&x.mask%2 == 1 {
					if len(churn) < churnConns {
						churn = append(churn, id)
					} else {
						x.Delete(id)
					}
					continue
				}
				x.Set(id, benchProject, states[i].roles, states[i].channels)
				i++
			}
		}
		cleanup := func() {
			if placement == "shared" {
				for _, id := range churn {
					x.Delete(id)
				}
			}
			x, cx, churn = nil, nil, nil
		}
		for _, on := range []bool{false, true} {
			name := fmt.Sprintf("%s/churn=%v", placement, on)
			b.Run(name, func(b *testing.B) {
				setup(b)
				a := benchState{[]string{"users", "user:churn", "team:churn-a"}, []string{ch(0), ch(1)}}
				c := benchState{[]string{"users", "user:churn", "team:churn-b"}, []string{ch(0), ch(2), ch(3)}}
				for _, id := range churn {
					cx.Set(id, "other", a.roles, a.channels)
				}
				var (
					stop atomic.Bool
					ops  atomic.Int64
					wg   sync.WaitGroup
				)
				if on {
					wg.Add(1)
					go func() {
						defer wg.Done()
						n := int64(0)
						for i := 0; !stop.Load(); i++ {
							st := &a
							if (i/len(churn))%2 == 0 {
								st = &c
							}
							cx.Set(churn[i%len(churn)], "other", st.roles, st.channels)
							n++
						}
						ops.Store(n)
					}()
				}
				n := 0
				visit := func(ID, *benchConn) { n++ }
				lat := make([]time.Duration, b.N)
				b.ReportAllocs()
				b.ResetTimer()
				start := time.Now()
				for i := range b.N {
					t0 := time.Now()
					x.Lookup(benchProject, ev.roles, ev.channels, visit)
					lat[i] = time.Since(t0)
				}
				b.StopTimer()
				stop.Store(true)
				wg.Wait()
				elapsed := time.Since(start)
				slices.Sort(lat)
				b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N)/1e6, "ms/event")
				b.ReportMetric(float64(lat[b.N/2].Nanoseconds())/1e6, "p50-ms")
				b.ReportMetric(float64(lat[b.N*99/100].Nanoseconds())/1e6, "p99-ms")
				b.ReportMetric(float64(n)/float64(b.N), "recipients")
				if on {
					b.ReportMetric(float64(ops.Load())/elapsed.Seconds(), "churn-sets/s")
				}
			})
		}
		cleanup()
	}
}

// TestMemoryPerSubscription prints the index's memory per subscription on
// a small world, so that plain go test shows the figure; BenchmarkIndex
// measures up to 5M.
func TestMemoryPerSubscription(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	w := buildWorld(100_000, benchChans)
	t.Logf("100k subscriptions, %d per connection: %.1f B/sub, %.1f B/conn", benchChans, w.perSub(), w.perConn())
}

func human(n int) string {
	switch {
	case n >= 1_000_000 && n%1_000_000 == 0:
		return fmt.Sprintf("%dM", n/1_000_000)
	case n >= 1000 && n%1000 == 0:
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

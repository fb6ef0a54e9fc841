package index

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
)

// The benchmark world: one project, 20 channels, connections subscribed to
// chans distinct random channels each (so 1M subscriptions at 4 per
// connection are 250k connections, 50k per channel). One connection in five
// is a guest (roles guests); the others are signed in (users, user:U with U
// unique per connection, team:T with teams of about 80 connections).

const benchChannels = 20

// benchShards is the server's default (--index-shards).
const benchShards = 64

type benchConn struct{ n int }

type benchState struct {
	roles, channels []string
}

// benchStates makes the states of the connections of a world of subs
// subscriptions, and the values the index will hold, before anything is
// measured.
func benchStates(subs, chans int) ([]benchState, []benchConn) {
	names := make([]string, benchChannels)
	for i := range names {
		names[i] = fmt.Sprintf("databases.main.collections.col%02d.documents", i)
	}
	conns := subs / chans
	teams := conns/100 + 1
	rng := rand.New(rand.NewPCG(1, 2))
	states := make([]benchState, conns)
	for i := range states {
		st := &states[i]
		if i%5 == 0 {
			st.roles = []string{"guests"}
		} else {
			st.roles = []string{"users", fmt.Sprintf("user:%020d", i), fmt.Sprintf("team:%08d", rng.IntN(teams))}
		}
		perm := rng.Perm(benchChannels)
		for _, c := range perm[:chans] {
			st.channels = append(st.channels, names[c])
		}
	}
	return states, make([]benchConn, conns)
}

type benchWorld struct {
	x      *Index[*benchConn]
	ids    []ID
	states []benchState
}

func buildWorld(subs, chans int) *benchWorld {
	states, vals := benchStates(subs, chans)
	w := &benchWorld{x: New[*benchConn](benchShards), ids: make([]ID, len(states)), states: states}
	for i := range states {
		w.ids[i] = w.x.Insert(&vals[i])
		w.x.Set(w.ids[i], "project", states[i].roles, states[i].channels)
	}
	return w
}

var (
	worldsMu sync.Mutex
	worlds   = map[[2]int]*benchWorld{}
)

// world returns a cached world: building the 1M one takes a while.
func world(subs, chans int) *benchWorld {
	worldsMu.Lock()
	defer worldsMu.Unlock()
	k := [2]int{subs, chans}
	if w := worlds[k]; w != nil {
		return w
	}
	w := buildWorld(subs, chans)
	worlds[k] = w
	return w
}

func ch(i int) string { return fmt.Sprintf("databases.main.collections.col%02d.documents", i) }

var benchEvents = []struct {
	name     string
	roles    []string
	channels []string
}{
	{"any/1ch", []string{"any"}, []string{ch(0)}},
	{"any/4ch", []string{"any"}, []string{ch(0), ch(1), ch(2), ch(3)}},
	// Broad: readable by users and guests, so each recipient is reached
	// through several buckets and dedup does real work.
	{"5roles/4ch", []string{"guests", "users", "team:00000001", "team:00000002", "user:00000000000000000001"},
		[]string{ch(0), ch(1), ch(2), ch(3)}},
	// Narrow: a document shared with a few teams and users.
	{"5roles-narrow/4ch", []string{"team:00000001", "team:00000002", "team:00000003", "user:00000000000000000001", "user:00000000000000000002"},
		[]string{ch(0), ch(1), ch(2), ch(3)}},
}

func BenchmarkLookup(b *testing.B) {
	for _, subs := range []int{10_000, 100_000, 1_000_000} {
		for _, ev := range benchEvents {
			b.Run(fmt.Sprintf("subs=%s/%s", human(subs), ev.name), func(b *testing.B) {
				w := world(subs, 4)
				n := 0
				visit := func(ID, *benchConn) { n++ }
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					w.x.Lookup("project", ev.roles, ev.channels, visit)
				}
				per := float64(n) / float64(b.N)
				b.ReportMetric(per, "recipients/op")
				if per > 0 {
					b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/recipient")
				}
			})
		}
	}
}

// BenchmarkSet re-indexes a connection between two states that differ by
// one channel, as a subscribe or unsubscribe message does.
func BenchmarkSet(b *testing.B) {
	w := world(100_000, 4)
	alt := make([][]string, len(w.states))
	for i, st := range w.states {
		alt[i] = append([]string{ch((i + 7) % benchChannels)}, st.channels[1:]...)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := i % len(w.ids)
		chans := alt[k]
		if (i/len(w.ids))%2 == 1 {
			chans = w.states[k].channels
		}
		w.x.Set(w.ids[k], "project", w.states[k].roles, chans)
		i++
	}
	// Leave the cached world as it was built.
	for k := range w.ids {
		w.x.Set(w.ids[k], "project", w.states[k].roles, w.states[k].channels)
	}
}

// BenchmarkDelete removes connections of 4 subscriptions and 3 roles from a
// world of 100k subscriptions.
func BenchmarkDelete(b *testing.B) {
	w := world(100_000, 4)
	ids := make([]ID, b.N)
	for i := range ids {
		st := w.states[1+i%(len(w.states)-1)]
		ids[i] = w.x.Insert(nil)
		w.x.Set(ids[i], "project", st.roles, st.channels)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		w.x.Delete(ids[i])
	}
}

// BenchmarkMemory reports the heap the index holds per subscription, after
// GC, with the strings and values it is given allocated beforehand (the
// server holds those anyway). Intern copies, entries, sets and maps count.
func BenchmarkMemory(b *testing.B) {
	for _, c := range []struct{ subs, chans int }{{1_000_000, 4}, {1_000_000, 1}} {
		b.Run(fmt.Sprintf("subs=%s/chans=%d", human(c.subs), c.chans), func(b *testing.B) {
			var perSub, perConn float64
			for b.Loop() {
				perSub, perConn = measureMemory(c.subs, c.chans, benchShards)
			}
			b.ReportMetric(perSub, "B/sub")
			b.ReportMetric(perConn, "B/conn")
		})
	}
}

func measureMemory(subs, chans, shards int) (perSub, perConn float64) {
	states, vals := benchStates(subs, chans)
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	x := New[*benchConn](shards)
	for i := range states {
		id := x.Insert(&vals[i])
		x.Set(id, "project", states[i].roles, states[i].channels)
	}
	runtime.GC()
	runtime.ReadMemStats(&m1)
	d := float64(m1.HeapAlloc) - float64(m0.HeapAlloc)
	if x.Subscriptions() != len(states)*chans {
		panic("lost subscriptions")
	}
	runtime.KeepAlive(x)
	runtime.KeepAlive(states)
	return d / float64(x.Subscriptions()), d / float64(x.Len())
}

// TestMemoryPerSubscription prints the index's memory per subscription on
// a small world, so that plain go test shows the figure; BenchmarkMemory
// measures 1M.
func TestMemoryPerSubscription(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	perSub, perConn := measureMemory(100_000, 4, benchShards)
	t.Logf("100k subscriptions, 4 per connection: %.1f B/sub, %.1f B/conn", perSub, perConn)
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

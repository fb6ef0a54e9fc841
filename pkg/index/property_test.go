package index

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
)

// model is the brute-force reference: every connection's state, matched by
// scanning all of them.
type model struct {
	conns map[ID]*mconn
}

type mconn struct {
	name            string
	set             bool // false until the first Set: matches nothing
	project         string
	roles, channels []string
}

func (m *model) match(project string, roles, channels []string) []string {
	var want []string
	anyEvent := slices.Contains(roles, "any")
	for _, c := range m.conns {
		if !c.set || c.project != project {
			continue
		}
		roleOK := anyEvent
		for _, r := range c.roles {
			if r != "any" && slices.Contains(roles, r) {
				roleOK = true
			}
		}
		chanOK := false
		for _, ch := range c.channels {
			if slices.Contains(channels, ch) {
				chanOK = true
			}
		}
		if roleOK && chanOK {
			want = append(want, c.name)
		}
	}
	slices.Sort(want)
	return want
}

func (m *model) subscriptions() int {
	n := 0
	for _, c := range m.conns {
		seen := map[string]bool{}
		for _, ch := range c.channels {
			if !seen[ch] {
				seen[ch] = true
				n++
			}
		}
	}
	return n
}

// A universe is what a random world draws from. The sparse one has many
// distinct strings and few connections, so most roles are single or listed
// in a shard; the dense one has few strings and many connections on one or
// two shards, so roles pass maxListed and expand into per-channel sets.
type universe struct {
	projects, roles, channels []string
	shardBits, ops, maxConns  int
}

var universes = []universe{
	{
		projects: []string{"p0", "p1", "p2", ""},
		roles: []string{"guests", "users", "user:u0", "user:u1", "user:u2", "user:u3",
			"team:t0", "team:t1", "team:t0/owner", "label:vip", "any", ""},
		channels:  []string{"c0", "c1", "c2", "c3", "c4", "files", "account.u0", ""},
		shardBits: 4, ops: 100, maxConns: 30,
	},
	{
		projects:  []string{"p0", "p1"},
		roles:     []string{"guests", "users", "team:t0", "team:t1", "user:u0", "any"},
		channels:  []string{"c0", "c1", "c2", "c3"},
		shardBits: 2, ops: 200, maxConns: 60,
	},
}

// pick returns up to max random elements of from, duplicates allowed.
func pick(rng *rand.Rand, from []string, max int) []string {
	n := rng.IntN(max + 1)
	out := make([]string, n)
	for i := range out {
		out[i] = from[rng.IntN(len(from))]
	}
	return out
}

// TestMatchesModel compares Lookup with the brute-force model over
// thousands of random worlds with churn.
func TestMatchesModel(t *testing.T) {
	worlds := 2000
	if testing.Short() {
		worlds = 300
	}
	for w := range worlds {
		rng := rand.New(rand.NewPCG(0x5b0a7d, uint64(w)))
		u := universes[w%len(universes)]
		x := New[string](1 << rng.IntN(u.shardBits))
		m := &model{conns: map[ID]*mconn{}}
		var live []ID
		serial := 0
		ops := u.ops/5 + rng.IntN(u.ops)
		for op := range ops {
			switch k := rng.IntN(10); {
			case len(live) == 0 || (k < 3 && len(live) < u.maxConns):
				name := fmt.Sprint("c", serial)
				serial++
				id := x.Insert(name)
				if _, dup := m.conns[id]; dup {
					t.Fatalf("world %d: Insert returned live ID %d", w, id)
				}
				m.conns[id] = &mconn{name: name}
				live = append(live, id)
			case k < 8:
				id := live[rng.IntN(len(live))]
				c := m.conns[id]
				c.set = true
				c.project = u.projects[rng.IntN(len(u.projects))]
				c.roles = pick(rng, u.roles, 5)
				c.channels = pick(rng, u.channels, 5)
				x.Set(id, c.project, c.roles, c.channels)
			default:
				i := rng.IntN(len(live))
				x.Delete(live[i])
				delete(m.conns, live[i])
				live = slices.Delete(live, i, i+1)
			}
			for range 3 {
				project := u.projects[rng.IntN(len(u.projects))]
				roles := pick(rng, u.roles, 5)
				channels := pick(rng, u.channels, 4)
				got := collect(t, x, project, roles, channels)
				if want := m.match(project, roles, channels); !slices.Equal(got, want) {
					t.Fatalf("world %d op %d: Lookup(%q, %q, %q) = %q, want %q", w, op, project, roles, channels, got, want)
				}
			}
			if x.Len() != len(m.conns) || x.Subscriptions() != m.subscriptions() {
				t.Fatalf("world %d op %d: Len, Subscriptions = %d, %d, want %d, %d",
					w, op, x.Len(), x.Subscriptions(), len(m.conns), m.subscriptions())
			}
			if op%16 == 0 {
				checkInvariants(t, x)
			}
		}
		checkInvariants(t, x)
		if t.Failed() {
			t.Fatalf("world %d: invariants broken", w)
		}
	}
}

// TestConcurrent runs Set, Delete and Insert against concurrent Lookups.
// Writers flip connections between two states, A and B; a Lookup that
// mixes A's project with B's role or channel would see a half-applied Set
// or a leak and must find nobody.
func TestConcurrent(t *testing.T) {
	type state struct {
		project string
		roles   []string
		chans   []string
	}
	a := state{"pa", l("users", "user:a"), l("ca1", "ca2")}
	b := state{"pb", l("guests", "team:b"), l("cb1")}

	x := New[string](4)
	const writers, perWriter = 4, 32
	var stop atomic.Bool
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			ids := make([]ID, perWriter)
			for i := range ids {
				ids[i] = x.Insert(fmt.Sprint(w, "/", i))
			}
			for n := 0; !stop.Load() || n < 2000; n++ {
				i := rng.IntN(perWriter)
				switch rng.IntN(8) {
				case 0:
					x.Delete(ids[i])
					ids[i] = x.Insert(fmt.Sprint(w, "/", i, "/", n))
				case 1, 2, 3:
					x.Set(ids[i], a.project, a.roles, a.chans)
				default:
					x.Set(ids[i], b.project, b.roles, b.chans)
				}
			}
			for _, id := range ids {
				x.Delete(id)
			}
		}()
	}
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 2))
			seen := map[ID]bool{}
			for n := 0; n < 3000; n++ {
				clear(seen)
				visit := func(id ID, v string) {
					if seen[id] {
						t.Errorf("visited %d (%s) twice", id, v)
					}
					seen[id] = true
				}
				switch rng.IntN(4) {
				case 0:
					x.Lookup(a.project, a.roles, a.chans, visit)
				case 1:
					x.Lookup(b.project, l("any"), b.chans, visit)
				case 2:
					// Never matches: A's project with B's role or channel.
					x.Lookup(a.project, b.roles, a.chans, func(id ID, v string) {
						t.Errorf("leak: %d (%s) matched A's project with B's roles", id, v)
					})
					x.Lookup(a.project, l("any"), b.chans, func(id ID, v string) {
						t.Errorf("leak: %d (%s) matched A's project with B's channels", id, v)
					})
				case 3:
					x.Len()
					x.Subscriptions()
				}
			}
		}()
	}
	readers.Wait()
	stop.Store(true)
	wg.Wait()
	if x.Len() != 0 || x.Subscriptions() != 0 {
		t.Errorf("after everything was deleted: Len, Subscriptions = %d, %d", x.Len(), x.Subscriptions())
	}
	checkInvariants(t, x)
	x.Lookup("pa", l("any"), l("ca1"), func(ID, string) {}) // reclaims
	if n := len(x.in.syms); n != 0 {
		t.Errorf("intern table holds %d strings after every connection left", n)
	}
}

package index

import (
	"fmt"
	"math"
	"slices"
	"testing"
)

// collect runs a Lookup and returns the values visited, sorted, failing the
// test if one is visited twice.
func collect(t testing.TB, x *Index[string], project string, roles, channels []string) []string {
	t.Helper()
	var got []string
	seen := map[ID]bool{}
	x.Lookup(project, roles, channels, func(id ID, v string) {
		if seen[id] {
			t.Errorf("Lookup(%q, %q, %q) visited %d (%s) twice", project, roles, channels, id, v)
		}
		seen[id] = true
		got = append(got, v)
	})
	slices.Sort(got)
	return got
}

func expect(t *testing.T, x *Index[string], project string, roles, channels []string, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := collect(t, x, project, roles, channels); !slices.Equal(got, want) {
		t.Errorf("Lookup(%q, %q, %q) = %q, want %q", project, roles, channels, got, want)
	}
}

func l(s ...string) []string { return s }

func TestProjectIsolation(t *testing.T) {
	x := New[string](4)
	a := x.Insert("a")
	b := x.Insert("b")
	x.Set(a, "p1", l("users"), l("files"))
	x.Set(b, "p2", l("users"), l("files"))
	expect(t, x, "p1", l("users"), l("files"), "a")
	expect(t, x, "p2", l("users"), l("files"), "b")
	expect(t, x, "p1", l("any"), l("files"), "a")
	expect(t, x, "p3", l("any"), l("files"))
	expect(t, x, "", l("any"), l("files"))
}

func TestRoleMatch(t *testing.T) {
	x := New[string](2)
	g := x.Insert("guest")
	u := x.Insert("user")
	m := x.Insert("member")
	x.Set(g, "p", l("guests"), l("documents"))
	x.Set(u, "p", l("users", "user:u1"), l("documents"))
	x.Set(m, "p", l("users", "user:u2", "team:t1"), l("documents"))
	expect(t, x, "p", l("guests"), l("documents"), "guest")
	expect(t, x, "p", l("users"), l("documents"), "user", "member")
	expect(t, x, "p", l("user:u1"), l("documents"), "user")
	expect(t, x, "p", l("team:t1", "user:u1"), l("documents"), "user", "member")
	expect(t, x, "p", l("team:t2"), l("documents"))
	expect(t, x, "p", l("user:u3", "nobody"), l("documents"))
	expect(t, x, "p", nil, l("documents"))
}

func TestAny(t *testing.T) {
	x := New[string](2)
	g := x.Insert("guest")
	u := x.Insert("user")
	n := x.Insert("noroles")
	o := x.Insert("other")
	x.Set(g, "p", l("guests"), l("files"))
	x.Set(u, "p", l("users", "user:u1"), l("files"))
	x.Set(n, "p", nil, l("files"))
	x.Set(o, "p", l("users"), l("documents"))
	expect(t, x, "p", l("any"), l("files"), "guest", "user", "noroles")
	expect(t, x, "p", l("team:x", "any"), l("files"), "guest", "user", "noroles")
	expect(t, x, "p", l("any"), l("files", "documents"), "guest", "user", "noroles", "other")
	expect(t, x, "p", l("any"), l("nothing"))
}

func TestConnectionRoleAnyIsDropped(t *testing.T) {
	x := New[string](1)
	a := x.Insert("a")
	x.Set(a, "p", l("any", "guests"), l("files"))
	expect(t, x, "p", l("any"), l("files"), "a")
	expect(t, x, "p", l("guests"), l("files"), "a")
	x.Set(a, "p", l("any"), l("files"))
	// Its only role was "any": it matches an "any" event and nothing else.
	expect(t, x, "p", l("any"), l("files"), "a")
	expect(t, x, "p", l("guests", "users"), l("files"))
}

func TestChannelMatch(t *testing.T) {
	x := New[string](2)
	a := x.Insert("a")
	b := x.Insert("b")
	c := x.Insert("c")
	x.Set(a, "p", l("users"), l("files"))
	x.Set(b, "p", l("users"), l("buckets.B.files", "files.create"))
	x.Set(c, "p", l("users"), nil)
	expect(t, x, "p", l("users"), l("files"), "a")
	expect(t, x, "p", l("users"), l("files", "buckets.B.files"), "a", "b")
	expect(t, x, "p", l("users"), l("buckets.B.files.F"))
	expect(t, x, "p", l("any"), nil)
}

func TestNoDoubleDelivery(t *testing.T) {
	x := New[string](1)
	a := x.Insert("a")
	x.Set(a, "p", l("users", "user:u", "team:t", "team:t/owner"), l("c1", "c2", "c3"))
	// Matches through 4 roles x 3 channels, and duplicate event entries.
	expect(t, x, "p", l("users", "user:u", "team:t", "team:t/owner", "users"), l("c1", "c2", "c3", "c1"), "a")
	expect(t, x, "p", l("any", "users"), l("c1", "c2", "c3"), "a")
}

func TestSetReplaces(t *testing.T) {
	x := New[string](2)
	a := x.Insert("a")
	b := x.Insert("b")
	x.Set(b, "p", l("users"), l("c1")) // keeps the sets shared with a non-trivial
	x.Set(a, "p", l("users", "user:u"), l("c1", "c2"))
	if got := x.Subscriptions(); got != 3 {
		t.Fatalf("Subscriptions = %d, want 3", got)
	}
	// New roles, one channel kept, one dropped, one added.
	x.Set(a, "p", l("guests"), l("c2", "c3"))
	expect(t, x, "p", l("users"), l("c1", "c2", "c3"), "b")
	expect(t, x, "p", l("user:u"), l("c1", "c2", "c3"))
	expect(t, x, "p", l("guests"), l("c1"))
	expect(t, x, "p", l("guests"), l("c2"), "a")
	expect(t, x, "p", l("guests"), l("c3"), "a")
	expect(t, x, "p", l("any"), l("c1"), "b")
	expect(t, x, "p", l("any"), l("c3"), "a")
	// Project change moves every membership.
	x.Set(a, "q", l("guests"), l("c2", "c3"))
	expect(t, x, "p", l("any"), l("c1", "c2", "c3"), "b")
	expect(t, x, "q", l("guests"), l("c3"), "a")
	// Clearing everything.
	x.Set(a, "q", nil, nil)
	expect(t, x, "q", l("any"), l("c2", "c3"))
	if got := x.Subscriptions(); got != 1 {
		t.Fatalf("Subscriptions = %d, want 1", got)
	}
	checkInvariants(t, x)
}

func TestDelete(t *testing.T) {
	x := New[string](2)
	a := x.Insert("a")
	b := x.Insert("b")
	x.Set(a, "p", l("users"), l("c1", "c2"))
	x.Set(b, "p", l("users"), l("c1"))
	if x.Len() != 2 || x.Subscriptions() != 3 {
		t.Fatalf("Len, Subscriptions = %d, %d, want 2, 3", x.Len(), x.Subscriptions())
	}
	x.Delete(a)
	expect(t, x, "p", l("users"), l("c1", "c2"), "b")
	expect(t, x, "p", l("any"), l("c1", "c2"), "b")
	if x.Len() != 1 || x.Subscriptions() != 1 {
		t.Fatalf("Len, Subscriptions = %d, %d, want 1, 1", x.Len(), x.Subscriptions())
	}
	// Deleting or setting a dead ID does nothing.
	x.Delete(a)
	x.Set(a, "p", l("users"), l("c1"))
	x.Delete(ID(1 << 20))
	x.Set(ID(1<<20), "p", l("users"), l("c1"))
	expect(t, x, "p", l("users"), l("c1", "c2"), "b")
	if x.Len() != 1 || x.Subscriptions() != 1 {
		t.Fatalf("Len, Subscriptions = %d, %d, want 1, 1", x.Len(), x.Subscriptions())
	}
	x.Delete(b)
	expect(t, x, "p", l("any"), l("c1", "c2"))
	checkInvariants(t, x)
	if n := len(x.in.syms); n != 0 {
		t.Errorf("intern table holds %d strings after every connection left", n)
	}
}

func TestIDReuse(t *testing.T) {
	x := New[string](4)
	ids := map[ID]bool{}
	var order []ID
	for i := range 16 {
		id := x.Insert(fmt.Sprint(i))
		ids[id] = true
		order = append(order, id)
		x.Set(id, "p", l("users"), l("c"))
	}
	for id := range ids {
		if int(id) >= 16 {
			t.Errorf("ID %d is not dense", id)
		}
	}
	x.Delete(order[5])
	x.Delete(order[6])
	var reused []ID
	for i := range 4 {
		id := x.Insert(fmt.Sprint("new", i))
		reused = append(reused, id)
	}
	// Round robin over 4 shards: the next 4 inserts hit each shard once,
	// and the shards of order[5] and order[6] hand their free slot back.
	if !slices.Contains(reused, order[5]) || !slices.Contains(reused, order[6]) {
		t.Errorf("IDs %d, %d not reused; got %v", order[5], order[6], reused)
	}
	// A reused ID starts empty: nothing of the old connection leaks.
	expect(t, x, "p", l("users"), l("c"), "0", "1", "2", "3", "4", "7", "8", "9", "10", "11", "12", "13", "14", "15")
	for _, id := range reused {
		x.Set(id, "p", l("users"), l("c"))
	}
	expect(t, x, "p", l("users"), l("c"), "0", "1", "2", "3", "4", "7", "8", "9", "10", "11", "12", "13", "14", "15", "new0", "new1", "new2", "new3")
	checkInvariants(t, x)
}

func TestShardRounding(t *testing.T) {
	for _, c := range []struct{ in, want int }{{-1, 1}, {0, 1}, {1, 1}, {2, 2}, {3, 4}, {16, 16}, {17, 32}} {
		if got := len(New[int](c.in).shards); got != c.want {
			t.Errorf("New(%d) has %d shards, want %d", c.in, got, c.want)
		}
	}
}

func TestRange(t *testing.T) {
	x := New[string](4)
	var want []string
	for i := range 10 {
		v := fmt.Sprint(i)
		id := x.Insert(v)
		if i%3 == 0 {
			x.Delete(id)
			continue
		}
		want = append(want, v)
	}
	var got []string
	x.Range(func(_ ID, v string) { got = append(got, v) })
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("Range visited %q, want %q", got, want)
	}
}

func TestEpochWrap(t *testing.T) {
	x := New[string](2)
	a := x.Insert("a")
	b := x.Insert("b")
	x.Set(a, "p", l("users"), l("c"))
	x.Set(b, "p", l("users"), l("c"))
	x.epoch = math.MaxUint32 - 2
	for range 6 {
		expect(t, x, "p", l("users"), l("c"), "a", "b")
	}
	// Stamps left behind from before the wrap must not hide anyone: stamp
	// everyone with epoch 1, then wrap so that the epoch comes back to 1.
	x.epoch = 0
	expect(t, x, "p", l("users"), l("c"), "a", "b")
	x.epoch = math.MaxUint32
	expect(t, x, "p", l("users"), l("c"), "a", "b")
	if x.epoch != 1 {
		t.Fatalf("epoch after wrap = %d, want 1", x.epoch)
	}
}

func TestInterning(t *testing.T) {
	x := New[string](4)
	buf := []byte("team:t1 files")
	for i := range 8 {
		id := x.Insert(fmt.Sprint(i))
		// Strings built afresh each time: the index must share one copy.
		x.Set(id, string([]byte("proj")), l(string(buf[:7])), l(string(buf[8:])))
	}
	if n := len(x.in.syms); n != 3 {
		t.Errorf("intern table holds %d strings, want 3", n)
	}
	// A symbol freed and reused must not let an old event string match the
	// new connection.
	y := New[string](1)
	a := y.Insert("a")
	y.Set(a, "p", l("user:old"), l("c"))
	y.Set(a, "p", l("guests"), l("c"))
	y.Lookup("p", l("any"), l("c"), func(ID, string) {}) // reclaims user:old
	b := y.Insert("b")
	y.Set(b, "p", l("user:new"), l("c"))
	expect(t, y, "p", l("user:old"), l("c"))
	expect(t, y, "p", l("user:new"), l("c"), "b")
	checkInvariants(t, y)
}

func TestLookupDoesNotAllocate(t *testing.T) {
	x := New[*int](8)
	for i := range 1000 {
		v := i
		id := x.Insert(&v)
		roles := l("users", fmt.Sprint("user:", i%50), fmt.Sprint("team:", i%7))
		if i%5 == 0 {
			roles = l("guests")
		}
		x.Set(id, "p", roles, l(fmt.Sprint("c", i%20), fmt.Sprint("c", (i+3)%20)))
	}
	n := 0
	visit := func(ID, *int) { n++ }
	any := l("any")
	some := l("guests", "team:1", "team:2", "user:3", "users")
	chans := l("c1", "c2", "c3", "c4", "unknown")
	// Warm up the scratch slices.
	x.Lookup("p", some, chans, visit)
	if allocs := testing.AllocsPerRun(100, func() {
		x.Lookup("p", any, chans, visit)
		x.Lookup("p", some, chans, visit)
		x.Lookup("nope", some, chans, visit)
	}); allocs != 0 {
		t.Errorf("Lookup allocates %.1f times per call", allocs)
	}
	if n == 0 {
		t.Fatal("no recipients")
	}
}

// checkInvariants verifies the index's internal consistency: every
// membership an entry records is in its set at the recorded position, the
// sets hold nothing else, the counters match, and every interned symbol is
// referenced exactly as often as entries hold it.
func checkInvariants(t testing.TB, x *Index[string]) {
	t.Helper()
	refs := map[uint32]uint32{}
	conns, subs := 0, 0
	for si := range x.shards {
		s := &x.shards[si]
		s.mu.RLock()
		members := 0
		holders := map[roleKey]uint32{}
		for l := uint32(0); l < s.n; l++ {
			c := s.coldAt(l)
			if !c.live {
				if c.meta != nil || c.project != noSym {
					t.Errorf("shard %d: dead entry %d holds state", si, l)
				}
				continue
			}
			conns++
			subs += int(c.nchans())
			if c.project == noSym {
				if len(c.meta) != 0 {
					t.Errorf("shard %d: entry %d has subscriptions but no project", si, l)
				}
				continue
			}
			refs[c.project]++
			for _, sym := range c.syms() {
				refs[sym]++
			}
			if !slices.IsSorted(c.roles()) || !slices.IsSorted(c.channels()) {
				t.Errorf("shard %d: entry %d: unsorted symbols", si, l)
			}
			for i := uint32(0); i <= c.nroles(); i++ {
				r := c.role(i)
				rv, ok := s.roles[roleKey{c.project, r}]
				if !ok {
					t.Errorf("shard %d: entry %d: role %d missing", si, l, r)
					continue
				}
				holders[roleKey{c.project, r}]++
				switch {
				case rv&inline != 0:
					if rv&^inline != l {
						t.Errorf("shard %d: entry %d: single role %d held by %d", si, l, r, rv&^inline)
					}
					continue
				case rv&listed != 0:
					if !slices.Contains(s.pool[rv&^listed], l) {
						t.Errorf("shard %d: entry %d: not in the list of role %d", si, l, r)
					}
					continue
				}
				for j, ch := range c.channels() {
					members++
					pos := *c.pos(i, uint32(j))
					v, ok := s.sets[setKey{c.project, r, ch}]
					switch {
					case !ok:
						t.Errorf("shard %d: entry %d missing from set", si, l)
					case v&inline != 0:
						if v&^inline != l || pos != 0 {
							t.Errorf("shard %d: entry %d: inline set holds %d, pos %d", si, l, v&^inline, pos)
						}
					default:
						m := s.mem[v]
						if int(pos) >= len(m.ids) || m.ids[pos] != l {
							t.Errorf("shard %d: entry %d not at its position %d", si, l, pos)
						} else if m.vals[pos] != *s.valAt(l) {
							t.Errorf("shard %d: entry %d: set holds value %q, entry %q", si, l, m.vals[pos], *s.valAt(l))
						}
					}
				}
			}
		}
		lists := 0
		for k, v := range s.roles {
			want := v
			switch {
			case v&inline != 0:
				want = 1
			case v&listed != 0:
				lists++
				hs := s.pool[v&^listed]
				want = uint32(len(hs))
				if len(hs) < 2 || len(hs) > maxListed {
					t.Errorf("shard %d: role %v lists %d holders", si, k, len(hs))
				}
			}
			if holders[k] != want {
				t.Errorf("shard %d: role %v has %d holders, entries say %d", si, k, want, holders[k])
			}
			delete(holders, k)
		}
		if len(holders) != 0 {
			t.Errorf("shard %d: entries hold roles missing from the role map: %v", si, holders)
		}
		pooled := 0
		for _, v := range s.sets {
			if v&inline == 0 {
				pooled++
			}
		}
		if used := len(s.pool) - len(s.poolFree); used != lists {
			t.Errorf("shard %d: %d pool slots in use, %d lists need them", si, used, lists)
		}
		if used := len(s.mem) - len(s.memFree); used != pooled {
			t.Errorf("shard %d: %d mem slots in use, %d sets need them", si, used, pooled)
		}
		held := 0
		for _, v := range s.sets {
			if v&inline != 0 {
				held++
			} else {
				m := s.mem[v]
				if len(m.ids) < 2 || len(m.vals) != len(m.ids) {
					t.Errorf("shard %d: set of %d members, %d values", si, len(m.ids), len(m.vals))
				}
				held += len(m.ids)
			}
		}
		for _, mi := range s.memFree {
			if s.mem[mi].ids != nil || s.mem[mi].vals != nil {
				t.Errorf("shard %d: free mem slot %d holds a set", si, mi)
			}
		}
		if held != members {
			t.Errorf("shard %d: sets hold %d members, entries record %d", si, held, members)
		}
		if len(s.free)+conns > 0 && int(s.n) < len(s.free) {
			t.Errorf("shard %d: free list longer than slab", si)
		}
		s.mu.RUnlock()
	}
	if conns != x.Len() || subs != x.Subscriptions() {
		t.Errorf("Len, Subscriptions = %d, %d; entries say %d, %d", x.Len(), x.Subscriptions(), conns, subs)
	}
	in := &x.in
	in.mu.Lock()
	defer in.mu.Unlock()
	for s, sym := range in.syms {
		if in.names[sym] != s {
			t.Errorf("symbol %d names %q, map says %q", sym, in.names[sym], s)
		}
		if got, want := in.refs[sym]&^queued, refs[sym]; got != want {
			t.Errorf("symbol %d (%q) counts %d references, entries hold %d", sym, s, got, want)
		}
		delete(refs, sym)
	}
	for sym := range refs {
		t.Errorf("entries hold symbol %d, which is not interned", sym)
	}
}

func TestManyRoles(t *testing.T) {
	x := New[string](1)
	a := x.Insert("a")
	roles := make([]string, maxRoles+10)
	for i := range roles {
		roles[i] = fmt.Sprintf("r%06d", i)
	}
	x.Set(a, "p", roles, l("c"))
	expect(t, x, "p", l("r000000"), l("c"), "a")
	checkInvariants(t, x)
	x.Delete(a)
	x.Lookup("p", l("any"), l("c"), func(ID, string) {}) // reclaims
	if n := len(x.in.syms); n != 0 {
		t.Errorf("intern table holds %d strings after every connection left", n)
	}
}

func TestReclaimWithoutLookups(t *testing.T) {
	// A node that churns connections of ever new users but never sees an
	// event must not keep every user's strings.
	x := New[string](2)
	for i := range 5000 {
		id := x.Insert("c")
		x.Set(id, "p", l("users", fmt.Sprint("user:", i)), l(fmt.Sprint("account.", i)))
		x.Delete(id)
	}
	if n := len(x.in.syms); n > 2500 {
		t.Errorf("intern table holds %d strings after churn", n)
	}
	checkInvariants(t, x)
}

func TestLargeSetShrinks(t *testing.T) {
	x := New[string](1)
	var ids []ID
	for i := range 300 {
		id := x.Insert(fmt.Sprint(i))
		x.Set(id, "p", l("users"), l("c", "d"))
		ids = append(ids, id)
	}
	for _, id := range ids[:295] {
		x.Delete(id)
	}
	checkInvariants(t, x)
	expect(t, x, "p", l("users"), l("c"), "295", "296", "297", "298", "299")
	expect(t, x, "p", l("any"), l("c", "d"), "295", "296", "297", "298", "299")
	s := &x.shards[0]
	for k, v := range s.sets {
		if c := max(cap(s.mem[v].ids), cap(s.mem[v].vals)); c > 64 {
			t.Errorf("set %v of 5 members keeps capacity %d", k, c)
		}
	}
}

func TestVisitPanicReleasesLocks(t *testing.T) {
	x := New[string](2)
	a := x.Insert("a")
	x.Set(a, "p", l("users"), l("c"))
	func() {
		defer func() { _ = recover() }()
		x.Lookup("p", l("users"), l("c"), func(ID, string) { panic("visit") })
	}()
	// Would deadlock if the panic had left a lock held.
	x.Set(a, "p", l("guests"), l("c"))
	expect(t, x, "p", l("guests"), l("c"), "a")
}

func TestGet(t *testing.T) {
	x := New[string](4)
	a := x.Insert("a")
	b := x.Insert("b")
	if v, ok := x.Get(a); !ok || v != "a" {
		t.Fatalf("Get(a) = %q %v", v, ok)
	}
	x.Delete(a)
	if v, ok := x.Get(a); ok || v != "" {
		t.Fatalf("Get of a deleted id = %q %v", v, ok)
	}
	if v, ok := x.Get(b); !ok || v != "b" {
		t.Fatalf("Get(b) = %q %v", v, ok)
	}
	if _, ok := x.Get(ID(1 << 30)); ok {
		t.Fatal("Get of an id never handed out")
	}
}

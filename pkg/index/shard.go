package index

import (
	"slices"
	"sync"
)

// Entries live in pages of pageSize so that growing a shard never copies its
// entries under the write lock, and a shard wastes at most one page.
const (
	pageBits = 8
	pageSize = 1 << pageBits
	pageMask = pageSize - 1
)

// Map values in shard.roles and shard.sets are tagged by their top bits:
// inline marks a single connection's local ID, listed (roles only) an index
// into shard.pool holding a role's few holders. Untagged, a value is an
// index into shard.mem (sets) or a count of holders (roles). Local IDs and
// pool and mem indices therefore stay below 1<<30.
const (
	inline  = 1 << 31
	listed  = 1 << 30
	tagMask = inline | listed
)

// maxListed is the number of holders up to which a role keeps a plain list
// of them in a shard rather than a set per channel. A Lookup then checks
// each holder's own channels: at most maxListed binary searches per role
// and shard, against a map entry and a set per channel and holder saved.
const maxListed = 8

// roleKey names the connections of a project holding a role. Role noSym is
// the pseudo-role every connection of the project holds.
type roleKey struct {
	project, role uint32
}

// setKey names the connections of a project holding a role and subscribed
// to a channel.
type setKey struct {
	project, role, channel uint32
}

// dedup is the state that keeps a Lookup from visiting an entry twice. It
// is an epoch-stamped bitmap over a shard's entries rather than a stamp per
// entry: bit l%64 of seen[l/64] says that entry l was visited by the Lookup
// whose epoch is stamp[l/64], and a word with an older stamp counts as all
// clear, so no Lookup ever clears anything. A shard's whole dedup state is
// then 12 bytes per 64 connections, dense enough to stay in L1 while a
// lookup walks its sets, where a 4-byte stamp per entry cost a cache miss
// per recipient. Only Lookup reads or writes it, under lookupMu.
type dedup struct {
	stamp []uint32
	seen  []uint64
}

// first marks entry l as visited in epoch and reports whether it was not
// already.
func (d *dedup) first(l, epoch uint32) bool {
	w := l >> 6
	if d.stamp[w] != epoch {
		d.stamp[w] = epoch
		d.seen[w] = 0
	}
	b := uint64(1) << (l & 63)
	if d.seen[w]&b != 0 {
		return false
	}
	d.seen[w] |= b
	return true
}

// members holds a set of two or more connections: their local IDs and, at
// the same positions, a copy of their values. Lookup walks the two arrays in
// step and never touches the entries: reading each recipient's value from
// the shard's pages instead cost a cache line per recipient, most of it
// holding the values of connections not on the event's channel, and made a
// 5M-subscription index memory-bound (7.5 ns per recipient against 3 at
// 1M). The copy costs sizeof(T) per membership; values never change while
// an entry is live (Insert sets them, Delete removes the memberships
// first), so the copies cannot go stale.
type members[T any] struct {
	ids  []uint32
	vals []T
}

// cold is the part of a connection entry that writers read, and Lookup only
// for a role that is single or listed in the shard (see shard).
//
// meta holds, in one allocation, the sorted role symbols (nroles of them),
// the sorted channel symbols, then the connection's position in each set it
// belongs to: (nroles+1) x nchans slots, row i for role i, row nroles for the
// all-connections pseudo-role. A row is meaningful only while its role is
// expanded (see shard.roles). One small slice per connection, no map.
type cold struct {
	meta    []uint32
	project uint32 // noSym until the first Set
	nr      uint16 // number of roles; 16 bits keep the entry at 32 bytes
	live    bool
}

// maxRoles is the number of distinct roles a connection can hold.
const maxRoles = 1<<16 - 1

func (c *cold) nroles() uint32 { return uint32(c.nr) }

func (c *cold) nchans() uint32 {
	// len(meta) = nr + nc + (nr+1)*nc = nr + nc*(nr+2)
	return (uint32(len(c.meta)) - c.nroles()) / (c.nroles() + 2)
}

func (c *cold) roles() []uint32    { return c.meta[:c.nroles()] }
func (c *cold) channels() []uint32 { return c.meta[c.nroles() : c.nroles()+c.nchans()] }
func (c *cold) syms() []uint32     { return c.meta[:c.nroles()+c.nchans()] }

// role returns the role of row i: the pseudo-role for the last row.
func (c *cold) role(i uint32) uint32 {
	if i == c.nroles() {
		return noSym
	}
	return c.meta[i]
}

// row returns the row of role r, and whether the connection holds r.
func (c *cold) row(r uint32) (uint32, bool) {
	if r == noSym {
		return c.nroles(), true
	}
	i, ok := slices.BinarySearch(c.roles(), r)
	return uint32(i), ok
}

// pos returns the slot holding the position of the entry in the set of role
// row i and channel column j.
func (c *cold) pos(i, j uint32) *uint32 {
	nc := c.nchans()
	return &c.meta[c.nroles()+nc+i*nc+j]
}

// subscribed reports whether the connection is subscribed to one of
// channels.
func (c *cold) subscribed(channels []uint32) bool {
	mine := c.channels()
	for _, ch := range channels {
		if _, ok := slices.BinarySearch(mine, ch); ok {
			return true
		}
	}
	return false
}

// shard holds the whole state of the connections whose ID selects it.
//
// A role of a project is in one of three modes in a shard:
//
//   - single: one connection of the shard holds it; roles maps the role to
//     that connection (| inline). Per-user roles (user:U) nearly always are.
//   - listed: 2 to maxListed connections hold it; roles maps the role to a
//     list of them in pool (| listed). Roles of small teams usually are.
//   - expanded: more hold it, or once did; roles maps the role to the number
//     of holders, and each holder is a member of the set (project, role,
//     channel) of every channel it subscribes to.
//
// In the first two modes no set mentions the role: a Lookup checks the
// event's channels against each holder's own sorted channel list. That
// saves, for every such holder, a map entry per channel, which is most of
// the index's memory when every user has a role of their own. An expanded
// role does not go back to listed before its last holder leaves: its
// holders are not at hand, and expanded is correct at any count.
type shard[T any] struct {
	mu   sync.RWMutex
	vals []*[pageSize]T
	dd   dedup
	cold []*[pageSize]cold
	n    uint32   // slots handed out so far (live or free)
	free []uint32 // local IDs of deleted entries, reused first

	roles map[roleKey]uint32

	// sets maps a set to its only member (| inline) or to its members in
	// mem, dense slices that Lookup walks in order and that shrink in O(1)
	// by moving the last member into the hole.
	sets    map[setKey]uint32
	mem     []members[T]
	memFree []uint32

	// pool holds the holder lists of listed roles.
	pool     [][]uint32
	poolFree []uint32

	// Shards sit side by side in a slice; keep one shard's lock word off
	// its neighbour's cache line.
	_ [64]byte
}

func (s *shard[T]) init() {
	s.roles = make(map[roleKey]uint32)
	s.sets = make(map[setKey]uint32)
}

// alloc returns a free local ID. limit is the number of bits a local ID may
// use.
func (s *shard[T]) alloc(limit uint) uint32 {
	if n := len(s.free); n > 0 {
		l := s.free[n-1]
		s.free = s.free[:n-1]
		return l
	}
	l := s.n
	if l >= listed || (limit < 32 && l >= 1<<limit) {
		panic("index: too many connections")
	}
	if int(l>>6) == len(s.dd.seen) {
		s.dd.seen = append(s.dd.seen, 0)
		s.dd.stamp = append(s.dd.stamp, 0)
	}
	if int(l>>pageBits) == len(s.vals) {
		s.vals = append(s.vals, new([pageSize]T))
		s.cold = append(s.cold, new([pageSize]cold))
	}
	s.n++
	return l
}

func (s *shard[T]) valAt(l uint32) *T     { return &s.vals[l>>pageBits][l&pageMask] }
func (s *shard[T]) coldAt(l uint32) *cold { return &s.cold[l>>pageBits][l&pageMask] }

// live returns the cold entry of a caller-supplied local ID, nil when it is
// not live.
func (s *shard[T]) live(l uint32) *cold {
	if l >= s.n {
		return nil
	}
	if c := s.coldAt(l); c.live {
		return c
	}
	return nil
}

// reindex moves entry l from its current state to next (whose positions are
// not yet filled): it leaves alone the memberships that both states share,
// removes the ones only the old state has and adds the ones only the new
// state has.
func (s *shard[T]) reindex(l uint32, next cold) {
	c := s.coldAt(l)
	old := *c
	same := old.project == next.project && old.project != noSym

	// Leave what the new state lacks; in expanded roles that l keeps, carry
	// over the positions of the channels it keeps and leave the others. An
	// entry never Set before (no project) is in nothing.
	for i := uint32(0); i <= old.nroles() && old.project != noSym; i++ {
		r := old.role(i)
		ni, kept := next.row(r)
		if !same || !kept {
			s.leave(roleKey{old.project, r}, l, &old, i)
			continue
		}
		if s.roles[roleKey{old.project, r}]&tagMask != 0 {
			continue // single or listed: channels are read from the entry
		}
		for j, ch := range old.channels() {
			if nj, ok := slices.BinarySearch(next.channels(), ch); ok {
				*next.pos(ni, uint32(nj)) = *old.pos(i, uint32(j))
			} else {
				s.remove(setKey{old.project, r, ch}, *old.pos(i, uint32(j)))
			}
		}
	}

	// The shard is write-locked: no Lookup sees the entry half-changed.
	*c = next

	// Join what the old state lacked.
	for i := uint32(0); i <= c.nroles(); i++ {
		r := c.role(i)
		_, had := old.row(r)
		if !same || !had {
			s.join(roleKey{c.project, r}, l, c, i)
			continue
		}
		if s.roles[roleKey{c.project, r}]&tagMask != 0 {
			continue
		}
		for j, ch := range c.channels() {
			if _, ok := slices.BinarySearch(old.channels(), ch); !ok {
				*c.pos(i, uint32(j)) = s.add(setKey{c.project, r, ch}, l)
			}
		}
	}
}

// unindex removes entry l from every role and set it belongs to.
func (s *shard[T]) unindex(l uint32) {
	c := s.coldAt(l)
	if c.project == noSym {
		return
	}
	for i := uint32(0); i <= c.nroles(); i++ {
		s.leave(roleKey{c.project, c.role(i)}, l, c, i)
	}
}

// join adds entry l, whose state c holds role k.role in row i, to the role.
func (s *shard[T]) join(k roleKey, l uint32, c *cold, i uint32) {
	v, ok := s.roles[k]
	switch {
	case !ok:
		s.roles[k] = inline | l
		return
	case v&inline != 0:
		s.roles[k] = listed | s.newList(v&^inline, l)
		return
	case v&listed != 0:
		pi := v &^ listed
		if len(s.pool[pi]) < maxListed {
			s.pool[pi] = append(s.pool[pi], l)
			return
		}
		// One holder too many: every holder moves into the sets.
		for _, h := range s.pool[pi] {
			hc := s.coldAt(h)
			hi, _ := hc.row(k.role)
			s.addAll(k, h, hc, hi)
		}
		v = uint32(len(s.pool[pi]))
		s.freeList(pi)
	}
	s.roles[k] = v + 1
	s.addAll(k, l, c, i)
}

// addAll adds entry l, whose state c holds role k.role in row i, to the sets
// of every channel it subscribes to.
func (s *shard[T]) addAll(k roleKey, l uint32, c *cold, i uint32) {
	for j, ch := range c.channels() {
		*c.pos(i, uint32(j)) = s.add(setKey{k.project, k.role, ch}, l)
	}
}

// leave removes entry l, whose state c holds role k.role in row i, from the
// role.
func (s *shard[T]) leave(k roleKey, l uint32, c *cold, i uint32) {
	v := s.roles[k]
	switch {
	case v&inline != 0:
		delete(s.roles, k)
	case v&listed != 0:
		pi := v &^ listed
		hs := s.pool[pi]
		at := slices.Index(hs, l)
		hs[at] = hs[len(hs)-1]
		hs = hs[:len(hs)-1]
		if len(hs) == 1 {
			s.roles[k] = inline | hs[0]
			s.freeList(pi)
		} else {
			s.pool[pi] = hs
		}
	default:
		for j, ch := range c.channels() {
			s.remove(setKey{k.project, k.role, ch}, *c.pos(i, uint32(j)))
		}
		if v == 1 {
			delete(s.roles, k)
		} else {
			s.roles[k] = v - 1
		}
	}
}

// newList stores the list [a, b] in pool and returns its index.
func (s *shard[T]) newList(a, b uint32) uint32 {
	var pi uint32
	if n := len(s.poolFree); n > 0 {
		pi = s.poolFree[n-1]
		s.poolFree = s.poolFree[:n-1]
	} else {
		pi = uint32(len(s.pool))
		if pi >= listed {
			panic("index: too many sets")
		}
		s.pool = append(s.pool, nil)
	}
	s.pool[pi] = append(make([]uint32, 0, 2), a, b)
	return pi
}

func (s *shard[T]) freeList(pi uint32) {
	s.pool[pi] = nil
	s.poolFree = append(s.poolFree, pi)
}

// newMembers stores the set [a, b] in mem and returns its index.
func (s *shard[T]) newMembers(a, b uint32) uint32 {
	var mi uint32
	if n := len(s.memFree); n > 0 {
		mi = s.memFree[n-1]
		s.memFree = s.memFree[:n-1]
	} else {
		mi = uint32(len(s.mem))
		if mi >= listed {
			panic("index: too many sets")
		}
		s.mem = append(s.mem, members[T]{})
	}
	s.mem[mi] = members[T]{
		ids:  append(make([]uint32, 0, 2), a, b),
		vals: append(make([]T, 0, 2), *s.valAt(a), *s.valAt(b)),
	}
	return mi
}

func (s *shard[T]) freeMembers(mi uint32) {
	s.mem[mi] = members[T]{}
	s.memFree = append(s.memFree, mi)
}

// add puts l into set k and returns its position there.
func (s *shard[T]) add(k setKey, l uint32) uint32 {
	v, ok := s.sets[k]
	switch {
	case !ok:
		s.sets[k] = inline | l
		return 0
	case v&inline != 0:
		// Second member: the set moves to mem. The first member stays at
		// position 0, which is what its entry already records.
		s.sets[k] = s.newMembers(v&^inline, l)
		return 1
	default:
		m := &s.mem[v]
		m.ids = append(m.ids, l)
		m.vals = append(m.vals, *s.valAt(l))
		return uint32(len(m.ids) - 1)
	}
}

// remove takes the member at position pos out of set k.
func (s *shard[T]) remove(k setKey, pos uint32) {
	v := s.sets[k]
	if v&inline != 0 {
		delete(s.sets, k)
		return
	}
	m := &s.mem[v]
	ids, vals := m.ids, m.vals
	last := uint32(len(ids) - 1)
	if pos != last {
		// Fill the hole with the last member and tell its entry.
		moved := ids[last]
		ids[pos], vals[pos] = moved, vals[last]
		c := s.coldAt(moved)
		i, _ := c.row(k.role)
		j, _ := slices.BinarySearch(c.channels(), k.channel)
		*c.pos(i, uint32(j)) = pos
	}
	// The slot past the end must not keep a departed value alive.
	var zero T
	vals[last] = zero
	ids, vals = ids[:last], vals[:last]
	switch {
	case last == 1:
		// Back to one member, at position 0: inline it and free the slices.
		s.sets[k] = inline | ids[0]
		s.freeMembers(v)
		return
	case cap(ids) >= 64 && len(ids) <= cap(ids)/4:
		// A set that emptied out (a mass disconnect) gives memory back.
		ids = append(make([]uint32, 0, 2*len(ids)), ids...)
		vals = append(make([]T, 0, 2*len(vals)), vals...)
	}
	m.ids, m.vals = ids, vals
}

// lookup visits the connections of project p holding one of roles and
// subscribed to one of channels, each at most once per epoch. When repeats
// are impossible (one role and one channel), walking a set skips the dedup
// state altogether. si and bits rebuild global IDs.
func (s *shard[T]) lookup(si uint32, bits uint, epoch, p uint32, roles, channels []uint32, repeats bool, visit func(ID, T)) {
	s.mu.RLock()
	// Deferred so that a panicking visit does not leave the shard locked.
	defer s.mu.RUnlock()
	for _, r := range roles {
		v, ok := s.roles[roleKey{p, r}]
		switch {
		case !ok:
			continue
		case v&inline != 0:
			s.visitIf(v&^inline, si, bits, epoch, channels, visit)
			continue
		case v&listed != 0:
			for _, l := range s.pool[v&^listed] {
				s.visitIf(l, si, bits, epoch, channels, visit)
			}
			continue
		}
		for _, ch := range channels {
			v, ok := s.sets[setKey{p, r, ch}]
			switch {
			case !ok:
			case v&inline != 0:
				s.visitOne(v&^inline, si, bits, epoch, visit)
			case repeats:
				// Slices in locals, first inlined by hand: visit is opaque to
				// the compiler, which would otherwise reload every slice
				// header from s after each call.
				m := &s.mem[v]
				ids, stamp, seen := m.ids, s.dd.stamp, s.dd.seen
				vals := m.vals[:len(ids)]
				for i, l := range ids {
					w, b := l>>6, uint64(1)<<(l&63)
					if stamp[w] != epoch {
						stamp[w], seen[w] = epoch, 0
					}
					if seen[w]&b == 0 {
						seen[w] |= b
						visit(ID(l<<bits|si), vals[i])
					}
				}
			default:
				m := &s.mem[v]
				ids := m.ids
				vals := m.vals[:len(ids)]
				for i, l := range ids {
					visit(ID(l<<bits|si), vals[i])
				}
			}
		}
	}
}

// visitIf visits entry l if it subscribes to one of channels.
func (s *shard[T]) visitIf(l, si uint32, bits uint, epoch uint32, channels []uint32, visit func(ID, T)) {
	if s.coldAt(l).subscribed(channels) {
		s.visitOne(l, si, bits, epoch, visit)
	}
}

func (s *shard[T]) visitOne(l, si uint32, bits uint, epoch uint32, visit func(ID, T)) {
	if s.dd.first(l, epoch) {
		visit(ID(l<<bits|si), *s.valAt(l))
	}
}

func (s *shard[T]) rangeAll(si uint32, bits uint, f func(ID, T)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for l := uint32(0); l < s.n; l++ {
		if s.coldAt(l).live {
			f(ID(l<<bits|si), *s.valAt(l))
		}
	}
}

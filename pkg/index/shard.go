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

// inline marks a map value that is a single connection's local ID rather
// than a count (in shard.roles) or an index into shard.pool (in shard.sets).
const inline = 1 << 31

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

// hotPage holds the part of a page of connection entries that Lookup reads
// for every recipient, apart from the cold part, and in columns: the dedup
// stamps of 256 entries fill 1 KB, so checking and setting them stays in
// cache while a lookup walks a large set, and a value is read only for an
// actual recipient.
type hotPage[T any] struct {
	stamp [pageSize]uint32 // the epoch of the last Lookup that visited the entry
	val   [pageSize]T
}

// cold is the part of a connection entry that writers read, and Lookup only
// for a role held by a single connection of the shard.
//
// meta holds, in one allocation, the sorted role symbols (nroles of them),
// the sorted channel symbols, then the connection's position in each set it
// belongs to: (nroles+1) x nchans slots, row i for role i, row nroles for the
// all-connections pseudo-role. A row is meaningful only while its role is
// expanded (see shard.roles). One small slice per connection, no map.
type cold struct {
	meta    []uint32
	project uint32 // noSym until the first Set
	nroles  uint32
	live    bool
}

func (c *cold) nchans() uint32 {
	// len(meta) = nr + nc + (nr+1)*nc = nr + nc*(nr+2)
	return (uint32(len(c.meta)) - c.nroles) / (c.nroles + 2)
}

func (c *cold) roles() []uint32    { return c.meta[:c.nroles] }
func (c *cold) channels() []uint32 { return c.meta[c.nroles : c.nroles+c.nchans()] }
func (c *cold) syms() []uint32     { return c.meta[:c.nroles+c.nchans()] }

// role returns the role of row i: the pseudo-role for the last row.
func (c *cold) role(i uint32) uint32 {
	if i == c.nroles {
		return noSym
	}
	return c.meta[i]
}

// row returns the row of role r, and whether the connection holds r.
func (c *cold) row(r uint32) (uint32, bool) {
	if r == noSym {
		return c.nroles, true
	}
	i, ok := slices.BinarySearch(c.roles(), r)
	return uint32(i), ok
}

// pos returns the slot holding the position of the entry in the set of role
// row i and channel column j.
func (c *cold) pos(i, j uint32) *uint32 {
	nc := c.nchans()
	return &c.meta[c.nroles+nc+i*nc+j]
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
// A role of a project is in one of two modes in a shard:
//
//   - single: one connection of the shard holds it. roles maps the role to
//     that connection (| inline) and no set mentions it; a Lookup checks the
//     event's channels against the connection's own sorted channel list.
//     Per-user roles (user:U) and the roles of small teams are nearly always
//     single, and this saves a map entry per channel for each of them.
//   - expanded: roles maps the role to the number of connections holding it,
//     and each of them is a member of the set (project, role, channel) of
//     every channel it subscribes to.
//
// A role expands when a second connection takes it and goes back to nothing
// when the last one leaves. It does not collapse back to single at one
// holder: the remaining holder's channels are not at hand, and expanded is
// correct at any count.
type shard[T any] struct {
	mu   sync.RWMutex
	hot  []*hotPage[T]
	cold []*[pageSize]cold
	n    uint32   // slots handed out so far (live or free)
	free []uint32 // local IDs of deleted entries, reused first

	roles map[roleKey]uint32

	// sets maps a set to its only member (| inline) or to its members in
	// pool, a dense slice that Lookup walks in order and that shrinks in
	// O(1) by moving its last member into the hole.
	sets     map[setKey]uint32
	pool     [][]uint32
	poolFree []uint32

	seen []uint64

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
	if l >= inline || (limit < 32 && l >= 1<<limit) {
		panic("index: too many connections")
	}
	if int(l>>pageBits) == len(s.hot) {
		s.hot = append(s.hot, new(hotPage[T]))
		s.cold = append(s.cold, new([pageSize]cold))
	}
	s.n++
	return l
}

// hotAt returns the page and the index within it of entry l's hot part.
func (s *shard[T]) hotAt(l uint32) (*hotPage[T], uint32) { return s.hot[l>>pageBits], l & pageMask }
func (s *shard[T]) coldAt(l uint32) *cold  { return &s.cold[l>>pageBits][l&pageMask] }

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

	// Leave what the new state lacks; carry over the positions of what it
	// keeps.
	for i := uint32(0); i <= old.nroles; i++ {
		r := old.role(i)
		ni, kept := next.row(r)
		if !same || !kept {
			s.leave(roleKey{old.project, r}, &old, i)
			continue
		}
		if s.roles[roleKey{old.project, r}]&inline != 0 {
			continue // single: l itself, its channels live in its entry
		}
		for j, ch := range old.channels() {
			if nj, ok := slices.BinarySearch(next.channels(), ch); ok {
				*next.pos(ni, uint32(nj)) = *old.pos(i, uint32(j))
			} else {
				s.remove(setKey{old.project, r, ch}, *old.pos(i, uint32(j)))
			}
		}
	}

	// Lookups see the new channels of single roles from here on; the shard
	// is write-locked, so none is running.
	*c = next

	// Join what the old state lacked.
	for i := uint32(0); i <= c.nroles; i++ {
		r := c.role(i)
		_, had := old.row(r)
		if !same || !had {
			s.join(roleKey{c.project, r}, l, c, i)
			continue
		}
		if s.roles[roleKey{c.project, r}]&inline != 0 {
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
	for i := uint32(0); i <= c.nroles; i++ {
		s.leave(roleKey{c.project, c.role(i)}, c, i)
	}
}

// join adds entry l, whose state c holds role k.role in row i, to the role.
func (s *shard[T]) join(k roleKey, l uint32, c *cold, i uint32) {
	v, ok := s.roles[k]
	if !ok {
		s.roles[k] = inline | l
		return
	}
	if v&inline != 0 {
		// A second holder: the first one moves into the sets.
		l0 := v &^ inline
		c0 := s.coldAt(l0)
		i0, _ := c0.row(k.role)
		for j, ch := range c0.channels() {
			*c0.pos(i0, uint32(j)) = s.add(setKey{k.project, k.role, ch}, l0)
		}
		v = 1
	}
	s.roles[k] = v + 1
	for j, ch := range c.channels() {
		*c.pos(i, uint32(j)) = s.add(setKey{k.project, k.role, ch}, l)
	}
}

// leave removes the entry whose state c holds role k.role in row i from the
// role.
func (s *shard[T]) leave(k roleKey, c *cold, i uint32) {
	v := s.roles[k]
	if v&inline != 0 {
		delete(s.roles, k)
		return
	}
	for j, ch := range c.channels() {
		s.remove(setKey{k.project, k.role, ch}, *c.pos(i, uint32(j)))
	}
	if v == 1 {
		delete(s.roles, k)
	} else {
		s.roles[k] = v - 1
	}
}

// add puts l into set k and returns its position there.
func (s *shard[T]) add(k setKey, l uint32) uint32 {
	v, ok := s.sets[k]
	switch {
	case !ok:
		s.sets[k] = inline | l
		return 0
	case v&inline != 0:
		// Second member: the set moves to the pool. The first member
		// stays at position 0, which is what its entry already records.
		var pi uint32
		if n := len(s.poolFree); n > 0 {
			pi = s.poolFree[n-1]
			s.poolFree = s.poolFree[:n-1]
		} else {
			pi = uint32(len(s.pool))
			if pi >= inline {
				panic("index: too many sets")
			}
			s.pool = append(s.pool, nil)
		}
		s.pool[pi] = append(make([]uint32, 0, 2), v&^inline, l)
		s.sets[k] = pi
		return 1
	default:
		s.pool[v] = append(s.pool[v], l)
		return uint32(len(s.pool[v]) - 1)
	}
}

// remove takes the member at position pos out of set k.
func (s *shard[T]) remove(k setKey, pos uint32) {
	v := s.sets[k]
	if v&inline != 0 {
		delete(s.sets, k)
		return
	}
	ids := s.pool[v]
	last := uint32(len(ids) - 1)
	if pos != last {
		// Fill the hole with the last member and tell its entry.
		m := ids[last]
		ids[pos] = m
		c := s.coldAt(m)
		i, _ := c.row(k.role)
		j, _ := slices.BinarySearch(c.channels(), k.channel)
		*c.pos(i, uint32(j)) = pos
	}
	ids = ids[:last]
	switch {
	case last == 1:
		// Back to one member, at position 0: inline it and free the slice.
		s.sets[k] = inline | ids[0]
		s.pool[v] = nil
		s.poolFree = append(s.poolFree, v)
		return
	case cap(ids) >= 64 && len(ids) <= cap(ids)/4:
		// A set that emptied out (a mass disconnect) gives memory back.
		ids = append(make([]uint32, 0, 2*len(ids)), ids...)
	}
	s.pool[v] = ids
}

// lookup visits the connections of project p holding one of roles and
// subscribed to one of channels. With dedup, each entry is visited at most
// once per epoch; without (one role and one channel: no connection can be
// reached twice), stamps are neither read nor written. si and bits rebuild
// global IDs.
func (s *shard[T]) lookup(si uint32, bits uint, epoch, p uint32, roles, channels []uint32, dedup bool, visit func(ID, T)) {
	s.mu.RLock()
	// Deferred so that a panicking visit does not leave the shard locked.
	defer s.mu.RUnlock()
	if dedup {
		w := int(s.n+63) / 64
		if cap(s.seen) < w {
			s.seen = make([]uint64, w)
		}
		s.seen = s.seen[:w]
		clear(s.seen)
	}
	seen := s.seen
	for _, r := range roles {
		v, ok := s.roles[roleKey{p, r}]
		if !ok {
			continue
		}
		if v&inline != 0 {
			l := v &^ inline
			if s.coldAt(l).subscribed(channels) {
				s.visitOne(l, si, bits, epoch, visit)
			}
			continue
		}
		for _, ch := range channels {
			v, ok := s.sets[setKey{p, r, ch}]
			switch {
			case !ok:
			case v&inline != 0:
				s.visitOne(v&^inline, si, bits, epoch, visit)
			case dedup:
				// pages in a local: visit is opaque to the compiler, which
				// would otherwise reload s.hot after every call.
				pages := s.hot
				for _, l := range s.pool[v] {
					b := uint64(1) << (l & 63)
					if seen[l>>6]&b == 0 {
						seen[l>>6] |= b
						visit(ID(l<<bits|si), pages[l>>pageBits].val[l&pageMask])
					}
				}
			default:
				pages := s.hot
				for _, l := range s.pool[v] {
					visit(ID(l<<bits|si), pages[l>>pageBits].val[l&pageMask])
				}
			}
		}
	}
}

func (s *shard[T]) visitOne(l, si uint32, bits uint, epoch uint32, visit func(ID, T)) {
	pg, i := s.hotAt(l)
	if pg.stamp[i] != epoch {
		pg.stamp[i] = epoch
		visit(ID(l<<bits|si), pg.val[i])
	}
}

func (s *shard[T]) rangeAll(si uint32, bits uint, f func(ID, T)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for l := uint32(0); l < s.n; l++ {
		if s.coldAt(l).live {
			pg, i := s.hotAt(l)
			f(ID(l<<bits|si), pg.val[i])
		}
	}
}

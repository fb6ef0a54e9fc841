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

// inline marks a set map value that is the set's only member (a local ID)
// rather than an index into shard.pool.
const inline = 1 << 31

// setKey names one set of connections: those of project subscribed to
// channel under role. Role noSym is the pseudo-role every connection of the
// project has.
type setKey struct {
	project, role, channel uint32
}

// hot is the part of a connection entry that Lookup reads.
type hot[T any] struct {
	val   T
	stamp uint32 // the epoch of the last Lookup that visited this entry
}

// cold is the part of a connection entry that only writers read.
//
// meta holds, in one allocation, the sorted role symbols (nroles of them),
// the sorted channel symbols, then the connection's position in each set it
// belongs to: (nroles+1) x nchans slots, row i for role i, row nroles for the
// all-connections pseudo-role. One small slice per connection, no map.
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

// pos returns the slot holding the position of the entry in the set of role
// row i and channel column j.
func (c *cold) pos(i, j uint32) *uint32 {
	nc := c.nchans()
	return &c.meta[c.nroles+nc+i*nc+j]
}

type page[T any] struct {
	hot  [pageSize]hot[T]
	cold [pageSize]cold
}

// shard holds the whole state of the connections whose ID selects it.
type shard[T any] struct {
	mu    sync.RWMutex
	pages []*page[T]
	n     uint32   // slots handed out so far (live or free)
	free  []uint32 // local IDs of deleted entries, reused first

	// sets maps a set to its only member (| inline) or to its members in
	// pool. Sets of one member dominate in number (user:U roles, rare
	// channels), so keeping them in the map value saves a slice per set.
	sets     map[setKey]uint32
	pool     [][]uint32
	poolFree []uint32

	// Shards sit side by side in a slice; keep one shard's hot lock word off
	// its neighbour's cache line.
	_ [64]byte
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
	if limit < 32 && l >= 1<<limit {
		panic("index: too many connections")
	}
	if int(l>>pageBits) == len(s.pages) {
		s.pages = append(s.pages, new(page[T]))
	}
	s.n++
	return l
}

func (s *shard[T]) entry(l uint32) (*hot[T], *cold) {
	p := s.pages[l>>pageBits]
	return &p.hot[l&pageMask], &p.cold[l&pageMask]
}

// entryChecked is entry for a caller-supplied ID: nil when it is not live.
func (s *shard[T]) entryChecked(l uint32) (*hot[T], *cold) {
	if l >= s.n {
		return nil, nil
	}
	h, c := s.entry(l)
	if !c.live {
		return nil, nil
	}
	return h, c
}

// reindex moves entry l from its current sets to those of (p, meta): it
// leaves alone the memberships that both states share, removes the ones only
// the old state has and adds the ones only the new state has. meta is laid
// out as cold.meta, positions not yet filled.
func (s *shard[T]) reindex(l uint32, c *cold, p uint32, meta []uint32, nroles uint32) {
	next := cold{meta: meta, project: p, nroles: nroles, live: true}
	same := c.project == p && c.project != noSym
	ors, ocs := c.roles(), c.channels()
	nrs, ncs := next.roles(), next.channels()

	// Old memberships: carry over the shared ones, drop the others.
	for i := uint32(0); i <= c.nroles; i++ {
		r, ni, keepRole := uint32(noSym), next.nroles, same
		if i < c.nroles {
			r = ors[i]
			ni32, found := slices.BinarySearch(nrs, r)
			ni, keepRole = uint32(ni32), same && found
		}
		for j, ch := range ocs {
			pos := *c.pos(i, uint32(j))
			if keepRole {
				if nj, ok := slices.BinarySearch(ncs, ch); ok {
					*next.pos(ni, uint32(nj)) = pos
					continue
				}
			}
			s.remove(setKey{c.project, r, ch}, pos)
		}
	}

	// New memberships that the old state did not have.
	for i := uint32(0); i <= next.nroles; i++ {
		r, hadRole := uint32(noSym), same
		if i < next.nroles {
			r = nrs[i]
			_, found := slices.BinarySearch(ors, r)
			hadRole = same && found
		}
		for j, ch := range ncs {
			if hadRole {
				if _, ok := slices.BinarySearch(ocs, ch); ok {
					continue
				}
			}
			*next.pos(i, uint32(j)) = s.add(setKey{p, r, ch}, l)
		}
	}
	*c = next
}

// unindex removes entry l from every set it belongs to.
func (s *shard[T]) unindex(l uint32, c *cold) {
	ors, ocs := c.roles(), c.channels()
	for i := uint32(0); i <= c.nroles; i++ {
		r := uint32(noSym)
		if i < c.nroles {
			r = ors[i]
		}
		for j, ch := range ocs {
			s.remove(setKey{c.project, r, ch}, *c.pos(i, uint32(j)))
		}
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
		s.setPos(m, k, pos)
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

// setPos records that member m of set k now sits at pos.
func (s *shard[T]) setPos(m uint32, k setKey, pos uint32) {
	_, c := s.entry(m)
	i := c.nroles
	if k.role != noSym {
		ri, _ := slices.BinarySearch(c.roles(), k.role)
		i = uint32(ri)
	}
	j, _ := slices.BinarySearch(c.channels(), k.channel)
	*c.pos(i, uint32(j)) = pos
}

// lookup visits the members of the sets (p, r, c) for r in roles and c in
// channels that this shard holds, each entry once per epoch. si and bits
// rebuild global IDs.
func (s *shard[T]) lookup(si uint32, bits uint, epoch, p uint32, roles, channels []uint32, visit func(ID, T)) {
	s.mu.RLock()
	// Deferred so that a panicking visit does not leave the shard locked.
	defer s.mu.RUnlock()
	if len(s.sets) == 0 {
		return
	}
	for _, ch := range channels {
		for _, r := range roles {
			v, ok := s.sets[setKey{p, r, ch}]
			if !ok {
				continue
			}
			if v&inline != 0 {
				l := v &^ inline
				h := &s.pages[l>>pageBits].hot[l&pageMask]
				if h.stamp != epoch {
					h.stamp = epoch
					visit(ID(l<<bits|si), h.val)
				}
				continue
			}
			for _, l := range s.pool[v] {
				h := &s.pages[l>>pageBits].hot[l&pageMask]
				if h.stamp != epoch {
					h.stamp = epoch
					visit(ID(l<<bits|si), h.val)
				}
			}
		}
	}
}

func (s *shard[T]) rangeAll(si uint32, bits uint, f func(ID, T)) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for l := uint32(0); l < s.n; l++ {
		h, c := s.entry(l)
		if c.live {
			f(ID(l<<bits|si), h.val)
		}
	}
}

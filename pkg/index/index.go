// Package index is Switchboard's subscription index: which connections
// receive an event.
//
// A connection receives an event when its project equals the event's
// project, it is subscribed to one of the event's channels, and one of its
// roles is among the event's roles, or the event's roles contain "any",
// which matches every connection of the project. "any" is never a role of a
// connection: Set drops it.
//
// The index is shaped project -> role -> channel -> set of connections, plus
// one pseudo-role per project that every connection holds, so that an event
// for "any" costs what its recipients cost rather than a walk over every
// role. It is split into shards by connection ID. Each shard has its own
// lock and holds the whole state of its connections, so changing a
// connection is atomic under one lock and never blocks lookups on the other
// shards.
//
// Per shard:
//
//   - connection entries in fixed-size pages, split in columns: the values
//     (what Lookup hands out), and the project, roles, channels and set
//     positions (what writers need);
//   - a role map from (project, role) to the role's holders. A role held by
//     a few connections of the shard (user:U, small teams) maps to them
//     directly, and a Lookup checks their own channel lists; a role held by
//     more maps to a count, and its holders are in per-channel sets;
//   - a set map from (project, role, channel) to a set: a single member in
//     the map value itself, or dense slices of local IDs and of a copy of
//     each member's value, which Lookup walks in step (so a large set costs
//     sizeof(ID)+sizeof(T) bytes of sequential reads per recipient, and no
//     visit to the entry pages) and which shrink in O(1) by moving the last
//     member into the hole. Each entry records its position in every set it
//     is in, so removing a connection costs O(its own subscriptions), with
//     no scan and no position map;
//   - dedup state for Lookup, one epoch-stamped bit per connection.
//
// Project, role and channel strings are interned into per-Index 32-bit
// symbols, which is what entries and maps store.
package index

import (
	"slices"
	"sync"
	"sync/atomic"
)

// ID identifies one connection in an Index. IDs are small dense integers,
// reused after Delete.
//
// The low bits of an ID select the shard and the high bits the slot within
// it.
type ID uint32

// anyRole is the event role that matches every connection of the project.
const anyRole = "any"

// Index is a sharded, lock-striped subscription index holding one value of
// type T per connection (the server stores its *conn there so a lookup hands
// back the connection without a second table).
//
// All methods are safe for concurrent use.
type Index[T any] struct {
	shards []shard[T]
	bits   uint   // log2(len(shards))
	mask   uint32 // len(shards) - 1
	next   atomic.Uint32
	conns  atomic.Int64
	subs   atomic.Int64
	in     interner

	// lookupMu serializes Lookups. Holding it, a Lookup owns the dedup
	// state of every shard (so it needs no atomics), the scratch slices
	// below, and the right to recycle dead symbols.
	lookupMu sync.Mutex
	epoch    uint32
	roles    []uint32 // scratch: the event's roles as symbols
	channels []uint32 // scratch: the event's channels as symbols
}

// New returns an Index with the given number of shards, rounded up to a
// power of two (min 1).
func New[T any](shards int) *Index[T] {
	bits := uint(0)
	for 1<<bits < shards {
		bits++
	}
	x := &Index[T]{
		shards: make([]shard[T], 1<<bits),
		bits:   bits,
		mask:   1<<bits - 1,
	}
	for i := range x.shards {
		x.shards[i].init()
	}
	x.in.init()
	return x
}

// locate splits id into its shard and its slot within the shard.
func (x *Index[T]) locate(id ID) (*shard[T], uint32) {
	return &x.shards[uint32(id)&x.mask], uint32(id) >> x.bits
}

// Insert registers a connection with no project and no subscriptions and
// returns its ID.
func (x *Index[T]) Insert(v T) ID {
	// Round robin keeps the shards equally full whatever the pattern of
	// deletes, and keeps IDs dense.
	si := (x.next.Add(1) - 1) & x.mask
	s := &x.shards[si]
	s.mu.Lock()
	l := s.alloc(32 - x.bits)
	*s.valAt(l) = v
	*s.coldAt(l) = cold{live: true}
	s.mu.Unlock()
	x.conns.Add(1)
	return ID(l<<x.bits | si)
}

// Set atomically replaces the connection's project, roles and channels
// (re-indexing what changed). A lookup never observes a half-applied Set: it
// sees the old state or the new one. Strings are interned: identical
// project/role/channel strings across connections share one copy.
//
// Duplicate roles and channels are ignored, and so is the role "any". Set on
// an ID that is not live (deleted, or never returned by Insert) does
// nothing; the caller must not use an ID after Delete, since it may already
// belong to another connection.
func (x *Index[T]) Set(id ID, project string, roles, channels []string) {
	// Intern outside the shard lock; the scratch stays on the stack for any
	// reasonable connection.
	var buf [64]uint32
	p, rs, cs := x.acquire(buf[:0], project, roles, channels)
	nr, nc := len(rs), len(cs)
	meta := make([]uint32, nr+nc+(nr+1)*nc)
	copy(meta, rs)
	copy(meta[nr:], cs)

	s, l := x.locate(id)
	s.mu.Lock()
	c := s.live(l)
	if c == nil {
		s.mu.Unlock()
		x.release(p, meta[:nr+nc])
		return
	}
	old := *c
	s.reindex(l, cold{meta: meta, project: p, nr: uint16(nr), live: true})
	s.mu.Unlock()

	x.subs.Add(int64(nc) - int64(old.nchans()))
	x.release(old.project, old.syms())
}

// Delete removes the connection and all its subscriptions; its ID may then
// be reused. Deleting an ID that is not live does nothing.
func (x *Index[T]) Delete(id ID) {
	s, l := x.locate(id)
	s.mu.Lock()
	c := s.live(l)
	if c == nil {
		s.mu.Unlock()
		return
	}
	old := *c
	s.unindex(l)
	// Zero the entry so the index stops keeping the value alive.
	var zero T
	*s.valAt(l) = zero
	*c = cold{}
	s.free = append(s.free, l)
	s.mu.Unlock()

	x.conns.Add(-1)
	x.subs.Add(-int64(old.nchans()))
	x.release(old.project, old.syms())
}

// Lookup calls visit exactly once for every connection matching (project,
// roles, channels), in no particular order.
//
// visit runs while a shard read lock is held: it must not call back into the
// Index. Lookups are serialized among themselves (a mutex) so the dedup
// state (an epoch-stamped bit per connection) needs no atomics; they run
// concurrently with Set/Delete on other shards. Lookup does not allocate.
// Event roles, channels and a project that no connection holds are simply
// skipped.
func (x *Index[T]) Lookup(project string, roles, channels []string, visit func(ID, T)) {
	x.lookupMu.Lock()
	defer x.lookupMu.Unlock()

	p, ok := x.resolve(project, roles, channels)
	if !ok {
		return
	}
	x.epoch++
	if x.epoch == 0 {
		// The counter wrapped: a stamp written 2^32 lookups ago could now
		// equal the current epoch and hide a recipient.
		x.resetDedup()
		x.epoch = 1
	}
	// One role and one channel reach no connection twice: skip the dedup
	// state, which saves a load and a store per recipient on the commonest
	// event.
	repeats := len(x.roles) > 1 || len(x.channels) > 1
	for i := range x.shards {
		x.shards[i].lookup(uint32(i), x.bits, x.epoch, p, x.roles, x.channels, repeats, visit)
	}
}

// Range calls f once for every connection, in no particular order. Like
// visit in Lookup, f runs under a shard read lock and must not call back
// into the Index. Connections inserted or deleted during Range may or may
// not be seen.
func (x *Index[T]) Range(f func(ID, T)) {
	for i := range x.shards {
		x.shards[i].rangeAll(uint32(i), x.bits, f)
	}
}

// Get returns the value of a live connection, and false when id is not
// live. It takes the shard's read lock only.
func (x *Index[T]) Get(id ID) (T, bool) {
	s, l := x.locate(id)
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.live(l) == nil {
		var zero T
		return zero, false
	}
	return *s.valAt(l), true
}

// Len returns the number of connections.
func (x *Index[T]) Len() int { return int(x.conns.Load()) }

// Subscriptions returns the number of (connection, channel) subscriptions
// held.
func (x *Index[T]) Subscriptions() int { return int(x.subs.Load()) }

// resolve turns the event's strings into symbols in the scratch slices. It
// reports false when nothing can match: an unknown project, or no known
// role or channel. A string without a symbol is held by no connection, so
// dropping it loses nothing.
func (x *Index[T]) resolve(project string, roles, channels []string) (uint32, bool) {
	in := &x.in
	in.mu.Lock()
	defer in.mu.Unlock()
	// No Lookup is in flight (we hold lookupMu), so no one holds a symbol
	// that reclaim could free: this is the safe point to recycle.
	in.reclaimLocked()

	p, ok := in.syms[project]
	if !ok {
		return 0, false
	}
	rs := x.roles[:0]
	if slices.Contains(roles, anyRole) {
		rs = append(rs, noSym) // the bucket of every connection
	} else {
		for _, r := range roles {
			if sym, ok := in.syms[r]; ok {
				rs = append(rs, sym)
			}
		}
	}
	cs := x.channels[:0]
	for _, c := range channels {
		if sym, ok := in.syms[c]; ok {
			cs = append(cs, sym)
		}
	}
	x.roles, x.channels = rs, cs
	return p, len(rs) > 0 && len(cs) > 0
}

// acquire interns project, roles and channels and takes a reference to each
// distinct symbol. Roles and channels come back sorted and deduplicated, in
// buf when they fit.
func (x *Index[T]) acquire(buf []uint32, project string, roles, channels []string) (p uint32, rs, cs []uint32) {
	in := &x.in
	in.mu.Lock()
	defer in.mu.Unlock()
	p = in.symLocked(project)
	in.refLocked(p)
	for _, r := range roles {
		if r != anyRole {
			buf = append(buf, in.symLocked(r))
		}
	}
	nr := len(buf)
	for _, c := range channels {
		buf = append(buf, in.symLocked(c))
	}
	// Sorted, so that a set member's position slot is found by binary search.
	rs = buf[:nr:nr]
	slices.Sort(rs)
	rs = slices.Compact(rs)
	if len(rs) > maxRoles {
		// Beyond any real resolver; dropping roles only ever withholds
		// events. The dropped symbols may be new: let reclaim have them.
		for _, sym := range rs[maxRoles:] {
			in.forgetLocked(sym)
		}
		rs = rs[:maxRoles]
	}
	cs = buf[nr:]
	slices.Sort(cs)
	cs = slices.Compact(cs)
	for _, sym := range rs {
		in.refLocked(sym)
	}
	for _, sym := range cs {
		in.refLocked(sym)
	}
	return p, rs, cs
}

// release drops the references that one connection held.
func (x *Index[T]) release(project uint32, syms []uint32) {
	if project == noSym {
		return // a connection that was never Set holds nothing
	}
	in := &x.in
	in.mu.Lock()
	in.unrefLocked(project)
	for _, sym := range syms {
		in.unrefLocked(sym)
	}
	// Dead symbols are normally recycled by the next Lookup. On a node that
	// churns connections but sees no events they would pile up, so recycle
	// here too when no Lookup is in flight. TryLock never waits, so taking
	// lookupMu under in.mu cannot deadlock against Lookup's opposite order.
	if len(in.dead) >= 1024 && x.lookupMu.TryLock() {
		in.reclaimLocked()
		x.lookupMu.Unlock()
	}
	in.mu.Unlock()
}

// resetDedup zeroes every dedup stamp. The caller holds lookupMu; the dedup
// state is written only by Lookup or under a shard's write lock, so a read
// lock suffices.
func (x *Index[T]) resetDedup() {
	for i := range x.shards {
		s := &x.shards[i]
		s.mu.RLock()
		clear(s.dd.stamp)
		s.mu.RUnlock()
	}
}

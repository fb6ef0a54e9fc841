package index

import (
	"strings"
	"sync"
)

// noSym is the symbol no string ever maps to. A connection entry uses it for
// "no project yet", and a shard uses it as the role of the per-project
// pseudo-role bucket that holds every connection, so that neither can collide
// with a real string.
const noSym = 0

// queued marks, in interner.refs, a symbol that sits in interner.dead. It
// keeps a symbol whose count touches zero many times from being queued more
// than once.
const queued = 1 << 31

// interner maps the project, role and channel strings of an Index to small
// integer symbols, and holds one copy of each string.
//
// Symbols rather than strings are what the shards store: a symbol is 4 bytes
// where a string header is 16, the sets of a shard live in one flat map keyed
// by three symbols, and comparing symbols is one instruction.
//
// Entries are reference-counted, not kept forever. Roles such as user:U and
// channels such as account.U are per user, so on a node that runs for weeks a
// table that only grows would end up holding every user ever seen rather than
// the users connected now. Counting costs 4 bytes per distinct string.
//
// A symbol whose count drops to zero is not reused at once: it is queued in
// dead and recycled only by a holder of the Index's lookup mutex (see
// Index.reclaim). A Lookup resolves the event's strings to symbols once and
// then walks the shards; were a symbol freed and handed to a different string
// meanwhile, that Lookup would deliver the event to connections holding the
// new string, a leak across roles or projects.
type interner struct {
	mu    sync.Mutex
	syms  map[string]uint32
	names []string // by symbol; names[noSym] is unused
	refs  []uint32 // by symbol: how many connection fields hold it, | queued
	free  []uint32 // symbols ready for reuse
	dead  []uint32 // symbols whose count dropped to zero, not yet reusable
}

func (in *interner) init() {
	in.syms = make(map[string]uint32)
	in.names = []string{""}
	in.refs = []uint32{0}
}

// symLocked returns the symbol of s, creating it with a count of zero if s
// is new. The caller must take a reference (refLocked) before releasing mu,
// or the symbol is never freed.
func (in *interner) symLocked(s string) uint32 {
	if sym, ok := in.syms[s]; ok {
		return sym
	}
	// Clone: the caller's string may point into a larger buffer (a request,
	// a JSON message) that holding it here would keep alive.
	s = strings.Clone(s)
	var sym uint32
	if n := len(in.free); n > 0 {
		sym = in.free[n-1]
		in.free = in.free[:n-1]
		in.names[sym] = s
		in.refs[sym] = 0
	} else {
		sym = uint32(len(in.names))
		in.names = append(in.names, s)
		in.refs = append(in.refs, 0)
	}
	in.syms[s] = sym
	return sym
}

func (in *interner) refLocked(sym uint32) {
	in.refs[sym]++
}

// unrefLocked drops one reference to sym; at zero the symbol is queued for
// reclaim.
func (in *interner) unrefLocked(sym uint32) {
	r := in.refs[sym] - 1
	if r == 0 {
		r = queued
		in.dead = append(in.dead, sym)
	}
	in.refs[sym] = r
}

// forgetLocked queues sym for reclaim if nothing references it: for a
// symbol made by symLocked that the caller decided not to keep.
func (in *interner) forgetLocked(sym uint32) {
	if in.refs[sym] == 0 {
		in.refs[sym] = queued
		in.dead = append(in.dead, sym)
	}
}

// reclaimLocked frees the queued symbols that are still unreferenced. Only a
// holder of the Index's lookup mutex may call it.
func (in *interner) reclaimLocked() {
	for _, sym := range in.dead {
		if in.refs[sym] == queued {
			delete(in.syms, in.names[sym])
			in.names[sym] = ""
			in.refs[sym] = 0
			in.free = append(in.free, sym)
		} else {
			// Referenced again since it was queued: keep it.
			in.refs[sym] &^= queued
		}
	}
	clear(in.dead)
	in.dead = in.dead[:0]
}

package history

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"
)

// AnchorLen is how many of a project's last events an Anchor names: one
// digest could match an earlier copy of the same message; four in a row
// do not, in practice.
const AnchorLen = 4

// Anchor is where a subscription stands in its project's events: the
// digests of the last events of the project a node had routed, oldest
// first. Nodes hear the events from Pub/Sub, in the order the history
// holds them, and never learn stream ids; an Anchor is how they say a
// position anyway. The zero Anchor names no event: the node had routed
// none of the project.
type Anchor struct {
	D [AnchorLen]uint64
	N int // how many of D are set (D[:N])
}

// Push makes d the anchor's newest event.
func (a *Anchor) Push(d uint64) {
	if a.N < AnchorLen {
		a.D[a.N] = d
		a.N++
		return
	}
	copy(a.D[:], a.D[1:])
	a.D[AnchorLen-1] = d
}

// IsZero tells whether a names no event.
func (a Anchor) IsZero() bool { return a.N == 0 }

// String formats a as its digests in hex, oldest first, joined by '.'
// ("" for the zero Anchor).
func (a Anchor) String() string {
	var b strings.Builder
	for i, d := range a.D[:a.N] {
		if i > 0 {
			b.WriteByte('.')
		}
		fmt.Fprintf(&b, "%016x", d)
	}
	return b.String()
}

// ErrBadAnchor is returned by ParseAnchor for anything String does not write.
var ErrBadAnchor = errors.New("history: malformed anchor")

// ParseAnchor reads an anchor formatted by String. Anchors come back from
// stored records, so every malformed one is an error.
func ParseAnchor(s string) (Anchor, error) {
	var a Anchor
	if s == "" {
		return a, nil
	}
	parts := strings.Split(s, ".")
	if len(parts) > AnchorLen {
		return Anchor{}, fmt.Errorf("%w: %q", ErrBadAnchor, s)
	}
	for _, p := range parts {
		if len(p) != 16 {
			return Anchor{}, fmt.Errorf("%w: %q", ErrBadAnchor, s)
		}
		d, err := strconv.ParseUint(p, 16, 64)
		if err != nil {
			return Anchor{}, fmt.Errorf("%w: %q", ErrBadAnchor, s)
		}
		a.Push(d)
	}
	return a, nil
}

// Span is a stretch of one project's history, oldest first, each event
// with its Digest set.
type Span struct {
	Events []Event
	// Start is the index of the first event to replay: after the
	// anchor's run (the events before it) and after the floor it was
	// read with.
	Start int
	// Complete tells that no event of the project is missing from Start
	// on: the anchor was found, and nothing after it left the window or
	// a cap or went unrecorded. A span that is not complete holds no
	// events.
	Complete bool
}

// Find returns the index of the newest event of s that ends a run of
// events whose digests are a's, and whether there is one. The zero
// Anchor is never found.
func (s Span) Find(a Anchor) (int, bool) {
	return findRun(len(s.Events), func(i int) uint64 { return s.Events[i].Digest }, a)
}

// AnchorBefore returns the anchor of s's events before index i: the
// newest AnchorLen of them (the zero Anchor when there are none).
func (s Span) AnchorBefore(i int) Anchor {
	var a Anchor
	for _, e := range s.Events[max(0, i-AnchorLen):i] {
		a.Push(e.Digest)
	}
	return a
}

// findRun returns the index of the last event of the newest run of n
// events (digest(i) of each) whose digests are a.D[:a.N].
func findRun(n int, digest func(int) uint64, a Anchor) (int, bool) {
	return FindRun(n, digest, a, a.N)
}

// FindRun returns the index of the last event of the newest run of n
// events (digest(i) of each) whose digests are a.D[:a.N]. When there is
// none, and cut < a.N, it looks for a run that the first event cuts off:
// a's newest m events at indexes 0 to m-1, the longest with m >= cut. The
// zero Anchor is never found.
func FindRun(n int, digest func(int) uint64, a Anchor, cut int) (int, bool) {
	if a.N == 0 {
		return 0, false
	}
	// matches tells whether the m events ending at index i are a's newest m.
	matches := func(i, m int) bool {
		for k := 0; k < m; k++ {
			if digest(i-k) != a.D[a.N-1-k] {
				return false
			}
		}
		return true
	}
	for i := n - 1; i >= a.N-1; i-- {
		if matches(i, a.N) {
			return i, true
		}
	}
	for m := min(a.N-1, n); m >= max(cut, 1); m-- {
		if matches(m-1, m) {
			return m - 1, true
		}
	}
	return 0, false
}

// cut finds where a span read from an anchor, or from a floor, begins in
// n held events, oldest first (at gives each one's position and digest):
// first is the index of the span's first event (the anchor's run, or up
// to AnchorLen events of context before the floor), start the index in
// the span of its first event to replay (after the run and after
// floorMS), and end the index of the anchor's last event (-1 for the
// zero Anchor). ok is false when the anchor's run is not held. Both
// stores read through it; what makes a span incomplete is theirs.
func cut(n int, at func(int) (Position, uint64), from Anchor, floorMS uint64) (first, start, end int, ok bool) {
	ms := func(i int) uint64 { p, _ := at(i); return p.MS }
	if from.IsZero() {
		i := sort.Search(n, func(i int) bool { return ms(i) > floorMS })
		first = max(0, i-AnchorLen)
		return first, i - first, -1, true
	}
	end, ok = findRun(n, func(i int) uint64 { _, d := at(i); return d }, from)
	if !ok {
		return 0, 0, 0, false
	}
	first, start = end+1-from.N, from.N
	for first+start < n && ms(first+start) <= floorMS {
		start++
	}
	return first, start, end, true
}

// Reader reads what a returning subscription missed.
type Reader interface {
	// ReadFrom returns project's events from the anchor's run on: the
	// run itself (so a caller can line the span up with other anchors),
	// then every event after it, up to the newest held; Start skips the
	// run and the events appended at or before floorMS (the store's
	// clock). With the zero Anchor it returns the events appended after
	// floorMS, after up to AnchorLen events before them as context (Start
	// skips those). Complete is false when the anchor is not
	// held (older than the window or a cap, or never recorded) or an
	// event after it may be missing.
	ReadFrom(ctx context.Context, project string, from Anchor, floorMS uint64) (Span, error)
}

// Record is what the cluster knows of one subscription id, so that a
// subscription that comes back (on any node) can be given what it missed.
type Record struct {
	Project string
	ID      string // the subscription id, the SDK's own
	User    string // "" for a guest
	Node    string // the node that served it last
	// Open tells that the node had the subscription's connection open
	// when it last wrote the record: if the node died since, nobody wrote
	// where the subscription stood at its end (the node's checkpoint
	// tells).
	Open bool
	// Anchor is where the subscription stood: when it was made, or
	// exactly at its end when the node knew it (a drain). Zero when the
	// node had routed no event of the project yet.
	Anchor Anchor
	// FloorMS, on the store's clock: events appended at or before it
	// reached the client or were not its to get. Replay starts after the
	// anchor and after FloorMS. 0: none.
	FloorMS uint64
	// ReplayMS, in Unix ms on the node's clock, is when the node queued
	// missed events to the subscription (it resumed), which its client
	// may not have acknowledged yet: the replayed events are old, so a
	// floor taken from the node's last checkpoint (it died) must not pass
	// over them unless the checkpoint shows that all queued by then had
	// left. 0: none.
	ReplayMS uint64
}

// Records keeps subscription records and node checkpoints (RESUME.md).
type Records interface {
	// Put writes recs. A record with floorAge >= 0 gets FloorMS = the
	// store's now - floorAge, if later than its own. Open records last a
	// day (their node may die without a word); closed ones the window.
	Put(ctx context.Context, floorAge time.Duration, recs ...Record) error
	// End marks the records of refs (project and id of each) closed by
	// node, keeping their anchors, with FloorMS = the store's now -
	// floorAge if later than their own (floorAge < 0: the floor as it
	// is): the subscription's connection ended and node cannot say
	// exactly what its client received. A record another node wrote since
	// (it resumed there) is left alone.
	End(ctx context.Context, floorAge time.Duration, node string, refs ...Record) error
	// Get returns the record of project's subscription id.
	Get(ctx context.Context, project, id string) (Record, bool, error)
	// Checkpoint says that node is alive now and that every frame it had
	// queued was at most queued old: events it routed before now - queued
	// had left its send queues.
	Checkpoint(ctx context.Context, node string, queued time.Duration) error
	// LastCheckpoint returns node's last checkpoint: its time on the
	// store's clock (ms), the age it stated, and how long ago that was.
	LastCheckpoint(ctx context.Context, node string) (Checkpoint, bool, error)
}

// Checkpoint is a node's last word that it was alive.
type Checkpoint struct {
	MS     uint64        // when, on the store's clock
	Queued time.Duration // the oldest frame in its send queues then
	Age    time.Duration // how long ago, by the store's clock
}

// OpenRecordTTL is how long a record of a subscription whose connection
// was open lasts: its node may die without closing it, and a day bounds
// what that leaves behind. A subscription older than that whose node
// crashes starts live when it comes back.
const OpenRecordTTL = 24 * time.Hour

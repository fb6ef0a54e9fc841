package history

import (
	"container/list"
	"context"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// DefaultTailCacheBytes caps the tail caches of one Redis store (all
// projects together): a storm project's whole window is ~3.3 MB (3,000
// events of 1 KB), so 64 MiB keeps the ~20 busiest projects of a node.
const DefaultTailCacheBytes = 64 << 20

// tailPage is how many events a read back through a stream asks for at a
// time (XREVRANGE ... COUNT tailPage): about 1 MB of 1 KB events.
const tailPage = 1000

// tailOverhead is what a cached event costs beside its bytes: the Event
// (48 B) and the allocator's rounding of the copy of its data.
const tailOverhead = 64

// tailScript states, on the store's clock, what a tail of a project's
// stream can be trusted for: Redis's time, whether an appender holds the
// partition's lease (without one, events are being published that nobody
// records), the project's floor (its newest evicted event), the stream's
// first id and the partition's gaps. ReadFrom runs it in one MULTI with
// the reads of the stream, as Since runs checkScript, so no append or
// eviction falls between the proof and the events. Replies
// {now, lease, floor or "", first or "", gap...}.
var tailScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = redis.call('EXISTS', KEYS[3])
local f = redis.call('HGET', KEYS[1], 'f') or ''
local first = ''
local e = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
if #e > 0 then first = e[1][1] end
local r = {now, lease, f, first}
for _, g in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do r[#r + 1] = g end
return r
`)

// tailCaches keeps, per project, the newest events of its stream that a
// node has read, so that the resume storm (10,000 subscriptions of one
// project coming back within seconds, each anchored among its last ~200
// events) reads each event from Redis once rather than once per
// subscription: ~1 GB through Redis otherwise. Bounded per project by the
// window (older events leave at every refresh) and in all by max bytes,
// least recently read projects first.
type tailCaches struct {
	max int64

	mu     sync.Mutex
	byName map[string]*tail
	lru    list.List // of *tail, most recently read first
	bytes  int64     // the sum of the counted of the tails in byName
}

func newTailCaches(max int64) *tailCaches {
	if max <= 0 {
		max = DefaultTailCacheBytes
	}
	return &tailCaches{max: max, byName: make(map[string]*tail)}
}

// tailFixed is what a project's tail costs the caches however little it
// holds (the struct, its map and list entries), counted so that reads of
// many projects with nothing to hold are bounded too.
const tailFixed = 256

// get returns project's tail, made empty if there is none.
func (c *tailCaches) get(project string) *tail {
	c.mu.Lock()
	defer c.mu.Unlock()
	tl := c.byName[project]
	if tl == nil {
		tl = &tail{project: project, counted: tailFixed}
		tl.elem = c.lru.PushFront(tl)
		c.byName[project] = tl
		c.bytes += tailFixed
		c.evictLocked()
	}
	return tl
}

// settle counts tl's new size and evicts the least recently read tails
// until the caches fit. A tail evicted while in use is finished by its
// readers and then forgotten: it is no longer counted nor found.
func (c *tailCaches) settle(tl *tail, size int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if tl.elem == nil {
		return
	}
	c.bytes += tailFixed + size - tl.counted
	tl.counted = tailFixed + size
	c.lru.MoveToFront(tl.elem)
	c.evictLocked()
}

// evictLocked forgets the least recently read tails until the caches fit.
func (c *tailCaches) evictLocked() {
	for c.bytes > c.max {
		e := c.lru.Back()
		v := e.Value.(*tail)
		c.lru.Remove(e)
		delete(c.byName, v.project)
		v.elem = nil
		c.bytes -= v.counted
		v.counted = 0
	}
}

// held returns the bytes the caches count (for tests).
func (c *tailCaches) held() int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// tail is the cached end of one project's stream.
//
// Invariant (after a refresh at Redis time now): events are exactly the
// stream's entries from events[0] to its newest, in order, every one after
// floor and inside the window; whole tells that the stream holds no
// usable event before events[0] (none, or only evicted or expired ones).
// Events are only appended at the end of a stream and evicted from its
// start, so reading on from last (exclusive) keeps them contiguous, and
// the floor read in the same MULTI says which of them left.
type tail struct {
	project string
	elem    *list.Element // in tailCaches.lru; nil once evicted (tailCaches.mu)
	counted int64         // bytes counted in tailCaches.bytes (tailCaches.mu)

	// started counts refreshes begun: a reader that saw n before
	// waiting may use any refresh numbered above n, which began after it
	// asked, so coalesced readers never get an older state than a read
	// of their own would have.
	started atomic.Uint64

	mu     sync.Mutex // held across a refresh and the reading of a span
	done   uint64     // the number of the last refresh that succeeded
	failed uint64     // the number of the last refresh that failed
	err    error      // why it failed
	events []Event    // oldest first, each with its digest
	last   Position   // the newest id read from the stream (zero: none yet)
	whole  bool       // nothing usable is held before events[0]: no need to page back
	now    uint64     // Redis's time at the last refresh (ms)
	lease  bool       // an appender held the lease then
	floor  Position   // the project's floor then
	gap    Position   // the partition's newest gap then (zero: none)
	bytes  int64      // what events cost, tailOverhead included
}

// ReadFrom implements Reader, through the project's tail cache: one
// refresh (a MULTI of tailScript and XRANGE from the newest cached id)
// serves every reader of the project that asked before it began; an
// anchor older than the cache pages back with XREVRANGE.
func (r *Redis) ReadFrom(ctx context.Context, project string, from Anchor, floorMS uint64) (Span, error) {
	tl := r.tails.get(project)
	asked := tl.started.Load()
	tl.mu.Lock()
	defer tl.mu.Unlock()
	if err := ctx.Err(); err != nil {
		return Span{}, fmt.Errorf("history: read %s: %w", project, err)
	}
	switch {
	case tl.done > asked:
		// A refresh that began after this call asked has succeeded.
	case tl.failed > asked:
		// One has failed: so would this call's own, in all likelihood,
		// and a storm of readers must not queue up behind a Redis that
		// hangs, each for its own timeout.
		return Span{}, tl.err
	default:
		if err := r.refresh(ctx, tl, false); err != nil {
			return Span{}, err
		}
	}
	for {
		span, more := tl.span(from, floorMS, uint64(r.cfg.Window.Milliseconds()))
		if !more {
			r.tails.settle(tl, tl.bytes)
			return span, nil
		}
		if err := r.refresh(ctx, tl, true); err != nil {
			return Span{}, err
		}
	}
}

// span answers a read from tl as last refreshed; more tells that the
// answer needs events older than the cache holds.
func (tl *tail) span(from Anchor, floorMS, window uint64) (span Span, more bool) {
	if !tl.lease {
		return Span{}, false // nobody records what is published now
	}
	evs := tl.events
	if from.IsZero() {
		after := Position{MS: floorMS, Seq: 1<<64 - 1}
		if floorMS+window < tl.now || after.Less(tl.floor) || after.Less(tl.gap) {
			return Span{}, false
		}
		if !tl.whole && (len(evs) == 0 || evs[0].Pos.MS > floorMS) {
			return Span{}, true
		}
	}
	first, start, end, ok := cut(len(evs), func(i int) (Position, uint64) { return evs[i].Pos, evs[i].Digest }, from, floorMS)
	switch {
	case !ok:
		return Span{}, !tl.whole
	case end >= 0 && evs[end].Pos.Less(tl.gap):
		return Span{}, false
	}
	evs = evs[first:]
	return Span{Events: slices.Clone(evs), Start: start, Complete: true}, false
}

// refresh runs refreshOnce and remembers a failure for the readers
// waiting behind it.
func (r *Redis) refresh(ctx context.Context, tl *tail, back bool) error {
	n, err := r.refreshOnce(ctx, tl, back)
	if err != nil && ctx.Err() == nil { // a caller's own deadline is not Redis's failure
		tl.failed, tl.err = n, err
	}
	return err
}

// refreshOnce reads what the stream gained since tl.last (the newest page,
// the first time) and, with back, the page before tl.events[0], and the
// proof of tailScript, in one MULTI; then drops what left the stream.
func (r *Redis) refreshOnce(ctx context.Context, tl *tail, back bool) (uint64, error) {
	n := tl.started.Add(1)
	t := r.tag(r.PartitionOf(tl.project))
	stream := t + "s:" + tl.project
	back = back && len(tl.events) > 0
	var proof *redis.Cmd
	var older, newer *redis.XMessageSliceCmd
	run := func() error {
		_, err := r.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
			proof = tailScript.EvalSha(ctx, p, []string{t + "m:" + tl.project, t + "gaps", t + "lease", stream})
			if back {
				older = p.XRevRangeN(ctx, stream, "("+tl.events[0].Pos.String(), "-", tailPage)
			}
			if tl.last == (Position{}) {
				newer = p.XRevRangeN(ctx, stream, "+", "-", tailPage)
			} else {
				newer = p.XRange(ctx, stream, "("+tl.last.String(), "+")
			}
			return nil
		})
		return err
	}
	err := run()
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		// A restarted or new Redis: load the script, once, and again.
		if err = tailScript.Load(ctx, r.c).Err(); err == nil {
			err = run()
		}
	}
	if err != nil {
		return n, fmt.Errorf("history: read %s: %w", tl.project, err)
	}
	pr, err := parseTailProof(proof)
	if err != nil {
		return n, fmt.Errorf("history: read %s: %w", tl.project, err)
	}

	window := uint64(r.cfg.Window.Milliseconds())
	if tl.last != (Position{}) && tl.last.MS+window < pr.now {
		// The project was idle longer than the window: nothing cached
		// is usable, and its partition may have expired since and be
		// writing ids below tl.last (a Redis clock that went back), which
		// reading on from tl.last would miss. Start again from the end.
		tl.events, tl.last, tl.whole, tl.bytes = nil, Position{}, false, 0
		return r.refreshOnce(ctx, tl, false)
	}
	var front, tailEvs []Event
	shortBack := false
	if back {
		if front, err = parseEntries(older.Val(), true); err != nil {
			return n, fmt.Errorf("history: read %s: %w", tl.project, err)
		}
		shortBack = len(front) < tailPage
	}
	cold := tl.last == (Position{})
	if tailEvs, err = parseEntries(newer.Val(), cold); err != nil {
		return n, fmt.Errorf("history: read %s: %w", tl.project, err)
	}
	if cold {
		shortBack = len(tailEvs) < tailPage
	}
	// Each page is in order (parseEntries); check the seams.
	if err := inOrder(front, tl.events); err != nil {
		return n, fmt.Errorf("history: read %s: %w", tl.project, err)
	}
	if err := inOrder(tl.events, tailEvs); err != nil {
		return n, fmt.Errorf("history: read %s: %w", tl.project, err)
	}
	evs, size := tl.events, tl.bytes
	if len(front) > 0 {
		evs = append(front, evs...)
		size += eventsBytes(front)
	}
	// Appending in place is safe: spans are copies, made under tl.mu.
	evs = append(evs, tailEvs...)
	size += eventsBytes(tailEvs)
	// What was evicted (at or before the floor) or left the window is no
	// longer history; both leave from the stream's start.
	i := 0
	for i < len(evs) && (!pr.floor.Less(evs[i].Pos) || evs[i].Pos.MS+window < pr.now) {
		i++
	}
	whole := i > 0 || shortBack || pr.first == "" ||
		len(evs) > 0 && evs[0].Pos.String() == pr.first ||
		!back && !cold && tl.whole
	size -= eventsBytes(evs[:i])
	clear(evs[:i]) // their data can go; the next growth of evs drops the slots
	evs = evs[i:]
	if len(tailEvs) > 0 {
		tl.last = tailEvs[len(tailEvs)-1].Pos
	}
	tl.events, tl.whole, tl.bytes = evs, whole, size
	tl.now, tl.lease, tl.floor, tl.gap = pr.now, pr.lease, pr.floor, pr.gap
	tl.done = n
	return n, nil
}

// tailProof is tailScript's reply.
type tailProof struct {
	now   uint64
	lease bool
	floor Position
	first string
	gap   Position // the newest
}

// parseTailProof reads tailScript's reply: outside input, checked.
func parseTailProof(cmd *redis.Cmd) (tailProof, error) {
	var pr tailProof
	res, err := cmd.Slice()
	if err != nil {
		return pr, fmt.Errorf("tail proof: %w", err)
	}
	if len(res) < 4 {
		return pr, fmt.Errorf("tail proof: %d fields", len(res))
	}
	now, ok1 := res[0].(int64)
	lease, ok2 := res[1].(int64)
	floor, ok3 := res[2].(string)
	first, ok4 := res[3].(string)
	if !ok1 || !ok2 || !ok3 || !ok4 || now < 0 {
		return pr, fmt.Errorf("tail proof: malformed %v", res[:4])
	}
	pr.now, pr.lease, pr.first = uint64(now), lease == 1, first
	if floor != "" {
		if pr.floor, err = ParsePosition(floor); err != nil {
			return pr, fmt.Errorf("tail proof: floor: %w", err)
		}
	}
	for _, g := range res[4:] {
		s, _ := g.(string)
		pos, err := ParsePosition(s)
		if err != nil {
			return pr, fmt.Errorf("tail proof: gap: %w", err)
		}
		if pr.gap.Less(pos) {
			pr.gap = pos
		}
	}
	return pr, nil
}

// inOrder checks that b follows a.
func inOrder(a, b []Event) error {
	if len(a) > 0 && len(b) > 0 && !a[len(a)-1].Pos.Less(b[0].Pos) {
		return fmt.Errorf("Redis answered %s after %s", b[0].Pos, a[len(a)-1].Pos)
	}
	return nil
}

// eventsBytes is what evs cost the cache.
func eventsBytes(evs []Event) int64 {
	var n int64
	for _, e := range evs {
		n += int64(len(e.Data)) + tailOverhead
	}
	return n
}

// parseEntries turns stream entries into events with their digests,
// oldest first (reversed: the entries came newest first).
func parseEntries(msgs []redis.XMessage, reversed bool) ([]Event, error) {
	evs := make([]Event, len(msgs))
	for i, m := range msgs {
		pos, err := ParsePosition(m.ID)
		if err != nil {
			return nil, fmt.Errorf("stream entry: %w", err)
		}
		d, ok := m.Values["d"].(string)
		if !ok {
			return nil, fmt.Errorf("stream entry %s: no field d", m.ID)
		}
		j := i
		if reversed {
			j = len(msgs) - 1 - i
		}
		evs[j] = Event{Pos: pos, Data: []byte(d), Digest: Digest([]byte(d))}
	}
	for i := 1; i < len(evs); i++ {
		if !evs[i-1].Pos.Less(evs[i].Pos) {
			return nil, fmt.Errorf("stream entries out of order: %s after %s", evs[i].Pos, evs[i-1].Pos)
		}
	}
	return evs, nil
}

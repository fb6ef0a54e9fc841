package server

import (
	"slices"
	"strings"
	"sync"
	"unsafe"

	"github.com/gobwas/ws"
	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/index"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
	"github.com/switchboard-rt/switchboard/pkg/query"
	"github.com/switchboard-rt/switchboard/pkg/usage"
)

// router turns backbone messages into queued frames. It runs on the
// broker's single consumer goroutine. mu is held for each message, and by
// the end of a permission hold (permissions.go), which delivers the events
// it kept in between, in order; it also guards the scratch space below.
type router struct {
	srv *Server
	mu  sync.Mutex

	// Per-event state, reset by route.
	ev       *protocol.Event
	born     int64          // its arrival (deliveryLatency.stamp)
	doc      query.Document // the event's payload, decoded on demand
	prefix   []byte         // the event's shared, encode-once part
	plain    frameCache     // frames for connections without compression
	deflated frameCache     // frames for connections that negotiated permessage-deflate
	zprefix  lazyDeflate    // prefix compressed (deflate.go), once the first compressing recipient needs it
	sched    []*conn        // connections to hand to the write pool
	count    int            // frames queued for this event
	zcount   int            // of which compressed
	zplain   int            // their payload bytes before compression
	zwire    int            // and after
	outBytes int            // payload bytes of the frames queued for this event (usage's outbound)
	deflater eventDeflater

	// usage is the router's per-project count (realtime.messages.sent and
	// realtime.outbound of events), one Add per event in finish: no write
	// per delivery outside the router's own fields above. The usage
	// collector swaps it for an empty one once a second (swapUsage).
	usage *usage.Tally

	releasing bool     // a permission hold is delivering its kept events (visit lets its connections in)
	ids       []string // scratch: matched subscription ids of one recipient
	key       []byte   // scratch: ids joined, as the frames key
	tail      []byte   // scratch: encoded tail
	slab      []byte   // frame heads and tails are carved from it (frameBuf)
}

// maxFrameCache bounds the per-event frame cache: events whose recipients
// all have distinct subscription ids just skip it beyond this.
const maxFrameCache = 1024

func newRouter(s *Server) *router {
	return &router{srv: s, plain: newFrameCache(), deflated: newFrameCache(), usage: usage.NewTally()}
}

// frameCache holds an event's frames by distinct list of matched ids.
type frameCache struct {
	frames  map[string]outFrame
	last    outFrame // the frame frameFor returned last
	lastIDs []string // its ids; empty when none yet for this event
}

func newFrameCache() frameCache { return frameCache{frames: make(map[string]outFrame)} }

func (fc *frameCache) reset() {
	clear(fc.frames)
	clear(fc.lastIDs)
	fc.last, fc.lastIDs = outFrame{}, fc.lastIDs[:0]
}

// route handles one backbone message.
func (r *router) route(msg []byte) {
	s := r.srv
	born := s.latency.stamp()
	ev, err := protocol.ParseEvent(msg)
	if err != nil {
		s.metrics.invalidEvents.Inc()
		s.invalidLog.Warn("invalid backbone message", zap.Error(err), zap.Int("bytes", len(msg)))
		return
	}
	s.metrics.events.Inc()
	r.mu.Lock()
	defer r.mu.Unlock()
	var digest uint64
	if s.resume != nil {
		digest = s.resume.observe(ev.Project, msg)
	}
	if ev.PermissionsChanged && ev.UserID != "" {
		// Before the delivery, as Appwrite's worker re-resolves the user
		// before it matches subscribers (app/realtime.php): the user's
		// connections get the announcing event from their hold, against
		// the roles the change gave them. So the creator of a team
		// receives its teams.<T>.create, published for team:<T> alone.
		s.holds.begin(ev.Project, ev.UserID)
	}
	if len(ev.Roles) > 0 && len(ev.Channels) > 0 {
		r.begin(ev, born)
		s.idx.Lookup(ev.Project, ev.Roles, ev.Channels, r.visit)
		r.finish()
		s.holds.record(ev)
	}
	if s.resume != nil && s.resume.active.Load() > 0 {
		s.resume.keep(ev, digest)
	}
}

// begin sets up the delivery of ev, which arrived at born. The caller
// holds r.mu.
func (r *router) begin(ev *protocol.Event, born int64) {
	r.ev, r.born = ev, born
	r.doc.Reset(ev.Payload)
	// A fresh slice per event: queued frames keep referencing it after
	// the delivery.
	r.prefix = protocol.AppendEventPrefix(make([]byte, 0, 256+len(ev.Payload)), ev)
	r.count, r.zcount, r.zplain, r.zwire, r.outBytes = 0, 0, 0, 0, 0
}

// finish wakes the write pool for the connections the event was queued on.
func (r *router) finish() {
	s := r.srv
	// Counted before the write pool is woken, so that a client that got
	// the event from the pool finds it counted in a scrape made after.
	s.metrics.deliveries.Add(float64(r.count))
	if r.zcount > 0 {
		s.metrics.deflatedDelivered.Add(float64(r.zcount))
		s.metrics.deflateBytes.WithLabelValues("out", "plain").Add(float64(r.zplain))
		s.metrics.deflateBytes.WithLabelValues("out", "deflated").Add(float64(r.zwire))
	}
	if r.count > 0 {
		r.usage.Add(r.ev.Project, usage.Counts{Messages: int64(r.count), Outbound: int64(r.outBytes)})
	}
	for i, c := range r.sched {
		s.pool.ch <- c
		r.sched[i] = nil
	}
	r.sched = r.sched[:0]
	r.plain.reset()
	r.deflated.reset()
	r.ev, r.prefix, r.zprefix = nil, nil, lazyDeflate{}
}

// visit queues the event on c if one of c's subscriptions matches it. The
// index calls it for each recipient, under a shard's read lock: it takes
// only the connection's own lock and never blocks. A connection whose
// roles are being re-resolved is left out (its hold delivers the event
// later, against the new roles), unless this is that hold delivering it
// (r.releasing).
func (r *router) visit(_ index.ID, c *conn) {
	c.mu.Lock()
	if c.state != stateLive || (c.flags&flagHeld != 0 && !r.releasing) {
		c.mu.Unlock()
		return
	}
	r.ids = c.matchLocked(r.ev, &r.doc, r.ids[:0])
	if len(r.ids) == 0 {
		c.mu.Unlock()
		return
	}
	r.queueUnlock(c, r.frameFor(r.ids, c.flags&flagDeflate != 0))
}

// queueUnlock queues f, an event's frame, on c and counts it; the caller
// holds c.mu, which queueUnlock releases. c is scheduled for the write
// pool when the event's delivery finishes.
func (r *router) queueUnlock(c *conn, f outFrame) {
	if err := c.q.push(f, r.srv.cfg.MaxQueueBytes); err != nil {
		c.slowConsumerLocked()
	}
	r.count++
	r.outBytes += len(f.body) + len(f.tail) // the message as sent: compressed, for a compressed frame
	if f.head[0]&rsv1Bit != 0 {
		r.zcount++
		r.zplain += len(r.prefix) + storedRawSize(len(f.tail))
		r.zwire += len(f.body) + len(f.tail)
	}
	// A slow consumer that was just cut off is woken even while it waits
	// for EPOLLOUT, so that it is closed now rather than when it reads.
	wake := c.q.wake(c.state == stateClosing)
	c.mu.Unlock()
	if wake {
		r.sched = append(r.sched, c)
	}
}

// swapUsage hands the usage collector the router's count and keeps empty
// in its place (usage.Swapper): the only moment the collector takes r.mu.
func (r *router) swapUsage(empty *usage.Tally) *usage.Tally {
	r.mu.Lock()
	full := r.usage
	r.usage = empty
	r.mu.Unlock()
	return full
}

// matchLocked appends the ids of c's subscriptions that ev matches: on one
// of its channels, and passing its filter (doc is ev's payload). The index
// already matched project, roles and some channel; this picks the
// subscriptions, and is also what keeps a subscription that was just
// removed (but not yet re-indexed) from receiving.
func (c *conn) matchLocked(ev *protocol.Event, doc *query.Document, dst []string) []string {
	return matchSubscriptions(c.subs, ev, doc, dst)
}

// matchSubscriptions appends the ids of subs that ev matches (doc is its
// payload): on one of their channels, and passing their filters.
func matchSubscriptions(subs []subscription, ev *protocol.Event, doc *query.Document, dst []string) []string {
	for i := range subs {
		sub := &subs[i]
		if anyIn(sub.channels, ev.Channels) && sub.filter.Match(doc) {
			dst = append(dst, sub.id)
		}
	}
	return dst
}

func anyIn(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return true
			}
		}
	}
	return false
}

// frameFor returns the frame for one list of matched ids, compressed when
// deflate (the recipient negotiated it) and worth it: the shared prefix
// plus a header and tail built once per distinct list.
func (r *router) frameFor(ids []string, deflate bool) outFrame {
	fc := &r.plain
	if deflate {
		fc = &r.deflated
	}
	// Recipients that subscribed alike come in runs, and their ids are the
	// same interned strings (slotSubscriptionID), so comparing with the
	// last list is cheaper than building the key and looking it up.
	if slices.Equal(ids, fc.lastIDs) {
		return fc.last
	}
	key, borrowed := frameKey(ids, &r.key)
	f, ok := fc.frames[key]
	if !ok {
		f = r.newFrame(ids, deflate)
		if len(fc.frames) < maxFrameCache {
			if borrowed {
				key = strings.Clone(key)
			}
			fc.frames[key] = f
		}
	}
	fc.last, fc.lastIDs = f, append(fc.lastIDs[:0], ids...)
	return f
}

// frameKey returns the frame cache's key for ids. Most recipients match
// one subscription, and its id is the key as it is: a string the
// connection already holds, so the key costs no allocation. More ids are
// joined in scratch, each followed by a NUL, and the key borrows scratch's
// bytes: good for a lookup, copied before the map keeps it. The two forms
// never collide because a subscription id holds no control character
// (protocol.validName; the node's own ids are hex).
func frameKey(ids []string, scratch *[]byte) (key string, borrowed bool) {
	if len(ids) == 1 {
		return ids[0], false
	}
	b := (*scratch)[:0]
	for _, id := range ids {
		b = append(append(b, id...), 0)
	}
	*scratch = b
	return unsafe.String(unsafe.SliceData(b), len(b)), true
}

// newFrame builds the frame for ids: a header and tail of their own around
// the shared prefix. A compressed frame (deflate, and the payload reaches
// CompressionMinBytes) carries the prefix deflated once per event and the
// tail as stored deflate blocks (appendStoredFinal), so no recipient and
// no id list costs a compression of its own.
func (r *router) newFrame(ids []string, deflate bool) outFrame {
	r.tail = protocol.AppendEventTail(r.tail[:0], ids)
	plain := len(r.prefix) + len(r.tail)
	if deflate && plain >= r.srv.cfg.CompressionMinBytes {
		if z := r.sharedDeflated(); z != nil {
			stored := storedFinalSize(len(r.tail))
			buf := r.frameBuf(maxServerHeader + stored)
			buf = appendFrameHeader(buf, ws.OpText, len(z)+stored)
			buf[0] |= rsv1Bit // RFC 7692 6: the first frame of a compressed message
			h := len(buf)
			buf = appendStoredFinal(buf, r.tail)
			return outFrame{head: buf[:h:h], body: z, tail: buf[h:], born: r.born}
		}
	}
	buf := r.frameBuf(maxServerHeader + len(r.tail))
	buf = appendFrameHeader(buf, ws.OpText, plain)
	h := len(buf)
	buf = append(buf, r.tail...)
	return outFrame{head: buf[:h:h], body: r.prefix, tail: buf[h:], born: r.born}
}

// slabSize is the size of the blocks frameBuf carves frames' heads and
// tails from: one allocation per 5-10 distinct frames (a head and a tail
// of one id take 25-50 bytes) instead of one each, which is most of what
// an event whose recipients all subscribed under ids of their own costs
// beyond the index. Small, because a frame still queued keeps its whole
// block alive: a stalled connection holding N frames pins at most N
// blocks, ≤ 256 B each, next to the event prefixes its queue counts.
const slabSize = 256

// frameBuf returns an empty slice with capacity n for a new frame's head
// and tail. It is carved from r.slab and never handed out twice: a frame
// queued on a connection references it until written, after the event
// that made it is gone.
func (r *router) frameBuf(n int) []byte {
	if cap(r.slab)-len(r.slab) < n {
		r.slab = make([]byte, 0, max(n, slabSize))
	}
	l := len(r.slab)
	r.slab = r.slab[:l+n]
	return r.slab[l : l : l+n]
}

// sharedDeflated returns the event's prefix compressed, computing it for
// the first recipient that needs it; nil when compression does not make it
// smaller (then compressing recipients get the plain frame).
func (r *router) sharedDeflated() []byte {
	z, fresh := r.zprefix.get(&r.deflater, r.prefix)
	if fresh {
		r.srv.metrics.deflatedEvents.Inc()
	}
	return z
}

// lazyDeflate is an event prefix's compressed form, computed once, for the
// first recipient that needs it: the router's and explain's.
type lazyDeflate struct {
	done bool
	z    []byte // nil when compressing does not make the prefix smaller
}

// get returns prefix compressed by d, computing it on the first call;
// fresh reports whether this call did.
func (l *lazyDeflate) get(d *eventDeflater, prefix []byte) (z []byte, fresh bool) {
	if l.done {
		return l.z, false
	}
	l.done = true
	if l.z = d.deflateShared(prefix); len(l.z) >= len(prefix) {
		l.z = nil
	}
	return l.z, true
}

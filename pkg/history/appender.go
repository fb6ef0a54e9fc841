package history

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultLeaseTTL is how long a partition's lease lasts without renewal:
// a dead appender is replaced within TTL + TTL/3. Three seconds keeps the
// successor's ring (DefaultRingEvents) able to bridge the hand-over at up
// to ~1,000 events/s per partition.
const DefaultLeaseTTL = 3 * time.Second

// DefaultRingEvents is how many recent events per partition an Appender
// keeps, leader or not, to bridge a change of leader without loss.
const DefaultRingEvents = 4096

// leaseScript takes the lease when free, or renews it when held by the
// caller (SET NX PX and a fenced PEXPIRE, in one call). Replies 1 when the
// caller holds it afterwards.
var leaseScript = redis.NewScript(`
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
return 1
`)

// releaseScript gives the lease up, if still the caller's.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// sealScript records, fenced by the lease and only while history's last
// is still ARGV[2], that history is whole up to mark ARGV[3]: every event
// published before the mark is in it, up to last. A leader writes it as
// its last act on the partition (Appender.Mark); a successor whose feed
// heard the mark continues history right after it (ring.sealed). Replies
// 1 when written.
var sealScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'last') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], 'seal', ARGV[3] .. ' ' .. ARGV[2])
return 1
`)

// Lease elects one appender per partition: SET NX PX with the node's id,
// renewed every TTL/3 by its holder. Held answers from the local clock,
// conservatively: until the renewal's start + TTL - TTL/10, so that a
// holder whose clock runs up to 10 % fast stops believing before Redis
// lets the key lapse. Appends are fenced by the key itself (appendScript),
// so two nodes never both append even if a belief is wrong.
type Lease struct {
	c    redis.UniversalClient
	keys []string
	node string
	ttl  time.Duration
	now  func() time.Time

	mu        sync.Mutex
	until     []time.Time // per partition: held until then
	notBefore []time.Time // per partition: not taken before then (Yield)
}

// NewLease returns the lease of every partition of r for node r's Node.
func NewLease(r *Redis, ttl time.Duration) *Lease {
	if ttl <= 0 {
		ttl = DefaultLeaseTTL
	}
	l := &Lease{c: r.c, node: r.node, ttl: ttl, now: time.Now, until: make([]time.Time, r.n), notBefore: make([]time.Time, r.n)}
	for p := range r.n {
		l.keys = append(l.keys, r.LeaseKey(p))
	}
	return l
}

// Tick takes or renews every partition's lease once. It returns the
// first error; partitions that answered are updated anyway.
func (l *Lease) Tick(ctx context.Context) error {
	var first error
	for p, k := range l.keys {
		start := l.now()
		l.mu.Lock()
		yielding := start.Before(l.notBefore[p])
		l.mu.Unlock()
		if yielding {
			// Yielded: give it up again if a tick took it meanwhile.
			err := releaseScript.Run(ctx, l.c, []string{k}, l.node).Err()
			if err != nil && first == nil {
				first = fmt.Errorf("history: lease %s: %w", k, err)
			}
			continue
		}
		ok, err := leaseScript.Run(ctx, l.c, []string{k}, l.node, l.ttl.Milliseconds()).Int()
		l.mu.Lock()
		if err == nil && ok == 1 {
			l.until[p] = start.Add(l.ttl - l.ttl/10)
		} else {
			l.until[p] = time.Time{}
		}
		l.mu.Unlock()
		if err != nil && first == nil {
			first = fmt.Errorf("history: lease %s: %w", k, err)
		}
	}
	return first
}

// Run ticks every TTL/3 until ctx ends, then releases what it holds.
func (l *Lease) Run(ctx context.Context) {
	t := time.NewTicker(l.ttl / 3)
	defer t.Stop()
	for {
		_ = l.Tick(ctx) // a failed tick lets Held lapse; the next one retries
		select {
		case <-ctx.Done():
			rctx, cancel := context.WithTimeout(context.Background(), time.Second)
			l.Release(rctx)
			cancel()
			return
		case <-t.C:
		}
	}
}

// Held tells whether this node holds partition p's lease.
func (l *Lease) Held(p int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.now().Before(l.until[p])
}

// Yield gives partition p's lease up and keeps away from it for d, so
// that another node takes it: one whose feed holds the events this one
// lacks to continue history without a gap.
func (l *Lease) Yield(ctx context.Context, p int, d time.Duration) {
	l.mu.Lock()
	l.until[p] = time.Time{}
	l.notBefore[p] = l.now().Add(d)
	l.mu.Unlock()
	_ = releaseScript.Run(ctx, l.c, []string{l.keys[p]}, l.node).Err() // it lapses anyway
}

// Release gives up every lease this node holds (a drain's last step), so
// that a successor takes over at its next tick instead of after the TTL.
func (l *Lease) Release(ctx context.Context) {
	for p, k := range l.keys {
		_ = releaseScript.Run(ctx, l.c, []string{k}, l.node).Err() // it lapses anyway
		l.mu.Lock()
		l.until[p] = time.Time{}
		l.mu.Unlock()
	}
}

// ringEntry is one recent event an Appender saw.
type ringEntry struct {
	project string
	data    []byte
	digest  uint64
}

// ring is one partition's recent events in feed order. Events [next,
// end) are not yet known to be in Redis. Absolute indexes: the entry of
// index i is buf[i % len(buf)], held while start <= i < end.
type ring struct {
	buf        []ringEntry
	start, end int
	next       int
	last       string // the partition's last as this node believes it
	gap        bool   // the next append records a gap
	// await, when set, is where history stands (the partition's last)
	// and this node's feed has not reached yet: it appends nothing until
	// its ring holds it, or awaitUntil passes (then a gap).
	await      string
	awaitUntil time.Time
	// awaitSeal is the seal (sealScript) history had when await was set:
	// the feed bringing its mark also ends the wait.
	awaitSeal string
	// yielded: this node gave the lease up once for want of the last
	// event; the next time it leads without it, it records the gap.
	yielded bool
	// marks are the newest marks the feed brought (Appender.Mark), each
	// at the ring's end when it came: events from at on followed it.
	marks []ringMark
	// sealing is the mark this node published to hand the partition over
	// (Feed's hand-over); empty when none.
	sealing string
}

// ringMark is a mark heard in the feed, and where.
type ringMark struct {
	id string
	at int
}

// maxMarks bounds the marks a ring keeps: a hand-over's successor needs
// only the newest, and a few more ride out marks of nodes handing over
// other partitions' leases at the same time.
const maxMarks = 8

func (r *ring) at(i int) *ringEntry { return &r.buf[i%len(r.buf)] }

// mark notes mark id at the ring's end, and forgets marks whose following
// events the ring no longer holds whole.
func (r *ring) mark(id string) {
	kept := r.marks[:0]
	for _, m := range r.marks {
		if m.at >= r.start {
			kept = append(kept, m)
		}
	}
	if len(kept) == maxMarks {
		kept = append(kept[:0], kept[1:]...)
	}
	r.marks = append(kept, ringMark{id: id, at: r.end})
}

// sealed tells where r continues a history whose last is last, by the
// seal a leader wrote when it handed the partition over ("<mark> <last>",
// sealScript): right after the mark, when the seal is of this very last
// and r heard the mark and still holds every event since.
func (r *ring) sealed(last, seal string) (int, bool) {
	i := strings.LastIndexByte(seal, ' ')
	if last == "" || i < 0 || seal[i+1:] != last {
		return 0, false
	}
	for _, m := range r.marks {
		if m.id == seal[:i] && m.at >= r.start {
			return m.at, true
		}
	}
	return 0, false
}

// continues tells where r continues a history whose last is last: after
// the newest run of last's events in the ring, or else after the mark
// of seal (sealed).
func (r *ring) continues(last, seal string) (int, bool) {
	if i, ok := r.find(last); ok {
		return i, true
	}
	return r.sealed(last, seal)
}

// whole tells that r has appended every event it holds, in the chain of
// a history whose last it knows: what a hand-over's seal needs.
func (r *ring) whole() bool {
	return r.last != "" && !r.gap && r.await == "" && r.next == r.end
}

func (r *ring) push(e ringEntry) {
	if r.end-r.start == len(r.buf) {
		r.start++
		if r.next < r.start {
			r.next = r.start
			r.gap = true // an event we had to append fell out
		}
	}
	*r.at(r.end) = e
	r.end++
}

// find returns the index after the run of events whose digests are last
// (hex, 16 characters each), the newest such run; false if not held.
func (r *ring) find(last string) (int, bool) {
	k := len(last) / 16
	if k == 0 || len(last)%16 != 0 {
		return 0, false
	}
	want := make([]uint64, k)
	for j := range want {
		d, err := strconv.ParseUint(last[16*j:16*j+16], 16, 64)
		if err != nil {
			return 0, false
		}
		want[j] = d
	}
	for i := r.end - 1; i-k+1 >= r.start; i-- {
		match := true
		for j, d := range want {
			if r.at(i-k+1+j).digest != d {
				match = false
				break
			}
		}
		if match {
			return i + 1, true
		}
	}
	return 0, false
}

// Appender copies the broker's feed into the Redis history on the node
// that holds a partition's lease. Every node runs one and offers it every
// message in the order its subscription delivered them (Pub/Sub gives every
// subscriber of a channel the same order); each keeps the last RingEvents
// of each partition. Appends are chained: each states the digests of the
// partition's last events as it believes them, and Redis refuses one that
// does not follow. So when a successor takes over (the leader died or
// released), its first append is refused with where history stands, it
// finds that point in its ring and appends what followed, in order: no
// event lost or written twice across a change of leader, as long as the
// successor's ring still holds the last appended event (at 1,000 events/s a
// partition, a 4,096-event ring spans 4 s, more than a lapsed lease's TTL
// + TTL/3). Otherwise it records a gap, and readers from before it see
// incomplete history.
//
// Offer is called from one goroutine (the broker's handler, beside the
// router, never on it): it makes one round trip per event while leader.
type Appender struct {
	store *Redis
	lease *Lease
	// resyncWait is how long a successor waits for its own feed to bring
	// the last appended event before it records a gap (DefaultResyncWait).
	resyncWait time.Duration

	rings []ring
	marks int // marks published so far, for their ids
}

// DefaultResyncWait bounds how long a new leader whose feed runs behind
// its predecessor's (a loaded node's Pub/Sub reader lags) waits to hear
// the last event history holds. It appends nothing meanwhile, which costs
// readers nothing that a gap would not cost them more: a gap makes every
// position before it incomplete for good.
const DefaultResyncWait = 5 * time.Second

// NewAppender returns an Appender of store for lease; ringEvents <= 0 means
// DefaultRingEvents.
func NewAppender(store *Redis, lease *Lease, ringEvents int) *Appender {
	if ringEvents <= 0 {
		ringEvents = DefaultRingEvents
	}
	a := &Appender{store: store, lease: lease, resyncWait: DefaultResyncWait, rings: make([]ring, store.n)}
	for i := range a.rings {
		a.rings[i].buf = make([]ringEntry, ringEvents)
	}
	return a
}

// Offer takes one message of the feed for project. While this node holds
// the partition's lease, it appends it (and whatever the chain shows is
// missing before it).
func (a *Appender) Offer(ctx context.Context, project string, data []byte) error {
	p := a.store.PartitionOf(project)
	r := &a.rings[p]
	r.push(ringEntry{project: project, data: append([]byte(nil), data...), digest: Digest(data)})
	if !a.lease.Held(p) {
		// A follower appends nothing; were it to take over now, it would
		// start from the newest and let the chain walk it back.
		r.next, r.last, r.gap, r.await = r.end, "", false, ""
		return nil
	}
	if !a.settleAwait(ctx, p, r) {
		return nil
	}
	return a.flush(ctx, r)
}

// settleAwait decides, for a ring waiting for history's last (await),
// whether appending may go on: the feed brought it, or the wait is over
// and the gap is recorded. A leader that never had it gives the lease up
// once instead (a fresh node that won the lease over a node whose feed
// holds it). It runs at every event (Offer) and every Bridge, so that a
// quiet project's wait ends too.
func (a *Appender) settleAwait(ctx context.Context, p int, r *ring) bool {
	if r.await == "" {
		return true
	}
	i, ok := r.continues(r.await, r.awaitSeal)
	switch {
	case ok:
		// The feed caught up (or brought the mark of a hand-over):
		// append what follows history's last.
		r.next, r.last, r.await, r.awaitSeal, r.yielded = i, r.await, "", "", false
		return true
	case time.Now().Before(r.awaitUntil):
		r.next = r.end
		return false
	case !r.yielded && a.behind(ctx, r):
		// The feed is behind history (its newest event is in it
		// already): a loaded node. Waiting is right; yielding would leave
		// nobody appending when no other node is alive.
		r.next, r.yielded = r.end, true
		r.awaitUntil = time.Now().Add(a.resyncWait)
		return false
	case !r.yielded:
		r.next, r.await, r.awaitSeal, r.yielded = r.end, "", "", true
		a.lease.Yield(ctx, p, 2*a.lease.ttl)
		return false
	default:
		// Nobody had it: what was published in between is lost.
		r.next, r.gap, r.await, r.awaitSeal, r.yielded = r.end-1, true, "", "", false
		return true
	}
}

// behindWindow is how many of a project's newest events behind looks
// through for the ring's newest.
const behindWindow = 512

// behind tells whether r's newest event is among the newest of its
// project's history: the feed runs behind history rather than having
// started after its last event. An error counts as not behind.
func (a *Appender) behind(ctx context.Context, r *ring) bool {
	if r.start == r.end {
		return false
	}
	e := r.at(r.end - 1)
	xs, err := a.store.c.XRevRangeN(ctx, a.store.StreamKey(e.project), "+", "-", behindWindow).Result()
	if err != nil {
		return false
	}
	for _, x := range xs {
		if d, ok := x.Values["d"].(string); ok && Digest([]byte(d)) == e.digest {
			return true
		}
	}
	return false
}

// awaitFor is how long r waits for its feed to bring history's last: a
// second before it yields the lease, then the whole resyncWait.
func (a *Appender) awaitFor(r *ring) time.Duration {
	if r.yielded {
		return a.resyncWait
	}
	return min(a.resyncWait, time.Second)
}

// flush appends r's events from next on.
func (a *Appender) flush(ctx context.Context, r *ring) error {
	for r.next < r.end {
		e := r.at(r.next)
		prev := r.last
		if r.gap {
			prev = "*"
		}
		rep, err := a.store.append(ctx, e.project, e.data, prev, e.digest)
		if err != nil {
			// Unknown whether it was written: the chain tells at the
			// next append.
			return err
		}
		switch rep.status {
		case appendDone:
			r.next++
			r.last, r.gap = rep.last, false
		case appendNotLeader:
			r.next = r.end
			return nil
		case appendResync:
			if i, ok := r.continues(rep.last, rep.seal); ok {
				r.next, r.last = i, rep.last
			} else if a.resyncWait > 0 {
				// Where history stands is not in the ring: this node's
				// feed may be behind the predecessor's. Wait for it
				// (Offer), rather than record a gap at once.
				r.next, r.await, r.awaitSeal, r.awaitUntil = r.end, rep.last, rep.seal, time.Now().Add(a.awaitFor(r))
				return nil
			} else {
				// What was published in between is lost; say so.
				r.next, r.gap = r.end-1, true
			}
		}
	}
	return nil
}

// Flush retries the appends still due on the partitions this node leads
// (one failed, a round trip that did not answer): Offer does at the next
// event, and a leader that is about to release its lease must first.
func (a *Appender) Flush(ctx context.Context) error {
	var first error
	for p := range a.rings {
		r := &a.rings[p]
		if !a.lease.Held(p) || r.await != "" || r.next >= r.end {
			continue
		}
		if err := a.flush(ctx, r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// Bridge appends, on each partition this node has just come to lead (it
// appended nothing yet), what its feed holds after the last event history
// has: at once, rather than at the partition's next event, which a quiet
// project may not publish for long while a returning subscription waits
// for the history to reach what the routers routed.
func (a *Appender) Bridge(ctx context.Context) error {
	var first error
	for p := range a.rings {
		r := &a.rings[p]
		if !a.lease.Held(p) || r.start == r.end && len(r.marks) == 0 {
			continue
		}
		if r.await != "" {
			if a.settleAwait(ctx, p, r) && r.next < r.end {
				if err := a.flush(ctx, r); err != nil && first == nil {
					first = err
				}
			}
			continue
		}
		if r.last != "" || r.gap {
			continue
		}
		if err := a.bridge(ctx, p, r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// bridge is Bridge of one partition this node has just come to lead.
func (a *Appender) bridge(ctx context.Context, p int, r *ring) error {
	vals, err := a.store.c.HMGet(ctx, a.store.tag(p)+"p", "last", "seal").Result()
	if err != nil {
		return fmt.Errorf("history: bridge partition %d: %w", p, err)
	}
	last, _ := vals[0].(string)
	seal, _ := vals[1].(string)
	if last == "" {
		return nil // no history yet: the first append begins it
	}
	i, ok := r.continues(last, seal)
	switch {
	case ok:
		r.next, r.last = i, last
	case r.start == r.end:
		return nil // heard nothing but marks: the next Offer's append finds where history stands
	case a.resyncWait > 0:
		r.next, r.await, r.awaitSeal, r.awaitUntil = r.end, last, seal, time.Now().Add(a.awaitFor(r))
		return nil
	default:
		return nil // the next Offer's append records the gap
	}
	return a.flush(ctx, r)
}

// Sealable returns the partitions this node leads and holds whole: it
// has appended every event its feed brought, after history's last. Only
// those can be handed over with a mark (Feed's hand-over). It first
// appends what is due, and bridges a partition it came to lead quietly.
func (a *Appender) Sealable(ctx context.Context) []int {
	var ps []int
	for p := range a.rings {
		r := &a.rings[p]
		if !a.lease.Held(p) || r.await != "" || r.gap {
			continue
		}
		if r.last == "" {
			_ = a.bridge(ctx, p, r) // failed: not sealable
		} else if r.next < r.end {
			_ = a.flush(ctx, r)
		}
		if r.whole() {
			ps = append(ps, p)
		}
	}
	return ps
}

// NewMark returns a mark id of this node's, never used before, for the
// hand-over of partition p, and expects it back through Mark.
func (a *Appender) NewMark(p int) string {
	a.marks++
	id := a.store.node + "/" + strconv.Itoa(a.marks)
	a.rings[p].sealing = id
	return id
}

// Mark notes a mark the feed brought for partition p, in its place among
// the events. When it is the one this node published to hand p over
// (NewMark), Mark seals: it appends what came before the mark, records
// that history is whole up to it (sealScript), and gives the lease up,
// so that a successor whose feed heard the mark continues right after it
// even when no node that heard history's last event is left. It reports
// whether the mark was the one expected.
func (a *Appender) Mark(ctx context.Context, p int, id string) (bool, error) {
	if p < 0 || p >= len(a.rings) {
		return false, nil
	}
	r := &a.rings[p]
	r.mark(id)
	if r.sealing == "" || r.sealing != id {
		return false, nil
	}
	r.sealing = ""
	if !a.lease.Held(p) || r.await != "" || r.gap {
		return true, nil
	}
	if err := a.flush(ctx, r); err != nil {
		return true, err
	}
	if !r.whole() {
		return true, nil
	}
	ok, err := sealScript.Run(ctx, a.store.c, []string{a.store.LeaseKey(p), a.store.tag(p) + "p"}, a.store.node, r.last, id).Int()
	if err != nil {
		return true, fmt.Errorf("history: seal partition %d: %w", p, err)
	}
	if ok == 1 {
		// Nothing more from this node: an append after the seal would
		// move last away from it, and the successor could not use it.
		a.lease.Yield(ctx, p, 2*a.lease.ttl)
	}
	return true, nil
}

// FeedLost tells the Appender that its subscription missed messages (it
// reconnected, or its buffer overflowed). The rings no longer show the
// feed's order, so they are emptied; the next append of a partition this
// node leads records a gap.
func (a *Appender) FeedLost() {
	for i := range a.rings {
		r := &a.rings[i]
		r.start, r.next = r.end, r.end
		r.gap, r.await, r.awaitSeal, r.marks, r.sealing = true, "", "", r.marks[:0], ""
	}
}

package server

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/history"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// Resuming subscriptions after a reconnect (RESUME.md). An SDK of version
// 25 or later names its subscriptions itself and sends the same ids again
// after every reconnect; the node that sees a known id come back gives that
// subscription what it missed, from the history, and then live events,
// with no gap and no reordering at the seam.
//
// What the node keeps for it is small and none of it is per connection:
// per project, the digests of the last events the router routed (an
// Anchor); per subscription id, a record in the Records store, written
// when the subscription is made, when its connection ends and by the drain;
// and once a second a checkpoint, so that a node that dies without a word
// still says how far its clients had got.

// ResumeConfig turns resuming on (Config.Resume).
type ResumeConfig struct {
	// Window is how long after it left a subscription can resume
	// (--resume-window); its history and records keep that long.
	Window time.Duration
	// Reader reads the history; Records keeps subscription records and
	// checkpoints. Both are shared by the nodes that share a backbone.
	Reader  history.Reader
	Records history.Records
	// Feed is given every valid backbone message, on the router, in the
	// order routed: the embedded store appends it, the Redis appender
	// queues it. It must not block.
	Feed func(project string, msg []byte)
	// Run, when set, runs from Start until the drain has told every
	// client, before the router stops: the Redis appender and its lease,
	// which it hands over as its last step with marks that the router
	// must still route (history.Feed.Run). Shutdown waits for it.
	Run func(ctx context.Context)
	// Shared tells that other nodes read the history and records (Redis):
	// then a subscription is recorded when it is made, so that another
	// node can resume it after this one dies without a word. Alone (the
	// embedded broker), a node that dies takes its history along, and a
	// subscription is recorded only when its connection ends: no memory
	// per open subscription.
	Shared bool
}

const (
	// resumeMargin (M in RESUME.md) is added to whatever a node cannot
	// know for sure about what a client received: the client's
	// acknowledgement, the lag between the router and the history's
	// appender. Events in it may come twice, never not at all.
	resumeMargin = time.Second
	// checkpointEvery (C) is how often a node says it is alive and how old
	// its oldest queued frame is.
	checkpointEvery = time.Second
	// deadAfter is how long without a checkpoint before a node is taken
	// for dead: its open subscriptions then resume from its last one.
	deadAfter = 2*checkpointEvery + checkpointEvery/2
	// seamTimeout bounds the wait for the history to hold what the router
	// routed before a subscription is given up as incomplete and starts
	// live. The appender runs milliseconds behind; but when the node that
	// held its lease died, nobody appends until a successor takes the
	// lease (at most history.DefaultLeaseTTL and a third), and the
	// successor then bridges the gap from its own copy of the feed.
	seamTimeout = history.DefaultLeaseTTL + history.DefaultLeaseTTL/3 + time.Second
	// openWait bounds the wait for the node of a subscription that is
	// still open there to notice its connection is gone.
	openWait = 3 * time.Second
	// maxResumeKept bounds the events kept for one resuming connection
	// while its history is read.
	maxResumeKept = 1024
	// recordQueue bounds the writes waiting for the writer; beyond it a
	// write is dropped (and counted), and its subscriptions start live if
	// they come back.
	recordQueue = 1 << 16
)

// Resume results, the label of switchboard_resume_total and the status
// (with reason) of the subscribe response's resume field.
const (
	resumeResumed    = "resumed"
	resumeNew        = "new"
	resumeWindow     = "live_window"
	resumeIncomplete = "live_incomplete"
	resumeUser       = "live_user"
	resumeOpen       = "live_open"
	resumeSize       = "live_size"
)

var resumeResults = []string{resumeResumed, resumeNew, resumeWindow, resumeIncomplete, resumeUser, resumeOpen, resumeSize}

// resumer is the node's side of resuming. The router's part (anchors,
// jobs) is guarded by the router's mu.
type resumer struct {
	srv *Server
	cfg ResumeConfig

	// anchors is where the router stands per project: the digests of the
	// last events it routed.
	anchors map[string]*history.Anchor
	// jobs are the connections whose subscribe waits for its history, per
	// project; the router keeps every event of the project for them.
	jobs   map[string][]*resumeJob
	active atomic.Int32 // the jobs of every project: the router's check per event without a map lookup

	// The records waiting for the writer, in order; a slice rather than a
	// channel, which would hold its whole buffer from the start.
	wmu     sync.Mutex
	pending []recordWrite
	wake    chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
	stopRun context.CancelFunc // ends cfg.Run (handOver)
	runDone chan struct{}
	// drained holds the drain's records of connections whose queue had
	// not reached the socket when their close frame was queued
	// (conn.goAway), until they end.
	dmu     sync.Mutex
	drained map[*conn][]history.Record
	epoch   time.Time // subscription.since counts milliseconds from it
}

// recordWrite is a batch of record writes for the writer.
type recordWrite struct {
	recs     []history.Record
	end      bool          // Records.End (else Put)
	floorAge time.Duration // End's, or Put's; Put without a floor: < 0
	at       time.Time     // when it was queued
}

func newResumer(s *Server, cfg ResumeConfig) *resumer {
	if cfg.Window <= 0 {
		cfg.Window = history.DefaultWindow
	}
	return &resumer{
		srv: s, cfg: cfg,
		anchors: make(map[string]*history.Anchor),
		jobs:    make(map[string][]*resumeJob),
		wake:    make(chan struct{}, 1),
		epoch:   time.Now(),
	}
}

// sinceNow is now as subscription.since counts it: milliseconds from the
// epoch, on 32 bits (it wraps after 49 days; sinceMS undoes that for any
// subscription younger).
func (rs *resumer) sinceNow() uint32 { return uint32(time.Since(rs.epoch).Milliseconds()) }

// sinceMS is the Unix time in ms of since.
func (rs *resumer) sinceMS(since uint32) uint64 {
	now := uint64(time.Since(rs.epoch).Milliseconds())
	return uint64(rs.epoch.UnixMilli()) + now - uint64(uint32(now)-since)
}

// start runs the record writer, the checkpoints and cfg.Run.
func (rs *resumer) start() {
	ctx, cancel := context.WithCancel(context.Background())
	rs.stop = cancel
	rs.done = make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); rs.writeRecords(ctx) }()
	go func() { defer wg.Done(); rs.checkpoints(ctx) }()
	go func() { wg.Wait(); close(rs.done) }()
	rctx, stopRun := context.WithCancel(context.Background())
	rs.stopRun = stopRun
	rs.runDone = make(chan struct{})
	go func() {
		defer close(rs.runDone)
		if rs.cfg.Run != nil {
			rs.cfg.Run(rctx)
		}
	}()
}

// handOver ends cfg.Run, before the router stops, and waits for it.
func (rs *resumer) handOver(ctx context.Context) error {
	if rs.stopRun == nil {
		return nil
	}
	rs.stopRun()
	select {
	case <-rs.runDone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("hand the history over: %w", ctx.Err())
	}
}

// shutdown stops what start started, after the router: the writer writes
// what is queued first (the drain's records). cfg.Run has ended already
// (handOver), unless the drain ran out of time before.
func (rs *resumer) shutdown(ctx context.Context) error {
	if rs.stop == nil {
		return nil
	}
	rs.stopRun()
	rs.stop()
	for _, done := range []chan struct{}{rs.done, rs.runDone} {
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// observe moves the router's anchor of project on by msg, and feeds the
// history. The caller holds the router's mu; it returns msg's digest.
func (rs *resumer) observe(project string, msg []byte) uint64 {
	d := history.Digest(msg)
	a := rs.anchors[project]
	if a == nil {
		a = new(history.Anchor)
		rs.anchors[project] = a
	}
	a.Push(d)
	if rs.cfg.Feed != nil {
		rs.cfg.Feed(project, msg)
	}
	return d
}

// anchor returns where the router stands in project. The caller holds the
// router's mu.
func (rs *resumer) anchor(project string) history.Anchor {
	if a := rs.anchors[project]; a != nil {
		return *a
	}
	return history.Anchor{}
}

// keep gives ev to every job of its project. The caller holds the router's
// mu.
func (rs *resumer) keep(ev *protocol.Event, digest uint64) {
	for _, j := range rs.jobs[ev.Project] {
		if len(j.kept) == maxResumeKept {
			j.overflow = true
			continue
		}
		j.kept = append(j.kept, keptEvent{ev, digest})
	}
}

// put queues records for the writer to write whole (Records.Put).
func (rs *resumer) put(recs ...history.Record) {
	rs.queue(recordWrite{recs: recs, floorAge: -1})
}

// keepDrained keeps the drain's records of c until c ends (takeDrained).
func (rs *resumer) keepDrained(c *conn, recs []history.Record) {
	rs.dmu.Lock()
	if rs.drained == nil {
		rs.drained = make(map[*conn][]history.Record)
	}
	rs.drained[c] = recs
	rs.dmu.Unlock()
}

// takeDrained returns and forgets what keepDrained kept of c.
func (rs *resumer) takeDrained(c *conn) ([]history.Record, bool) {
	rs.dmu.Lock()
	defer rs.dmu.Unlock()
	recs, ok := rs.drained[c]
	delete(rs.drained, c)
	return recs, ok
}

// end queues the end of records' connection for the writer (Records.End):
// what its client received is certain only up to floorAge ago.
func (rs *resumer) end(floorAge time.Duration, recs ...history.Record) {
	rs.queue(recordWrite{recs: recs, end: true, floorAge: floorAge})
}

// putEnded queues whole records of subscriptions whose connection ended,
// with a floor floorAge ago (Records.Put's).
func (rs *resumer) putEnded(floorAge time.Duration, recs ...history.Record) {
	rs.queue(recordWrite{recs: recs, floorAge: floorAge})
}

func (rs *resumer) queue(w recordWrite) {
	if len(w.recs) == 0 {
		return
	}
	w.at = time.Now()
	rs.wmu.Lock()
	if len(rs.pending) >= recordQueue {
		rs.wmu.Unlock()
		rs.srv.metrics.resumeRecordsDropped.Add(float64(len(w.recs)))
		return
	}
	rs.pending = append(rs.pending, w)
	rs.wmu.Unlock()
	select {
	case rs.wake <- struct{}{}:
	default:
	}
}

// writeRecords writes queued records until ctx ends, then what is still
// queued.
func (rs *resumer) writeRecords(ctx context.Context) {
	for {
		select {
		case <-rs.wake:
			rs.writeQueued()
		case <-ctx.Done():
			rs.writeQueued()
			return
		}
	}
}

// maxRecordBatch bounds the records of one call to the store.
const maxRecordBatch = 4096

// writeQueued writes what is queued, in order: a run of whole records
// (Put without a floor) in calls of up to maxRecordBatch, any other write
// on its own.
func (rs *resumer) writeQueued() {
	for {
		rs.wmu.Lock()
		ws := rs.pending
		rs.pending = nil
		rs.wmu.Unlock()
		if len(ws) == 0 {
			return
		}
		for i := 0; i < len(ws); {
			w := ws[i]
			i++
			if !w.end && w.floorAge < 0 {
				for i < len(ws) && !ws[i].end && ws[i].floorAge < 0 && len(w.recs) < maxRecordBatch {
					w.recs = append(w.recs[:len(w.recs):len(w.recs)], ws[i].recs...)
					i++
				}
			}
			rs.flush(w)
		}
	}
}

func (rs *resumer) flush(w recordWrite) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	age := w.floorAge
	if age >= 0 {
		age += time.Since(w.at) // measured when the connection ended, written now
	}
	var err error
	if w.end {
		err = rs.cfg.Records.End(ctx, age, rs.srv.node, w.recs...)
	} else {
		err = rs.cfg.Records.Put(ctx, age, w.recs...)
	}
	if err != nil {
		rs.srv.metrics.resumeRecordsDropped.Add(float64(len(w.recs)))
		rs.srv.invalidLog.Warn("resume records not written", zap.Int("records", len(w.recs)), zap.Error(err))
	}
}

// checkpoints says once a second that the node is alive and how old its
// oldest queued frame is.
func (rs *resumer) checkpoints(ctx context.Context) {
	t := time.NewTicker(checkpointEvery)
	defer t.Stop()
	for {
		cctx, cancel := context.WithTimeout(ctx, checkpointEvery)
		if err := rs.cfg.Records.Checkpoint(cctx, rs.srv.node, rs.srv.oldestQueued()); err != nil && ctx.Err() == nil {
			rs.srv.invalidLog.Warn("resume checkpoint not written", zap.Error(err))
		}
		cancel()
		select {
		case <-t.C:
		case <-ctx.Done():
			return
		}
	}
}

// resumeJob is one connection's subscribe waiting for its history. The
// router keeps the project's events routed since it began (kept), so that
// the seam can line them up with what the history holds.
type resumeJob struct {
	c       *conn
	project string
	r0      history.Anchor // where the router stood when the job began
	began   time.Time

	// Guarded by the router's mu.
	kept     []keptEvent
	overflow bool
}

type keptEvent struct {
	ev     *protocol.Event
	digest uint64
}

// begin registers a job for c's subscribe in project.
func (rs *resumer) begin(c *conn, project string) *resumeJob {
	r := rs.srv.router
	r.mu.Lock()
	defer r.mu.Unlock()
	j := &resumeJob{c: c, project: project, r0: rs.anchor(project), began: time.Now()}
	rs.jobs[project] = append(rs.jobs[project], j)
	rs.active.Add(1)
	return j
}

// endLocked unregisters j. The caller holds the router's mu.
func (rs *resumer) endLocked(j *resumeJob) {
	js := rs.jobs[j.project]
	for i, x := range js {
		if x == j {
			js = append(js[:i], js[i+1:]...)
			break
		}
	}
	if len(js) == 0 {
		delete(rs.jobs, j.project)
	} else {
		rs.jobs[j.project] = js
	}
	rs.active.Add(-1)
}

// resumePlan is what one subscription of a subscribe gets.
type resumePlan struct {
	result string // a resume result
	// For a subscription that resumes: where it stood, and its history.
	from    history.Anchor
	floorMS uint64
	span    history.Span
	events  []*protocol.Event // span.Events parsed; nil where one did not parse
	// Set by the seam: whether the span met the router, the span's events
	// to replay, [first, last], and how many of the job's kept events to
	// leave out (the client had them).
	met         bool
	first, last int
	skip        int
}

// plan looks up the record of a subscription coming back and reads its
// history. It runs on the subscribing connection's read side.
func (rs *resumer) plan(ctx context.Context, project, user, id string) resumePlan {
	recs := rs.cfg.Records
	rec, ok, err := recs.Get(ctx, project, id)
	if err != nil {
		rs.srv.invalidLog.Warn("resume record not read", zap.String("project", project), zap.Error(err))
		return resumePlan{result: resumeIncomplete}
	}
	if !ok {
		return resumePlan{result: resumeNew}
	}
	if rec.User != user {
		return resumePlan{result: resumeUser}
	}
	floor := rec.FloorMS
	if rec.Open {
		// Nobody wrote where it ended: its node still has it open (it has
		// not noticed the client left yet), or died.
		deadline := time.Now().Add(openWait)
		for {
			cp, ok, err := recs.LastCheckpoint(ctx, rec.Node)
			if err != nil {
				return resumePlan{result: resumeIncomplete}
			}
			if !ok {
				// Its checkpoints expired: dead longer than the window.
				return resumePlan{result: resumeWindow}
			}
			if cp.Age > deadAfter {
				// Dead: everything it routed before its last checkpoint,
				// less the queued age and the margin, had left it. Not
				// a replay queued after that: its events are older than
				// the floor, and the client may not have them.
				lost := uint64((cp.Queued + resumeMargin).Milliseconds())
				if cp.MS > lost && rec.ReplayMS < cp.MS-lost {
					floor = max(floor, cp.MS-lost)
				}
				break
			}
			if time.Now().After(deadline) {
				return resumePlan{result: resumeOpen}
			}
			select {
			case <-time.After(100 * time.Millisecond):
			case <-ctx.Done():
				return resumePlan{result: resumeIncomplete}
			}
			if rec, ok, err = recs.Get(ctx, project, id); err != nil || !ok || rec.User != user {
				return resumePlan{result: resumeIncomplete}
			}
			if !rec.Open {
				floor = rec.FloorMS
				break
			}
		}
	}
	p := resumePlan{result: resumeResumed, from: rec.Anchor, floorMS: floor}
	if floor > 0 && uint64(time.Now().Add(-rs.cfg.Window).UnixMilli()) > floor {
		return resumePlan{result: resumeWindow}
	}
	rs.read(ctx, project, &p)
	return p
}

// read reads p's history. A span read before and complete is extended
// with what was appended since (read from its last events), so that the
// retries of a seam cost what is new, not the whole span again.
func (rs *resumer) read(ctx context.Context, project string, p *resumePlan) {
	if n := len(p.span.Events); p.span.Complete && n > 0 {
		more, err := rs.cfg.Reader.ReadFrom(ctx, project, p.span.AnchorBefore(n), 0)
		if err == nil && more.Complete {
			p.span.Events = append(p.span.Events, more.Events[more.Start:]...)
			rs.parse(project, p, n)
			return
		}
	}
	span, err := rs.cfg.Reader.ReadFrom(ctx, project, p.from, p.floorMS)
	if err != nil {
		rs.srv.invalidLog.Warn("resume history not read", zap.String("project", project), zap.Error(err))
		span = history.Span{}
	}
	p.span, p.events = span, nil
	rs.parse(project, p, span.Start)
}

// parse parses p's span from event from on (the ones before are parsed
// already, or not to be replayed).
func (rs *resumer) parse(project string, p *resumePlan, from int) {
	for len(p.events) < from {
		p.events = append(p.events, nil)
	}
	for _, e := range p.span.Events[from:] {
		ev, err := protocol.ParseEvent(e.Data)
		if err != nil || ev.Project != project {
			// Not the router's to deliver either: the history holds only
			// what parsed, so this is Redis's content gone bad.
			rs.srv.metrics.invalidEvents.Inc()
			ev = nil
		}
		p.events = append(p.events, ev)
	}
}

// line finds where p's history meets the router, for job j: the span's
// events to replay ([first, last]) and how many of the kept events the
// client already had. False when they do not meet yet (the history is
// behind the router, or the router behind the subscription's anchor). The
// caller holds the router's mu.
func (p *resumePlan) line(j *resumeJob) bool {
	p.met = p.lineUp(j)
	return p.met
}

func (p *resumePlan) lineUp(j *resumeJob) bool {
	s := p.span
	if !s.Complete {
		return false
	}
	// b: the last event of the span the router had routed when the job
	// began; everything after it is in j.kept.
	var b int
	switch {
	case !j.r0.IsZero():
		i, ok := findFrom(s, j.r0)
		if !ok {
			return p.behind(j)
		}
		b = i
	case len(j.kept) > 0:
		// The router had routed nothing of the project: the kept events
		// begin it, so the span meets them at their first run.
		var a history.Anchor
		for _, k := range j.kept[:min(len(j.kept), history.AnchorLen)] {
			a.Push(k.digest)
		}
		i, ok := s.Find(a)
		if !ok {
			return p.behind(j)
		}
		b = i - a.N
	default:
		// Nothing routed of the project, before or since: the router will
		// route only what comes after the span, once its feed has had
		// time to catch up with the history's.
		if time.Since(j.began) < 50*time.Millisecond {
			return false
		}
		b = len(s.Events) - 1
	}
	p.first, p.last, p.skip = s.Start, b, 0
	if b < s.Start-1 {
		// The router is behind the subscription: the first kept events are
		// ones the client had. Wait until it has routed them all.
		p.skip = s.Start - 1 - b
		if len(j.kept) < p.skip {
			return false
		}
		for k := 0; k < p.skip; k++ {
			if j.kept[k].digest != s.Events[b+1+k].Digest {
				return false
			}
		}
		p.first, p.last = s.Start, s.Start-1
	}
	return true
}

// findFrom finds the router's anchor a in span s: its whole run, or else
// a run cut off by the span's first event (the span begins at a
// subscription's anchor, which may be shorter than a: made on a node that
// had routed fewer than four events of the project), as long as the
// newest two of a's events are in it.
func findFrom(s history.Span, a history.Anchor) (int, bool) {
	return history.FindRun(len(s.Events), func(i int) uint64 { return s.Events[i].Digest }, a, 2)
}

// behind lines p up when the router was behind the subscription when the
// job began, further than the span reaches back: then the kept events
// come to where the client stood, and those up to there are left out;
// nothing of the span is replayed (the router routes it after them). The
// span's events just before its first to replay tell where that is: in
// the kept events they prove the router behind (were the history behind
// instead, the kept events would all come after the span). False until
// the router has routed that far.
func (p *resumePlan) behind(j *resumeJob) bool {
	s := p.span
	n := keptThrough(j.kept, s.AnchorBefore(s.Start))
	if n == 0 {
		return false
	}
	p.first, p.last, p.skip = s.Start, s.Start-1, n
	return true
}

// keptThrough returns how many of kept the client of a subscription at
// anchor a already had: those up to a's run, when the router was behind
// it (a subscription that starts live then gets no event twice from
// this node); 0 when a's run is not among them.
func keptThrough(kept []keptEvent, a history.Anchor) int {
	// The kept events may also begin inside a's run: its newest events.
	if i, ok := history.FindRun(len(kept), func(i int) uint64 { return kept[i].digest }, a, 1); ok {
		return i + 1
	}
	return 0
}

// subscribeResuming handles a subscribe whose subscriptions include ids new
// on this connection: each may be one coming back. It runs on the read
// side and returns once the subscriptions are live, their missed events
// and the response queued.
func (c *conn) subscribeResuming(subs []subscription, resp []protocol.Subscription) {
	s := c.srv
	rs := s.resume
	c.mu.Lock()
	project, user := c.project, c.userID
	// In the input poller: this runs on a reader-pool goroutine (adopt's
	// first read is netpoll's), which the waits below may hold for
	// seconds (an open record, a seam): out of the pool's count
	// meanwhile, so that other connections' input does not queue behind
	// a storm of resumes.
	pooled := c.flags&flagInPoll != 0
	c.mu.Unlock()
	if pooled {
		s.readers.detach()
		defer s.readers.attach()
	}
	j := rs.begin(c, project)
	ctx, cancel := context.WithTimeout(context.Background(), openWait+2*seamTimeout)
	defer cancel()
	plans := make([]resumePlan, len(subs))
	for i := range subs {
		if subs[i].recorded {
			plans[i] = rs.plan(ctx, project, user, subs[i].id)
		} else {
			plans[i].result = resumeNew
		}
	}
	deadline := time.Now().Add(seamTimeout)
	for wait := 5 * time.Millisecond; ; wait = min(2*wait, 100*time.Millisecond) {
		final := time.Now().After(deadline)
		if rs.seam(j, subs, resp, plans, final) {
			return
		}
		time.Sleep(wait)
		for i := range plans {
			if plans[i].result == resumeResumed && !plans[i].met {
				rs.read(ctx, project, &plans[i])
			}
		}
	}
}

// seam makes the subscriptions live: under the router's lock, so that no
// event is routed meanwhile, it queues the response, each resumed
// subscription's missed events, the events routed since the job began,
// and then enters the subscriptions in the index. It reports false, and
// does nothing, when a resumed subscription's history does not meet the
// router yet and final is false; with final, such a subscription starts
// live (incomplete).
func (rs *resumer) seam(j *resumeJob, subs []subscription, resp []protocol.Subscription, plans []resumePlan, final bool) bool {
	s := rs.srv
	r := s.router
	c := j.c
	r.mu.Lock()
	defer r.mu.Unlock()
	c.mu.Lock()
	held := c.flags&flagHeld != 0
	c.mu.Unlock()
	for i := range plans {
		p := &plans[i]
		if p.result != resumeResumed {
			continue
		}
		if !p.line(j) || held || j.overflow {
			if !final {
				return false
			}
			rs.srv.invalidLog.Warn("resume gave up: the history did not meet the router",
				zap.String("project", j.project), zap.String("subscription", subs[i].id),
				zap.Bool("history_complete", p.span.Complete), zap.Int("history_events", len(p.span.Events)),
				zap.Int("start", p.span.Start), zap.Bool("router_anchor", !j.r0.IsZero()),
				zap.Int("kept", len(j.kept)), zap.Bool("kept_overflow", j.overflow), zap.Bool("held", held),
				zap.Duration("waited", time.Since(j.began)))
			p.result = resumeIncomplete
			p.skip = keptThrough(j.kept, p.from)
		}
	}
	rs.endLocked(j)
	// What resuming would queue must fit the connection's queue.
	for i := range plans {
		p := &plans[i]
		if p.result != resumeResumed {
			continue
		}
		n := 0
		for k := p.first; k <= p.last; k++ {
			if ev := p.events[k]; ev != nil {
				n += len(ev.Payload) + 256
			}
		}
		if n > s.cfg.MaxQueueBytes/2 {
			p.result = resumeSize
		}
	}
	replayed := make([]int, len(plans))
	for i := range resp {
		resp[i].Resume = &protocol.ResumeStatus{Status: plans[i].result}
	}
	// The response first, as for any subscribe; then the missed events.
	c.sendResponse(protocol.AppendSubscribeResponse(nil, resp))
	c.mu.Lock()
	live := c.state == stateLive
	c.mu.Unlock()
	if live {
		for i := range plans {
			p := &plans[i]
			if p.result != resumeResumed {
				continue
			}
			for k := p.first; k <= p.last; k++ {
				if ev := p.events[k]; ev != nil && r.deliverTo(c, ev, subs[i:i+1]) {
					replayed[i]++
				}
			}
		}
		// Then what was routed since the job began, to every subscription
		// of this subscribe, but what a resumed one's client had.
		for k, ke := range j.kept {
			var owed []subscription
			for i := range plans {
				if k < plans[i].skip {
					continue
				}
				owed = append(owed, subs[i])
			}
			r.deliverTo(c, ke.ev, owed)
		}
		since := rs.sinceNow()
		c.mu.Lock()
		next := append([]subscription(nil), c.subs...)
		for i, sub := range subs {
			sub.since, sub.replayed = since, replayed[i] > 0
			next = putSubscription(next, sub)
		}
		c.subs = next
		c.mu.Unlock()
		c.reindex()
	}
	anchor := rs.anchor(j.project)
	c.mu.Lock()
	user := c.userID
	c.mu.Unlock()
	var recs []history.Record
	for i := range plans {
		s.metrics.resumes.WithLabelValues(plans[i].result).Inc()
		if replayed[i] > 0 {
			s.metrics.resumeReplayed.Add(float64(replayed[i]))
		}
		if !subs[i].recorded || !live || !rs.cfg.Shared {
			continue
		}
		rec := history.Record{Project: j.project, ID: subs[i].id, User: user, Node: s.node, Open: true, Anchor: anchor}
		if replayed[i] > 0 {
			// Until its client has acknowledged the replay, it stands
			// where it stood before: the replayed events are old, and no
			// floor of the time they were sent may pass over them, not
			// even its node's last checkpoint's if it dies (plan). The
			// node's clock: a checkpoint's floor is on the store's, less
			// resumeMargin, which covers clocks that far apart.
			rec.Anchor, rec.FloorMS = plans[i].from, plans[i].floorMS
			rec.ReplayMS = uint64(time.Now().UnixMilli())
		}
		recs = append(recs, rec)
	}
	rs.put(recs...)
	return true
}

// deliverTo queues ev on c for those of subs it matches, under c's roles
// now. It reports whether it queued it. The caller holds r.mu.
func (r *router) deliverTo(c *conn, ev *protocol.Event, subs []subscription) bool {
	if len(subs) == 0 {
		return false
	}
	r.begin(ev, r.srv.latency.stamp())
	defer r.finish()
	c.mu.Lock()
	if c.state != stateLive || c.project != ev.Project || !admits(c.roles, ev.Roles) {
		c.mu.Unlock()
		return false
	}
	r.ids = matchSubscriptions(subs, ev, &r.doc, r.ids[:0])
	if len(r.ids) == 0 {
		c.mu.Unlock()
		return false
	}
	// Plain: a connection that negotiated permessage-deflate may receive
	// uncompressed messages (RFC 7692 6), and a replay's events are its
	// own.
	r.queueUnlock(c, r.frameFor(r.ids, false))
	return true
}

// recordsLocked returns the records of c's recorded subscriptions as
// closed at anchor, for the writes at its end. The caller holds c.mu.
func (c *conn) recordsLocked(anchor history.Anchor) []history.Record {
	var recs []history.Record
	for i := range c.subs {
		if c.subs[i].recorded {
			recs = append(recs, history.Record{Project: c.project, ID: c.subs[i].id, User: c.userID, Node: c.srv.node, Anchor: anchor})
		}
	}
	return recs
}

// endRecordsLocked tells the records of c's subscriptions that its
// connection ended, unless the drain told them exactly. The caller holds c.mu, before
// the queue is dropped.
func (c *conn) endRecordsLocked() {
	rs := c.srv.resume
	if rs == nil || c.flags&flagRecorded != 0 {
		return
	}
	if c.reason == closeShutdown {
		if recs, ok := rs.takeDrained(c); ok && c.q.bytes == 0 {
			// The rest of the queue, the drain's close frame last,
			// reached the socket after all: the drain's records are exact.
			rs.put(recs...)
			return
		}
	}
	uncertain := c.uncertainLocked()
	// A subscription that resumed with a replay its client may not have
	// acknowledged yet keeps the record of where it stood before (the
	// replayed events are old: a floor of now - uncertain would pass over
	// them). Its next resume replays them again: duplicates, not a loss.
	var ended, replaying []history.Record
	for i := range c.subs {
		sub := &c.subs[i]
		if !sub.recorded {
			continue
		}
		rec := history.Record{Project: c.project, ID: sub.id, User: c.userID, Node: c.srv.node}
		made := rs.sinceMS(sub.since)
		switch {
		case sub.replayed && uint64(time.Now().UnixMilli())-made < uint64(uncertain.Milliseconds()):
			replaying = append(replaying, rec)
		case rs.cfg.Shared:
			ended = append(ended, rec)
		default:
			// Alone, recorded now for the first time: from when it was made.
			rec.FloorMS = made
			ended = append(ended, rec)
		}
	}
	if rs.cfg.Shared {
		// Their records, written when they were made, keep their anchors.
		rs.end(uncertain, ended...)
		rs.end(-1, replaying...)
		return
	}
	// Alone, a replaying one's record from its last end stays as it is.
	rs.putEnded(uncertain, ended...)
}

// uncertainLocked is how far back from now c's client may have missed
// what was written to it, at its end. When the socket is still up and
// every byte written was acknowledged, only what still waited in the
// queue and the margin (for the router running behind the history's
// clock). Otherwise since the kernel last heard an acknowledgement, plus a
// round trip, on top of those. The caller holds c.mu.
func (c *conn) uncertainLocked() time.Duration {
	d := resumeMargin
	if born := c.q.oldestBorn(); born != 0 {
		d += time.Duration(max(c.srv.latency.stamp()-born, 0))
	}
	info, err := unix.GetsockoptTCPInfo(c.fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	switch {
	case err != nil:
		// No word from the kernel: since the client was last heard.
		return d + time.Duration(max(int64(c.srv.clock.Load())-int64(c.lastSeen.Load()), 0)+1)*time.Second
	case (info.State == tcpEstablished || info.State == tcpCloseWait) && info.Unacked == 0 && len(c.q.frames) == 0:
		return d
	default:
		return d + time.Duration(info.Last_ack_recv)*time.Millisecond + time.Duration(info.Rtt)*time.Microsecond
	}
}

// TCP states of tcp_info (include/net/tcp_states.h).
const (
	tcpEstablished = 1
	tcpCloseWait   = 8
)

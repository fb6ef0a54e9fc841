package history

import (
	"context"
	"fmt"
	"time"
)

// Feed carries the backbone's messages from the router, which must never
// wait, to an Appender, which makes a round trip to Redis per event while
// it leads. Run also runs the lease, and hands it over as its last step.
type Feed struct {
	app   *Appender
	lease *Lease
	msgs  chan fed
	lost  chan struct{}
	// Marker, when set, publishes the marks that hand the partitions this
	// node leads over when Run ends; the broker that publishes them must
	// hand them back through Mark (broker.RedisOptions.OnMark). Set it
	// before Run.
	Marker Marker
	// OnError, when set, hears of failed appends and hand-overs.
	OnError func(project string, err error)
}

// Marker publishes a mark on a partition of the backbone, which every
// node hears in its place among the partition's messages
// (broker.Redis.Mark, broker.RedisSharded.Mark).
type Marker interface {
	Mark(ctx context.Context, partition int, mark string) error
}

// fed is one entry of the feed: a message of project, or, when msg is nil,
// mark project of partition. 48 bytes: the queue's 65,536 of them are
// resident once the feed has gone round it.
type fed struct {
	project   string
	msg       []byte
	partition int
}

// NewFeed returns a Feed into app, whose lease is lease, holding up to
// queue messages (queue <= 0: 65,536).
func NewFeed(app *Appender, lease *Lease, queue int) *Feed {
	if queue <= 0 {
		queue = 1 << 16
	}
	return &Feed{app: app, lease: lease, msgs: make(chan fed, queue), lost: make(chan struct{}, 1)}
}

// Offer queues one message of project, copied; a full queue counts as a
// lost message. It never blocks.
func (f *Feed) Offer(project string, msg []byte) {
	select {
	case f.msgs <- fed{project: project, msg: append(make([]byte, 0, len(msg)), msg...)}: // never nil: nil is a mark's
	default:
		f.Lost()
	}
}

// Mark queues a mark the broker heard on partition, in its place among
// the messages (broker.RedisOptions.OnMark). It never blocks: a mark
// that finds the queue full is dropped, and whoever waits for it gives
// up in time.
func (f *Feed) Mark(partition int, mark string) {
	select {
	case f.msgs <- fed{project: mark, partition: partition}:
	default:
	}
}

// Lost tells the appender that messages of the feed were lost (the
// broker's OnLoss); the next append records a gap. It never blocks.
func (f *Feed) Lost() {
	select {
	case f.lost <- struct{}{}:
	default:
	}
}

// Run appends what is offered and keeps the lease until ctx ends; then
// it hands the lease over (handOver) and releases it. The server ends it
// before its router stops, so that the marks of the hand-over are routed.
func (f *Feed) Run(ctx context.Context) {
	lctx, stopLease := context.WithCancel(context.Background())
	leaseDone := make(chan struct{})
	go func() { defer close(leaseDone); f.lease.Run(lctx) }()
	defer func() { stopLease(); <-leaseDone }()
	bridge := time.NewTicker(f.lease.ttl / 6)
	defer bridge.Stop()
	for {
		select {
		case <-bridge.C:
			bctx, cancel := context.WithTimeout(context.Background(), offerTimeout)
			if err := f.app.Bridge(bctx); err != nil {
				f.fail("", err)
			}
			cancel()
		case m := <-f.msgs:
			f.take(m)
		case <-f.lost:
			f.app.FeedLost()
		case <-ctx.Done():
			f.handOver()
			return
		}
	}
}

// handOver ends this node's appending. On each partition it leads and
// holds whole (Appender.Sealable) it publishes a mark, and goes on
// appending what the router routed until its own feed brings the mark
// back: there it seals the partition (Appender.Mark) and gives the lease
// up. A successor whose feed heard the mark continues history right after
// it, even when no node that heard history's last event is left: a
// rolling deploy while a project is quiet. It waits for the marks as long
// as the feed moves (a busy feed may queue seconds of events before them),
// and gives up after sealIdle without one: then it appends what is due
// and the lease is released as it is (Run).
func (f *Feed) handOver() {
	ctx := context.Background()
	pending := 0
	if f.Marker != nil {
		mctx, cancel := context.WithTimeout(ctx, offerTimeout)
		for _, p := range f.app.Sealable(mctx) {
			if err := f.Marker.Mark(mctx, p, f.app.NewMark(p)); err != nil {
				f.fail("", fmt.Errorf("history: hand partition %d over: %w", p, err))
				continue
			}
			pending++
		}
		cancel()
	}
	idle := time.NewTicker(sealIdle)
	defer idle.Stop()
	moved := false
	for pending > 0 {
		select {
		case m := <-f.msgs:
			moved = true
			if f.take(m) {
				pending--
			}
		case <-f.lost:
			f.app.FeedLost() // forgets the marks: no seal
			pending = 0
		case <-idle.C:
			if !moved {
				pending = 0
			}
			moved = false
		}
	}
	// Retry an append that failed: a successor would bridge it only at
	// its next append, which a quiet project may not have for long.
	fctx, cancel := context.WithTimeout(ctx, offerTimeout)
	defer cancel()
	if err := f.app.Flush(fctx); err != nil {
		f.fail("", err)
	}
}

// sealIdle is how long the hand-over waits for its marks while nothing
// comes through the feed: a mark takes a round trip to Redis and the
// router's queue.
const sealIdle = 2 * time.Second

// offerTimeout bounds one append: an append is not cancelled with Run's
// context, which ends when the router stops, before the last appends.
const offerTimeout = 2 * time.Second

// take hands one entry of the feed to the appender. It reports whether it
// was the mark of a hand-over of this node's.
func (f *Feed) take(m fed) bool {
	ctx, cancel := context.WithTimeout(context.Background(), offerTimeout)
	defer cancel()
	if m.msg == nil {
		ours, err := f.app.Mark(ctx, m.partition, m.project)
		if err != nil {
			f.fail("", err)
		}
		return ours
	}
	if err := f.app.Offer(ctx, m.project, m.msg); err != nil {
		f.fail(m.project, err)
	}
	return false
}

func (f *Feed) fail(project string, err error) {
	if f.OnError != nil {
		f.OnError(project, err)
	}
}

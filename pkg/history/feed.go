package history

import (
	"context"
	"time"
)

// Feed carries the backbone's messages from the router, which must never
// wait, to an Appender, which makes a round trip to Redis per event while
// it leads. Run also runs the lease, and releases it as its last step.
type Feed struct {
	app   *Appender
	lease *Lease
	msgs  chan fed
	lost  chan struct{}
	// OnError, when set, hears of failed appends.
	OnError func(project string, err error)
}

type fed struct {
	project string
	msg     []byte
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
	case f.msgs <- fed{project, append([]byte(nil), msg...)}:
	default:
		f.Lost()
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

// Run appends what is offered and keeps the lease until ctx ends; then it
// appends what is still queued (within 2 s) and releases the lease.
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
			if err := f.app.Bridge(bctx); err != nil && f.OnError != nil {
				f.OnError("", err)
			}
			cancel()
		case m := <-f.msgs:
			f.offer(m)
		case <-f.lost:
			f.app.FeedLost()
		case <-ctx.Done():
			// The router has stopped: append what it routed, and retry
			// an append that failed (a successor would bridge it only
			// at its next append, which a quiet project may not have
			// for a long time).
			for {
				select {
				case m := <-f.msgs:
					f.offer(m)
					continue
				default:
				}
				break
			}
			fctx, cancel := context.WithTimeout(context.Background(), offerTimeout)
			defer cancel()
			if err := f.app.Flush(fctx); err != nil && f.OnError != nil {
				f.OnError("", err)
			}
			return
		}
	}
}

// offerTimeout bounds one append: an append is not cancelled with Run's
// context, which ends when the router stops, before the last appends.
const offerTimeout = 2 * time.Second

func (f *Feed) offer(m fed) {
	ctx, cancel := context.WithTimeout(context.Background(), offerTimeout)
	defer cancel()
	if err := f.app.Offer(ctx, m.project, m.msg); err != nil && f.OnError != nil {
		f.OnError(m.project, err)
	}
}

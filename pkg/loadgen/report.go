package loadgen

import (
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// reporter prints the progress line once a second.
type reporter struct {
	out      io.Writer
	workers  []worker
	target   int
	resume   bool // resuming connections: their figures too
	expected atomic.Int64
	done     chan struct{}
	once     sync.Once
	wg       sync.WaitGroup
}

func newReporter(out io.Writer, ws []worker, target int, resume bool) *reporter {
	r := &reporter{out: out, workers: ws, target: target, resume: resume, done: make(chan struct{})}
	if out == nil {
		return r
	}
	r.wg.Add(1)
	go r.run()
	return r
}

func (r *reporter) setExpected(n int64) { r.expected.Store(n) }

func (r *reporter) run() {
	defer r.wg.Done()
	start := time.Now()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var prev Progress
	for {
		select {
		case <-r.done:
			return
		case now := <-tick.C:
			p := total(r.workers)
			errs := p.ErrConnect + p.ErrHandshake + p.ErrTimeout + p.ErrProtocol + p.ErrWrite + p.ErrReset + p.ServerCloses
			fmt.Fprintf(r.out, "bench %6.1fs open %d/%d (+%d/s) pending %d failed %d dropped %d errors %d error-frames %d events %d/%d dups %d\n",
				now.Sub(start).Seconds(), p.Open, r.target, p.EverReady-prev.EverReady, p.pending(), p.Failed, p.Dropped,
				errs, p.ErrorFrames, p.Events, r.expected.Load(), p.Duplicates)
			if r.resume {
				fmt.Fprintf(r.out, "bench %6.1fs away %d (went %d, 1001 %d) reconnects %d failed %d (so far in the run: connect %d handshake %d timeout %d reset %d); resume new %d resumed %d live %d (incomplete %d) absent %d; out-of-order %d caught-up %d\n",
					now.Sub(start).Seconds(), p.EverReady-p.Open, p.WentAway, p.GoingAway, p.Reconnects, p.ReconnectFailures,
					p.ErrConnect, p.ErrHandshake, p.ErrTimeout, p.ErrReset,
					p.ResumeNew, p.ResumeResumed, p.ResumeLive, p.ResumeLiveIncomplete, p.ResumeAbsent, p.OutOfOrder, p.CaughtUp)
			}
			prev = p
		}
	}
}

func (r *reporter) stop() {
	r.once.Do(func() { close(r.done) })
	r.wg.Wait()
}

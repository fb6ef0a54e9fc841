package loadgen

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// engine runs the connections of one process: Count connections starting
// at run-wide index First, over cfg.Loops event loops.
type engine struct {
	cfg      *Config
	loops    []*loop
	stop     atomic.Bool
	wg       sync.WaitGroup
	rssStart int64
	done     chan struct{}
}

// shard is one process's part of a run.
type shard struct {
	First int     `json:"first"`
	Count int     `json:"count"`
	Rate  float64 `json:"rate"`
}

// newEngine prepares the loops; RSS is sampled before their connection
// tables exist, so the per-connection figure includes them.
func newEngine(cfg *Config, t *target, sh shard) (*engine, error) {
	e := &engine{cfg: cfg, done: make(chan struct{})}
	rss, err := readRSS(0)
	if err != nil {
		return nil, err
	}
	e.rssStart = rss
	targets, err := nodeTargets(cfg, t)
	if err != nil {
		return nil, err
	}
	nl := max(1, min(cfg.Loops, sh.Count))
	for k := range nl {
		// Loop k takes every nl-th connection so the run-wide order (and
		// so the source address spreading) interleaves across loops.
		n := (sh.Count - k + nl - 1) / nl
		l, err := newLoop(cfg, targets, n, sh.First+k, nl, sh.Rate/float64(nl), &e.stop, uint64(sh.First+k))
		if err != nil {
			e.closeLoops()
			return nil, fmt.Errorf("loop %d: %w", k, err)
		}
		e.loops = append(e.loops, l)
	}
	return e, nil
}

func (e *engine) closeLoops() {
	for _, l := range e.loops {
		_ = closeFD(l.epfd)
	}
}

// start runs the loops.
func (e *engine) start() {
	for _, l := range e.loops {
		e.wg.Add(1)
		go func() { defer e.wg.Done(); l.run() }()
	}
	go func() { e.wg.Wait(); close(e.done) }()
}

// progress sums the loops' counters.
func (e *engine) progress() Progress {
	var p Progress
	for _, l := range e.loops {
		p.add(l.ctr.snapshot())
	}
	return p
}

// shutdown closes every connection and waits for the loops to end;
// lastSeq is the last sequence published (resuming connections are
// checked up to it).
func (e *engine) shutdown(lastSeq int) *workerResult {
	e.stop.Store(true)
	<-e.done
	return e.result(lastSeq)
}

// workerResult is what one process reports at the end (as JSON when it is
// a worker process).
type workerResult struct {
	Progress  Progress `json:"progress"`
	Latency   sparse   `json:"latency"`
	SeqMaxLat []int64  `json:"seq_max_lat"`
	SeqCount  []int64  `json:"seq_count"`
	FirstRecv int64    `json:"first_recv"`
	LastRecv  int64    `json:"last_recv"`
	// Completeness over the healthy connections that were ready at some
	// point; StalledReady counts the stalled ones that were.
	StalledReady  int            `json:"stalled_ready"`
	ConnsReady    int            `json:"conns_ready"`
	ConnsComplete int            `json:"conns_complete"`
	ConnsMissing  int            `json:"conns_missing"`
	Missing       int64          `json:"missing"`
	ConnsWithDups int            `json:"conns_with_dups"`
	Sources       map[string]int `json:"sources"`
	// Seqs is present with resuming connections.
	Seqs *SeqSummary `json:"seqs,omitempty"`
}

// result gathers the loops' figures; call it only after they ended.
func (e *engine) result(lastSeq int) *workerResult {
	r := &workerResult{
		Progress:  e.progress(),
		SeqMaxLat: make([]int64, e.cfg.Events),
		SeqCount:  make([]int64, e.cfg.Events),
		Sources:   map[string]int{},
	}
	var h Histogram
	for _, l := range e.loops {
		h.Merge(&l.hist)
		for i := range l.seqCount {
			r.SeqMaxLat[i] = max(r.SeqMaxLat[i], l.seqMaxLat[i])
			r.SeqCount[i] += l.seqCount[i]
		}
		if l.firstRecv != 0 && (r.FirstRecv == 0 || l.firstRecv < r.FirstRecv) {
			r.FirstRecv = l.firstRecv
		}
		r.LastRecv = max(r.LastRecv, l.lastRecv)
		for a, n := range l.sources {
			r.Sources[a.String()] += n
		}
		for i := range l.conns {
			c := &l.conns[i]
			if !c.wasReady {
				continue
			}
			if c.stall != stallNone {
				r.StalledReady++
				continue
			}
			r.ConnsReady++
			if miss := int64(e.cfg.Events) - int64(c.recv); miss > 0 {
				r.ConnsMissing++
				r.Missing += miss
			} else {
				r.ConnsComplete++
			}
			if c.dups > 0 {
				r.ConnsWithDups++
			}
		}
	}
	r.Latency = h.sparse()
	if e.cfg.Resume {
		r.Seqs = e.seqSummary(lastSeq)
	}
	return r
}

// seqSummary checks every resuming connection that was ever ready over
// [its first sequence, lastSeq].
func (e *engine) seqSummary(lastSeq int) *SeqSummary {
	s := &SeqSummary{LastSeq: lastSeq}
	for _, l := range e.loops {
		for i := range l.conns {
			c := &l.conns[i]
			if !c.wasReady {
				continue
			}
			miss, runs := l.seqs.missing(i, lastSeq, 4)
			r := ConnReport{
				Conn: l.globalFirst + i*l.stride, ID: l.subscriptionID(i),
				First: int(l.seqs.first[i]), Highest: int(c.next) - 1,
				Missing: miss, MissingRuns: runsText(runs),
				Duplicated: int(c.dups), OutOfOrder: int(l.seqs.outOfOrder[i]),
				DupFirst: int(l.seqs.dupFirst[i]), DupLast: int(l.seqs.dupLast[i]),
				Reconnects: int(l.seqs.reconnects[i]), LastStatus: statusName(l.seqs.status[i]),
				LeftAfter: int(l.seqs.leftAfter[i]), BackWith: int(l.seqs.backWith[i]),
			}
			s.Missing += int64(r.Missing)
			s.Duplicated += int64(r.Duplicated)
			s.OutOfOrder += int64(r.OutOfOrder)
			if r.Missing > 0 {
				s.ConnsMissing++
			}
			if r.Duplicated > 0 {
				s.ConnsDuplicated++
			}
			if r.OutOfOrder > 0 {
				s.ConnsOutOfOrder++
			}
			if r.First < 0 && lastSeq >= 0 {
				s.ConnsNothing++
			}
			if r.First > 0 {
				s.ConnsFirstAfterZero++
			}
			if r.bad() > 0 {
				s.Worst = addWorst(s.Worst, r, ConnReport.bad)
			}
			if r.disorder() > 0 {
				s.WorstOrder = addWorst(s.WorstOrder, r, ConnReport.disorder)
			}
		}
	}
	return s
}

// waitRamped blocks until every connection is ready or failed, or stop.
func (e *engine) rampDone() bool {
	p := e.progress()
	return p.Attempted >= int64(e.total()) && p.pending() == 0
}

func (e *engine) total() int {
	n := 0
	for _, l := range e.loops {
		n += len(l.conns)
	}
	return n
}

// pollInterval is how often coordinators look at progress.
const pollInterval = 20 * time.Millisecond

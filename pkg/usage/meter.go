package usage

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"
)

// meterStripes is the number of locks a Meter spreads projects over: the
// read side of every connection (client messages, upgrades) counts
// through it, on as many goroutines as there are reader workers.
const meterStripes = 16

// Meter counts what happens off the router: upgrades and client messages
// and their answers. Those are per client action (a client sends at most
// --messages-per-minute), never per delivery, so a lock per stripe costs
// nothing that matters.
type Meter struct {
	seed    maphash.Seed
	stripes [meterStripes]struct {
		mu sync.Mutex
		t  Tally
		_  [40]byte // a stripe per cache line: readers on two cores do not share one
	}
}

// NewMeter returns an empty meter.
func NewMeter() *Meter {
	m := &Meter{seed: maphash.MakeSeed()}
	for i := range m.stripes {
		m.stripes[i].t.m = make(map[string]Counts)
	}
	return m
}

// Add adds c to project's counts.
func (m *Meter) Add(project string, c Counts) {
	s := &m.stripes[maphash.String(m.seed, project)%meterStripes]
	s.mu.Lock()
	s.t.Add(project, c)
	s.mu.Unlock()
}

// drainInto moves every count into t.
func (m *Meter) drainInto(t *Tally) {
	for i := range m.stripes {
		s := &m.stripes[i]
		s.mu.Lock()
		t.Merge(&s.t)
		s.t.Reset()
		s.mu.Unlock()
	}
}

// Swapper hands over a source's counts: it takes an empty tally and
// returns the one it was filling, which the collector empties and passes
// back next time. The router is one: it fills a tally under its own lock,
// so the swap is the only moment the two meet.
type Swapper func(empty *Tally) (full *Tally)

// CollectorOptions configures NewCollector.
type CollectorOptions struct {
	Store Store // required
	// Sources are swapped once a second besides the collector's Meter.
	Sources []Swapper
	Logger  *zap.Logger // default zap.NewNop
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// maxPending bounds the minutes of counts a collector keeps while its
// store fails: past it the oldest minute is dropped (and logged), so a
// long Redis outage costs a bounded memory and loses the oldest usage.
const maxPending = 10

// Collector folds the node's counts into its Store once a second, and
// keeps this minute's and the last minute's node totals for the
// dashboard's top projects.
type Collector struct {
	*Meter
	store   Store
	sources []Swapper
	log     *zap.Logger
	now     func() time.Time

	mu      sync.Mutex   // guards spare and pending: Flush may be called beside Run
	spare   []*Tally     // one per source, handed to it at the next swap
	fresh   *Tally       // scratch: one fold's counts
	pending []pendingMin // counts not yet in the store, oldest first

	// recentMu guards recent apart from mu, so that the dashboard's Top
	// never waits on a store write.
	recentMu sync.Mutex
	recent   [2]recentMin // the node's totals of the last two minutes seen
}

type pendingMin struct {
	minute int64
	t      *Tally
}

type recentMin struct {
	minute int64
	t      *Tally
}

// NewCollector returns a collector; Run folds.
func NewCollector(o CollectorOptions) (*Collector, error) {
	if o.Store == nil {
		return nil, errors.New("usage: collector without a store")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := &Collector{Meter: NewMeter(), store: o.Store, sources: o.Sources, log: o.Logger, now: o.Now, fresh: NewTally()}
	for range o.Sources {
		c.spare = append(c.spare, NewTally())
	}
	for i := range c.recent {
		c.recent[i].t = NewTally()
	}
	return c, nil
}

// Run folds once a second until ctx ends, then once more, so that what
// was counted before a shutdown reaches the store (bounded by a second).
func (c *Collector) Run(ctx context.Context) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			if err := c.Flush(fctx); err != nil {
				c.log.Warn("usage: last fold failed", zap.Error(err))
			}
			cancel()
			return
		case <-tick.C:
			if err := c.Flush(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("usage: fold failed; kept for the next", zap.Error(err))
			}
		}
	}
}

// Flush takes every count from the sources and the meter, credits it to
// the current minute and writes what is pending to the store.
func (c *Collector) Flush(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	minute := c.now().Unix() / 60
	fresh := c.fresh
	for i, swap := range c.sources {
		full := swap(c.spare[i])
		fresh.Merge(full)
		full.Reset()
		c.spare[i] = full
	}
	c.Meter.drainInto(fresh)
	c.noteRecent(minute, fresh)
	c.pendingFor(minute).Merge(fresh)
	fresh.Reset()
	for len(c.pending) > 0 {
		p := c.pending[0]
		if p.t.Len() > 0 {
			// A store takes out of p.t what it stored, so that a retry
			// after a failure part-way adds only the rest.
			if err := c.store.Add(ctx, p.minute, p.t); err != nil {
				return fmt.Errorf("usage: store minute %d: %w", p.minute, err)
			}
		}
		c.pending = slices.Delete(c.pending, 0, 1)
	}
	return nil
}

// pendingFor returns the pending tally of minute, adding one (and
// dropping the oldest past maxPending). The caller holds c.mu.
func (c *Collector) pendingFor(minute int64) *Tally {
	if n := len(c.pending); n > 0 && c.pending[n-1].minute == minute {
		return c.pending[n-1].t
	}
	if len(c.pending) == maxPending {
		c.log.Error("usage: store unavailable; the oldest pending minute is dropped",
			zap.Int64("minute", c.pending[0].minute), zap.Int("projects", c.pending[0].t.Len()))
		c.pending = slices.Delete(c.pending, 0, 1)
	}
	t := NewTally()
	c.pending = append(c.pending, pendingMin{minute, t})
	return t
}

// noteRecent adds one fold's counts to the node's recent totals.
func (c *Collector) noteRecent(minute int64, t *Tally) {
	c.recentMu.Lock()
	defer c.recentMu.Unlock()
	r := &c.recent
	switch {
	case minute == r[1].minute:
	case minute > r[1].minute:
		if minute == r[1].minute+1 {
			r[0], r[1] = r[1], r[0]
		} else {
			r[0].t.Reset()
			r[0].minute = minute - 1
		}
		r[1].t.Reset()
		r[1].minute = minute
	case minute == r[0].minute:
		r[0].t.Merge(t)
		return
	default:
		return // older than the window
	}
	r[1].t.Merge(t)
}

// Ranked is a project and its count of one metric.
type Ranked struct {
	Project string `json:"project"`
	Value   int64  `json:"value"`
}

// Top returns, per metric (indexed by Metric), the n projects that used
// the most of it on this node over the last full minute and the current
// one so far (the counts already folded), largest first, ties by name.
func (c *Collector) Top(n int) [numMetrics][]Ranked {
	c.recentMu.Lock()
	sum := NewTally()
	cur := c.now().Unix() / 60
	for _, r := range c.recent {
		if r.minute >= cur-1 {
			sum.Merge(r.t)
		}
	}
	c.recentMu.Unlock()
	var out [numMetrics][]Ranked
	for _, m := range Metrics {
		// Insertion into a list of n: O(projects x n), no sort of every
		// project once a second.
		list := make([]Ranked, 0, n+1)
		sum.All(func(p string, k Counts) {
			v := k.Of(m)
			if v <= 0 {
				return
			}
			at := len(list)
			for at > 0 && outranks(Ranked{p, v}, list[at-1]) {
				at--
			}
			if at < n {
				list = slices.Insert(list, at, Ranked{p, v})
				if len(list) > n {
					list = list[:n]
				}
			}
		})
		out[m] = list
	}
	return out
}

// outranks orders a top list: larger first, ties by name.
func outranks(a, b Ranked) bool {
	return a.Value > b.Value || a.Value == b.Value && a.Project < b.Project
}

package usage

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
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

// stripeMax bounds a stripe's tally: twice an even share of MaxProjects,
// so that the hash's unevenness does not fill a stripe before the meter
// holds MaxProjects (the meter holds at most 2 x MaxProjects).
const stripeMax = 2 * MaxProjects / meterStripes

// NewMeter returns an empty meter.
func NewMeter() *Meter {
	m := &Meter{seed: maphash.MakeSeed()}
	for i := range m.stripes {
		m.stripes[i].t = *newTally(stripeMax)
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

// drainInto moves every count into t, and returns how many projects the
// stripes credited to Unattributed since the last drain.
func (m *Meter) drainInto(t *Tally) (spilled int64) {
	for i := range m.stripes {
		s := &m.stripes[i]
		s.mu.Lock()
		t.Merge(&s.t)
		spilled += s.t.Spilled()
		s.t.Reset()
		s.mu.Unlock()
	}
	return spilled
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
// Within it, the pending minutes hold at most MaxProjects projects in
// all: past that the oldest minute not yet collapsed is collapsed, its
// projects' counts summed under Unattributed, so that when the store is
// back a query of that minute says it is incomplete rather than nothing.
const maxPending = 10

// maxRecentProjects bounds each of the two minutes the dashboard's top
// lists are drawn from: past it a project new in the minute is not ranked
// (it is still counted for the store). 10,000 keeps the two at about
// 2 MiB; a node with more projects than that in a minute ranks the first
// 10,000 seen.
const maxRecentProjects = 10_000

// Stats counts what the bounds on usage memory have cost, since the node
// started: usage kept without its project, or not kept. Every one is
// also logged.
type Stats struct {
	// Spilled counts projects' counts credited to Unattributed on the
	// node, in a second's tallies or in minutes waiting for the store: a
	// project new to a tally already holding MaxProjects.
	Spilled int64
	// PendingCollapsed counts minutes waiting for a failing store whose
	// projects were merged into Unattributed (the MaxProjects bound on
	// pending minutes).
	PendingCollapsed int64
	// PendingDropped counts minutes of counts dropped, never stored,
	// after maxPending minutes of a failing store.
	PendingDropped int64
	// StoreLostMinutes counts minutes a Memory store dropped before their
	// retention, to stay within its bound.
	StoreLostMinutes int64
	// StoreSpilled counts projects' counts a Memory store credited to
	// Unattributed: its bound was reached with no older minute to drop.
	StoreSpilled int64
}

// statser is a store that counts what its bound cost (Memory).
type statser interface{ Stats() Stats }

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
	logged  Stats        // the store's Stats as last logged

	// stats is read by a metrics scrape beside Flush.
	spilled, collapsed, dropped atomic.Int64

	// recentMu guards recent apart from mu, so that the dashboard's Top
	// never waits on a store write.
	recentMu sync.Mutex
	recent   [2]recentMin // the node's totals of the last two minutes seen
}

type pendingMin struct {
	minute    int64
	t         *Tally
	collapsed bool // t holds only Unattributed
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
		c.recent[i].t = newTally(maxRecentProjects)
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
	spilled := int64(0)
	for i, swap := range c.sources {
		full := swap(c.spare[i])
		fresh.Merge(full)
		spilled += full.Spilled()
		full.Reset()
		c.spare[i] = full
	}
	spilled += c.Meter.drainInto(fresh)
	c.noteRecent(minute, fresh)
	p := c.pendingFor(minute)
	p.Merge(fresh)
	spilled += fresh.Spilled() + p.Spilled()
	p.spilled = 0
	fresh.Reset()
	if spilled > 0 {
		c.spilled.Add(spilled)
		c.log.Warn("usage: over MaxProjects projects in a second; the rest are counted as unattributed",
			zap.Int("max_projects", MaxProjects), zap.Int64("spilled", spilled), zap.Int64("minute", minute))
	}
	c.collapsePending()
	defer c.logStore()
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

// collapsePending keeps the pending minutes within MaxProjects projects in
// all, collapsing the oldest first; the newest is bounded by its tally.
// The caller holds c.mu.
func (c *Collector) collapsePending() {
	n := 0
	for _, p := range c.pending {
		n += p.t.Len()
	}
	for i := 0; n > MaxProjects && i < len(c.pending)-1; i++ {
		p := &c.pending[i]
		if p.collapsed {
			continue
		}
		var sum Counts
		p.t.All(func(_ string, k Counts) { sum.Add(k) })
		projects := p.t.Len()
		n -= projects - 1
		p.t = newTally(1)
		p.t.Add(Unattributed, sum)
		p.collapsed = true
		c.collapsed.Add(1)
		c.log.Error("usage: store unavailable and over MaxProjects projects pending; a minute's counts are kept unattributed",
			zap.Int64("minute", p.minute), zap.Int("projects", projects))
	}
}

// logStore logs what the store's bound cost since the last fold, if
// anything. The caller holds c.mu.
func (c *Collector) logStore() {
	st, ok := c.store.(statser)
	if !ok {
		return
	}
	now := st.Stats()
	if lost := now.StoreLostMinutes - c.logged.StoreLostMinutes; lost > 0 {
		c.log.Warn("usage: store full; oldest minutes dropped before their retention",
			zap.Int64("minutes", lost), zap.Int64("lost_through_total", now.StoreLostMinutes))
	}
	if sp := now.StoreSpilled - c.logged.StoreSpilled; sp > 0 {
		c.log.Warn("usage: store full with one minute; projects new to it counted as unattributed", zap.Int64("projects", sp))
	}
	c.logged = now
}

// Stats returns what the bounds on usage memory have cost so far, the
// store's included when it counts them.
func (c *Collector) Stats() Stats {
	var s Stats
	if st, ok := c.store.(statser); ok {
		s = st.Stats()
	}
	s.Spilled, s.PendingCollapsed, s.PendingDropped = c.spilled.Load(), c.collapsed.Load(), c.dropped.Load()
	return s
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
		c.dropped.Add(1)
	}
	t := NewTally()
	c.pending = append(c.pending, pendingMin{minute: minute, t: t})
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
// one so far (the counts already folded), largest first, ties by name,
// and the earlier minute (Unix minutes).
func (c *Collector) Top(n int) (top [numMetrics][]Ranked, from int64) {
	c.recentMu.Lock()
	sum := newTally(2 * maxRecentProjects)
	cur := c.now().Unix() / 60
	for _, r := range c.recent {
		if r.minute >= cur-1 {
			sum.Merge(r.t)
		}
	}
	c.recentMu.Unlock()
	for _, m := range Metrics {
		// Insertion into a list of n: O(projects x n), no sort of every
		// project once a second.
		list := make([]Ranked, 0, n+1)
		sum.All(func(p string, k Counts) {
			v := k.Of(m)
			if v <= 0 || p == Unattributed {
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
		top[m] = list
	}
	return top, cur - 1
}

// outranks orders a top list: larger first, ties by name.
func outranks(a, b Ranked) bool {
	return a.Value > b.Value || a.Value == b.Value && a.Project < b.Project
}

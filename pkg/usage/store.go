package usage

import (
	"context"
	"slices"
	"strings"
	"sync"
	"time"
)

// Default retentions: how long a minute's counts are kept. A cluster's
// Redis keeps a week (a billing period's worth of reconciliation); one
// embedded node keeps an hour, because it keeps them in its own memory
// (Memory's doc says how much).
const (
	DefaultRedisRetention  = 7 * 24 * time.Hour
	DefaultMemoryRetention = time.Hour
)

// Minute is one minute's counts of a project.
type Minute struct {
	// Minute is the minute's start, in Unix minutes (seconds / 60).
	Minute int64
	Counts
	// Unattributed is the minute's counts that a bound took off their
	// project (Unattributed): some may be this project's, so Counts may
	// be short of what it used.
	Unattributed Counts
	// Lost is set when the minute was dropped before its retention
	// ended, to keep a store within its bound: nothing is known of it.
	Lost bool
}

// Incomplete reports whether m may be short of what its project used.
func (m Minute) Incomplete() bool { return m.Lost || !m.Unattributed.IsZero() }

// Store keeps per-project counts at one-minute resolution for a retention.
type Store interface {
	// Add adds each of t's projects' counts to minute (Unix minutes).
	// On an error it leaves in t the projects it did not store (all of
	// them, or those after a batch that failed), and may take out those
	// it did, so that a retry adds each count once.
	Add(ctx context.Context, minute int64, t *Tally) error
	// Query returns project's minutes from..to (Unix minutes, both
	// included) that counted something or may have (Minute.Incomplete),
	// in order.
	Query(ctx context.Context, project string, from, to int64) ([]Minute, error)
	// Retention is how long a minute is kept.
	Retention() time.Duration
}

// DefaultMemoryMaxEntries bounds a Memory store: at most this many
// project-minutes, about 73 bytes each once their minute has ended
// (BenchmarkMemoryAt100kProjects), so the embedded store stays near
// 22 MiB however many projects there are. 300,000 keeps the full hour
// for 5,000 projects busy every minute, and the last 3 minutes for
// 100,000.
const DefaultMemoryMaxEntries = 300_000

// Memory is the store of one node. Its memory is bounded twice: by the
// retention (a minute past it is dropped whole), and by maxEntries
// project-minutes (an entry is a project's name and its four counts, 72
// bytes for a 20-byte name: BenchmarkMemoryStore). When an add needs an
// entry past maxEntries, the oldest minute is dropped whole, before its
// retention: the retention shrinks, the recent minutes stay exact; a
// query says so of each minute lost (Minute.Lost). When the minute being
// added to is the only one left, a project new to it is counted under
// Unattributed, and a query marks that minute (Minute.Unattributed). Both
// are counted (Stats), and the collector logs them. A minute that ended
// is kept as a slice sorted by project (no map overhead).
type Memory struct {
	retention  time.Duration
	maxEntries int
	now        func() time.Time

	mu      sync.Mutex
	open    map[int64]map[string]Counts // minutes still being added to
	settled map[int64][]entry           // earlier minutes, sorted by project
	entries int                         // project-minutes in open and settled
	// lostFrom..lostThrough are the minutes dropped before their
	// retention (0: none), oldest first, so none in between is kept: a
	// query says each one is lost (one that had no usage too, since
	// nothing is known of it).
	lostFrom, lostThrough int64
	stats                 Stats
}

type entry struct {
	project string
	Counts
}

// NewMemory returns a store keeping minutes for retention (0:
// DefaultMemoryRetention), at most DefaultMemoryMaxEntries of them.
func NewMemory(retention time.Duration) *Memory {
	return newMemory(retention, DefaultMemoryMaxEntries, time.Now)
}

func newMemory(retention time.Duration, maxEntries int, now func() time.Time) *Memory {
	if retention <= 0 {
		retention = DefaultMemoryRetention
	}
	return &Memory{retention: retention, maxEntries: maxEntries, now: now,
		open: make(map[int64]map[string]Counts), settled: make(map[int64][]entry)}
}

// Retention is how long a minute is kept.
func (s *Memory) Retention() time.Duration { return s.retention }

// Add adds t's counts to minute.
func (s *Memory) Add(_ context.Context, minute int64, t *Tally) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	if minute < s.oldestLocked() || minute >= s.lostFrom && minute <= s.lostThrough {
		// A late fold of a minute already gone: a query says it is.
		return nil
	}
	m := s.open[minute]
	if m == nil {
		es := s.settled[minute]
		m = make(map[string]Counts, max(t.Len(), len(es)))
		// A minute settled already (a late fold) is opened again.
		for _, e := range es {
			m[e.project] = e.Counts
		}
		delete(s.settled, minute)
		s.open[minute] = m
	}
	t.All(func(p string, c Counts) {
		old, ok := m[p]
		if !ok {
			for s.entries >= s.maxEntries && s.dropOldestLocked(minute) {
			}
			if s.entries >= s.maxEntries && p != Unattributed {
				s.stats.StoreSpilled++
				p = Unattributed
				old, ok = m[p]
			}
			if !ok {
				s.entries++
			}
		}
		old.Add(c)
		m[p] = old
	})
	// Minutes two behind the one being added to are done: a fold credits
	// the minute it runs in, so only a fold just across a boundary
	// reaches back one.
	for k, om := range s.open {
		if k < minute-1 {
			s.settled[k] = settle(om)
			delete(s.open, k)
		}
	}
	return nil
}

// dropOldestLocked drops the oldest minute kept, if it is older than
// keep, and reports whether it did.
func (s *Memory) dropOldestLocked(keep int64) bool {
	oldest, n := keep, 0
	for k, om := range s.open {
		if k < oldest {
			oldest, n = k, len(om)
		}
	}
	for k, es := range s.settled {
		if k < oldest {
			oldest, n = k, len(es)
		}
	}
	if oldest == keep {
		return false
	}
	delete(s.open, oldest)
	delete(s.settled, oldest)
	s.entries -= n
	if s.lostFrom == 0 {
		s.lostFrom = oldest
	}
	s.lostThrough = max(s.lostThrough, oldest)
	s.stats.StoreLostMinutes++
	return true
}

// Stats returns what the store's bound has cost so far.
func (s *Memory) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stats
}

// settle turns a minute's map into its sorted slice.
func settle(m map[string]Counts) []entry {
	es := make([]entry, 0, len(m))
	for p, c := range m {
		es = append(es, entry{p, c})
	}
	slices.SortFunc(es, func(a, b entry) int { return strings.Compare(a.project, b.project) })
	return es
}

// oldestLocked is the oldest minute kept.
func (s *Memory) oldestLocked() int64 {
	return s.now().Add(-s.retention).Unix() / 60
}

// expireLocked drops the minutes past the retention.
func (s *Memory) expireLocked() {
	oldest := s.oldestLocked()
	for k, es := range s.settled {
		if k < oldest {
			s.entries -= len(es)
			delete(s.settled, k)
		}
	}
	for k, om := range s.open {
		if k < oldest {
			s.entries -= len(om)
			delete(s.open, k)
		}
	}
}

// Query returns project's minutes from..to with usage, and those that may
// have had some (lost, or with unattributed counts).
func (s *Memory) Query(_ context.Context, project string, from, to int64) ([]Minute, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	var out []Minute
	find := func(es []entry, p string) (Counts, bool) {
		i, ok := slices.BinarySearchFunc(es, p, func(e entry, p string) int { return strings.Compare(e.project, p) })
		if !ok {
			return Counts{}, false
		}
		return es[i].Counts, true
	}
	add := func(k int64) {
		var m Minute
		if om, ok := s.open[k]; ok {
			m = Minute{Minute: k, Counts: om[project], Unattributed: om[Unattributed]}
		} else if es, ok := s.settled[k]; ok {
			m.Minute = k
			m.Counts, _ = find(es, project)
			// Unattributed is "", which sorts first.
			m.Unattributed, _ = find(es[:min(len(es), 1)], Unattributed)
		} else if k >= s.lostFrom && k <= s.lostThrough {
			m = Minute{Minute: k, Lost: true}
		}
		if !m.IsZero() || m.Incomplete() {
			out = append(out, m)
		}
	}
	from = max(from, s.oldestLocked())
	lost := min(to, s.lostThrough) - max(from, s.lostFrom) + 1
	// Whichever is fewer: the minutes asked for, or the minutes kept.
	if to-from+1 <= int64(len(s.open)+len(s.settled))+max(lost, 0) {
		for k := from; k <= to; k++ {
			add(k)
		}
		return out, nil
	}
	var keys []int64
	for k := max(from, s.lostFrom); k <= min(to, s.lostThrough); k++ {
		keys = append(keys, k)
	}
	for k := range s.open {
		keys = append(keys, k)
	}
	for k := range s.settled {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if k >= from && k <= to {
			add(k)
		}
	}
	return out, nil
}

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
}

// Store keeps per-project counts at one-minute resolution for a retention.
type Store interface {
	// Add adds each of t's projects' counts to minute (Unix minutes).
	// On an error it leaves in t the projects it did not store (all of
	// them, or those after a batch that failed), and may take out those
	// it did, so that a retry adds each count once.
	Add(ctx context.Context, minute int64, t *Tally) error
	// Query returns project's minutes from..to (Unix minutes, both
	// included) that counted something, in order.
	Query(ctx context.Context, project string, from, to int64) ([]Minute, error)
	// Retention is how long a minute is kept.
	Retention() time.Duration
}

// Memory is the store of one node. Its memory is bounded by the retention:
// one entry (a project's name and its four counts, 72 bytes for a 20-byte
// name: BenchmarkMemoryStore) per project and minute with usage, for the
// minutes of the retention; a minute past it is dropped whole. A minute
// that ended is kept as a slice sorted by project (no map overhead).
type Memory struct {
	retention time.Duration
	now       func() time.Time

	mu      sync.Mutex
	open    map[int64]map[string]Counts // minutes still being added to
	settled map[int64][]entry           // earlier minutes, sorted by project
}

type entry struct {
	project string
	Counts
}

// NewMemory returns a store keeping minutes for retention (0:
// DefaultMemoryRetention).
func NewMemory(retention time.Duration) *Memory {
	return newMemory(retention, time.Now)
}

func newMemory(retention time.Duration, now func() time.Time) *Memory {
	if retention <= 0 {
		retention = DefaultMemoryRetention
	}
	return &Memory{retention: retention, now: now, open: make(map[int64]map[string]Counts), settled: make(map[int64][]entry)}
}

// Retention is how long a minute is kept.
func (s *Memory) Retention() time.Duration { return s.retention }

// Add adds t's counts to minute.
func (s *Memory) Add(_ context.Context, minute int64, t *Tally) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	if minute < s.oldestLocked() {
		return nil
	}
	m := s.open[minute]
	if m == nil {
		m = make(map[string]Counts, t.Len())
		// A minute settled already (a late fold) is opened again.
		for _, e := range s.settled[minute] {
			m[e.project] = e.Counts
		}
		delete(s.settled, minute)
		s.open[minute] = m
	}
	t.All(func(p string, c Counts) {
		old := m[p]
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
	for k := range s.settled {
		if k < oldest {
			delete(s.settled, k)
		}
	}
	for k := range s.open {
		if k < oldest {
			delete(s.open, k)
		}
	}
}

// Query returns project's minutes from..to with usage.
func (s *Memory) Query(_ context.Context, project string, from, to int64) ([]Minute, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expireLocked()
	var out []Minute
	add := func(k int64) {
		if m, ok := s.open[k]; ok {
			if c, ok := m[project]; ok {
				out = append(out, Minute{k, c})
			}
			return
		}
		es := s.settled[k]
		if i, ok := slices.BinarySearchFunc(es, project, func(e entry, p string) int { return strings.Compare(e.project, p) }); ok {
			out = append(out, Minute{k, es[i].Counts})
		}
	}
	from = max(from, s.oldestLocked())
	// Whichever is fewer: the minutes asked for, or the minutes kept.
	if to-from+1 <= int64(len(s.open)+len(s.settled)) {
		for k := from; k <= to; k++ {
			add(k)
		}
		return out, nil
	}
	var keys []int64
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

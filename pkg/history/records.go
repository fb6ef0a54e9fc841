package history

import (
	"context"
	"sync"
	"time"
)

// MemoryRecords keeps subscription records and checkpoints in the node's
// memory (the embedded broker: one node, whose restart forgets them with
// the history they point into).
type MemoryRecords struct {
	window time.Duration
	now    func() time.Time

	mu     sync.Mutex
	recs   map[recordKey]memoryRecord
	checks map[string]Checkpoint
	swept  time.Time
}

type recordKey struct{ project, id string }

type memoryRecord struct {
	Record
	expires time.Time
}

var _ Records = (*MemoryRecords)(nil)

// NewMemoryRecords returns an empty record store whose closed records last
// window (zero: DefaultWindow); now is the clock (nil: time.Now).
func NewMemoryRecords(window time.Duration, now func() time.Time) *MemoryRecords {
	if window <= 0 {
		window = DefaultWindow
	}
	if now == nil {
		now = time.Now
	}
	return &MemoryRecords{window: window, now: now, recs: make(map[recordKey]memoryRecord), checks: make(map[string]Checkpoint)}
}

// Put implements Records.
func (m *MemoryRecords) Put(_ context.Context, floorAge time.Duration, recs ...Record) error {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked(now)
	for _, r := range recs {
		if floorAge >= 0 {
			r.FloorMS = max(r.FloorMS, floorAt(now, floorAge))
		}
		ttl := m.window
		if r.Open {
			ttl = OpenRecordTTL
		}
		m.recs[recordKey{r.Project, r.ID}] = memoryRecord{Record: r, expires: now.Add(ttl)}
	}
	return nil
}

// End implements Records.
func (m *MemoryRecords) End(_ context.Context, floorAge time.Duration, node string, refs ...Record) error {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, ref := range refs {
		k := recordKey{ref.Project, ref.ID}
		r, ok := m.recs[k]
		if !ok || r.Node != node || !now.Before(r.expires) {
			continue
		}
		r.Open = false
		if floorAge >= 0 {
			r.FloorMS = max(r.FloorMS, floorAt(now, floorAge))
		}
		r.expires = now.Add(m.window)
		m.recs[k] = r
	}
	return nil
}

// floorAt is now - age in Unix ms, or 0 for an age reaching before 1970
// (nowMS of it would wrap around to a floor in the far future).
func floorAt(now time.Time, age time.Duration) uint64 {
	if age.Milliseconds() >= now.UnixMilli() {
		return 0
	}
	return nowMS(now.Add(-age))
}

// Get implements Records.
func (m *MemoryRecords) Get(_ context.Context, project, id string) (Record, bool, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.recs[recordKey{project, id}]
	if !ok || !now.Before(r.expires) {
		return Record{}, false, nil
	}
	return r.Record, true, nil
}

// Checkpoint implements Records.
func (m *MemoryRecords) Checkpoint(_ context.Context, node string, queued time.Duration) error {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.checks[node] = Checkpoint{MS: nowMS(now), Queued: max(queued, 0)}
	return nil
}

// LastCheckpoint implements Records.
func (m *MemoryRecords) LastCheckpoint(_ context.Context, node string) (Checkpoint, bool, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	c, ok := m.checks[node]
	if !ok || m.checkpointExpired(c, now) {
		return Checkpoint{}, false, nil
	}
	c.Age = time.Duration(nowMS(now)-min(c.MS, nowMS(now))) * time.Millisecond
	return c, true, nil
}

// checkpointExpired tells whether c is older than the window and a
// minute: forgotten, as the Redis key expires.
func (m *MemoryRecords) checkpointExpired(c Checkpoint, now time.Time) bool {
	return c.MS+uint64((m.window+time.Minute).Milliseconds()) <= nowMS(now)
}

// sweepLocked drops expired records and checkpoints, at most once a window.
func (m *MemoryRecords) sweepLocked(now time.Time) {
	if now.Sub(m.swept) < m.window {
		return
	}
	m.swept = now
	for k, r := range m.recs {
		if !now.Before(r.expires) {
			delete(m.recs, k)
		}
	}
	for n, c := range m.checks {
		if m.checkpointExpired(c, now) {
			delete(m.checks, n)
		}
	}
}

package history

import (
	"context"
	"sort"
	"sync"
	"time"
)

// entryOverhead is what an event costs the Memory store beside its bytes:
// its entry in the project's queue (position 16 B, slice 24 B, digest 8 B), its
// mark in the store's queue (24 B), and the allocator's rounding of the
// copy (8 B on average). The caps count it, so they bound memory, not
// only payloads.
const entryOverhead = 80

// entry is one held event of a project.
type entry struct {
	pos    Position
	data   []byte
	digest uint64
}

// mark is an event in the store-wide order of appends; evicting the oldest
// event of the store is popping the first mark whose event is still held.
type mark struct {
	p   *project
	pos Position
}

// project is one project's held events, oldest first.
type project struct {
	name    string
	entries []entry // entries[head:] are held
	head    int
	bytes   int64
	// floor is the position of the newest event evicted (or the store's
	// start): history is complete only from floor on.
	floor Position
}

func (p *project) held() []entry { return p.entries[p.head:] }

// Memory is the embedded store: one process, no Redis. Appends and reads
// share one mutex; both are O(log n + events returned).
//
// Invariants: marks lists every held event of every project in append
// order (plus marks of events already evicted by a project's own cap,
// skipped when popped); bytes is the sum of the projects' bytes; a
// project with no held event is not in projects.
type Memory struct {
	cfg Config
	now func() time.Time

	mu       sync.Mutex
	projects map[string]*project
	marks    []mark // marks[mhead:] are live or skippable
	mhead    int
	bytes    int64
	last     Position // the newest position handed out
	// lostFloor stands in for the floor of projects no longer held: a
	// project evicted whole by the store's cap, or any project before the
	// store started (its history before that is unknown).
	lostFloor Position
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty store; now is the clock (nil: time.Now).
func NewMemory(cfg Config, now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	m := &Memory{cfg: cfg.withDefaults(), now: now, projects: make(map[string]*project)}
	// Nothing that happened before the store existed is held.
	m.lostFloor = Position{MS: nowMS(now())}
	m.last = m.lostFloor
	return m
}

// Append implements Store. It never fails; an event larger than the
// project cap is counted as evicted at once (readers before it see
// incomplete history).
func (m *Memory) Append(_ context.Context, projectID string, data []byte) (Position, error) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	ms := nowMS(now)
	pos := Position{MS: ms}
	if ms <= m.last.MS { // same millisecond, or the clock went back
		pos = Position{MS: m.last.MS, Seq: m.last.Seq + 1}
	}
	m.last = pos
	p := m.projects[projectID]
	if p == nil {
		p = &project{name: projectID, floor: m.lostFloor}
		m.projects[projectID] = p
	}
	size := int64(len(data)) + entryOverhead
	p.entries = append(p.entries, entry{pos: pos, data: append([]byte(nil), data...), digest: Digest(data)})
	p.bytes += size
	m.bytes += size
	m.marks = append(m.marks, mark{p: p, pos: pos})
	for p.bytes > m.cfg.MaxProjectBytes {
		m.evictOldest(p)
	}
	m.expire(ms)
	for m.bytes > m.cfg.MaxBytes && m.popMark() {
	}
	return pos, nil
}

// Since implements Store.
func (m *Memory) Since(_ context.Context, projectID string, after Position, limit int) ([]Event, bool, error) {
	now := nowMS(m.now())
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expire(now)
	if after.MS+uint64(m.cfg.Window.Milliseconds()) < now {
		return nil, false, nil // outside the window: no resume, by rule
	}
	p := m.projects[projectID]
	if p == nil {
		return nil, !after.Less(m.lostFloor), nil
	}
	if after.Less(p.floor) {
		return nil, false, nil
	}
	held := p.held()
	i := sort.Search(len(held), func(i int) bool { return after.Less(held[i].pos) })
	held = held[i:]
	if len(held) > limit {
		held = held[:limit]
	}
	evs := make([]Event, len(held))
	for j, e := range held {
		evs[j] = Event{Pos: e.pos, Data: e.data}
	}
	return evs, true, nil
}

// Gap declares that events may have been lost just now (the broker
// dropped messages): every position before now reads as incomplete.
func (m *Memory) Gap() {
	m.mu.Lock()
	defer m.mu.Unlock()
	// A position no event has: every reader up to the newest event is
	// before it, and the next append comes after it.
	m.last.Seq++
	m.lostFloor = m.last
	for _, p := range m.projects {
		p.floor = m.last
	}
}

// Bytes returns what the store holds, overhead included.
func (m *Memory) Bytes() int64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.bytes
}

// expire evicts every event older than the window.
func (m *Memory) expire(now uint64) {
	w := uint64(m.cfg.Window.Milliseconds())
	for m.mhead < len(m.marks) {
		mk := m.marks[m.mhead]
		if mk.pos.MS+w >= now {
			return
		}
		m.popMark()
	}
}

// popMark evicts the store's oldest held event, if any, and reports
// whether there was one.
func (m *Memory) popMark() bool {
	for m.mhead < len(m.marks) {
		mk := m.marks[m.mhead]
		m.marks[m.mhead] = mark{}
		m.mhead++
		if m.mhead > 1024 && m.mhead*2 > len(m.marks) { // reuse the array
			m.marks = append(m.marks[:0], m.marks[m.mhead:]...)
			m.mhead = 0
		}
		held := mk.p.held()
		if len(held) > 0 && held[0].pos == mk.pos {
			m.evictOldest(mk.p)
			return true
		}
		// Already evicted by its project's cap.
	}
	return false
}

// evictOldest drops p's oldest event and forgets p when it is empty.
func (m *Memory) evictOldest(p *project) {
	e := p.entries[p.head]
	p.entries[p.head] = entry{}
	p.head++
	if p.head > 64 && p.head*2 > len(p.entries) {
		p.entries = append(p.entries[:0], p.entries[p.head:]...)
		p.head = 0
	}
	size := int64(len(e.data)) + entryOverhead
	p.bytes -= size
	m.bytes -= size
	if p.floor.Less(e.pos) { // a gap may have set it higher already
		p.floor = e.pos
	}
	if len(p.held()) == 0 {
		delete(m.projects, p.name)
		// Its floor matters to readers only while inside the window;
		// an event evicted by age is outside it already.
		if now := nowMS(m.now()); e.pos.MS+uint64(m.cfg.Window.Milliseconds()) >= now && m.lostFloor.Less(e.pos) {
			m.lostFloor = e.pos
		}
	}
}

var _ Reader = (*Memory)(nil)

// ReadFrom implements Reader.
func (m *Memory) ReadFrom(_ context.Context, projectID string, from Anchor, floorMS uint64) (Span, error) {
	now := nowMS(m.now())
	m.mu.Lock()
	defer m.mu.Unlock()
	m.expire(now)
	p := m.projects[projectID]
	var held []entry
	floor := m.lostFloor
	if p != nil {
		held, floor = p.held(), p.floor
	}
	if from.IsZero() {
		after := Position{MS: floorMS, Seq: 1<<64 - 1}
		if floorMS+uint64(m.cfg.Window.Milliseconds()) < now || after.Less(floor) {
			return Span{}, nil
		}
	}
	first, start, end, ok := cut(len(held), func(i int) (Position, uint64) { return held[i].pos, held[i].digest }, from, floorMS)
	if !ok || end >= 0 && held[end].pos.Less(floor) {
		return Span{}, nil
	}
	return Span{Events: copyEntries(held[first:]), Start: start, Complete: true}, nil
}

// copyEntries returns held as events (the data shared, never modified).
func copyEntries(held []entry) []Event {
	evs := make([]Event, len(held))
	for j, e := range held {
		evs[j] = Event{Pos: e.pos, Data: e.data, Digest: e.digest}
	}
	return evs
}

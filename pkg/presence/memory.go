package presence

import (
	"context"
	"sync"
	"time"
)

// Memory is the store of a single node: records live in this process and
// die with it, like its connections.
type Memory struct {
	mu       sync.Mutex
	projects map[string]*memProject
}

type memProject struct {
	docs  map[string]*memRecord // id -> record
	users map[string]string     // user id -> id
}

type memRecord struct {
	doc       []byte
	uid       string
	createdAt string
	expires   time.Time
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty Memory store.
func NewMemory() *Memory { return &Memory{projects: make(map[string]*memProject)} }

// Upsert implements Store.
func (m *Memory) Upsert(_ context.Context, u Upsert) (Record, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	p := m.projects[u.Project]
	if p == nil {
		p = &memProject{docs: make(map[string]*memRecord), users: make(map[string]string)}
		m.projects[u.Project] = p
	}
	id, ok := p.users[u.UserID]
	rec := p.docs[id]
	if !ok || rec == nil {
		id = u.ID
		if other := p.docs[id]; other != nil && other.uid != u.UserID {
			return Record{}, ErrIDTaken
		}
		rec = &memRecord{uid: u.UserID, createdAt: u.CreatedAt}
		p.docs[id] = rec
		p.users[u.UserID] = id
		ok = false
	}
	rec.doc = joinDoc(id, rec.createdAt, u.Tail)
	rec.expires = u.ExpiresAt
	return Record{ID: id, Doc: rec.doc, Created: !ok}, nil
}

// joinDoc puts a document together from its id, creation time and tail,
// as protocol.AppendPresenceHead writes them. ids and times need no
// escaping (ids are database ids), which the Redis store's script relies
// on too.
func joinDoc(id, createdAt string, tail []byte) []byte {
	b := make([]byte, 0, 32+len(id)+len(createdAt)+len(tail))
	b = append(b, `{"$id":"`...)
	b = append(b, id...)
	b = append(b, `","$createdAt":"`...)
	b = append(b, createdAt...)
	b = append(b, `",`...)
	return append(b, tail...)
}

// Release implements Store: one node holds or does not.
func (m *Memory) Release(_ context.Context, project, id string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dropLocked(project, id), nil
}

// Delete implements Store.
func (m *Memory) Delete(_ context.Context, project, id string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.dropLocked(project, id), nil
}

func (m *Memory) dropLocked(project, id string) []byte {
	p := m.projects[project]
	if p == nil || p.docs[id] == nil {
		return nil
	}
	rec := p.docs[id]
	delete(p.docs, id)
	if p.users[rec.uid] == id {
		delete(p.users, rec.uid)
	}
	if len(p.docs) == 0 {
		delete(m.projects, project)
	}
	return rec.doc
}

// List implements Store.
func (m *Memory) List(_ context.Context, project string) ([][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out [][]byte
	if p := m.projects[project]; p != nil {
		for _, rec := range p.docs {
			out = append(out, rec.doc)
		}
	}
	return out, nil
}

// Tick implements Store: no other node can die, so it only expires. A
// scan over every record, which at 19,000 records takes well under a
// millisecond every few seconds.
func (m *Memory) Tick(_ context.Context, _ time.Duration, now time.Time) (TickResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var res TickResult
	for project, p := range m.projects {
		for id, rec := range p.docs {
			if !rec.expires.IsZero() && !rec.expires.After(now) {
				res.Removed = append(res.Removed, Removed{Project: project, Doc: m.dropLocked(project, id)})
			}
		}
	}
	return res, nil
}

package server

import (
	"cmp"
	"slices"
	"strings"
	"sync"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/dashboard"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// userKey names one user of one project.
type userKey struct{ project, uid string }

// userTable finds a signed-in user's connections, which is what a
// permission change needs. Guests cost nothing here.
type userTable struct {
	mu    sync.Mutex
	conns map[userKey]map[*conn]struct{}
}

func (t *userTable) add(k userKey, c *conn) {
	if k.uid == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.conns == nil {
		t.conns = make(map[userKey]map[*conn]struct{})
	}
	set := t.conns[k]
	if set == nil {
		set = make(map[*conn]struct{}, 1)
		t.conns[k] = set
	}
	set[c] = struct{}{}
}

func (t *userTable) remove(k userKey, c *conn) {
	if k.uid == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if set := t.conns[k]; set != nil {
		delete(set, c)
		if len(set) == 0 {
			delete(t.conns, k)
		}
	}
}

func (t *userTable) list(k userKey) []*conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]*conn, 0, len(t.conns[k]))
	for c := range t.conns[k] {
		out = append(out, c)
	}
	return out
}

// setIdentity switches c to identity id: roles, user id, account channels,
// the user table and the index, the index in one step.
func (c *conn) setIdentity(id auth.Identity) {
	s := c.srv
	c.mu.Lock()
	old := userKey{c.project, c.userID}
	c.userID, c.roles = id.UserID, id.Roles
	for i := range c.subs {
		c.subs[i].channels = protocol.ConvertAccountChannels(c.subs[i].channels, id.UserID)
	}
	// The user table changes under c.mu, as in onClosed, so a closed
	// connection can never be put back into it.
	var release func()
	if old.uid != id.UserID {
		// Signed in as someone else: this connection no longer holds the
		// old user's presence (released below, once re-indexed).
		release = s.presences.detachLocked(old, c)
	}
	if c.state != stateClosed {
		s.users.remove(old, c)
		s.users.add(userKey{c.project, c.userID}, c)
	}
	c.mu.Unlock()
	c.reindex()
	if release != nil {
		release()
	}
}

// projectTable counts this node's upgraded connections per project: the
// dashboard's top projects, and it tells a project-aware broker (sharded
// Redis) when the first arrives and the last leaves, so the node only
// receives the projects it serves.
type projectTable struct {
	mu     sync.Mutex
	counts map[string]int
	aware  broker.ProjectAware // nil: the broker delivers every project
}

func (t *projectTable) add(project string) {
	if project == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.counts == nil {
		t.counts = make(map[string]int)
	}
	t.counts[project]++
	if t.counts[project] == 1 && t.aware != nil {
		t.aware.Want(project)
	}
}

func (t *projectTable) remove(project string) {
	if project == "" {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.counts[project]--
	if t.counts[project] <= 0 {
		delete(t.counts, project)
		if t.aware != nil {
			t.aware.Unwant(project)
		}
	}
}

// top returns up to n projects with the most connections, most first (by
// name among equals). The dashboard asks once a second; the lock is held
// for a copy of the counts only, never for the sort.
func (t *projectTable) top(n int) []dashboard.ProjectCount {
	t.mu.Lock()
	all := make([]dashboard.ProjectCount, 0, len(t.counts))
	for p, c := range t.counts {
		all = append(all, dashboard.ProjectCount{Project: p, Conns: c})
	}
	t.mu.Unlock()
	slices.SortFunc(all, func(a, b dashboard.ProjectCount) int {
		if a.Conns != b.Conns {
			return cmp.Compare(b.Conns, a.Conns)
		}
		return strings.Compare(a.Project, b.Project)
	})
	return all[:min(n, len(all))]
}

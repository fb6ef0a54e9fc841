package server

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// Permission changes are resolved beside the router, never on it: with
// --auth http a resolution is a backend call of up to --auth-timeout, and
// the router is the one goroutine that delivers every event of the node.
//
// While a user's roles are being re-resolved, that user's connections are
// held: the router delivers nothing to them and keeps, in order, every
// event of their project instead (it cannot know which ones the new roles
// will admit: a role may have been added). When the answer comes, the
// connections are re-indexed under the new roles and the kept events are
// matched against those roles and delivered, all under the router's lock,
// so that no event routed later can overtake them. So:
//   - the event that announced the change is the hold's first: it reaches
//     the user under the new roles, as in Appwrite, which re-resolves the
//     user before it matches the event (app/realtime.php);
//   - every later event sees the new roles too;
//   - everyone else receives the announcing event at once, and other users
//     and projects never wait for the backend.

// maxHeldEvents bounds the events kept for one held user. Reached only when
// a project publishes hundreds of events a second while the backend hangs;
// the user's connections are then closed with 1013, and their clients
// reconnect and resolve afresh, rather than the node keep an unbounded
// backlog.
const maxHeldEvents = 1024

// maxResolvers bounds the backend calls in flight for permission changes;
// more wait in a queue. At 2 s a call, 64 keep up with 32 changes a second.
const maxResolvers = 64

// holds are the users whose permission change is being resolved.
type holds struct {
	srv    *Server
	active atomic.Int32 // len(users): the router's check per event without the lock
	pool   boundedPool[*hold]

	mu    sync.Mutex
	users map[userKey]*hold
}

// hold is one user whose roles are being re-resolved.
type hold struct {
	key    userKey
	conns  []heldConn
	events []*protocol.Event // events of the project routed while held, in order
	// next is how many of events came before a change that arrived while
	// the current resolution ran: later events need another resolution.
	// -1 when no change is waiting.
	next     int
	overflow bool
	started  time.Time
}

// heldConn is a held connection and the first of the hold's events it has
// not seen (a connection of the user that opened after the hold began got
// the earlier ones the usual way).
type heldConn struct {
	c    *conn
	from int
}

func newHolds(s *Server) *holds {
	h := &holds{srv: s, users: make(map[userKey]*hold)}
	h.pool = boundedPool[*hold]{max: maxResolvers, do: h.resolve}
	return h
}

// begin holds the user's connections on this node and starts resolving
// their roles. It runs on the router, before the announcing event is
// delivered, so that record keeps that event for them.
func (hs *holds) begin(project, uid string) {
	key := userKey{project, uid}
	conns := hs.srv.users.list(key)
	if len(conns) == 0 {
		return
	}
	hs.srv.metrics.permissionChanges.Inc()
	hs.mu.Lock()
	defer hs.mu.Unlock()
	h := hs.users[key]
	fresh := h == nil
	if fresh {
		h = &hold{key: key, next: -1, started: time.Now()}
	} else if h.next < 0 {
		h.next = len(h.events) // resolved again once the current call returns
	}
	for _, c := range conns {
		c.mu.Lock()
		if c.flags&flagHeld == 0 && c.state != stateClosed {
			c.flags |= flagHeld
			h.conns = append(h.conns, heldConn{c, len(h.events)})
		}
		c.mu.Unlock()
	}
	if fresh {
		hs.users[key] = h
		hs.active.Add(1)
		hs.srv.metrics.permissionHolds.Inc()
		hs.pool.run(h)
	}
}

// record keeps ev for every held user of its project. It runs on the
// router, after ev was delivered to everyone else.
func (hs *holds) record(ev *protocol.Event) {
	if hs.active.Load() == 0 {
		return
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	for k, h := range hs.users {
		if k.project != ev.Project || h.overflow {
			continue
		}
		if len(h.events) == maxHeldEvents {
			h.overflow = true
			continue
		}
		h.events = append(h.events, ev)
	}
}

// resolve runs on a pool goroutine: it asks the resolver for the user's
// roles, as often as changes arrived meanwhile, and ends the hold.
func (hs *holds) resolve(h *hold) {
	s := hs.srv
	rt := s.router
	for {
		id, err := s.resolveUser(h.key)
		rt.mu.Lock()
		hs.mu.Lock()
		upto := len(h.events)
		again := h.next >= 0
		if again {
			upto, h.next = h.next, -1
		}
		overflow := h.overflow && !again
		events := h.events[:upto]
		if !again {
			delete(hs.users, h.key)
			hs.active.Add(-1)
		}
		hs.mu.Unlock()
		switch {
		case overflow:
			for _, hc := range h.conns {
				hc.c.sendLast(outFrame{head: closeHeldTooLong.frame(0, "")}, closeHeldTooLong, statusTryAgainLater)
			}
		default:
			for _, hc := range h.conns {
				hc.c.applyIdentity(h.key, id, err)
			}
			for i, ev := range events {
				rt.deliverHeld(ev, h.conns, i)
			}
		}
		if !again {
			for _, hc := range h.conns {
				hc.c.mu.Lock()
				hc.c.flags &^= flagHeld
				hc.c.mu.Unlock()
			}
			rt.mu.Unlock()
			s.metrics.permissionHolds.Dec()
			s.metrics.permissionHoldSeconds.Observe(time.Since(h.started).Seconds())
			return
		}
		// Keep the events after the change that arrived meanwhile; they
		// wait for the next answer.
		hs.mu.Lock()
		h.events = append(h.events[:0], h.events[upto:]...)
		for i := range h.conns {
			h.conns[i].from = max(0, h.conns[i].from-upto)
		}
		hs.mu.Unlock()
		rt.mu.Unlock()
	}
}

// resolveUser asks the resolver for a user's current identity, bounded by
// AuthTimeout. A resolver that cannot re-resolve users (JWT) answers
// errors.ErrUnsupported.
func (s *Server) resolveUser(k userKey) (auth.Identity, error) {
	ur, ok := s.cfg.Resolver.(auth.UserResolver)
	if !ok {
		return auth.Identity{}, errors.ErrUnsupported
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AuthTimeout)
	defer cancel()
	id, err := ur.ResolveUser(ctx, k.project, k.uid)
	if err != nil && !errors.Is(err, errors.ErrUnsupported) {
		s.metrics.permissionResolveFailures.Inc()
		if !errors.Is(err, auth.ErrUnauthorized) {
			s.log.Warn("re-resolving user after a permission change failed; dropping to guest",
				zap.String("project", k.project), zap.String("user", k.uid), zap.Error(err))
		}
	}
	return id, err
}

// applyIdentity gives a held connection of user k the identity the
// resolver answered. A resolver that cannot re-resolve a user (JWT), or
// that failed, drops the connection to guest and asks it to authenticate
// again: stale roles are never kept. A connection that signed in as
// someone else meanwhile keeps that identity.
func (c *conn) applyIdentity(k userKey, id auth.Identity, err error) {
	c.mu.Lock()
	same := c.userID == k.uid && c.state != stateClosed
	c.mu.Unlock()
	if !same {
		return
	}
	if err != nil {
		c.setIdentity(auth.Guest())
		c.sendError(protocol.CodeInvalidMessage, "Permissions changed: authenticate again.")
		return
	}
	c.setIdentity(id)
}

// deliverHeld matches the i-th event kept for a hold against each held
// connection's identity now and queues it where it matches. The caller
// holds r.mu. Its delivery latency counts from now: the hold before it is
// switchboard_permission_hold_seconds'.
func (r *router) deliverHeld(ev *protocol.Event, conns []heldConn, i int) {
	r.begin(ev, r.srv.latency.stamp())
	r.releasing = true
	for _, hc := range conns {
		if i < hc.from {
			continue
		}
		c := hc.c
		c.mu.Lock()
		ok := c.project == ev.Project && admits(c.roles, ev.Roles)
		c.mu.Unlock()
		if ok {
			r.visit(0, c)
		}
	}
	r.releasing = false
	r.finish()
}

// admits reports whether a connection with roles may read an event for
// eventRoles: one role in common, or the event is for "any" (the rule the
// index applies).
func admits(roles, eventRoles []string) bool {
	for _, e := range eventRoles {
		if e == auth.RoleAny {
			return true
		}
		for _, r := range roles {
			if r == e {
				return true
			}
		}
	}
	return false
}

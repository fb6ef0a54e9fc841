package server

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/pkg/explain"
	"github.com/switchboard-rt/switchboard/pkg/index"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
	"github.com/switchboard-rt/switchboard/pkg/query"
)

// The admin API's explain and connections questions (pkg/explain), as
// this node answers them for its own connections. An answer is a dry run:
// each connection is read under its own lock, briefly, and nothing is
// queued, held or re-indexed; the router's lock is never taken, so routing
// never waits on an answer.

// answerExplain is this node's part of the cluster's answers
// (explain.Options.Answer).
func (s *Server) answerExplain(_ context.Context, kind string, body []byte) ([]byte, error) {
	switch kind {
	case "explain":
		var req explain.Request
		if err := json.Unmarshal(body, &req); err != nil {
			return nil, fmt.Errorf("explain request: %w", err)
		}
		ev, err := protocol.ParseEvent(req.Event)
		if err != nil {
			return nil, fmt.Errorf("explain request: %w", err)
		}
		return json.Marshal(s.explainHere(ev, req))
	case "connections":
		var req explain.ListRequest
		if err := json.Unmarshal(body, &req); err != nil {
			return nil, fmt.Errorf("connections request: %w", err)
		}
		return json.Marshal(s.listHere(req))
	}
	return nil, fmt.Errorf("unknown question %q", kind)
}

// explainHere explains ev for the connections of this node that req names.
func (s *Server) explainHere(ev *protocol.Event, req explain.Request) explain.NodeExplain {
	var conns []idConn
	if req.Connection != "" {
		id, err := explain.ParseConnID(req.Connection)
		if err == nil && id.Node == s.node {
			if c, ok := s.idx.Get(index.ID(id.ID)); ok {
				conns = append(conns, idConn{index.ID(id.ID), c})
			}
		}
	} else {
		for _, c := range s.users.list(userKey{req.Project, req.UserID}) {
			conns = append(conns, idConn{c.id, c}) // set before the user table had c
		}
		slices.SortFunc(conns, func(a, b idConn) int { return cmp.Compare(a.id, b.id) })
	}
	out := explain.NodeExplain{Connections: []explain.Explained{}}
	if len(conns) > explain.MaxExplained {
		conns, out.Truncated = conns[:explain.MaxExplained], true
	}
	x := explainer{srv: s, ev: ev, prefix: protocol.AppendEventPrefix(nil, ev)}
	x.doc.Reset(ev.Payload)
	for _, ic := range conns {
		out.Connections = append(out.Connections, x.conn(ic.id, ic.c))
	}
	return out
}

// idConn is a connection and its id, read where reading it is safe: a
// connection found in the index may not have its id field written yet
// (it is set after Insert returns).
type idConn struct {
	id index.ID
	c  *conn
}

// explainer explains one event: what the router would do for it, step by
// step, without doing it.
type explainer struct {
	srv    *Server
	ev     *protocol.Event
	doc    query.Document
	prefix []byte      // the event frame's shared part, as the router encodes it
	z      lazyDeflate // prefix deflated, as router.sharedDeflated
	def    eventDeflater
}

// conn explains the event for c. The checks are the router's: the index
// (project, roles, channels), visit (state, hold), matchLocked (channels,
// filter) and the queue's push; each subscription gets the first that
// fails, in explain.Reason's order.
func (x *explainer) conn(id index.ID, c *conn) explain.Explained {
	ev := x.ev
	c.mu.Lock()
	defer c.mu.Unlock()
	e := explain.Explained{Identity: x.srv.identityLocked(id, c), Subscriptions: make([]explain.Verdict, len(c.subs))}
	roleOK := admits(c.roles, ev.Roles)
	var ids []string // the subscriptions the frame would list
	for i := range c.subs {
		sub := &c.subs[i]
		v := explain.Verdict{Subscription: sub.describe(), Reason: explain.Delivered}
		switch {
		case c.project != ev.Project:
			v.Reason = explain.OtherProject
		case !anyIn(sub.channels, ev.Channels):
			v.Reason = explain.ChannelNotSubscribed
		case !roleOK:
			v.Reason = explain.RoleNotHeld
		default:
			if miss, ok := sub.filter.Explain(&x.doc); !ok {
				v.Reason = explain.QueryFalse
				v.Query = &explain.QueryMiss{Index: miss.Query, Detail: miss.Detail}
				if miss.Query < len(sub.queries) {
					v.Query.Text = sub.queries[miss.Query]
				}
			} else {
				ids = append(ids, sub.id)
			}
		}
		e.Subscriptions[i] = v
	}
	if len(ids) == 0 {
		return e
	}
	// The connection's own condition decides for every subscription that
	// matched, as visit and push decide for the connection.
	why := explain.Delivered
	switch {
	case c.state != stateLive:
		why = explain.ConnectionClosing
	case c.flags&flagHeld != 0 || (ev.PermissionsChanged && ev.UserID != "" && ev.UserID == c.userID):
		// The event itself announcing the user's change holds them
		// first (router.route): it reaches them from the hold, under
		// the roles the resolver then answers.
		why = explain.UserHeld
	case c.q.overflows(x.frameSize(ids, c.flags&flagDeflate != 0), x.srv.cfg.MaxQueueBytes):
		why = explain.QueueOverLimit
	}
	for i := range e.Subscriptions {
		if v := &e.Subscriptions[i]; v.Reason == explain.Delivered {
			v.Reason, v.Delivered = why, why == explain.Delivered
		}
	}
	e.Delivered = why == explain.Delivered
	return e
}

// frameSize is the size of the frame the router would queue for a
// recipient matching ids (router.newFrame's arithmetic).
func (x *explainer) frameSize(ids []string, deflate bool) int {
	tail := protocol.AppendEventTail(nil, ids)
	plain := len(x.prefix) + len(tail)
	if deflate && plain >= x.srv.cfg.CompressionMinBytes {
		if z, _ := x.z.get(&x.def, x.prefix); z != nil {
			n := len(z) + storedFinalSize(len(tail))
			return len(appendFrameHeader(nil, ws.OpText, n)) + n
		}
	}
	return len(appendFrameHeader(nil, ws.OpText, plain)) + plain
}

// listHere is this node's part of a page of GET /v1/connections: the
// first connections of the project (and user) after the cursor, in id
// order, within explain.MaxAnswerBytes.
func (s *Server) listHere(req explain.ListRequest) explain.NodeList {
	type cand = idConn
	limit := min(max(req.Limit, 1), explain.MaxLimit)
	var cands []cand
	keep := func() { // the limit+1 lowest ids: one more tells that there are more
		slices.SortFunc(cands, func(a, b cand) int { return cmp.Compare(a.id, b.id) })
		cands = cands[:min(len(cands), limit+1)]
	}
	add := func(id index.ID, c *conn) {
		if !req.Includes(s.node, uint32(id)) {
			return
		}
		cands = append(cands, cand{id, c})
		if len(cands) >= 4*(limit+1) {
			keep()
		}
	}
	if req.UserID != "" {
		for _, c := range s.users.list(userKey{req.Project, req.UserID}) {
			add(c.id, c)
		}
	} else {
		// Range holds a shard's read lock: a connection's lock may be
		// taken under it (the router's visit does so under Lookup's), and
		// nothing here calls back into the index.
		s.idx.Range(func(id index.ID, c *conn) {
			c.mu.Lock()
			ours := c.project == req.Project
			c.mu.Unlock()
			if ours {
				add(id, c)
			}
		})
	}
	keep()
	out := explain.NodeList{Connections: []explain.Connection{}}
	now := int64(s.clock.Load())
	size := 0
	for i, cd := range cands {
		if i == limit {
			out.More = true
			break
		}
		info, ok := s.describe(cd.id, cd.c, req, now)
		if !ok {
			continue // left or changed project meanwhile
		}
		// The byte bound: JSON's size of what is kept, so the answer
		// stays under explain.MaxAnswerBytes with room for its frame.
		b, _ := json.Marshal(info)
		if size += len(b) + 1; size > explain.MaxAnswerBytes-4096 && len(out.Connections) > 0 {
			out.More = true
			break
		}
		out.Connections = append(out.Connections, info)
	}
	return out
}

// describe is one connection as GET /v1/connections shows it, read under
// its lock; false when it no longer belongs to the request.
func (s *Server) describe(id index.ID, c *conn, req explain.ListRequest, now int64) (explain.Connection, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.project != req.Project || (req.UserID != "" && c.userID != req.UserID) || c.state == stateClosed {
		return explain.Connection{}, false
	}
	info := explain.Connection{
		Identity:      s.identityLocked(id, c),
		AgeSeconds:    max(0, now-int64(c.opened)),
		LastActivity:  int64(c.lastSeen.Load()),
		QueuedBytes:   c.q.bytes,
		Subscriptions: make([]explain.Subscription, len(c.subs)),
	}
	for i := range c.subs {
		info.Subscriptions[i] = c.subs[i].describe()
	}
	return info, true
}

// identityLocked is who c (of index id) is, for both answers. The caller
// holds c.mu.
func (s *Server) identityLocked(id index.ID, c *conn) explain.Identity {
	who := explain.Identity{
		Connection: explain.ConnID{Node: s.node, ID: uint32(id)}.String(),
		Node:       s.node, Project: c.project, UserID: c.userID,
		Roles: slices.Clone(c.roles), State: c.state.String(),
	}
	if who.Roles == nil {
		who.Roles = []string{}
	}
	return who
}

// describe is the subscription as the admin API shows it: copies, since
// the answer is encoded after the connection's lock is let go.
func (sub *subscription) describe() explain.Subscription {
	d := explain.Subscription{ID: sub.id, Channels: slices.Clone(sub.channels), Queries: slices.Clone(sub.queries)}
	if d.Queries == nil {
		d.Queries = []string{}
	}
	return d
}

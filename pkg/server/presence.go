package server

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/presence"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// Presences (PRESENCE.md): a signed-in connection upserts its user's
// presence in its project; the record lives while any connection that
// upserted it is open, anywhere in the cluster.
//
// Counting is split in two. This node counts its own connections per
// record (presenceTable); the store counts nodes. The store hears of a
// record from this node only when the node starts holding it (an upsert)
// and when its last local connection goes (a release), so a user's tabs
// opening and closing cost the store nothing until the last one closes.
//
// Every store call for one user runs on that user's lane, in order: a
// release queued when a tab closed can never overtake the upsert of a tab
// opened earlier, nor the other way round. A lane is a boundedPool of one:
// no goroutine exists while a lane is idle, and none per connection or
// per presence.

// presenceLanes is the number of lanes users are hashed over: store calls
// of different users run in parallel on up to this many goroutines.
const presenceLanes = 16

// presenceCallTimeout bounds one store call or publish.
const presenceCallTimeout = 5 * time.Second

// presences is the node's side of presence.
type presences struct {
	srv   *Server
	store presence.Store
	lanes [presenceLanes]boundedPool[func()]
	stop  chan struct{}
	done  chan struct{}

	mu   sync.Mutex
	held map[userKey]*heldPresence // records this node's connections hold
}

// heldPresence is one record held by connections of this node. It exists
// only for users who upserted, so an idle connection pays nothing for it
// (conn itself carries one flag bit, flagPresence). Its size, measured:
// PRESENCE.md.
type heldPresence struct {
	id    string
	conns []*conn // this node's connections holding it; usually one or two
	// last is the latest upsert, written again if the cluster took this
	// node for dead and deleted what it held (presence.TickResult.Lost).
	last presence.Upsert
}

func newPresences(s *Server) *presences {
	p := &presences{srv: s, store: s.cfg.Presences, held: make(map[userKey]*heldPresence)}
	for i := range p.lanes {
		p.lanes[i] = boundedPool[func()]{max: 1, do: func(f func()) { f() }}
	}
	return p
}

// lane runs f after every earlier call queued for user k.
func (p *presences) lane(k userKey, f func()) {
	h := fnv.New32a()
	h.Write([]byte(k.project))
	h.Write([]byte{0})
	h.Write([]byte(k.uid))
	p.lanes[h.Sum32()%presenceLanes].run(f)
}

// flush waits until every call queued so far has run.
func (p *presences) flush() {
	var wg sync.WaitGroup
	wg.Add(presenceLanes)
	for i := range p.lanes {
		p.lanes[i].run(wg.Done)
	}
	wg.Wait()
}

// start runs the ticker: every grace/4 the store refreshes this node's
// heartbeat (which lives grace/2), reaps dead nodes and expires records.
// A node that dies is noticed within grace/2 + grace/4 of its last tick.
func (p *presences) start() {
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	grace := p.srv.cfg.PresenceGrace
	go func() {
		defer close(p.done)
		t := time.NewTicker(grace / 4)
		defer t.Stop()
		for {
			p.tick(grace / 2)
			select {
			case <-t.C:
			case <-p.stop:
				return
			}
		}
	}()
}

func (p *presences) tick(ttl time.Duration) {
	ctx, cancel := context.WithTimeout(context.Background(), presenceCallTimeout)
	defer cancel()
	res, err := p.store.Tick(ctx, ttl, time.Now())
	if err != nil {
		p.srv.metrics.presenceStoreErrors.Inc()
		p.srv.log.Warn("presence store tick failed", zap.Error(err))
	}
	for _, r := range res.Removed {
		p.announceRemoved(r.Project, r.Doc, "tick")
	}
	if res.Lost {
		p.srv.log.Warn("the cluster took this node for dead and deleted its presences; writing them again")
		p.rewriteAll()
	}
}

// rewriteAll upserts again every record this node holds.
func (p *presences) rewriteAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for k, e := range p.held {
		k, u := k, e.last
		p.lane(k, func() {
			rec, err := p.call(func(ctx context.Context) (presence.Record, error) { return p.store.Upsert(ctx, u) })
			if err != nil {
				return
			}
			p.mu.Lock()
			if e := p.held[k]; e != nil {
				e.id = rec.ID
			}
			p.mu.Unlock()
			if rec.Created {
				p.announce(k.project, rec.ID, rec.Doc, protocol.PresenceUpsert)
			}
		})
	}
}

// shutdown releases every record this node holds and waits for the
// lanes, then stops the ticker: after a drain the cluster hears at once
// that this node's users are gone, instead of after the grace period.
func (p *presences) shutdown() {
	if _, single := p.store.(*presence.Memory); single {
		// One node and its own records: nobody is left to tell, and the
		// router that would deliver the events has stopped.
		p.stopTicker()
		return
	}
	p.mu.Lock()
	for k, e := range p.held {
		k, id := k, e.id
		p.lane(k, func() { p.release(k, id, true) })
	}
	p.mu.Unlock()
	p.flush()
	p.stopTicker()
}

func (p *presences) stopTicker() {
	if p.stop != nil {
		close(p.stop)
		<-p.done
		p.stop = nil
	}
}

// call runs one store call bounded by presenceCallTimeout, counting errors.
func (p *presences) call(f func(ctx context.Context) (presence.Record, error)) (presence.Record, error) {
	ctx, cancel := context.WithTimeout(context.Background(), presenceCallTimeout)
	defer cancel()
	rec, err := f(ctx)
	if err != nil && !errors.Is(err, presence.ErrIDTaken) {
		p.srv.metrics.presenceStoreErrors.Inc()
		p.srv.log.Warn("presence store call failed", zap.Error(err))
	}
	return rec, err
}

// upsert writes uid's presence in project as req asks and announces it.
// With c (a connection's message) c becomes one of the record's holders,
// and c gets its response before the event is published, so that the
// sender sees the response first; without c (the admin API) the record is
// written as the backend says and held by whoever held it before. It
// waits for the user's lane.
func (p *presences) upsert(c *conn, project, uid string, req protocol.PresenceRequest) ([]byte, error) {
	now := time.Now()
	d := &protocol.PresenceDoc{
		UpdatedAt:   now,
		Permissions: protocol.ExpandPermissions(req.Permissions, uid),
		UserID:      uid,
		Status:      req.Status,
		Source:      protocol.PresenceSourceRealtime,
		ExpiresAt:   now.Add(protocol.PresenceLifetime),
		Metadata:    req.Metadata,
	}
	if c == nil {
		d.Source = protocol.PresenceSourceAPI
	}
	id := req.ID
	if id == "" {
		id = uniquePresenceID()
	}
	u := presence.Upsert{Project: project, UserID: uid, ID: id, CreatedAt: protocol.FormatTime(now),
		ExpiresAt: d.ExpiresAt, Tail: protocol.AppendPresenceTail(nil, d), Hold: c != nil}
	k := userKey{project, uid}
	type result struct {
		rec presence.Record
		err error
	}
	done := make(chan result, 1)
	p.lane(k, func() {
		rec, err := p.call(func(ctx context.Context) (presence.Record, error) { return p.store.Upsert(ctx, u) })
		if err == nil {
			p.srv.metrics.presenceUpserts.Inc()
			if c != nil {
				p.hold(k, c, rec.ID, u)
				c.sendResponse(protocol.AppendPresenceResponse(nil, rec.Doc))
			}
			p.announce(project, rec.ID, rec.Doc, protocol.PresenceUpsert)
		}
		done <- result{rec, err}
	})
	r := <-done
	return r.rec.Doc, r.err
}

// uniquePresenceID is an id in the manner of Appwrite's ID.unique(): 13
// hex digits of the time in microseconds and 7 random ones.
func uniquePresenceID() string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(time.Now().UnixMicro()))
	t := hex.EncodeToString(b[:])[3:]
	binary.BigEndian.PutUint32(b[:4], rand.Uint32())
	return t + hex.EncodeToString(b[:4])[:7]
}

// hold records that c holds record id of user k. It runs on k's lane,
// right after the store made this node a holder. If c went meanwhile
// (closed, or signed in as someone else), this node may hold the record
// for nothing: it is released at once unless another connection holds it.
func (p *presences) hold(k userKey, c *conn, id string, u presence.Upsert) {
	c.mu.Lock()
	if c.state == stateClosed || c.project != k.project || c.userID != k.uid {
		c.mu.Unlock()
		p.release(k, id, false)
		return
	}
	c.flags |= flagPresence
	p.mu.Lock()
	e := p.held[k]
	if e == nil {
		e = &heldPresence{}
		p.held[k] = e
		p.srv.metrics.presences.Inc()
	}
	e.id, e.last = id, u
	if !slices.Contains(e.conns, c) {
		e.conns = append(e.conns, c)
	}
	p.mu.Unlock()
	c.mu.Unlock()
}

// dropLocked takes c out of user k's record here; when it was the last
// connection of this node holding it, the store hears of it on k's lane.
// The caller holds c.mu, which orders this against hold.
func (p *presences) dropLocked(k userKey, c *conn) {
	if release := p.detachLocked(k, c); release != nil {
		release()
	}
}

// detachLocked is dropLocked in two steps: c leaves the record now, and
// the returned function (nil when nothing is to be released) queues the
// release. setIdentity queues it only once the connection is indexed under
// its new identity, so that the delete event of the old user's presence
// cannot reach it under the old roles.
func (p *presences) detachLocked(k userKey, c *conn) func() {
	if c.flags&flagPresence == 0 {
		return nil
	}
	c.flags &^= flagPresence
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.held[k]
	if e == nil {
		return nil
	}
	if i := slices.Index(e.conns, c); i >= 0 {
		e.conns = slices.Delete(e.conns, i, i+1)
	}
	if len(e.conns) > 0 {
		return nil
	}
	delete(p.held, k)
	p.srv.metrics.presences.Dec()
	id := e.id
	return func() { p.lane(k, func() { p.release(k, id, false) }) }
}

// release tells the store this node no longer holds record id of user k,
// unless (force aside) a connection of this node took it up again since
// the release was queued; a record no node holds any more is deleted and
// announced. It runs on k's lane.
func (p *presences) release(k userKey, id string, force bool) {
	if !force {
		p.mu.Lock()
		e := p.held[k]
		busy := e != nil && e.id == id && len(e.conns) > 0
		p.mu.Unlock()
		if busy {
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), presenceCallTimeout)
	defer cancel()
	doc, err := p.store.Release(ctx, k.project, id)
	if err != nil {
		// The record stays until this node is reaped or it expires.
		p.srv.metrics.presenceStoreErrors.Inc()
		p.srv.log.Warn("presence release failed", zap.String("project", k.project), zap.String("presence", id), zap.Error(err))
		return
	}
	if doc != nil {
		p.announceRemoved(k.project, doc, "closed")
	}
}

// remove deletes project's record id, whoever holds it (the admin API).
func (p *presences) remove(project, id string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), presenceCallTimeout)
	defer cancel()
	doc, err := p.store.Delete(ctx, project, id)
	if err != nil {
		p.srv.metrics.presenceStoreErrors.Inc()
		return nil, err
	}
	if doc != nil {
		p.announceRemoved(project, doc, "api")
	}
	return doc, nil
}

// announceRemoved announces the deletion of a stored document.
func (p *presences) announceRemoved(project string, doc []byte, reason string) {
	info, err := protocol.ParsePresenceInfo(doc)
	if err != nil {
		p.srv.log.Warn("unreadable presence document", zap.String("project", project), zap.Error(err))
		return
	}
	p.srv.metrics.presenceDeletes.WithLabelValues(reason).Inc()
	p.announceInfo(project, info, doc, protocol.PresenceDelete)
}

// announce publishes the event of an upserted document.
func (p *presences) announce(project, id string, doc []byte, action string) {
	info, err := protocol.ParsePresenceInfo(doc)
	if err != nil || info.ID != id {
		p.srv.log.Warn("unreadable presence document", zap.String("project", project), zap.String("presence", id), zap.Error(err))
		return
	}
	p.announceInfo(project, info, doc, action)
}

// announceInfo publishes the event through the node's broker, so that
// with Redis it reaches every node: presence events are ordinary events.
func (p *presences) announceInfo(project string, info protocol.PresenceInfo, doc []byte, action string) {
	ev := protocol.PresenceEvent(project, info.ID, info.Permissions, action, doc, time.Now())
	if ev == nil {
		return // no read role: nobody may see it
	}
	msg, err := protocol.MarshalEvent(ev)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), presenceCallTimeout)
		err = p.srv.cfg.Broker.Publish(ctx, msg)
		cancel()
	}
	if err != nil {
		p.srv.metrics.presenceStoreErrors.Inc()
		p.srv.log.Warn("presence event not published", zap.String("project", project), zap.String("presence", info.ID), zap.Error(err))
	}
}

// upsertPresence answers a `presence` message.
func (c *conn) upsertPresence(msg protocol.ClientMessage) {
	s := c.srv
	req, err := protocol.ParsePresence(msg.Data, s.cfg.MaxPresenceBytes)
	if err != nil {
		c.sendErr(err)
		return
	}
	c.mu.Lock()
	project, uid, roles := c.project, c.userID, c.roles
	c.mu.Unlock()
	if uid == "" {
		c.sendErr(protocol.ErrGuestPresence())
		return
	}
	if err := protocol.CheckPresenceRoles(req.Permissions, roles); err != nil {
		c.sendErr(err)
		return
	}
	_, err = s.presences.upsert(c, project, uid, req) // answered on success
	switch {
	case errors.Is(err, presence.ErrIDTaken):
		c.sendError(409, "Presence with the requested ID already exists. Try again with a different ID or use ID.unique() to generate a unique ID.")
	case err != nil:
		c.sendError(500, "Presence could not be stored.")
	}
}

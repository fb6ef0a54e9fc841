package server

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/history"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
	"github.com/switchboard-rt/switchboard/pkg/query"
	"github.com/switchboard-rt/switchboard/pkg/usage"
)

// handleMessage answers one client message (a complete, valid UTF-8 text
// message). Only a policy violation closes the connection; every other bad
// message is answered with an error frame and the connection stays open.
func (c *conn) handleMessage(b []byte) {
	c.messagesIn.Add(1)
	m := c.srv.metrics
	if !c.allowMessage(time.Now()) {
		m.messagesIn.WithLabelValues("limited").Inc()
		c.sendError(protocol.CodeTooManyRequests, "Too many messages.")
		return
	}
	// As Appwrite's onMessage: a message over the rate limit is not
	// inbound, any other is, valid or not.
	project := c.projectName()
	if project != "" {
		c.srv.usage.Add(project, usage.Counts{Inbound: int64(len(b))})
	}
	msg, err := protocol.ParseClientMessage(b)
	if err != nil {
		m.messagesIn.WithLabelValues("invalid").Inc()
		c.sendErr(err)
		return
	}
	switch msg.Type {
	case protocol.TypePing:
		m.messagesIn.WithLabelValues(msg.Type).Inc()
		c.sendResponse(protocol.AppendPong(nil))
	case protocol.TypeAuthentication:
		m.messagesIn.WithLabelValues(msg.Type).Inc()
		c.authenticate(msg)
	case protocol.TypeSubscribe:
		m.messagesIn.WithLabelValues(msg.Type).Inc()
		c.subscribe(msg)
	case protocol.TypeUnsubscribe:
		m.messagesIn.WithLabelValues(msg.Type).Inc()
		c.unsubscribe(msg)
	case protocol.TypePresence:
		m.messagesIn.WithLabelValues(msg.Type).Inc()
		c.upsertPresence(msg)
	default:
		m.messagesIn.WithLabelValues("unknown").Inc()
		c.sendError(protocol.CodeInvalidMessage, "Message type is not valid.")
	}
}

func (c *conn) authenticate(msg protocol.ClientMessage) {
	session, err := protocol.ParseAuthentication(msg.Data)
	if err != nil {
		c.sendErr(err)
		return
	}
	c.mu.Lock()
	project := c.project
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), c.srv.cfg.AuthTimeout)
	id, err := c.srv.cfg.Resolver.Resolve(ctx, auth.Credentials{Project: project, Session: session})
	cancel()
	if err != nil {
		if !errors.Is(err, auth.ErrUnauthorized) {
			c.srv.log.Warn("auth resolver failed", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		}
		c.sendError(protocol.CodeInvalidMessage, "Session is not valid.")
		return
	}
	// Re-bind account channels to the new user and switch roles; the index
	// entry is replaced in one step, so no event is matched against
	// half-old, half-new state.
	c.setIdentity(id)
	c.sendResponse(protocol.AppendAuthResponse(nil, id.User))
}

func (c *conn) subscribe(msg protocol.ClientMessage) {
	reqs, err := protocol.ParseSubscribe(msg.Data)
	if err != nil {
		c.sendErr(err)
		return
	}
	c.mu.Lock()
	uid, project := c.userID, c.project
	c.mu.Unlock()
	subs := make([]subscription, 0, len(reqs))
	for _, r := range reqs {
		own := r.ID != ""
		if !own {
			r.ID = randomSubscriptionID()
		}
		sub, err := c.srv.newSubscription(r.ID, r, uid)
		if err != nil {
			c.sendErr(err)
			return
		}
		sub.recorded = own && c.srv.resume != nil
		subs = append(subs, sub)
	}
	// Appwrite's order (Subscribe.php): every entry's queries first, then
	// the console-only channels of every entry, before any subscription
	// changes. A tail asked for on a project connection closes it (1008).
	for _, sub := range subs {
		if err := protocol.CheckConsoleOnly(project, sub.channels); err != nil {
			c.sendErr(err)
			return
		}
	}
	c.mu.Lock()
	next := append([]subscription(nil), c.subs...)
	fresh := false // an id new on this connection: maybe one coming back
	for _, sub := range subs {
		fresh = fresh || sub.recorded && !hasSubscription(next, sub.id)
		next = putSubscription(next, sub)
	}
	if err := c.srv.checkSubscriptionLimits(next); err != nil {
		c.mu.Unlock()
		c.sendErr(err)
		return
	}
	resp := make([]protocol.Subscription, len(subs))
	for i, sub := range subs {
		resp[i] = protocol.Subscription{ID: sub.id, Channels: sub.channels, Queries: sub.queries}
	}
	if fresh {
		c.mu.Unlock()
		c.subscribeResuming(subs, resp)
		return
	}
	c.subs = next
	c.mu.Unlock()
	c.reindex()
	c.sendResponse(protocol.AppendSubscribeResponse(nil, resp))
}

// hasSubscription tells whether subs has one with id.
func hasSubscription(subs []subscription, id string) bool {
	for i := range subs {
		if subs[i].id == id {
			return true
		}
	}
	return false
}

// putSubscription adds sub to subs, replacing one with the same id.
func putSubscription(subs []subscription, sub subscription) []subscription {
	for i := range subs {
		if subs[i].id == sub.id {
			subs[i] = sub
			return subs
		}
	}
	return append(subs, sub)
}

// checkSubscriptionLimits bounds what one connection can make the node hold:
// its subscriptions, and its distinct channels (each costs index memory
// for every role the connection has).
func (s *Server) checkSubscriptionLimits(subs []subscription) error {
	if len(subs) > s.cfg.MaxSubscriptions {
		return &protocol.Error{Code: protocol.CodeInvalidMessage,
			Message: "Too many subscriptions: at most " + itoa(s.cfg.MaxSubscriptions) + " per connection."}
	}
	var channels []string
	for _, sub := range subs {
		channels = appendUnique(channels, sub.channels...)
	}
	if len(channels) > protocol.MaxChannels {
		return &protocol.Error{Code: protocol.CodeInvalidMessage,
			Message: "Too many channels: at most " + itoa(protocol.MaxChannels) + " per connection."}
	}
	return nil
}

func (c *conn) unsubscribe(msg protocol.ClientMessage) {
	ids, err := protocol.ParseUnsubscribe(msg.Data)
	if err != nil {
		c.sendErr(err)
		return
	}
	removed := make([]bool, len(ids))
	var ended []history.Record
	c.mu.Lock()
	for i, id := range ids {
		for j := range c.subs {
			if c.subs[j].id == id {
				if c.subs[j].recorded {
					ended = append(ended, history.Record{Project: c.project, ID: id})
				}
				c.subs = append(c.subs[:j], c.subs[j+1:]...)
				removed[i] = true
				break
			}
		}
	}
	c.mu.Unlock()
	if len(ended) > 0 {
		// Left on purpose: nothing of it is owed any more.
		c.srv.resume.end(0, ended...)
	}
	c.reindex()
	c.sendResponse(protocol.AppendUnsubscribeResponse(nil, ids, removed))
}

// reindex publishes the connection's current project, roles and channels to
// the index, in one step.
func (c *conn) reindex() {
	c.idxMu.Lock()
	defer c.idxMu.Unlock()
	if c.removed {
		return
	}
	c.mu.Lock()
	project, roles := c.project, c.roles
	var channels []string
	for _, sub := range c.subs {
		channels = appendUnique(channels, sub.channels...)
	}
	c.mu.Unlock()
	c.srv.idx.Set(c.id, project, roles, channels)
}

// newSubscription validates a requested subscription for user uid and
// compiles its queries.
func (s *Server) newSubscription(id string, r protocol.Subscription, uid string) (subscription, error) {
	filter, err := query.Compile(r.Queries)
	if err != nil {
		return subscription{}, err
	}
	channels := s.strs.all(protocol.ConvertAccountChannels(r.Channels, uid))
	return subscription{id: s.strs.get(id), channels: channels, queries: r.Queries, filter: filter}, nil
}

// slotSubscriptionID derives the id of a URL slot from its content, so that
// every connection opened with the same URL gets the same ids and an event
// frame is shared by all of them instead of being encoded per recipient.
func slotSubscriptionID(slot int, r protocol.Subscription) string {
	h := fnv.New64a()
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], uint64(slot))
	h.Write(b[:])
	for _, ch := range r.Channels {
		h.Write([]byte(ch))
		h.Write([]byte{0})
	}
	h.Write([]byte{1})
	for _, q := range r.Queries {
		h.Write([]byte(q))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))
}

func randomSubscriptionID() string {
	var b [10]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint16(b[8:], uint16(rand.Uint32()))
	return hex.EncodeToString(b[:])
}

func appendUnique(dst []string, items ...string) []string {
outer:
	for _, it := range items {
		for _, have := range dst {
			if have == it {
				continue outer
			}
		}
		dst = append(dst, it)
	}
	return dst
}

func (c *conn) sendText(p []byte) {
	c.srv.metrics.messagesOut.Inc()
	c.send(outFrame{head: compileFrame(ws.OpText, p)})
}

// sendResponse sends the answer to a client message, counted as Appwrite's
// onMessage counts its response: one realtime.messages.sent and its bytes
// in realtime.outbound. Errors are sent with sendText and not counted,
// as Appwrite's are not.
func (c *conn) sendResponse(p []byte) {
	if project := c.projectName(); project != "" {
		c.srv.usage.Add(project, usage.Counts{Messages: 1, Outbound: int64(len(p))})
	}
	c.sendText(p)
}

// projectName is c's project; "" before the handshake accepted one.
func (c *conn) projectName() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.project
}

func (c *conn) sendError(code int, message string) {
	c.srv.metrics.protocolErrors.WithLabelValues(itoa(code)).Inc()
	c.sendText(protocol.AppendError(nil, code, message))
}

// sendErr answers err: a *protocol.Error with its own code, anything else
// as an invalid message.
func (c *conn) sendErr(err error) {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		if pe.Code == protocol.CodePolicyViolation {
			c.fail(pe.Code, pe.Message)
			return
		}
		c.sendError(pe.Code, pe.Message)
		return
	}
	c.sendError(protocol.CodeInvalidMessage, err.Error())
}

// fail sends an error frame and then closes with 1008: older SDKs look for
// the error frame, newer ones for the close code.
func (c *conn) fail(code int, message string) {
	c.failFor(closePolicy, code, message)
}

// failFor is fail for a close reason of the 1008 kind other than policy.
func (c *conn) failFor(r closeReason, code int, message string) {
	c.srv.metrics.protocolErrors.WithLabelValues(itoa(code)).Inc()
	c.sendText(protocol.AppendError(nil, code, message))
	c.closeWith(r, message)
}

func (c *conn) failErr(err error) {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		c.fail(pe.Code, pe.Message)
		return
	}
	c.fail(protocol.CodeInvalidMessage, err.Error())
}

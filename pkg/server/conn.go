package server

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/history"
	"github.com/switchboard-rt/switchboard/pkg/index"
	"github.com/switchboard-rt/switchboard/pkg/query"
)

// conn is one client connection. It is deliberately small: an idle,
// subscribed connection holds this struct and its subscriptions, and
// nothing else (no goroutine, timer or buffer).
//
// netpoll carries a connection through its HTTP upgrade; then it hands the
// socket over (adopt) and the node's input poller watches it. netpoll's
// per-connection state (about 4 KB: input buffer, write barrier, the
// connection object and its channels) would otherwise stay for the life of
// a connection that mostly sits idle.
//
// # Lifecycle
//
// A connection is in one state (connState) at a time:
//
//	handshake  netpoll reads the upgrade request; the handshake wheel may time it out
//	live       upgraded (counted in Server.open): events and replies flow
//	closing    going: no frame is queued any more, input is discarded, and
//	           the socket closes as soon as no busy bit is set
//	closed     released: out of every table, its socket shut; terminal
//
// and may go only these ways:
//
//	handshake -> live       upgrade accepted (upgrade)
//	handshake -> closing    request refused (an HTTP error as its last bytes), timed out, shut
//	live      -> closing    a last frame queued (sendLast: close frames, drain, idle
//	                        timeout), the queue cut for a slow consumer, a write error,
//	                        the peer gone, shut
//	closing   -> closed     settleLocked, once no busy bit is set
//	handshake, live, closing -> closed
//	                        netpoll closed a socket it still owned (onClosed)
//
// Beside its state, a connection may be busy — something holds its socket,
// so it must not be closed under it:
//
//	flagHandover  netpoll is letting go of the socket; adopt takes it
//	flagReading   a reader-pool goroutine reads the adopted socket
//	q.writing     a writev runs without mu (sendQueue.write)
//
// Whoever clears a busy bit, and whoever asks for a close, calls
// settleLocked: the one place where a close that nothing holds up any more
// is finished (releaseLocked). While netpoll owns the socket, closing it
// is netpoll's (nc.Close, then onClosed).
//
// The outbound side is the sendQueue q; its invariant is in its doc.
type conn struct {
	// The conn is its own netpoll context (context.Background underneath),
	// which saves a context allocation per connection.
	context.Context

	srv *Server
	nc  netpoll.Connection // nil once adopted; guarded by mu (the read side reads it freely before adoption)
	fd  int
	id  index.ID

	// lastSeen is the coarse second (Server.clock) of the last complete
	// client frame, for the idle sweep.
	lastSeen atomic.Uint32

	// idxMu orders index writes for this connection: a reindex that read
	// the connection's state can never land after onClosed's Delete (the ID
	// may already belong to a new connection by then). The router never
	// takes it, so holding it across an index call cannot deadlock.
	idxMu   sync.Mutex
	removed bool // deleted from the index; guarded by idxMu

	// Everything from state to roles is guarded by mu: the router, the
	// write pool and the read side all reach it. The order is the router's:
	// what it reads for each recipient (state, flags, mu, subs, q) lies in
	// two cache lines of the 288-byte object, the fewest it can
	// (TestRouterReadsTwoCacheLinesOfAConn), and events to 10,000
	// recipients miss the cache on most of them.
	state   connState
	flags   connFlags
	reason  closeReason // why it is closing; set once, with state (closeLocked)
	mu      sync.Mutex
	subs    []subscription
	q       sendQueue
	project string
	userID  string
	roles   []string

	// Read side: only the goroutine reading the socket (netpoll's handler,
	// then a reader-pool goroutine) touches these, never two at once.
	upgraded   bool
	readClosed bool            // we decided to close: discard further input
	msgCount   uint16          // client messages in msgMinute
	msgMinute  uint32          // unix minute msgCount counts
	pend       []byte          // bytes of an incomplete handshake or frame header; nil when none
	upgrading  *pendingUpgrade // accepted upgrade waiting for the socket's hand-over
	in         *inbound        // a frame or message spanning reads (reader.go); nil when none

	// What the close record (recordClose) tells of the connection's life.
	// The in-counters are the read side's but are read at release, hence
	// atomics; the out-counters and closeCode are guarded by mu.
	opened     uint32 // Server.clock at accept
	messagesIn atomic.Uint32
	framesOut  uint32 // frames written, its HTTP response (101 or error) counted as one
	closeCode  uint16 // the close frame's code, 0 when none was sent
	bytesIn    atomic.Uint64
	bytesOut   uint64
}

// connState is where a connection is in its life; see conn.
type connState uint8

const (
	stateHandshake connState = iota
	stateLive
	stateClosing
	stateClosed
)

func (s connState) String() string {
	switch s {
	case stateHandshake:
		return "handshake"
	case stateLive:
		return "live"
	case stateClosing:
		return "closing"
	case stateClosed:
		return "closed"
	}
	return "connState(" + itoa(int(s)) + ")"
}

// connFlags are a connection's conditions beside its state, one bit each.
type connFlags uint8

const (
	flagHandover connFlags = 1 << iota // busy: netpoll is letting go of the socket
	flagReading                        // busy: a reader-pool goroutine reads the socket
	flagInPoll                         // the fd is in the input poller's epoll (it stays there, disarmed, after a notification)
	flagHeld                           // its user's roles are being re-resolved: events wait in the hold (permissions.go)
	flagPresence                       // it holds its user's presence (presence.go): its close may end the presence
	flagDeflate                        // it negotiated permessage-deflate (deflate.go): events go to it compressed, its messages may be
	flagRecorded                       // the drain wrote where its subscriptions ended (resume.go)
	flagFlushing                       // told to go away with its queue not yet written: it closes once the queue has reached the socket (goAway)
)

// busyLocked reports whether something holds the socket, so that a close
// must wait for it to let go.
func (c *conn) busyLocked() bool {
	return c.flags&(flagHandover|flagReading) != 0 || c.q.writing
}

// setStateLocked moves c to state next, keeping Server.open (upgraded
// connections, for MaxConns) in step. Only the transitions in conn's doc
// happen; a move backwards is ignored, so "close it" is safe to ask twice.
func (c *conn) setStateLocked(next connState) {
	if next <= c.state {
		return
	}
	if c.state == stateLive {
		c.srv.open.Add(-1)
	}
	if next == stateLive {
		c.srv.open.Add(1)
	}
	c.state = next
}

// subscription is one subscription of a connection (a URL slot or one
// entry of a subscribe message).
type subscription struct {
	id       string
	channels []string
	queries  []string      // as the client sent them, for the response
	filter   *query.Filter // nil: every event on the channels
	recorded bool          // its id is the client's own, and resumable (resume.go)
	replayed bool          // it resumed with missed events queued at its start (resume.go)
	since    uint32        // when it was made, as resumer.sinceNow counts (in the struct's padding)
}

// handOver asks netpoll to let go of an upgraded connection's socket and
// reports whether it will: netpoll does so once the current onRequest
// returns, and then calls onClosed, which adopts the socket.
func (c *conn) handOver() bool {
	c.mu.Lock()
	nc := c.nc
	ok := nc != nil && c.state == stateLive && c.flags&flagHandover == 0
	if ok {
		c.flags |= flagHandover
	}
	c.mu.Unlock()
	if !ok {
		return false
	}
	d, can := nc.(interface{ Detach() error })
	if !can || d.Detach() != nil {
		// Not netpoll's own connection type (tests): keep it there.
		c.mu.Lock()
		c.flags &^= flagHandover
		c.settleLocked()
		return false
	}
	return true
}

// adopt takes the socket netpoll let go of: it sends the upgrade's
// response and runs the Appwrite handshake, handles whatever the client
// sent too early, and gives the socket to the input poller. It runs on
// netpoll's goroutine for c, inside onClosed.
func (c *conn) adopt(nc netpoll.Connection) {
	var early []byte // only a client that broke RFC 6455 sends before the 101
	if r := nc.Reader(); r.Len() > 0 {
		if buf, err := r.Peek(r.Len()); err == nil {
			early = append(early, buf...)
			c.bytesIn.Add(uint64(len(buf)))
		}
	}
	c.mu.Lock()
	c.nc = nil
	c.flags &^= flagHandover
	if c.state >= stateClosing {
		c.settleLocked()
		return
	}
	// The socket is ours but not yet polled: it is busy being read here
	// until awaitInput gives it to the input poller.
	c.flags |= flagReading
	c.mu.Unlock()
	func() {
		defer c.recoverConn()
		if c.upgrading != nil {
			c.finishUpgrade()
		}
		// What came after the request in netpoll's last read waited in
		// c.pend for the 101 to go out first.
		if c.pend != nil {
			early, c.pend = append(c.pend, early...), nil
		}
		if len(early) > 0 {
			c.feed(early)
		}
	}()
	c.awaitInput(false)
}

// readable runs on the input poller's goroutine when an adopted socket has
// input or was closed by the peer. Reading happens on a reader pool
// goroutine, as netpoll's handlers run on its pool, because a message can
// wait on the auth backend.
func (c *conn) readable() {
	c.mu.Lock()
	if c.state == stateClosed {
		c.mu.Unlock()
		return
	}
	c.flags |= flagReading
	c.mu.Unlock()
	c.srv.readers.run(c)
}

// readBufSize is the size of the pooled buffers adopted sockets are read
// into; only an incomplete frame's bytes are kept past the read.
const readBufSize = 16 << 10

// readAdopted reads an adopted socket dry, then waits for more input or
// closes the connection.
func (c *conn) readAdopted() {
	eof := false
	defer func() { c.awaitInput(eof) }()
	defer c.recoverConn()
	bp, _ := c.srv.readBufs.Get().(*[]byte)
	if bp == nil {
		b := make([]byte, readBufSize)
		bp = &b
	}
	defer c.srv.readBufs.Put(bp)
	for !c.readClosed {
		n, err := unix.Read(c.fd, *bp)
		switch {
		case n > 0:
			c.bytesIn.Add(uint64(n))
			c.feed((*bp)[:n])
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			return
		default: // 0: the peer closed; or a socket error
			eof = true
			return
		}
	}
}

// awaitInput ends a read of an adopted socket (or its adoption): it gives
// the socket back to the input poller, or closes the connection when it is
// closing, the read side gave up on it, or the peer is gone (eof).
func (c *conn) awaitInput(eof bool) {
	c.mu.Lock()
	c.flags &^= flagReading
	if !eof && !c.readClosed && c.state < stateClosing {
		err := c.srv.input.arm(c, c.flags&flagInPoll != 0)
		if err == nil {
			c.flags |= flagInPoll
			c.mu.Unlock()
			return
		}
		c.srv.log.Debug("input poller refused a socket; closing it", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		c.closeLocked(closeInternalError, 0)
	}
	// The read side gave up on it (it said why), or the peer is gone.
	c.closeLocked(closeReset, 0)
	c.settleLocked()
}

// shut closes the connection for reason r without a close frame (as soon
// as nothing holds its socket); any goroutine may call it, any number of
// times.
func (c *conn) shut(r closeReason) {
	c.mu.Lock()
	c.closeLocked(r, 0)
	c.settleLocked()
}

// settleLocked finishes a close that nothing holds up any more: a closing
// connection with no busy bit set is released here, or handed to netpoll
// to close while netpoll still owns its socket. Every path that asks for a
// close or clears a busy bit ends in it. The caller holds c.mu, which
// settleLocked releases.
func (c *conn) settleLocked() {
	if c.state != stateClosing || c.busyLocked() || c.flags&flagFlushing != 0 && c.q.bytes > 0 {
		c.mu.Unlock()
		return
	}
	if nc := c.nc; nc != nil {
		// netpoll closes the fd and then calls onClosed, which releases.
		c.mu.Unlock()
		nc.Close()
		return
	}
	c.releaseLocked(true)
}

// releaseLocked ends the connection: it leaves the pollers, the user and
// project tables and the index, its queue is dropped, and, when the node
// owns the socket (ownFD), the socket is shut. The caller holds c.mu, which
// releaseLocked releases; nothing holds the socket any more.
func (c *conn) releaseLocked(ownFD bool) {
	if c.state < stateClosing && c.reason == closeUnset {
		c.reason = closeReset // netpoll closed a socket it owned: the peer left
	}
	c.setStateLocked(stateClosed)
	c.recordClose()
	c.endRecordsLocked()
	if c.q.armed {
		c.srv.waiter.forget(c)
		c.q.armed = false
	}
	if c.flags&flagInPoll != 0 {
		c.srv.input.forget(c)
		c.flags &^= flagInPoll
	}
	c.q.drop()
	c.srv.users.remove(userKey{c.project, c.userID}, c)
	c.srv.presences.dropLocked(userKey{c.project, c.userID}, c)
	c.srv.projects.remove(c.project)
	c.mu.Unlock()
	c.unindex()
	if ownFD {
		// Last, so that the fd number cannot be reused while anything
		// above could still act on it; and not yet (see fdQuarantine).
		c.srv.quarantine.add(c.fd)
	}
}

// onClosed is netpoll's close callback. netpoll runs it before it closes
// the fd, so after this no writer can touch a descriptor number that a new
// connection may reuse. When netpoll is handing the socket over instead,
// the fd stays open and is adopted.
func (c *conn) onClosed(nc netpoll.Connection) error {
	c.mu.Lock()
	for c.q.writing {
		// netpoll closes the fd when this returns: let the non-blocking
		// writev in progress end first.
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
	}
	switch {
	case c.flags&flagHandover != 0 && c.state != stateClosed:
		c.mu.Unlock()
		c.adopt(nc)
	case c.state == stateClosed:
		c.mu.Unlock()
	default:
		c.releaseLocked(false)
	}
	return nil
}

// unindex removes c from the index, for good.
func (c *conn) unindex() {
	c.idxMu.Lock()
	c.removed = true
	c.srv.idx.Delete(c.id)
	c.idxMu.Unlock()
	c.srv.metrics.connections.Dec()
}

// send queues f and writes what the socket takes at once. It is the path of
// replies to the client's own messages, so it needs no pool wake-up.
func (c *conn) send(f outFrame) {
	c.mu.Lock()
	c.enqueueLocked(f)
	c.flushLocked()
	c.settleLocked()
}

// sendLast writes f as the connection's last frame (as far as the socket
// takes it without blocking) and closes the connection for reason r; code
// is f's close code, 0 when f is no close frame.
func (c *conn) sendLast(f outFrame, r closeReason, code ws.StatusCode) {
	c.mu.Lock()
	c.enqueueLocked(f)
	c.closeLocked(r, code)
	c.flushLocked()
	c.settleLocked()
}

// enqueueLocked queues f unless the connection is going. A queue over its
// byte limit is a slow consumer's: it was cut to the slow-consumer close
// frame (sendQueue.push), and the connection goes (1008).
func (c *conn) enqueueLocked(f outFrame) {
	if c.state >= stateClosing {
		return
	}
	if err := c.q.push(f, c.srv.cfg.MaxQueueBytes); err != nil {
		c.slowConsumerLocked()
	}
}

// slowConsumerLocked closes a connection whose queue push just cut
// (errSlowConsumer).
func (c *conn) slowConsumerLocked() {
	c.srv.metrics.slowConsumers.Inc()
	c.closeLocked(closeSlowConsumer, ws.StatusPolicyViolation)
}

// flushLocked writes what the socket takes now (sendQueue.write). A full
// socket arms a one-shot EPOLLOUT wait; an error closes the connection.
func (c *conn) flushLocked() {
	if c.state == stateClosed {
		return
	}
	frames, bytes, calls, err := c.q.write(&c.mu, c.fd, c.srv.latency)
	c.framesOut += uint32(frames)
	c.bytesOut += uint64(bytes)
	c.srv.metrics.framesOut.Add(float64(frames))
	c.srv.metrics.writeCalls.Add(float64(calls))
	if err == errWouldBlock {
		c.srv.metrics.sendBufFull.Inc()
		err = c.srv.waiter.arm(c, c.q.armed)
		if err == nil {
			c.q.armed = true
		}
	}
	if err != nil {
		c.flags &^= flagFlushing // the rest will never reach the client
		c.closeLocked(closeReset, 0)
	}
}

// schedule runs on the waiter's goroutine when a full socket can take more:
// c goes back to the write pool.
func (c *conn) schedule() {
	c.mu.Lock()
	c.q.waitOut = false
	ok := c.state != stateClosed && c.q.wake(false)
	c.mu.Unlock()
	if ok {
		c.srv.pool.ch <- c
	}
}

// drain runs on a write-pool worker. c stays scheduled until its write
// ends, so events queued meanwhile do not hand it to the pool a second
// time: they leave in the same write.
func (c *conn) drain() {
	c.mu.Lock()
	c.flushLocked()
	c.q.scheduled = false
	c.settleLocked()
}

// goAway tells the client the node is going away (1001) and closes, once
// what was queued before the close frame has reached the socket; a
// connection still in its HTTP handshake is just closed. With rs (resuming
// on), it also says where the drain leaves c's subscriptions: the router's
// anchor, which the caller holds still, since the client receives every
// event queued before the close frame. It returns those records when
// everything queued, the close frame last, reached the socket at once;
// otherwise rs keeps them until c ends and the rest has reached it
// (endRecordsLocked), or not (a drop's end, then).
func (c *conn) goAway(rs *resumer) []history.Record {
	c.mu.Lock()
	if c.state != stateLive {
		c.mu.Unlock()
		c.shut(closeShutdown)
		return nil
	}
	for c.q.writing {
		// A write-pool worker's writev: let it end, so that what is left
		// is known (the drain holds the router: nothing is queued
		// meanwhile).
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
	}
	c.enqueueLocked(outFrame{head: closeShutdown.frame(0, "")})
	c.closeLocked(closeShutdown, ws.StatusGoingAway)
	c.flushLocked()
	told := c.state == stateClosing && c.reason == closeShutdown
	if told && c.q.bytes > 0 {
		// A slow reader: the rest goes out as its socket takes it, the
		// close frame last (Shutdown's awaitFlushed bounds the wait).
		c.flags |= flagFlushing
	}
	var recs []history.Record
	// A held connection's kept events were never queued: not exact.
	if rs != nil && told && c.flags&flagHeld == 0 {
		recs = c.recordsLocked(rs.anchor(c.project))
		if c.q.bytes == 0 {
			// The kernel sends it all before the FIN.
			c.flags |= flagRecorded
		} else {
			rs.keepDrained(c, recs)
			recs = nil
		}
	}
	c.settleLocked()
	return recs
}

package server

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"unicode/utf8"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

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
type conn struct {
	// The conn is its own netpoll context (context.Background underneath),
	// which saves a context allocation per connection.
	context.Context

	srv *Server
	nc  netpoll.Connection // nil once adopted; guarded by mu (the read side reads it freely before adoption)
	fd  int
	id  index.ID

	// Read side: only netpoll's OnRequest touches these, and netpoll never
	// runs it concurrently for one connection.
	upgraded   bool
	readClosed bool            // we decided to close: discard further input
	fragOp     ws.OpCode       // opcode of the fragmented message in progress, 0 when none
	msgCount   uint16          // client messages in msgMinute
	msgMinute  uint32          // unix minute msgCount counts
	pend       []byte          // bytes of an incomplete handshake or frame; nil when none
	upgrading  *pendingUpgrade // accepted upgrade waiting for the socket's hand-over
	frag       []byte          // payload of a fragmented message being reassembled

	// idxMu orders index writes for this connection: a reindex that read
	// the connection's state can never land after onClosed's Delete (the ID
	// may already belong to a new connection by then). The router never
	// takes it, so holding it across an index call cannot deadlock.
	idxMu   sync.Mutex
	removed bool // deleted from the index; guarded by idxMu

	// lastSeen is the coarse second (Server.clock) of the last complete
	// client frame, for the idle sweep. Its four bytes sit in the padding
	// after removed: the struct does not grow.
	lastSeen atomic.Uint32

	// Everything below is guarded by mu: the router, the write pool and the
	// read side all reach it.
	mu       sync.Mutex
	queued   bool // in the write pool's channel, or being drained by it
	writing  bool // a writev runs without mu: nobody else writes, and closing waits for it
	waitOut  bool // socket full: waiting for EPOLLOUT before writing again
	outArmed bool // fd in the waiter's epoll
	inArmed  bool // fd in the input poller's epoll
	handover bool // netpoll is handing the socket over
	reading  bool // a goroutine is reading the adopted socket
	shutReq  bool // close once the hand-over or the read in progress ends
	closing  bool // accepts no more frames
	abort    bool // close as soon as one non-blocking flush was tried
	closed   bool // the fd is closed or about to be: never write again
	live     bool // upgraded: counted in Server.open, out of the handshake wheel's reach
	outOff   int  // bytes of out[0] already written
	outBytes int  // bytes queued in out
	out      []outFrame
	project  string
	userID   string
	roles    []string
	subs     []subscription
}

// subscription is one subscription of a connection (a URL slot or one
// entry of a subscribe message).
type subscription struct {
	id       string
	channels []string
	queries  []string      // as the client sent them, for the response
	filter   *query.Filter // nil: every event on the channels
}

// onRead consumes what netpoll has buffered for c.
func (c *conn) onRead(r netpoll.Reader) {
	n := r.Len()
	if n == 0 {
		return
	}
	buf, err := r.Peek(n)
	if err != nil {
		c.shut()
		return
	}
	c.feed(buf)
	_ = r.Skip(n)
	_ = r.Release()
}

// handOver asks netpoll to let go of an upgraded connection's socket and
// reports whether it will: netpoll does so once the current onRequest
// returns, and then calls onClosed, which adopts the socket.
func (c *conn) handOver() bool {
	c.mu.Lock()
	nc := c.nc
	ok := nc != nil && !c.closed && !c.handover
	if ok {
		c.handover = true
	}
	c.mu.Unlock()
	if !ok {
		return false
	}
	d, can := nc.(interface{ Detach() error })
	if !can || d.Detach() != nil {
		// Not netpoll's own connection type (tests): keep it there.
		c.mu.Lock()
		c.handover = false
		c.mu.Unlock()
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
		}
	}
	c.mu.Lock()
	c.nc, c.handover = nil, false
	if c.shutReq || c.closed {
		if c.closed {
			c.mu.Unlock()
			return
		}
		c.closeAdoptedLocked()
		return
	}
	c.mu.Unlock()
	func() {
		defer c.recoverConn()
		if c.upgrading != nil {
			c.finishUpgrade()
		}
		if len(early) > 0 || c.pend != nil {
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
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.reading = true
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

// awaitInput ends a read of an adopted socket (or its adoption): it closes
// the connection if that was asked for meanwhile or the peer is gone (eof),
// else gives the socket back to the input poller.
func (c *conn) awaitInput(eof bool) {
	c.mu.Lock()
	c.reading = false
	if !eof && !c.shutReq && !c.closed && !c.readClosed {
		if err := c.srv.input.arm(c, &c.inArmed); err == nil {
			c.mu.Unlock()
			return
		}
	}
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closeAdoptedLocked()
}

// shut closes the connection; any goroutine may call it.
func (c *conn) shut() {
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
	case c.handover || c.reading || c.writing:
		// The goroutine that holds the socket closes it when done.
		c.shutReq = true
		c.mu.Unlock()
	case c.nc != nil:
		nc := c.nc
		c.mu.Unlock()
		nc.Close()
	default:
		c.closeAdoptedLocked()
	}
}

// closeAdoptedLocked closes an adopted connection. The caller holds c.mu,
// which it releases; no read of the socket is in progress. A write in
// progress closes it when it ends.
func (c *conn) closeAdoptedLocked() {
	if c.writing {
		c.shutReq = true
		c.mu.Unlock()
		return
	}
	c.srv.input.forget(c, &c.inArmed)
	c.releaseLocked()
	c.mu.Unlock()
	c.unindex()
	// Last, so that the fd number cannot be reused while anything above
	// could still act on it; and not yet (see fdQuarantine).
	c.srv.quarantine.add(c.fd)
}

// feed handles newly read bytes. Complete frames are parsed in place from
// buf (netpoll's buffer); only an incomplete tail is copied into c.pend, so
// that no goroutine has to wait for the rest of a frame.
func (c *conn) feed(buf []byte) {
	data := buf
	if c.pend != nil {
		c.pend = append(c.pend, buf...)
		data = c.pend
	}
	used := c.consume(data)
	rest := data[used:]
	switch {
	case len(rest) == 0:
		c.pend = nil
	case c.pend != nil:
		c.pend = append(c.pend[:0], rest...)
	default:
		c.pend = append(make([]byte, 0, len(rest)), rest...)
	}
}

// consume handles every complete handshake and frame at the start of data
// and returns how many bytes it used.
func (c *conn) consume(data []byte) int {
	if c.readClosed {
		return len(data)
	}
	off := 0
	if !c.upgraded {
		off = c.upgrade(data)
		if !c.upgraded || c.readClosed || c.upgrading != nil {
			// Bytes after the request wait for the hand-over (see adopt).
			if c.readClosed {
				return len(data)
			}
			return off
		}
	}
	max := int64(c.srv.cfg.MaxMessageSize)
	for off < len(data) && !c.readClosed {
		h, hn, ok := parseFrameHeader(data[off:])
		if !ok {
			break
		}
		state := ws.StateServerSide
		if c.fragOp != 0 {
			state = state.Set(ws.StateFragmented)
		}
		if err := ws.CheckHeader(h, state); err != nil {
			c.srv.metrics.protocolErrors.WithLabelValues("frame").Inc()
			c.closeWith(ws.StatusProtocolError, err.Error())
			return len(data)
		}
		if h.Length > max || (h.OpCode == ws.OpContinuation && int64(len(c.frag))+h.Length > max) {
			c.srv.metrics.protocolErrors.WithLabelValues("too_big").Inc()
			c.closeWith(ws.StatusMessageTooBig, "message too big")
			return len(data)
		}
		end := off + hn + int(h.Length)
		if end > len(data) {
			break
		}
		payload := data[off+hn : end]
		ws.Cipher(payload, h.Mask, 0)
		off = end
		c.handleFrame(h, payload)
	}
	if c.readClosed {
		return len(data)
	}
	return off
}

// handleFrame acts on one complete, unmasked frame. payload is only valid
// during the call.
func (c *conn) handleFrame(h ws.Header, payload []byte) {
	if now := c.srv.clock.Load(); c.lastSeen.Load() != now {
		c.lastSeen.Store(now)
	}
	switch h.OpCode {
	case ws.OpPing:
		c.send(outFrame{head: compileFrame(ws.OpPong, payload)})
	case ws.OpPong:
	case ws.OpClose:
		code := ws.StatusNormalClosure
		if len(payload) >= 2 {
			code, _ = ws.ParseCloseFrameData(payload)
		}
		if len(payload) == 1 || (len(payload) >= 2 && ws.CheckCloseFrameData(code, "") != nil) {
			code = ws.StatusProtocolError
		}
		c.closeWith(code, "")
	case ws.OpText, ws.OpBinary:
		if !h.Fin {
			c.fragOp = h.OpCode
			c.frag = append(c.frag[:0], payload...)
			return
		}
		c.handleData(h.OpCode, payload)
	case ws.OpContinuation:
		c.frag = append(c.frag, payload...)
		if h.Fin {
			op, msg := c.fragOp, c.frag
			c.fragOp, c.frag = 0, nil
			c.handleData(op, msg)
		}
	}
}

// handleData checks one complete data message and hands it to the protocol.
func (c *conn) handleData(op ws.OpCode, msg []byte) {
	if op == ws.OpBinary {
		c.srv.metrics.messagesIn.WithLabelValues("binary").Inc()
		c.sendError(1003, "Binary messages are not supported.")
		return
	}
	if !utf8.Valid(msg) {
		c.srv.metrics.protocolErrors.WithLabelValues("utf8").Inc()
		c.closeWith(ws.StatusInvalidFramePayloadData, "invalid UTF-8 in text frame")
		return
	}
	c.handleMessage(msg)
}

// send queues f and writes what the socket takes at once. It is the path of
// replies to the client's own messages, so it needs no pool wake-up.
func (c *conn) send(f outFrame) {
	c.mu.Lock()
	c.appendLocked(f)
	err := c.flushLocked()
	closeNow := c.abort || c.shutReq
	c.mu.Unlock()
	if err != nil || closeNow {
		c.shut()
	}
}

// closeWith sends a close frame and closes the connection. Input that
// arrives afterwards is discarded.
func (c *conn) closeWith(code ws.StatusCode, reason string) {
	c.readClosed = true
	c.sendLast(outFrame{head: closeFrame(code, reason)})
}

// sendLast writes f as the connection's last frame (as far as the socket
// takes it without blocking) and closes the connection.
func (c *conn) sendLast(f outFrame) {
	c.mu.Lock()
	c.appendLocked(f)
	c.closing = true
	_ = c.flushLocked()
	c.mu.Unlock()
	c.shut()
}

// appendLocked queues f. A connection whose queue would exceed the byte
// limit is a slow consumer: its queue is dropped (but for a frame already
// half written, which must be finished for the close frame to parse) and it
// is closed with 1008.
func (c *conn) appendLocked(f outFrame) {
	if c.closing || c.closed {
		return
	}
	if len(c.out) > 0 && c.outBytes+f.size() > c.srv.cfg.MaxQueueBytes {
		c.srv.metrics.slowConsumers.Inc()
		keep := 0
		if c.outOff > 0 {
			keep = 1
		}
		clear(c.out[keep:])
		c.out = c.out[:keep]
		c.outBytes = 0
		if keep == 1 {
			c.outBytes = c.out[0].size()
		}
		f = outFrame{head: slowConsumerClose}
		c.closing, c.abort = true, true
	}
	c.out = append(c.out, f)
	c.outBytes += f.size()
}

var slowConsumerClose = closeFrame(ws.StatusPolicyViolation, "slow consumer")

// flushLocked writes the queue until it is empty or the socket is full. A
// full socket arms a one-shot EPOLLOUT wait and is not an error.
//
// The writev runs without c.mu: the router queues the next events on c
// meanwhile instead of waiting out a syscall, and what it queues leaves in
// the next writev of the same loop. Only one goroutine writes at a time
// (c.writing); another caller finds it writing and leaves its frames to it,
// and a close waits for it (shut and closeAdoptedLocked set shutReq, which
// the writer's caller acts on), so the fd is never closed under a writev.
func (c *conn) flushLocked() error {
	for len(c.out) > 0 && !c.waitOut && !c.closed && !c.writing {
		batch, off := c.out, c.outOff
		c.out, c.outOff = nil, 0
		c.writing = true
		c.mu.Unlock()
		done, off, calls, err := writevQueue(c.fd, batch, off)
		c.mu.Lock()
		c.writing = false
		c.srv.metrics.framesOut.Add(float64(done))
		c.srv.metrics.writeCalls.Add(float64(calls))
		clear(batch[:done])
		if done < len(batch) {
			// The unwritten rest goes back in front of what was queued
			// meanwhile (a slow-consumer cut may have left only its close
			// frame there).
			c.out, c.outOff = append(batch[done:], c.out...), off
		}
		c.outBytes = 0
		for _, f := range c.out {
			c.outBytes += f.size()
		}
		if err == errWouldBlock {
			c.srv.metrics.sendBufferFull.Inc()
			c.waitOut = true
			return c.srv.waiter.arm(c, &c.outArmed)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// schedule hands c to the write pool unless it is already queued there.
func (c *conn) schedule() {
	c.mu.Lock()
	c.waitOut = false
	ok := !c.queued && !c.closed
	if ok {
		c.queued = true
	}
	c.mu.Unlock()
	if ok {
		c.srv.pool.ch <- c
	}
}

// drain runs on a write-pool worker. c stays marked queued until its queue
// is empty, so events queued while it writes do not hand it to the pool a
// second time.
func (c *conn) drain() {
	c.mu.Lock()
	if c.closed {
		c.queued = false
		c.mu.Unlock()
		return
	}
	err := c.flushLocked()
	c.queued = false
	closeNow := err != nil || c.abort || c.shutReq || (c.closing && len(c.out) == 0)
	c.mu.Unlock()
	if closeNow {
		c.shut()
	}
}

// onClosed is netpoll's close callback. netpoll runs it before it closes
// the fd, so after this no writer can touch a descriptor number that a new
// connection may reuse. When netpoll is handing the socket over instead,
// the fd stays open and is adopted.
func (c *conn) onClosed(nc netpoll.Connection) error {
	c.mu.Lock()
	for c.writing {
		// netpoll closes the fd when this returns: let the non-blocking
		// writev in progress end first.
		c.mu.Unlock()
		runtime.Gosched()
		c.mu.Lock()
	}
	if c.handover && !c.closed {
		c.mu.Unlock()
		c.adopt(nc)
		return nil
	}
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.releaseLocked()
	c.mu.Unlock()
	c.unindex()
	return nil
}

// releaseLocked marks c closed and drops what the node holds for it but
// the index entry. The caller holds c.mu.
func (c *conn) releaseLocked() {
	c.closed = true
	c.srv.waiter.forget(c, &c.outArmed)
	clear(c.out)
	c.out, c.outBytes = nil, 0
	c.srv.users.remove(userKey{c.project, c.userID}, c)
	c.srv.projects.remove(c.project)
	if c.live {
		c.srv.open.Add(-1)
	}
}

// unindex removes c from the index, for good.
func (c *conn) unindex() {
	c.idxMu.Lock()
	c.removed = true
	c.srv.idx.Delete(c.id)
	c.idxMu.Unlock()
	c.srv.metrics.connections.Dec()
}

// goAway tells the client the node is going away (1001) and closes; a
// connection still in its HTTP handshake is just closed.
func (c *conn) goAway() {
	c.mu.Lock()
	live := c.live
	c.mu.Unlock()
	if !live {
		c.shut()
		return
	}
	c.sendLast(outFrame{head: goingAwayClose})
}

var goingAwayClose = closeFrame(ws.StatusGoingAway, "server shutting down")

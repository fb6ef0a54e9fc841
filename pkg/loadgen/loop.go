package loadgen

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/internal/permessage"
)

// readBufSize is the one read buffer a loop shares among its connections.
const readBufSize = 64 << 10

// maxPending bounds what one connection may park between reads (an
// unfinished upgrade response or frame); beyond it the server is broken.
const maxPending = 4 << 20

// loop is one event-loop goroutine: it opens its share of the
// connections at its share of the rate and serves all of them from one
// epoll instance.
type loop struct {
	cfg *Config
	t   *target
	// targets are the nodes (t first); requests and offers their upgrade
	// requests, as request and offer below.
	targets  []*target
	requests [][]byte
	offers   [][]byte
	epfd     int
	conns    []conn
	// globalFirst and stride map a slot to the run-wide connection index
	// (slot i is connection globalFirst + i*stride), which picks the
	// source address so the spreading is the same however the run is split.
	globalFirst, stride int
	rate                float64 // connections per second for this loop

	ctr   counters
	stop  *atomic.Bool
	start time.Time

	buf     []byte
	wbuf    []byte
	rng     *rand.ChaCha8
	inflate permessage.Inflater
	authMsg []byte

	// seqs tracks every sequence per connection (resuming connections
	// only); away counts the connections waiting to come back, and
	// closing says the run is ending, so none comes back any more.
	seqs    *seqLog
	away    int
	closing bool

	hist      Histogram
	seqMaxLat []int64 // per sequence: the largest latency seen here (ns)
	seqCount  []int64 // per sequence: deliveries seen here
	firstRecv int64
	lastRecv  int64
	sources   map[netip.Addr]int

	// draining is how many stalled connections are being read again at
	// the end (stallDraining and still ready); lastStallRead is when one
	// of them last received bytes.
	draining      int
	lastStallRead time.Time
}

// stallQuiet is how long the stalled connections read again at the end
// must stay silent before the generator takes it that nothing more is
// coming (on loopback the rest of a closed connection's bytes and its FIN
// follow the reader's window update within microseconds).
const stallQuiet = 300 * time.Millisecond

func newLoop(cfg *Config, targets []*target, n, globalFirst, stride int, rate float64, stop *atomic.Bool, seed uint64) (*loop, error) {
	t := targets[0]
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	l := &loop{
		cfg: cfg, t: t, targets: targets, epfd: epfd,
		conns:       make([]conn, n),
		globalFirst: globalFirst, stride: stride, rate: rate,
		stop:      stop,
		buf:       make([]byte, readBufSize),
		rng:       rand.NewChaCha8(s),
		seqMaxLat: make([]int64, cfg.Events),
		seqCount:  make([]int64, cfg.Events),
		sources:   make(map[netip.Addr]int),
	}
	for _, nt := range targets {
		path := nt.path
		if cfg.Resume {
			path = nt.messagePath
		}
		l.requests = append(l.requests, fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: ", path, nt.hostPort))
		// What Chromium offers.
		l.offers = append(l.offers, fmt.Appendf(nil, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"+
			"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nSec-WebSocket-Key: ", path, nt.hostPort))
	}
	if cfg.Resume {
		l.seqs = newSeqLog(n, cfg.Events)
	}
	if cfg.Auth != "" {
		l.authMsg = fmt.Appendf(nil, `{"type":"authentication","data":{"session":%q}}`, cfg.Auth)
	}
	return l, nil
}

// run serves the loop until it is stopped and every connection is closed.
func (l *loop) run() {
	defer unix.Close(l.epfd)
	l.start = time.Now()
	events := make([]unix.EpollEvent, 512)
	var (
		nextCheck = l.start
		nextPing  = l.start.Add(l.cfg.PingEvery)
		closeBy   time.Time
	)
	for {
		now := time.Now()
		closing := l.closing
		if !closing && l.stop.Load() {
			closing, closeBy = true, now.Add(l.cfg.CloseTimeout)
			l.closing = true
			l.closeAll(now)
			// What the stalled connections still hold is read first,
			// within the same bound; endStallDrain then gives their
			// close handshake a bound of its own.
		}
		if closing && l.draining > 0 && (now.Sub(l.lastStallRead) > stallQuiet || now.After(closeBy)) {
			l.endStallDrain(now)
			closeBy = now.Add(l.cfg.CloseTimeout)
		}
		if closing && (l.live() == 0 || now.After(closeBy)) {
			l.forceCloseAll()
			return
		}
		wait := 50 * time.Millisecond
		if !closing {
			if d := l.ramp(now); d < wait {
				wait = d
			}
			if now.After(nextCheck) {
				l.expire(now.UnixNano())
				nextCheck = now.Add(250 * time.Millisecond)
			}
			if l.away > 0 {
				// The delay is kept to within this wait: 10 ms in the
				// SDK's 1 s.
				l.comeBackDue(now)
				wait = min(wait, 10*time.Millisecond)
			}
			if l.cfg.PingEvery > 0 && now.After(nextPing) {
				l.pingAll()
				nextPing = now.Add(l.cfg.PingEvery)
			}
		}
		n, err := unix.EpollWait(l.epfd, events, int(max(wait/time.Millisecond, 1)))
		if err != nil && !errors.Is(err, unix.EINTR) {
			// epoll on a valid fd fails only on programming errors; stop
			// rather than spin.
			l.forceCloseAll()
			return
		}
		for i := range max(n, 0) {
			l.handle(int(events[i].Fd), events[i].Events)
		}
	}
}

// live counts connections whose sockets are still open.
func (l *loop) live() int {
	n := 0
	for i := range l.conns[:l.ctr.attempted.Load()] {
		if l.conns[i].state != stDone {
			n++
		}
	}
	return n
}

// ramp opens the connections due by now and returns how long until the
// next one is due.
func (l *loop) ramp(now time.Time) time.Duration {
	opened := int(l.ctr.attempted.Load())
	if opened >= len(l.conns) {
		return time.Hour
	}
	due := len(l.conns)
	if l.rate > 0 {
		due = min(due, int(now.Sub(l.start).Seconds()*l.rate)+1)
	}
	// Bounded batches keep one loop from starving its own reads while a
	// burst of connects goes out.
	due = min(due, opened+256)
	for ; opened < due; opened++ {
		l.open(opened, now)
	}
	if opened >= len(l.conns) {
		return time.Hour
	}
	if l.rate <= 0 {
		return 0
	}
	next := l.start.Add(time.Duration(float64(opened) / l.rate * float64(time.Second)))
	return max(next.Sub(time.Now()), 0)
}

// open starts connection slot i: socket, bind to its source address,
// non-blocking connect, register with epoll.
func (l *loop) open(i int, now time.Time) {
	c := &l.conns[i]
	c.slot = int32(i)
	c.node = uint8((l.globalFirst + i*l.stride) % len(l.targets))
	c.stall = stallNone
	if l.cfg.isStalled(l.globalFirst + i*l.stride) {
		c.stall = stallPending
	}
	c.deflate = l.cfg.isCompressing(l.globalFirst + i*l.stride)
	l.ctr.attempted.Add(1)
	l.dial(c, now)
}

// dial connects c to its node: socket, bind to its source address,
// non-blocking connect, register with epoll.
func (l *loop) dial(c *conn, now time.Time) {
	i := int(c.slot)
	c.fd = -1
	c.deadline = now.Add(l.cfg.ConnectTimeout).UnixNano()
	nt := l.targets[c.node]
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		l.fail(c, &l.ctr.errConnect)
		return
	}
	c.fd = int32(fd)
	if nt.loopback {
		g := l.globalFirst + i*l.stride
		src := &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, byte(2 + g%l.cfg.SourceIPs)}}
		// Without IP_BIND_ADDRESS_NO_PORT, bind picks the port alone and
		// each source address is capped at the ephemeral range across all
		// destinations; with it the port is chosen at connect time per
		// 4-tuple.
		_ = unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		if err := unix.Bind(fd, src); err != nil {
			l.fail(c, &l.ctr.errConnect)
			return
		}
	}
	_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	err = unix.Connect(fd, &unix.SockaddrInet4{Addr: nt.addr, Port: nt.port})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		l.fail(c, &l.ctr.errConnect)
		return
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(i)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		l.fail(c, &l.ctr.errConnect)
		return
	}
	c.state = stConnecting
}

// handle serves one epoll event of slot i.
func (l *loop) handle(i int, ev uint32) {
	c := &l.conns[i]
	if c.gone() {
		return
	}
	if c.stall == stallHeld {
		// Only EPOLLRDHUP is asked for (EPOLLHUP and EPOLLERR always
		// come): the server's FIN or a reset, seen without reading.
		if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
			l.serverClosedStalled(c)
		}
		return
	}
	if c.state == stConnecting {
		if ev&(unix.EPOLLOUT|unix.EPOLLERR|unix.EPOLLHUP) == 0 {
			return
		}
		if soErr, err := unix.GetsockoptInt(int(c.fd), unix.SOL_SOCKET, unix.SO_ERROR); err != nil || soErr != 0 {
			l.fail(c, &l.ctr.errConnect)
			return
		}
		if sa, err := unix.Getsockname(int(c.fd)); err == nil {
			if in4, ok := sa.(*unix.SockaddrInet4); ok {
				l.sources[netip.AddrFrom4(in4.Addr)]++
			}
		}
		if !l.sendUpgrade(c) {
			return
		}
		c.state = stUpgrading
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0 {
		l.readAll(c, ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLERR) != 0)
	}
	if c.stall == stallPending && c.state == stReady {
		l.hold(i, c)
	}
}

// hold stops reading stalled connection i: its epoll interest shrinks to
// EPOLLRDHUP, so what the server sends piles up in the kernel buffers and
// then in the server's queue, as with a client that stopped reading.
func (l *loop) hold(i int, c *conn) {
	ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(i)}
	// Should the change fail, the socket is still never read (readAll
	// skips held connections), only its wake-ups are not saved.
	_ = unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev)
	c.stall = stallHeld
	l.ctr.stalledOpen.Add(1)
}

// unhold reads stalled connection i again, at the end, to learn whether
// the server closed it: the server's FIN (and its close frame, when it
// could still write one) sits behind the bytes the connection did not
// read.
func (l *loop) unhold(i int, c *conn, now time.Time) {
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(i)}
	if err := unix.EpollCtl(l.epfd, unix.EPOLL_CTL_MOD, int(c.fd), &ev); err != nil {
		l.lose(c, &l.ctr.errProto)
		return
	}
	c.stall = stallDraining
	l.draining++
	l.lastStallRead = now
	l.readAll(c, true)
}

// stalledEnded classifies the end of a stalled connection being read
// again. Before our close frame was sent, an EOF or a reset means the
// server had closed it. After, a reset still does: our close frame
// reached a socket the server had closed (the kernel answers data for a
// closed socket with a reset). But an EOF then is the server answering
// our close frame: it closes at once, without its echo, when bytes are
// still queued for the connection (as when the drain was cut short by
// the close timeout), so it says nothing about a slow-consumer close.
func (l *loop) stalledEnded(c *conn, eof bool) {
	if c.state == stClosing && eof {
		l.closeFD(c)
		return
	}
	l.serverClosedStalled(c)
}

// serverClosedStalled counts and closes a stalled connection the server
// closed.
func (l *loop) serverClosedStalled(c *conn) {
	if c.stall == stallDraining && c.state == stReady {
		l.draining--
	}
	l.ctr.stalledClosed.Add(1)
	l.closeFD(c) // while c.stall still says it was counted as stalled
	c.stall = stallClosed
}

// endStallDrain sends the close frame to the stalled connections that
// are still open after their bytes were read: the server kept them.
func (l *loop) endStallDrain(now time.Time) {
	closeNormal := []byte{0x03, 0xE8} // 1000
	for i := range l.conns[:l.ctr.attempted.Load()] {
		c := &l.conns[i]
		if c.stall != stallDraining || c.state != stReady {
			continue
		}
		if l.sendFrame(c, opClose, closeNormal) {
			l.leaveReady(c)
			c.state = stClosing
			c.deadline = now.UnixNano()
		}
	}
	l.draining = 0
}

// sendUpgrade writes the HTTP upgrade request with a fresh key.
func (l *loop) sendUpgrade(c *conn) bool {
	var key [16]byte
	_, _ = l.rng.Read(key[:])
	req := l.requests[c.node]
	if c.deflate {
		req = l.offers[c.node]
	}
	b := append(l.wbuf[:0], req...)
	b = base64.StdEncoding.AppendEncode(b, key[:])
	b = append(b, "\r\n\r\n"...)
	l.wbuf = b
	return l.write(c, b)
}

// write sends b whole or drops the connection: the generator's writes are
// a few dozen bytes on an otherwise idle socket, so a short write means
// the socket is in trouble, not that it needs buffering.
func (l *loop) write(c *conn, b []byte) bool {
	for {
		n, err := unix.Write(int(c.fd), b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || n != len(b) {
			if c.stall == stallDraining {
				// EPIPE or a reset: the server closed it.
				l.serverClosedStalled(c)
				return false
			}
			l.lose(c, &l.ctr.errWrite)
			return false
		}
		return true
	}
}

// sendFrame writes one masked client frame.
func (l *loop) sendFrame(c *conn, opcode byte, payload []byte) bool {
	var mask [4]byte
	_, _ = l.rng.Read(mask[:])
	l.wbuf = appendClientFrame(l.wbuf[:0], opcode, payload, mask)
	return l.write(c, l.wbuf)
}

// readAll drains the socket (epoll is edge-triggered). hangup says the
// peer has shut down or the socket failed: then it reads on to the EOF or
// error, which no later edge would report.
func (l *loop) readAll(c *conn, hangup bool) {
	for !c.gone() {
		if c.stall == stallHeld || (c.stall == stallPending && c.state == stReady) {
			// A stalled connection reads nothing past `connected`.
			return
		}
		n, err := unix.Read(int(c.fd), l.buf)
		switch {
		case n > 0:
			if c.stall == stallDraining {
				l.lastStallRead = time.Now()
			}
			if !l.consume(c, l.buf[:n]) {
				return
			}
			if n < len(l.buf) && !hangup {
				// A short read emptied the socket; with edge-triggered
				// epoll, bytes arriving later raise a new edge, so the
				// read that would only say EAGAIN is saved (it would be
				// one syscall per delivery).
				return
			}
		case errors.Is(err, unix.EAGAIN):
			return
		case errors.Is(err, unix.EINTR):
		default: // EOF or reset
			if c.stall == stallDraining {
				l.stalledEnded(c, n == 0 && err == nil)
				return
			}
			if c.state == stClosing {
				l.finish(c)
			} else {
				l.lose(c, &l.ctr.errReset)
			}
			return
		}
	}
}

// consume parses what arrived on c; false when c was closed.
func (l *loop) consume(c *conn, data []byte) bool {
	if c.partial != nil && len(c.partial.pending) > 0 {
		data = append(c.partial.pending, data...)
		c.partial.pending = nil
	}
	if c.state == stUpgrading {
		end := bytes.Index(data, []byte("\r\n\r\n"))
		if end < 0 {
			return l.park(c, data)
		}
		if !bytes.HasPrefix(data, []byte("HTTP/1.1 101 ")) {
			l.fail(c, &l.ctr.errHandshake)
			return false
		}
		if c.deflate {
			c.deflate = bytes.Contains(data[:end], []byte("permessage-deflate"))
			if c.deflate {
				l.ctr.deflateAgreed.Add(1)
			}
		}
		data = data[end+4:]
		c.state = stWaitConnected
	}
	for len(data) > 0 {
		h, ok, err := parseFrameHeader(data)
		if err != nil {
			l.lose(c, &l.ctr.errProto)
			return false
		}
		if !ok || len(data) < h.size+h.length {
			return l.park(c, data)
		}
		payload := data[h.size : h.size+h.length]
		data = data[h.size+h.length:]
		if !l.frame(c, h, payload) {
			return false
		}
	}
	if c.partial != nil && c.partial.frag == nil {
		c.partial = nil
	}
	return true
}

// park keeps the unfinished rest of a read for the next one.
func (l *loop) park(c *conn, rest []byte) bool {
	if len(rest) > maxPending {
		l.lose(c, &l.ctr.errProto)
		return false
	}
	if c.partial == nil {
		c.partial = &partial{}
	}
	// rest may alias the loop's read buffer or the old pending bytes:
	// copy it out.
	c.partial.pending = append(make([]byte, 0, len(rest)+512), rest...)
	return true
}

// frame handles one complete server frame; false when c was closed.
func (l *loop) frame(c *conn, h frameHeader, payload []byte) bool {
	switch h.opcode {
	case opPing:
		return l.sendFrame(c, opPong, payload)
	case opPong:
		return true
	case opClose:
		if c.stall == stallDraining && (c.state == stReady || closeCode(payload) == closePolicyViolation) {
			// Its own close frame (1008 for a slow consumer), not the
			// answer to ours.
			l.serverClosedStalled(c)
			return false
		}
		if c.state == stClosing {
			l.finish(c)
			return false
		}
		if closeCode(payload) == closeGoingAway {
			l.ctr.goingAway.Add(1)
		}
		// Echo the code, as RFC 6455 asks, before letting go.
		echo := payload[:min(len(payload), 2)]
		l.sendFrame(c, opClose, echo)
		if c.gone() {
			return false
		}
		l.lose(c, &l.ctr.serverCloses)
		return false
	case opText, opBinary, opContinuation:
		if h.rsv1 && (!c.deflate || h.opcode == opContinuation) {
			l.lose(c, &l.ctr.errProto) // RFC 7692 6
			return false
		}
		if h.fin && h.opcode != opContinuation {
			return l.compressedOr(c, h.rsv1, payload)
		}
		if c.partial == nil {
			c.partial = &partial{}
		}
		if h.opcode != opContinuation {
			c.partial.frag = c.partial.frag[:0]
			c.partial.compressed = h.rsv1
		}
		c.partial.frag = append(c.partial.frag, payload...)
		if len(c.partial.frag) > maxPending {
			l.lose(c, &l.ctr.errProto)
			return false
		}
		if h.fin {
			msg := c.partial.frag
			c.partial.frag = nil
			return l.compressedOr(c, c.partial.compressed, msg)
		}
		return !c.gone()
	default:
		l.lose(c, &l.ctr.errProto)
		return false
	}
}

// compressedOr handles a whole message, inflating it first when it is
// compressed; false when c was closed.
func (l *loop) compressedOr(c *conn, compressed bool, msg []byte) bool {
	if compressed {
		var err error
		if msg, err = l.inflate.Inflate(msg, maxPending); err != nil {
			l.lose(c, &l.ctr.errProto)
			return false
		}
		l.ctr.compressedMsgs.Add(1)
	}
	l.message(c, msg)
	return !c.gone()
}

// message handles one server message.
func (l *loop) message(c *conn, msg []byte) {
	switch string(messageType(msg)) {
	case "event":
		l.event(c, msg)
	case "connected":
		if c.state != stWaitConnected {
			return
		}
		if l.authMsg == nil {
			l.authenticated(c)
			return
		}
		if l.sendFrame(c, opText, l.authMsg) {
			c.state = stAuthing
		}
	case "response":
		switch {
		case c.state == stAuthing:
			if !bytes.Contains(msg, []byte(`"success":true`)) {
				l.ctr.authFailed.Add(1)
			}
			l.authenticated(c)
		case c.state == stSubscribing && bytes.Equal(responseTo(msg), subscribeTo):
			l.subscribed(c, msg)
		}
	case "pong":
		l.ctr.pongs.Add(1)
	case "error":
		l.ctr.errorFrames.Add(1)
		if c.state == stAuthing {
			// The connection stays, as a guest: the server said so.
			l.ctr.authFailed.Add(1)
			l.authenticated(c)
		}
	}
}

// authenticated moves c on once `connected` (and the authentication's
// answer) came: a resuming connection subscribes, any other is ready.
func (l *loop) authenticated(c *conn) {
	if l.seqs == nil {
		l.ready(c)
		return
	}
	msg := subscribeMessage(l.subscriptionID(int(c.slot)), l.t.channels)
	if l.sendFrame(c, opText, msg) {
		c.state = stSubscribing
		if c.wasReady {
			// A returning connection waits for its answer as long as
			// the SDK does: without a bound (a storm's LiveWithin bounds
			// the run). Giving up would end a resume the node is still
			// making, and make it start again.
			c.deadline = math.MaxInt64
		}
	}
}

// subscriptionID is the id connection slot i subscribes under, every time.
func (l *loop) subscriptionID(i int) string {
	return l.cfg.SubscriptionPrefix + strconv.Itoa(l.globalFirst+i*l.stride)
}

// subscribed counts a resuming connection's subscribe response and makes
// it ready (again).
func (l *loop) subscribed(c *conn, msg []byte) {
	i := int(c.slot)
	st, reason := resumeStatus(msg)
	l.seqs.status[i] = st
	switch st {
	case resumeNew:
		l.ctr.resumeNew.Add(1)
	case resumeResumed:
		l.ctr.resumeResumed.Add(1)
	case resumeLive:
		l.ctr.resumeLive.Add(1)
		if reason == "incomplete" {
			l.ctr.resumeLiveIncomplete.Add(1)
		}
	default:
		l.ctr.resumeAbsent.Add(1)
	}
	now := time.Now().UnixNano()
	l.seqs.liveAt[i] = now
	if !c.wasReady {
		l.ready(c)
		return
	}
	c.state = stReady
	l.ctr.open.Add(1)
	l.ctr.resubscribed.Add(1)
	l.ctr.lastLiveAt.Store(max(l.ctr.lastLiveAt.Load(), now))
}

func (l *loop) ready(c *conn) {
	c.state = stReady
	c.wasReady = true
	l.ctr.everReady.Add(1)
	l.ctr.open.Add(1)
}

// comeBack takes a resuming connection the server ended, or whose way
// back failed, out of the run until ReconnectDelay has passed: then it
// tries the next node (comeBackDue). False when c is not one to come
// back: it never was ready, or the run is ending.
func (l *loop) comeBack(c *conn) bool {
	if l.seqs == nil || !c.wasReady || l.closing || c.state == stClosing || c.state == stDone || c.state == stAway {
		return false
	}
	if c.state == stReady {
		l.leaveReady(c)
		l.ctr.wentAway.Add(1)
		l.seqs.leftAfter[c.slot] = int32(c.next) - 1
		l.seqs.backWith[c.slot] = -1
	} else {
		l.ctr.reconnectFailures.Add(1)
	}
	if c.fd >= 0 {
		unix.Close(int(c.fd))
	}
	c.fd = -1
	c.partial = nil
	c.state = stAway
	c.deadline = time.Now().Add(l.cfg.ReconnectDelay).UnixNano()
	c.node = uint8((int(c.node) + 1) % len(l.targets))
	l.away++
	return true
}

// comeBackDue reconnects the connections whose delay has passed.
func (l *loop) comeBackDue(now time.Time) {
	ns := now.UnixNano()
	for i := range l.conns[:l.ctr.attempted.Load()] {
		c := &l.conns[i]
		if c.state != stAway || c.deadline > ns {
			continue
		}
		l.away--
		l.ctr.reconnects.Add(1)
		if l.seqs.reconnects[i] < 1<<16-1 {
			l.seqs.reconnects[i]++
		}
		c.state = stConnecting
		l.dial(c, now)
	}
}

// closePolicyViolation is the close code a server closes a slow consumer
// with.
const closePolicyViolation = 1008

// closeGoingAway is the close code of a draining node (and of an idle
// timeout).
const closeGoingAway = 1001

// closeCode is the status code of a close frame's payload (1005, "no
// status", when it has none).
func closeCode(payload []byte) int {
	if len(payload) < 2 {
		return 1005
	}
	return int(payload[0])<<8 | int(payload[1])
}

// event records one delivery: latency, completeness, time to last
// delivery of its sequence. A stalled connection's events (read only at
// the end, if at all) are left out: the figures are the healthy ones'.
func (l *loop) event(c *conn, msg []byte) {
	if c.stall != stallNone {
		return
	}
	seq, sent, ok := eventStamp(msg)
	if !ok || seq >= len(l.seqCount) {
		l.ctr.foreign.Add(1)
		return
	}
	now := time.Now().UnixNano()
	if l.seqs != nil {
		if !l.seeResuming(c, seq, sent) {
			return
		}
	} else if !c.see(uint32(seq)) {
		l.ctr.duplicates.Add(1)
		return
	}
	lat := now - sent
	l.hist.Record(time.Duration(lat))
	l.seqMaxLat[seq] = max(l.seqMaxLat[seq], lat)
	l.seqCount[seq]++
	if l.firstRecv == 0 {
		l.firstRecv = now
	}
	l.lastRecv = now
	l.ctr.events.Add(1)
}

// seeResuming records event seq on resuming connection c and reports
// whether it is new. An event published before c's last subscribe
// response, received after c came back, is one it caught up with: a
// replayed one, or a live one the node was late with.
func (l *loop) seeResuming(c *conn, seq int, sent int64) bool {
	i := int(c.slot)
	isNew, late := l.seqs.see(i, uint32(seq), c.next)
	if !isNew {
		c.dups++
		l.ctr.duplicates.Add(1)
		return false
	}
	if late {
		l.ctr.outOfOrder.Add(1)
	}
	c.next = max(c.next, uint32(seq)+1)
	c.recv++
	if l.seqs.reconnects[i] > 0 && sent < l.seqs.liveAt[i] {
		l.ctr.caughtUp.Add(1)
	}
	return true
}

// expire fails connections that did not become ready in time.
func (l *loop) expire(now int64) {
	for i := range l.conns[:l.ctr.attempted.Load()] {
		c := &l.conns[i]
		if c.state < stReady && c.deadline < now {
			l.fail(c, &l.ctr.errTimeout)
		}
	}
}

var pingMsg = []byte(`{"type":"ping"}`)

func (l *loop) pingAll() {
	for i := range l.conns[:l.ctr.attempted.Load()] {
		if c := &l.conns[i]; c.state == stReady && c.stall == stallNone {
			l.sendFrame(c, opText, pingMsg)
		}
	}
}

// closeAll starts the closing handshake on every ready connection,
// abandons those still connecting, and starts reading the stalled ones
// again (their handshake follows in endStallDrain).
func (l *loop) closeAll(now time.Time) {
	closeNormal := []byte{0x03, 0xE8} // 1000
	for i := range l.conns[:l.ctr.attempted.Load()] {
		c := &l.conns[i]
		switch {
		case c.state == stDone:
		case c.state == stAway:
			c.state = stDone
			l.away--
		case c.state < stReady:
			l.fail(c, &l.ctr.errTimeout)
		case c.stall == stallHeld:
			l.unhold(i, c, now)
		default:
			if l.sendFrame(c, opClose, closeNormal) {
				l.leaveReady(c)
				c.state = stClosing
				c.deadline = now.UnixNano()
			}
		}
	}
}

func (l *loop) forceCloseAll() {
	for i := range l.conns[:l.ctr.attempted.Load()] {
		c := &l.conns[i]
		if c.state == stClosing {
			l.ctr.closeTimeouts.Add(1)
		}
		if !c.gone() {
			l.closeFD(c)
		}
	}
}

// leaveReady takes c, which is leaving stReady, out of the open counts.
func (l *loop) leaveReady(c *conn) {
	l.ctr.open.Add(-1)
	if c.stall == stallHeld || c.stall == stallDraining {
		l.ctr.stalledOpen.Add(-1)
	}
}

func (l *loop) closeFD(c *conn) {
	if c.state == stReady {
		l.leaveReady(c)
	}
	if c.fd >= 0 {
		unix.Close(int(c.fd))
	}
	c.fd = -1
	c.state = stDone
	c.partial = nil
}

// fail closes a connection that never became ready.
func (l *loop) fail(c *conn, why *atomic.Int64) {
	why.Add(1)
	if l.comeBack(c) {
		// A resuming connection's way back failed: it tries again.
		return
	}
	l.ctr.failed.Add(1)
	l.closeFD(c)
}

// lose closes a connection because of an error; one that was ready counts
// as dropped, one that was not as failed.
func (l *loop) lose(c *conn, why *atomic.Int64) {
	if c.gone() {
		return
	}
	if c.state < stReady {
		l.fail(c, why)
		return
	}
	why.Add(1)
	if l.comeBack(c) {
		return
	}
	if c.state != stClosing {
		l.ctr.dropped.Add(1)
	}
	l.closeFD(c)
}

// finish closes a connection whose closing handshake completed.
func (l *loop) finish(c *conn) {
	l.ctr.closedClean.Add(1)
	l.closeFD(c)
}

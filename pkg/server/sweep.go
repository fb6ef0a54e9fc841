package server

import (
	"fmt"
	"sync"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/index"
)

// handshakeWheel closes connections that have not completed the WebSocket
// upgrade within the handshake timeout (slowloris, half-open handshakes).
// One wheel of one-second buckets for the whole node: a connection costs a
// slot in one bucket while it is in its handshake, and no timer.
type handshakeWheel struct {
	timeout time.Duration

	mu      sync.Mutex
	buckets [][]*conn // by unix second modulo len(buckets)
	last    int64     // the last second swept
}

func newHandshakeWheel(timeout time.Duration) *handshakeWheel {
	n := int(timeout/time.Second) + 2
	return &handshakeWheel{timeout: timeout, buckets: make([][]*conn, n), last: time.Now().Unix()}
}

// add schedules c's deadline.
func (w *handshakeWheel) add(c *conn, now time.Time) {
	due := now.Add(w.timeout + time.Second - 1).Unix() // round up: never early
	w.mu.Lock()
	i := int(due % int64(len(w.buckets)))
	w.buckets[i] = append(w.buckets[i], c)
	w.mu.Unlock()
}

// sweep closes every connection whose deadline has passed and is still in
// its handshake.
func (w *handshakeWheel) sweep(now time.Time, s *Server) {
	var due []*conn
	w.mu.Lock()
	for sec := w.last + 1; sec <= now.Unix(); sec++ {
		i := int(sec % int64(len(w.buckets)))
		due = append(due, w.buckets[i]...)
		clear(w.buckets[i])
		w.buckets[i] = w.buckets[i][:0]
	}
	w.last = now.Unix()
	w.mu.Unlock()
	for _, c := range due {
		c.mu.Lock()
		expired := c.state == stateHandshake
		c.mu.Unlock()
		if expired {
			s.metrics.handshakeTimeouts.Inc()
			s.log.Debug("handshake timed out", zap.Uint32("conn", uint32(c.id)))
			c.shut(closeHandshakeTimeout)
		}
	}
}

// runSweeper ticks the node's clock, handshake wheel and idle sweep until
// stop is closed.
//
// Ticks are aligned to whole seconds: deadlines are whole seconds, so an
// unaligned tick (say at x.99) would sweep a due bucket up to a second
// later than needed. Aligned, a handshake is closed within its timeout
// plus at most one second.
func (s *Server) runSweeper(stop <-chan struct{}) {
	align := time.NewTimer(time.Until(time.Now().Truncate(time.Second).Add(time.Second)))
	select {
	case <-align.C:
	case <-stop:
		align.Stop()
		return
	}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	every := idleSweepEvery(s.cfg.IdleTimeout)
	now := time.Now()
	for tick := 1; ; tick++ {
		s.clock.Store(uint32(now.Unix()))
		s.quarantine.tick()
		s.handshakes.sweep(now, s)
		if every > 0 && tick%every == 0 {
			s.sweepIdle(uint32(now.Unix()))
		}
		select {
		case now = <-t.C:
		case <-stop:
			return
		}
	}
}

// idleSweepEvery is how many one-second ticks apart the idle sweep runs: a
// quarter of the timeout, so a connection is closed at most about 25 %
// late, without walking every connection each second on a big node. 0
// means no idle sweep.
func idleSweepEvery(timeout time.Duration) int {
	if timeout <= 0 {
		return 0
	}
	return max(1, int(timeout/time.Second)/4)
}

// sweepIdle closes (1001) every upgraded connection whose last frame is
// older than the idle timeout. It walks the connection table once; a
// connection costs four bytes for this and no timer.
func (s *Server) sweepIdle(now uint32) {
	if s.cfg.IdleTimeout <= 0 {
		return
	}
	// Stamps are whole seconds that may lag the frame by up to one, so a
	// connection is idle only when strictly more than the rounded-up
	// timeout has passed: never early.
	limit := uint32((s.cfg.IdleTimeout + time.Second - 1) / time.Second)
	var idle []*conn
	// Range holds index locks: only read atomics here, close afterwards
	// (closing deletes from the index).
	s.idx.Range(func(_ index.ID, c *conn) {
		if seen := c.lastSeen.Load(); now > seen && now-seen > limit {
			idle = append(idle, c)
		}
	})
	for _, c := range idle {
		c.mu.Lock()
		expired := c.state == stateLive
		c.mu.Unlock()
		if expired {
			s.metrics.idleTimeouts.Inc()
			s.log.Debug("idle timeout", zap.Uint32("conn", uint32(c.id)))
			c.sendLast(outFrame{head: closeIdle.frame(0, "")}, closeIdle, ws.StatusGoingAway)
		}
	}
}

// setKeepAlive turns on TCP keepalive on fd: the first probe after d of
// silence, then every d/3, and the peer is declared dead after three
// unanswered probes.
func setKeepAlive(fd int, d time.Duration) error {
	idle := max(1, int(d/time.Second))
	for _, o := range []struct{ level, opt, v int }{
		{unix.SOL_SOCKET, unix.SO_KEEPALIVE, 1},
		{unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, idle},
		{unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, max(1, idle/3)},
		{unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 3},
	} {
		if err := unix.SetsockoptInt(fd, o.level, o.opt, o.v); err != nil {
			return fmt.Errorf("setsockopt %d/%d: %w", o.level, o.opt, err)
		}
	}
	return nil
}

// recoverConn turns a panic while handling one connection's input into a
// 1011 close of that connection; the node and everyone else go on.
func (c *conn) recoverConn() {
	if v := recover(); v != nil {
		c.srv.metrics.panics.Inc()
		c.srv.log.Error("panic handling connection input; closing it", zap.Uint32("conn", uint32(c.id)), zap.Any("panic", v), zap.Stack("stack"))
		c.readClosed = true
		c.sendLast(outFrame{head: closeInternalError.frame(0, "")}, closeInternalError, ws.StatusInternalServerError)
	}
}

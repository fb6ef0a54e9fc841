package server

import (
	"sync"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/zap"
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
		expired := !c.live && !c.closed
		c.mu.Unlock()
		if expired {
			s.metrics.handshakeTimeouts.Inc()
			s.log.Debug("handshake timed out", zap.Uint32("conn", uint32(c.id)))
			c.shut()
		}
	}
}

// runSweeper ticks the node's wheel until stop is closed.
func (s *Server) runSweeper(stop <-chan struct{}) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case now := <-t.C:
			s.handshakes.sweep(now, s)
		case <-stop:
			return
		}
	}
}

// recoverConn turns a panic while handling one connection's input into a
// 1011 close of that connection; the node and everyone else go on.
func (c *conn) recoverConn() {
	if v := recover(); v != nil {
		c.srv.metrics.panics.Inc()
		c.srv.log.Error("panic handling connection input; closing it", zap.Uint32("conn", uint32(c.id)), zap.Any("panic", v), zap.Stack("stack"))
		c.readClosed = true
		c.sendLast(outFrame{head: closeFrame(ws.StatusInternalServerError, "internal error")})
	}
}

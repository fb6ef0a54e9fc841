package server

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/index"
)

func TestIdleTimeoutClosesSilentClientsOnly(t *testing.T) {
	const timeout = 2 * time.Second
	s := testNode(t, func(c *Config) { c.IdleTimeout = timeout })
	silent := dial(t, s, "project=p1&channels[]=files", nil)
	silent.expect("connected")
	appPinger := dial(t, s, "project=p1&channels[]=files", nil) // the SDK's {"type":"ping"}
	appPinger.expect("connected")
	wsPinger := dial(t, s, "project=p1&channels[]=files", nil) // a WebSocket ping frame counts too
	wsPinger.expect("connected")
	start := time.Now()
	lag := schedulingLag(t)

	closed := make(chan time.Duration, 1)
	go func() {
		// The silent client only reads; the server must end it with 1001.
		_ = silent.conn.SetReadDeadline(time.Now().Add(4 * timeout))
		for {
			f, err := ws.ReadFrame(silent.r)
			if err != nil {
				closed <- -1
				return
			}
			if f.Header.OpCode == ws.OpClose {
				if code, _ := ws.ParseCloseFrameData(f.Payload); code != ws.StatusGoingAway {
					t.Errorf("idle close code %d, want 1001", code)
				}
				closed <- time.Since(start)
				return
			}
		}
	}()

	for time.Since(start) < 2*timeout+time.Second {
		appPinger.send(`{"type":"ping"}`)
		appPinger.expect("pong")
		if err := ws.WriteFrame(wsPinger.conn, ws.MaskFrame(ws.NewPingFrame(nil))); err != nil {
			t.Fatal(err)
		}
		time.Sleep(timeout / 4)
	}
	select {
	case d := <-closed:
		if d < 0 {
			t.Fatal("silent client was not sent close 1001")
		}
		// Never early; at most a rounding second and a sweep interval late,
		// plus however late this machine ran goroutines meanwhile (on 2
		// cores with two CPU burners and two other -race suites, the close
		// came 5.1 s after a 2 s timeout: the sweeper had not run).
		if late := lag(); d < timeout || d > timeout+2*time.Second+late {
			t.Fatalf("silent client closed after %v, idle timeout %v, goroutines ran up to %v late", d, timeout, late)
		}
		t.Logf("silent client closed after %v (idle timeout %v)", d, timeout)
	case <-time.After(2 * timeout):
		t.Fatal("silent client still open")
	}
	// Both pingers outlived the timeout twice over and still get events.
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"alive":1}`))
	appPinger.expectPayload(`{"alive":1}`)
	wsPinger.expectPayload(`{"alive":1}`)
	if got := counterValue(t, s, "switchboard_idle_timeouts_total"); got != 1 {
		t.Fatalf("idle timeouts = %v, want 1", got)
	}
}

// serverFDs returns the server-side descriptors of the node's connections.
func serverFDs(s *Server) []int {
	var fds []int
	s.idx.Range(func(_ index.ID, c *conn) { fds = append(fds, c.fd) })
	return fds
}

func TestTCPKeepAliveOnAcceptedSockets(t *testing.T) {
	for _, tc := range []struct {
		name      string
		keepalive time.Duration
		wantOn    int
		wantIdle  int
	}{
		{"default", 0, 1, 120},
		{"set", 45 * time.Second, 1, 45},
		{"off", -1, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := testNode(t, func(c *Config) { c.TCPKeepAlive = tc.keepalive })
			c := dial(t, s, "project=p1", nil)
			c.expect("connected")
			fds := serverFDs(s)
			if len(fds) != 1 {
				t.Fatalf("%d server connections", len(fds))
			}
			on, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			if err != nil {
				t.Fatal(err)
			}
			if on != tc.wantOn {
				t.Fatalf("SO_KEEPALIVE = %d, want %d", on, tc.wantOn)
			}
			if tc.wantOn == 0 {
				return
			}
			idle, _ := unix.GetsockoptInt(fds[0], unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
			intvl, _ := unix.GetsockoptInt(fds[0], unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
			cnt, _ := unix.GetsockoptInt(fds[0], unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
			if idle != tc.wantIdle || intvl != tc.wantIdle/3 || cnt != 3 {
				t.Fatalf("keepalive idle %d intvl %d count %d, want %d %d 3", idle, intvl, cnt, tc.wantIdle, tc.wantIdle/3)
			}
		})
	}
}

// A client that announces a frame and trickles its payload a byte at a
// time never completes a frame: the idle timeout ends it, so it cannot hold
// a reassembly buffer forever (slowloris after the upgrade).
func TestIdleTimeoutEndsTricklingFrames(t *testing.T) {
	const timeout = 2 * time.Second
	s := testNode(t, func(c *Config) { c.IdleTimeout = timeout })
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	start := time.Now()
	if _, err := c.conn.Write(rawFrame(0x81, 1000, nil)); err != nil {
		t.Fatal(err)
	}
	var err error
	for time.Since(start) < 3*timeout && err == nil {
		_, err = c.conn.Write([]byte{' '})
		time.Sleep(100 * time.Millisecond)
	}
	if err == nil {
		t.Fatalf("trickling client still open after %v", time.Since(start))
	}
	if d := time.Since(start); d < timeout {
		t.Fatalf("closed after %v, before the idle timeout %v", d, timeout)
	}
	if got := counterValue(t, s, "switchboard_idle_timeouts_total"); got != 1 {
		t.Fatalf("idle timeouts = %v, want 1", got)
	}
}

// schedulingLag measures, until the test ends, how late a goroutine that
// sleeps 10 ms at a time wakes: the machine's own delay, which a deadline
// of the node's (a sweep, a tick) suffers too. The returned function is
// the worst seen so far.
func schedulingLag(t *testing.T) func() time.Duration {
	var worst atomic.Int64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for {
			start := time.Now()
			select {
			case <-done:
				return
			case <-time.After(10 * time.Millisecond):
			}
			if late := int64(time.Since(start) - 10*time.Millisecond); late > worst.Load() {
				worst.Store(late)
			}
		}
	}()
	t.Cleanup(func() { close(done); <-stopped })
	return func() time.Duration { return time.Duration(worst.Load()) }
}

package server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestSlowlorisHandshakesAreClosedOthersServed holds 5,000 sockets that
// never finish their upgrade request (most send half a request and stop,
// some trickle a byte at a time) and checks that the handshake wheel closes
// all of them within the handshake timeout (plus the wheel's one-second
// granularity), while normal clients keep connecting and receiving events
// throughout.
func TestSlowlorisHandshakesAreClosedOthersServed(t *testing.T) {
	if testing.Short() {
		t.Skip("5,000 sockets")
	}
	const (
		timeout = 2 * time.Second
		total   = 5000
		drip    = 500 // of total: send one byte every dripEvery, forever
	)
	dripEvery := 100 * time.Millisecond
	s := testNode(t, func(c *Config) { c.HandshakeTimeout = timeout })
	addr := s.Addr().String()

	// A long-lived subscriber that must see every event published meanwhile.
	watcher := dial(t, s, "project=p1&channels[]=files", nil)
	watcher.expect("connected")

	// Normal clients: connect, get `connected`, receive an event, in a loop
	// until told to stop. Each round proves the node still serves both new
	// and existing clients while the slowloris sockets are held.
	stop := make(chan struct{})
	var served atomic.Int64
	var normalErr atomic.Value
	var normalWG sync.WaitGroup
	normalWG.Add(1)
	go func() {
		defer normalWG.Done()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			if err := normalRound(s, watcher, n); err != nil {
				normalErr.Store(err)
				return
			}
			served.Add(1)
		}
	}()

	// accepted is how many slowloris sockets the node has accepted: those
	// open (but the watcher, and at most one normal client in flight) and
	// those the wheel closed.
	accepted := func() (float64, error) {
		open, err := metricSum(s, "switchboard_connections")
		if err != nil {
			return 0, err
		}
		closed, err := metricSum(s, "switchboard_handshake_timeouts_total")
		return open - 1 + closed, err
	}

	// Open the slowloris sockets from a few goroutines, never more than
	// acceptWindow ahead of the node's accepts. Unthrottled, the burst
	// filled the listen backlog whenever the acceptor fell behind (the
	// last accept came up to 1.2 s after the last dial on a loaded 2-core
	// machine): the backlog is the host's net.core.somaxconn (4096 stock,
	// 5000 is more), and past it the kernel drops handshakes and retries
	// them 1, 3, 7 s later, delaying the normal clients' upgrades too.
	const acceptWindow = 1000
	var dialed, acceptedNow atomic.Int64
	dialing := make(chan struct{})
	go func() {
		for {
			if n, err := accepted(); err == nil {
				acceptedNow.Store(int64(n))
			}
			select {
			case <-dialing:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	half := "GET /v1/realtime?project=p1&channels[]=files HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgr"
	conns := make([]net.Conn, total)
	firstDial := time.Now()
	var dialWG sync.WaitGroup
	var dialErr atomic.Value
	const dialers = 8
	for d := 0; d < dialers; d++ {
		dialWG.Add(1)
		go func() {
			defer dialWG.Done()
			for i := d; i < total; i += dialers {
				for wait := time.Now().Add(10 * time.Second); dialed.Load()-acceptedNow.Load() >= acceptWindow; {
					if time.Now().After(wait) {
						dialErr.Store(fmt.Errorf("%d dialed, %d accepted after 10 s", dialed.Load(), acceptedNow.Load()))
						return
					}
					time.Sleep(time.Millisecond)
				}
				dialed.Add(1)
				c, err := dialRetry(addr)
				if err != nil {
					dialErr.Store(err)
					return
				}
				conns[i] = c
				if i >= drip {
					if _, err := io.WriteString(c, half); err != nil {
						dialErr.Store(err)
						return
					}
				}
			}
		}()
	}
	dialWG.Wait()
	close(dialing)
	lastDial := time.Now()
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	if err, _ := dialErr.Load().(error); err != nil {
		t.Fatalf("opening slowloris sockets: %v", err)
	}
	t.Logf("%d slowloris sockets open in %v", total, lastDial.Sub(firstDial))

	// The trickling sockets send one byte of a request each round; a closed
	// one fails its write and drops out. dripDone is closed once every one
	// has.
	var dripAlive atomic.Int64
	dripAlive.Store(drip)
	dripDone := make(chan struct{})
	go func() {
		defer close(dripDone)
		req := []byte(upgradeRequest)
		pos := make([]int, drip)
		for dripAlive.Load() > 0 {
			select {
			case <-stop:
				return
			case <-time.After(dripEvery):
			}
			alive := int64(0)
			for i := 0; i < drip; i++ {
				if pos[i] < 0 {
					continue
				}
				// Never the final CRLF: the request stays incomplete.
				b := req[pos[i]%(len(req)-4)]
				if _, err := conns[i].Write([]byte{b}); err != nil {
					pos[i] = -1
					continue
				}
				pos[i]++
				alive++
			}
			dripAlive.Store(alive)
		}
	}()

	// A dial returns once the kernel has queued the connection; the node
	// accepts it (and starts its handshake clock) a little later.
	var allAccepted time.Time
	for {
		accepted, err := accepted()
		if err != nil {
			t.Fatal(err)
		}
		if accepted >= total {
			allAccepted = time.Now()
			break
		}
		if time.Since(lastDial) > 10*time.Second {
			t.Fatalf("only %v of %d sockets accepted", accepted, total)
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Wait for the wheel: every socket is due at most timeout + 1 s (the
	// wheel rounds deadlines up to its next one-second tick) after it was
	// accepted.
	limit := timeout + time.Second
	deadline := allAccepted.Add(limit + 2*time.Second) // slack for closing 5,000 sockets on a loaded, shared CI machine
	var allClosed time.Time
	for {
		got := counterValue(t, s, "switchboard_handshake_timeouts_total")
		if time.Since(firstDial) < timeout-100*time.Millisecond && got != 0 {
			t.Fatalf("%v handshakes timed out %v after the first dial, timeout %v", got, time.Since(firstDial), timeout)
		}
		if got == total {
			allClosed = time.Now()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v of %d slowloris sockets closed %v after the last was accepted", got, total, time.Since(allAccepted))
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Every client side sees the close (EOF or reset), not silence.
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
		buf := make([]byte, 512)
		for {
			n, err := c.Read(buf)
			if err == nil {
				if i >= drip || n == 0 {
					t.Fatalf("socket %d got %q, want a plain close", i, buf[:n])
				}
				continue
			}
			if isTimeout(err) {
				t.Fatalf("socket %d still open %v after the last dial", i, time.Since(lastDial))
			}
			break
		}
	}
	// A socket the node closed fails the second write after the close (the
	// first draws the reset): two rounds of dripEvery. 5 s is that 25 times
	// over, for a loaded machine.
	select {
	case <-dripDone:
	case <-time.After(5 * time.Second):
		t.Fatalf("%d trickling sockets still accept bytes", dripAlive.Load())
	}
	close(stop)
	normalWG.Wait()
	if err, _ := normalErr.Load().(error); err != nil {
		t.Fatalf("a normal client failed during the attack (after %d good rounds): %v", served.Load(), err)
	}
	if served.Load() < 3 {
		t.Fatalf("only %d normal clients served during the attack", served.Load())
	}

	t.Logf("all %d closed %v after the last was accepted, %v after the last dial returned, %v after the first (timeout %v); %d normal clients connected and got an event meanwhile",
		total, allClosed.Sub(allAccepted).Round(time.Millisecond), allClosed.Sub(lastDial).Round(time.Millisecond),
		allClosed.Sub(firstDial).Round(time.Millisecond), timeout, served.Load())
	// Every slowloris socket and every finished normal client is gone from
	// the node; only the watcher remains.
	for wait := time.Now().Add(5 * time.Second); ; {
		open := counterValue(t, s, "switchboard_connections")
		if open == 1 {
			break
		}
		if time.Now().After(wait) {
			t.Fatalf("%v connections open after the attack, want 1 (the watcher)", open)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The watcher was never touched by the wheel.
	watcher.send(`{"type":"ping"}`)
	watcher.expect("pong")
}

// normalRound connects a fresh client, publishes an event and checks that
// both it and the long-lived watcher receive it.
func normalRound(s *Server, watcher *client, n int) error {
	c, err := tryDial(s, "project=p1&channels[]=files", nil)
	if err != nil {
		return fmt.Errorf("dial: %w", err)
	}
	defer c.conn.Close()
	if m, err := c.tryRead(5 * time.Second); err != nil || m.Type != "connected" {
		return fmt.Errorf("connected: %v %v", m, err)
	}
	payload := fmt.Sprintf(`{"round":%d}`, n)
	if err := tryPublish(s, event("p1", []string{"any"}, []string{"files"}, payload)); err != nil {
		return err
	}
	for _, cl := range []*client{c, watcher} {
		m, err := cl.tryRead(5 * time.Second)
		if err != nil || m.Type != "event" || !strings.Contains(string(m.Data), payload) {
			return fmt.Errorf("event %s: got %s %s (%v)", payload, m.Type, m.Data, err)
		}
	}
	return nil
}

func tryPublish(s *Server, body string) error {
	resp, err := http.Post("http://"+s.AdminAddr().String()+"/v1/publish", "application/json", strings.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("publish: %s %s", resp.Status, b)
	}
	return nil
}

// dialRetry dials, retrying briefly when the accept queue overflows under
// a burst of connects.
func dialRetry(addr string) (net.Conn, error) {
	var err error
	for i := 0; i < 5; i++ {
		var c net.Conn
		if c, err = net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
			return c, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil, err
}

func TestOversizedUpgradeHeadGets431(t *testing.T) {
	const maxHead = 1024
	s := testNode(t, func(c *Config) { c.MaxHeaderBytes = maxHead })
	big := "GET /v1/realtime?project=p1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nCookie: a_session_p1=" + strings.Repeat("x", maxHead) + "\r\n\r\n"
	for _, tc := range []struct {
		name string
		send func(net.Conn) error
	}{
		// A whole head over the limit.
		{"complete", func(c net.Conn) error { _, err := io.WriteString(c, big); return err }},
		// A head that never ends: refused once the limit is passed, without
		// waiting for the rest or for the handshake timeout.
		{"endless", func(c net.Conn) error {
			_, err := io.WriteString(c, big[:len(big)-4]+strings.Repeat("y", 4096))
			return err
		}},
		// The same, in small pieces.
		{"pieces", func(c net.Conn) error {
			for i := 0; i < len(big)-4; i += 100 {
				if _, err := io.WriteString(c, big[i:min(i+100, len(big)-4)]); err != nil {
					return err
				}
				time.Sleep(time.Millisecond)
			}
			return nil
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", s.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			start := time.Now()
			_ = tc.send(c) // the server may close before all is written
			_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatalf("no HTTP response: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Fatalf("status %d, want 431", resp.StatusCode)
			}
			if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
				t.Fatalf("socket not closed after 431: %v", err)
			}
			if d := time.Since(start); d > time.Second {
				t.Fatalf("431 took %v", d)
			}
		})
	}
	// A head just under the limit still upgrades.
	c := dial(t, s, "project=p1", map[string][]string{"Cookie": {"a=" + strings.Repeat("x", maxHead-300)}})
	c.expect("connected")
}

package server

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

func TestHalfOpenHandshakesAreClosedOnTime(t *testing.T) {
	s := testNode(t, func(c *Config) { c.HandshakeTimeout = time.Second })
	const slow = 300
	conns := make([]net.Conn, 0, slow)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < slow; i++ {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		// Half a request, and never the rest.
		if _, err := io.WriteString(c, "GET /v1/realtime?project=p1 HTTP/1.1\r\nHost: x\r\nUpgrade: web"); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	start := time.Now()
	// Normal clients keep connecting meanwhile.
	ok := dial(t, s, "project=p1&channels[]=files", nil)
	ok.expect("connected")
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || isTimeout(err) {
			t.Fatalf("half-open connection %d still open after %v (%v)", i, time.Since(start), err)
		}
	}
	// The timeout is 1 s and the wheel ticks each second: allow a tick and slack.
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("half-open connections closed after %v, timeout 1s", d)
	}
	if got := counterValue(t, s, "switchboard_handshake_timeouts_total"); got != slow {
		t.Fatalf("handshake timeouts = %v, want %d", got, slow)
	}
	// The upgraded client was not touched by the wheel.
	ok.send(`{"type":"ping"}`)
	ok.expect("pong")
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func TestMaxConnsRefusesUpgradesWith503(t *testing.T) {
	s := testNode(t, func(c *Config) { c.MaxConns = 2 })
	a := dial(t, s, "project=p1", nil)
	a.expect("connected")
	b := dial(t, s, "project=p1", nil)
	b.expect("connected")
	_, err := tryDial(s, "project=p1", nil)
	var status ws.StatusError
	if !errors.As(err, &status) || int(status) != 503 {
		t.Fatalf("third upgrade: %v, want HTTP 503", err)
	}
	// A slot frees when a client leaves.
	a.conn.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := tryDial(s, "project=p1", nil)
		if err == nil {
			c.conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upgrade still refused after a client left: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

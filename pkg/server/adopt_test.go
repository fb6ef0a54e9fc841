package server

import (
	"bufio"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/index"
)

// TestFrameSentWithTheUpgradeIsNotLost sends the upgrade request and a
// first message in one write: whatever netpoll has read when it hands the
// socket over must still be handled.
func TestFrameSentWithTheUpgradeIsNotLost(t *testing.T) {
	s := testNode(t, nil)
	for i := range 50 {
		conn, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		var b strings.Builder
		b.WriteString("GET /v1/realtime?project=p1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
		frame := ws.MaskFrame(ws.NewTextFrame([]byte(`{"type":"ping"}`)))
		if err := ws.WriteFrame(&b, frame); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Write([]byte(b.String())); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(conn)
		var got []byte
		for !strings.Contains(string(got), `"type":"pong"`) {
			buf := make([]byte, 4096)
			n, err := br.Read(buf)
			if err != nil {
				t.Fatalf("connection %d: no pong for a ping sent with the upgrade: %v (got %q)", i, err, got)
			}
			got = append(got, buf[:n]...)
		}
		conn.Close()
	}
}

// TestPeerCloseOfAdoptedConnectionIsNoticed: a client that goes away
// after the upgrade leaves no trace in the node.
func TestPeerCloseOfAdoptedConnectionIsNoticed(t *testing.T) {
	s := testNode(t, nil)
	var clients []*client
	for range 20 {
		c := dial(t, s, "project=p1&channels[]=files", nil)
		c.expect("connected")
		// A message after the hand-over proves input is still read.
		c.send(`{"type":"ping"}`)
		c.expect("pong")
		clients = append(clients, c)
	}
	if n := s.open.Load(); n != 20 {
		t.Fatalf("open = %d", n)
	}
	for _, c := range clients {
		c.conn.Close()
	}
	redistest.Eventually(t, 5*time.Second, "closed connections released", func() bool {
		count := 0
		s.idx.Range(func(_ index.ID, _ *conn) { count++ })
		return s.open.Load() == 0 && count == 0
	})
}

// TestMessageRightAfterConnectedIsAnswered sends a subscribe the instant
// `connected` arrives, as the SDKs do, on 500 connections kept open: each
// gets its response. The hand-over from netpoll happens before the 101, so
// no client byte can be left behind in netpoll's buffer.
func TestMessageRightAfterConnectedIsAnswered(t *testing.T) {
	s := testNode(t, func(c *Config) { c.ConnectsPerIP, c.MessagesPerMinute = Off, Off })
	for i := range 500 {
		c := dial(t, s, "project=p1", nil)
		defer c.conn.Close()
		c.expect("connected")
		c.send(`{"type":"subscribe","data":[{"subscriptionId":"a","channels":["files"]}]}`)
		if m, err := c.tryRead(3 * time.Second); err != nil || m.Type != "response" {
			t.Fatalf("connection %d: subscribe sent right after connected: %s %v", i, m.Type, err)
		}
	}
}

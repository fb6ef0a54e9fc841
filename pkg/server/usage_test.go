package server

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/gobwas/ws/wsutil"
	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/usage"
)

// usageClient is a raw WebSocket client that counts, from its side, what
// the usage metrics should count for it: every byte it sent and received,
// split into payload and framing.
type usageClient struct {
	conn    net.Conn
	r       *bufio.Reader
	project string
	deflate bool

	want    usage.Counts // what the node should count for this client
	framing usage.Counts // bytes on the wire that the metrics leave out (frame headers): Inbound and Outbound only
}

// dialUsage upgrades with a request of known bytes (which the node counts
// as inbound) and reads the 101 and `connected`.
func dialUsage(t *testing.T, s *Server, project, channels string, deflate bool) *usageClient {
	t.Helper()
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := "GET /v1/realtime?project=" + project + "&" + channels + " HTTP/1.1\r\nHost: " + s.Addr().String() +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	if deflate {
		req += "Sec-WebSocket-Extensions: permessage-deflate\r\n"
	}
	req += "\r\n"
	if _, err := conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	c := &usageClient{conn: conn, r: bufio.NewReader(conn), project: project}
	c.want.Inbound += int64(len(req))
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	c.deflate = strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), deflateExtension)
	if deflate != c.deflate {
		t.Fatalf("deflate offered %v, agreed %v", deflate, c.deflate)
	}
	if typ := c.next(t); typ != "connected" {
		t.Fatalf("got %s, want connected", typ)
	}
	c.want.Connections++
	return c
}

// send sends a client message: its payload is inbound, its (masked)
// frame header is framing.
func (c *usageClient) send(t *testing.T, msg string) {
	t.Helper()
	var buf bytes.Buffer
	if err := wsutil.WriteClientText(&buf, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.conn.Write(buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	c.want.Inbound += int64(len(msg))
	c.framing.Inbound += int64(buf.Len() - len(msg))
}

// next reads one data message, counts it as the metrics should and
// returns its type. `connected` is outbound but no message sent, an error
// is neither (as in Appwrite); a response or an event is both. A
// compressed event counts its compressed bytes: what crossed the wire.
func (c *usageClient) next(t *testing.T) string {
	t.Helper()
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, err := ws.ReadHeader(c.r)
	if err != nil {
		t.Fatalf("%s: read: %v", c.project, err)
	}
	payload := make([]byte, h.Length)
	if _, err := ioReadFull(c.r, payload); err != nil {
		t.Fatal(err)
	}
	if h.OpCode != ws.OpText || !h.Fin {
		t.Fatalf("unexpected frame %+v", h)
	}
	wire := int64(len(payload))
	head := int64(ws.HeaderSize(h))
	if h.Rsv != 0 {
		f, err := wsflate.DecompressFrame(ws.Frame{Header: h, Payload: payload})
		if err != nil {
			t.Fatal(err)
		}
		payload = f.Payload
	}
	var m message
	if err := json.Unmarshal(payload, &m); err != nil {
		t.Fatalf("%q: %v", payload, err)
	}
	switch m.Type {
	case "error":
		return m.Type
	case "connected":
	default:
		c.want.Messages++
	}
	c.want.Outbound += wire
	c.framing.Outbound += head
	return m.Type
}

func ioReadFull(r *bufio.Reader, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := r.Read(b[n:])
		n += k
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Usage: 1,000 connections over two nodes on one Redis and 10 projects,
// with known traffic (pings, invalid messages, events of several sizes, to
// plain and compressing clients, published on both nodes). Each node's
// GET /v1/usage answers the cluster's sum, and its four numbers equal what
// the clients counted on their side: connections and messages exactly,
// and bytes exactly too, as the metrics count payloads (the upgrade
// request's head included); what they leave out is framing, which the
// clients also counted: 2 to 10 bytes a frame out, 6 to 14 in.
func TestUsageTwoRedisNodesMatchClients(t *testing.T) {
	rs := redistest.Start(t)
	rc := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	t.Cleanup(func() { rc.Close() })
	store, err := usage.NewRedis(usage.RedisOptions{Client: rc, Retention: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	nodes := []*Server{
		redisNode(t, rs.URL(), func(c *Config) { c.Usage = store }),
		redisNode(t, rs.URL(), func(c *Config) { c.Usage = store }),
	}
	const conns, projects = 1000, 10
	start := time.Now()
	clients := make([]*usageClient, conns)
	for i := range clients {
		channels := "channels[]=files"
		if i%3 == 0 {
			channels += "&channels[]=documents"
		}
		clients[i] = dialUsage(t, nodes[i%2], fmt.Sprintf("p%d", i%projects), channels, i%5 == 2)
	}
	// Client messages: a ping (answered: counted), an unknown type
	// (answered with an error: inbound only).
	for i, c := range clients {
		switch i % 4 {
		case 0:
			c.send(t, `{"type":"ping"}`)
			if typ := c.next(t); typ != "pong" {
				t.Fatalf("got %s, want pong", typ)
			}
		case 1:
			c.send(t, `{"type":"nope","data":{}}`)
			if typ := c.next(t); typ != "error" {
				t.Fatalf("got %s, want error", typ)
			}
		}
	}
	// Project k gets k+1 events, alternately published on the two nodes,
	// some on two channels (one frame each to a client on both), payloads
	// from 10 bytes to 1.5 KB (compressed from 256).
	events := 0
	for k := range projects {
		for e := range k + 1 {
			payload := fmt.Sprintf(`{"k":%d,"e":%d,"pad":%q}`, k, e, strings.Repeat("x", (k*131+e*97)%1500))
			publish(t, nodes[e%2], event(fmt.Sprintf("p%d", k), []string{"any"}, []string{"files", "documents"}, payload))
			events++
		}
	}
	for i, c := range clients {
		for range i%projects + 1 {
			if typ := c.next(t); typ != "event" {
				t.Fatalf("client %d: got %s, want event", i, typ)
			}
		}
	}
	want := map[string]usage.Counts{}
	var framing usage.Counts
	for _, c := range clients {
		w := want[c.project]
		w.Add(c.want)
		want[c.project] = w
		framing.Add(c.framing)
	}
	from := start.Add(-time.Minute).Unix()
	for i, n := range nodes {
		for k := range projects {
			p := fmt.Sprintf("p%d", k)
			var got usage.Report
			ok := false
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				code, body := get(t, fmt.Sprintf("http://%s/v1/usage?project=%s&from=%d", n.AdminAddr(), p, from))
				if code != http.StatusOK {
					t.Fatalf("GET /v1/usage: %d %s", code, body)
				}
				got = usage.Report{}
				if err := json.Unmarshal([]byte(body), &got); err != nil {
					t.Fatal(err)
				}
				if got.Total == want[p] {
					ok = true
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if !ok {
				t.Fatalf("node %d, %s: usage %+v, clients counted %+v", i, p, got.Total, want[p])
			}
			if got.Metrics["realtime.connections"] != want[p].Connections || got.Metrics["realtime.outbound"] != want[p].Outbound {
				t.Fatalf("metrics by Appwrite's names: %v", got.Metrics)
			}
		}
	}
	var total usage.Counts
	for _, w := range want {
		total.Add(w)
	}
	t.Logf("%d connections, %d events: clients counted %+v; framing left out: %d bytes in (%.1f a client message), %d out (%.2f a message)",
		conns, events, total, framing.Inbound, float64(framing.Inbound)/float64(conns/2), framing.Outbound,
		float64(framing.Outbound)/float64(total.Messages+conns))
}

// The router adds to its own tally, never per delivery to anything
// shared: a second's events to one project are one entry, swapped out
// whole.
func TestRouterCountsUsagePerEvent(t *testing.T) {
	s := testNode(t, nil)
	a := dial(t, s, "project=p&channels[]=files", nil)
	a.expect("connected")
	b := dial(t, s, "project=p&channels[]=files", nil)
	b.expect("connected")
	// Swap out what the router counted so far (nothing: connects are
	// counted by the meter).
	s.router.swapUsage(usage.NewTally())
	publish(t, s, event("p", []string{"any"}, []string{"files"}, `{"n":1}`))
	a.expect("event")
	b.expect("event")
	got := s.router.swapUsage(usage.NewTally())
	if got.Len() != 1 || got.Get("p").Messages != 2 || got.Get("p").Connections != 0 {
		t.Fatalf("router tally: %d projects, p %+v", got.Len(), got.Get("p"))
	}
	// Both frames are the same bytes; the count is their payloads.
	frame := got.Get("p").Outbound / 2
	if frame < 50 || frame*2 != got.Get("p").Outbound {
		t.Fatalf("outbound %d", got.Get("p").Outbound)
	}
}

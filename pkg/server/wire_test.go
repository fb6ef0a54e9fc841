package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsflate"
	"github.com/gobwas/ws/wsutil"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// testNode starts a node on loopback with the embedded broker. The
// per-IP and per-connection rate limits are off (tests that check them
// set them) and so is the drain, which would make every test's clean-up
// wait.
func testNode(t testing.TB, mod func(*Config)) *Server {
	t.Helper()
	return startTestNode(t, newTestNode(t, mod))
}

// testNodeSendBuffer is testNode with a send buffer of sendBuffer bytes
// (doubled by the kernel) on every accepted socket: see Server.sendBuffer.
func testNodeSendBuffer(t testing.TB, sendBuffer int, mod func(*Config)) *Server {
	t.Helper()
	s := newTestNode(t, mod)
	s.sendBuffer = sendBuffer
	return startTestNode(t, s)
}

// newTestNode builds, without starting, the node testNode starts.
func newTestNode(t testing.TB, mod func(*Config)) *Server {
	t.Helper()
	cfg := Config{
		Listen:            "127.0.0.1:0",
		AdminListen:       "127.0.0.1:0",
		ConnectsPerIP:     Off,
		MessagesPerMinute: Off,
		DrainTime:         Off,
		Broker:            broker.NewMemory(1024),
		Registry:          prometheus.NewRegistry(),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// startTestNode starts s and shuts it down when the test ends.
func startTestNode(t testing.TB, s *Server) *Server {
	t.Helper()
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

// offlineNode builds a node that listens nowhere: tests, fuzz targets and
// benchmarks drive its connections' read and write paths directly. Its
// waiter runs (a reply that fills a socket waits for EPOLLOUT as on a
// served node); its write pool is a channel of one that nothing drains.
func offlineNode(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	s.pool = &writePool{ch: make(chan *conn, 1)}
	if s.waiter, err = newPoller(unix.EPOLLOUT, (*conn).schedule); err != nil {
		tb.Fatal(err)
	}
	go s.waiter.run()
	tb.Cleanup(s.waiter.close)
	return s
}

// client is a WebSocket client over a real socket (gobwas's client side).
type client struct {
	t    *testing.T
	conn net.Conn
	r    io.Reader

	deflate    bool // it negotiated permessage-deflate: compressed frames are inflated (gobwas's wsflate)
	compressed int  // data frames that arrived compressed
}

// message is a server->client message as the SDK sees it.
type message struct {
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

func dial(t *testing.T, s *Server, query string, header http.Header) *client {
	t.Helper()
	c, err := tryDial(s, query, header)
	if err != nil {
		t.Fatalf("dial %s: %v", query, err)
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	return c
}

// testClientReadBuffer is the SO_RCVBUF of a test client that reads while
// the server's writes end part-way (Server.sendBuffer makes them): 128 KiB,
// 256 KiB once the kernel doubles it, a window of several loopback MSSes
// (65,483 bytes), so that a paused reader's window updates flow normally;
// and under the stock net.core.rmem_max (212,992), so that the kernel takes
// it as asked whatever tcp_rmem says. A client window below the MSS leaves
// the server's unsent bytes to the persist timer's backed-off probes: the
// stall of issue 12.
const testClientReadBuffer = 128 << 10

// dialReadBuffer dials like dial, with the client's SO_RCVBUF set to
// rcvbuf before the connect, so that the window scale and clamp the kernel
// picks at the SYN follow from it rather than from tcp_rmem.
func dialReadBuffer(t *testing.T, s *Server, query string, rcvbuf int) *client {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second, NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		nd := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, rcvbuf) })
			return errors.Join(err, serr)
		}}
		return nd.DialContext(ctx, network, addr)
	}}
	c, err := tryDialWith(d, s, query, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", query, err)
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	return c
}

func tryDial(s *Server, query string, header http.Header) (*client, error) {
	return tryDialWith(ws.Dialer{Timeout: 5 * time.Second}, s, query, header)
}

func tryDialWith(d ws.Dialer, s *Server, query string, header http.Header) (*client, error) {
	if header != nil {
		d.Header = ws.HandshakeHeaderHTTP(header)
	}
	conn, br, _, err := d.Dial(context.Background(), "ws://"+s.Addr().String()+"/v1/realtime?"+query)
	if err != nil {
		return nil, err
	}
	c := &client{conn: conn, r: conn}
	if br != nil {
		c.r = io.MultiReader(br, conn)
	}
	return c, nil
}

// read returns the next data message, failing the test on timeout or close.
func (c *client) read() message {
	c.t.Helper()
	m, err := c.tryRead(5 * time.Second)
	if err != nil {
		c.t.Fatalf("read: %v", err)
	}
	return m
}

func (c *client) tryRead(timeout time.Duration) (message, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	// Frames are read by hand rather than with wsutil, which would answer
	// the server's close frame and report a write error instead of the code.
	for {
		f, err := ws.ReadFrame(c.r)
		if err != nil {
			return message{}, err
		}
		switch f.Header.OpCode {
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(f.Payload)
			return message{}, wsutil.ClosedError{Code: code, Reason: reason}
		case ws.OpText:
			if f.Header.Rsv != 0 {
				// RFC 7692 6: RSV1 only to a client that negotiated it.
				if !c.deflate || f.Header.Rsv != ws.Rsv(true, false, false) {
					return message{}, fmt.Errorf("frame with RSV bits %03b to a client that negotiated %v", f.Header.Rsv, c.deflate)
				}
				if f, err = wsflate.DecompressFrame(f); err != nil {
					return message{}, fmt.Errorf("inflate an event: %w", err)
				}
				c.compressed++
			}
			var m message
			if err := json.Unmarshal(f.Payload, &m); err != nil {
				return message{}, fmt.Errorf("server sent invalid JSON %q: %w", f.Payload, err)
			}
			return m, nil
		case ws.OpPing, ws.OpPong:
		default:
			return message{}, fmt.Errorf("unexpected frame %+v", f.Header)
		}
	}
}

// expect reads the next message and checks its type.
func (c *client) expect(typ string) message {
	c.t.Helper()
	m := c.read()
	if m.Type != typ {
		c.t.Fatalf("got %s %s, want type %q", m.Type, m.Data, typ)
	}
	return m
}

// expectClose reads until the server closes and returns the close code.
func (c *client) expectClose() (ws.StatusCode, []message) {
	c.t.Helper()
	var got []message
	for {
		m, err := c.tryRead(5 * time.Second)
		var closed wsutil.ClosedError
		switch {
		case errors.As(err, &closed):
			return closed.Code, got
		case err != nil:
			c.t.Fatalf("waiting for close: %v (after %v)", err, got)
		}
		got = append(got, m)
	}
}

func (c *client) send(v string) {
	c.t.Helper()
	if err := wsutil.WriteClientText(c.conn, []byte(v)); err != nil {
		c.t.Fatalf("send: %v", err)
	}
}

// publish posts a backbone message to the node's admin API.
func publish(t *testing.T, s *Server, body string) {
	t.Helper()
	if code, resp := post(t, s, body, ""); code != http.StatusAccepted {
		t.Fatalf("publish: %d %s", code, resp)
	}
}

func post(t *testing.T, s *Server, body, key string) (int, string) {
	t.Helper()
	return adminRequest(t, s, "POST", "/v1/publish", body, key)
}

// adminRequest calls the node's admin API, with the API key when key is set.
func adminRequest(t *testing.T, s *Server, method, path, body, key string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+s.AdminAddr().String()+path, strings.NewReader(body))
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func event(project string, roles, channels []string, payload string) string {
	b, _ := json.Marshal(map[string]any{
		"project": project, "roles": roles, "permissionsChanged": false, "userId": nil,
		"data": map[string]any{
			"events": []string{"buckets.b1.files.f1.create"}, "channels": channels,
			"timestamp": "2026-01-01T12:00:00.000+00:00", "payload": json.RawMessage(payload),
		},
	})
	return string(b)
}

type eventData struct {
	Events        []string        `json:"events"`
	Channels      []string        `json:"channels"`
	Timestamp     string          `json:"timestamp"`
	Payload       json.RawMessage `json:"payload"`
	Subscriptions []string        `json:"subscriptions"`
}

func (c *client) expectEvent() eventData {
	c.t.Helper()
	m := c.expect("event")
	var d eventData
	if err := json.Unmarshal(m.Data, &d); err != nil {
		c.t.Fatal(err)
	}
	return d
}

// expectPayload reads the next event and checks its payload. Events reach
// a client in publish order, so a client that must NOT receive an earlier
// event proves it by receiving a later marker event first.
func (c *client) expectPayload(payload string) eventData {
	c.t.Helper()
	d := c.expectEvent()
	if !jsonEqual(d.Payload, payload) {
		c.t.Fatalf("got payload %s, want %s", d.Payload, payload)
	}
	return d
}

func jsonEqual(a json.RawMessage, b string) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal([]byte(b), &y) != nil {
		return false
	}
	xb, _ := json.Marshal(x)
	yb, _ := json.Marshal(y)
	return bytes.Equal(xb, yb)
}

package server

import (
	"bytes"
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// closeCase ends exactly one connection of a fresh node one way.
type closeCase struct {
	name   string
	mod    func(*Config)
	drive  func(t *testing.T, s *Server)
	reason string
	code   int // the close code sent; 0 when none is
}

// TestEveryWayAConnectionEnds drives each way a connection can end over a
// real socket and checks its one close record: the reason, the close code
// the client got, switchboard_connection_closes_total{reason} and the
// "connection closed" log line.
func TestEveryWayAConnectionEnds(t *testing.T) {
	cases := []closeCase{
		{name: "client close (RFC 6455 5.5.1: the code is echoed)", reason: "client_close", code: 4001,
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", nil)
				c.expect("connected")
				writeMasked(t, c, ws.NewCloseFrame(ws.NewCloseFrameBody(4001, "bye")))
				c.expectCloseCode(4001)
			}},
		{name: "reset: the peer leaves without a close frame", reason: "reset",
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", nil)
				c.expect("connected")
				c.conn.(*net.TCPConn).SetLinger(0)
				c.conn.Close()
			}},
		{name: "idle timeout", reason: "idle", code: 1001,
			mod: func(c *Config) { c.IdleTimeout = time.Second },
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", nil)
				c.expect("connected")
				c.expectCloseCode(ws.StatusGoingAway)
			}},
		{name: "handshake timeout", reason: "handshake_timeout",
			mod: func(c *Config) { c.HandshakeTimeout = time.Second },
			drive: func(t *testing.T, s *Server) {
				conn := rawConn(t, s)
				conn.Write([]byte("GET /v1/realtime?project=p1 HTTP/1.1\r\n"))
				expectEOF(t, conn)
			}},
		{name: "handshake refused (malformed request)", reason: "handshake_refused",
			drive: func(t *testing.T, s *Server) {
				conn := rawConn(t, s)
				conn.Write([]byte("NOT HTTP\r\n\r\n"))
				expectEOF(t, conn)
			}},
		{name: "protocol error: an unmasked frame (RFC 6455 5.1)", reason: "protocol_error", code: 1002,
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", nil)
				c.expect("connected")
				if err := ws.WriteFrame(c.conn, ws.NewTextFrame([]byte("hi"))); err != nil {
					t.Fatal(err)
				}
				c.expectCloseCode(ws.StatusProtocolError)
			}},
		{name: "protocol error: a close frame with a code no one may send (RFC 6455 7.4)", reason: "protocol_error", code: 1002,
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", nil)
				c.expect("connected")
				writeMasked(t, c, ws.NewCloseFrame(ws.NewCloseFrameBody(1005, "")))
				c.expectCloseCode(ws.StatusProtocolError)
			}},
		{name: "text that is not UTF-8 (RFC 6455 8.1)", reason: "invalid_payload", code: 1007,
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", nil)
				c.expect("connected")
				writeMasked(t, c, ws.NewTextFrame([]byte{'"', 0xff, '"'}))
				c.expectCloseCode(ws.StatusInvalidFramePayloadData)
			}},
		{name: "message too big", reason: "too_big", code: 1009,
			mod: func(c *Config) { c.MaxMessageSize = 1024 },
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", nil)
				c.expect("connected")
				writeMasked(t, c, ws.NewTextFrame(bytes.Repeat([]byte("x"), 2048)))
				c.expectCloseCode(ws.StatusMessageTooBig)
			}},
		{name: "connect rate limit (the first connection stays)", reason: "rate_limited", code: 1013,
			mod: func(c *Config) { c.ConnectsPerIP = 1 },
			drive: func(t *testing.T, s *Server) {
				first := dial(t, s, "project=p1&channels[]=files", nil)
				first.expect("connected")
				second := dial(t, s, "project=p1&channels[]=files", nil)
				second.expect("error")
				second.expectCloseCode(statusTryAgainLater)
			}},
		{name: "policy: no project", reason: "policy", code: 1008,
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "channels[]=files", nil)
				c.expect("error")
				c.expectCloseCode(ws.StatusPolicyViolation)
			}},
		{name: "auth failure: an invalid JWT", reason: "auth_failed", code: 1008,
			mod: func(c *Config) { c.Resolver = mustJWT(t) },
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files&jwt=not.a.jwt", nil)
				c.expect("error")
				c.expectCloseCode(ws.StatusPolicyViolation)
			}},
		{name: "auth unavailable: the backend fails", reason: "auth_unavailable", code: 1008,
			mod: func(c *Config) {
				backend := &mutableBackend{roles: map[string][]string{}}
				c.Resolver = newHTTPResolver(t, backend.start(t))
			},
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", http.Header{"X-Appwrite-Session": {"down"}})
				c.expect("error")
				c.expectCloseCode(ws.StatusPolicyViolation)
			}},
		{name: "internal error: a handler panics", reason: "internal_error", code: 1011,
			mod: func(c *Config) { c.Resolver = panicResolver{} },
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", nil)
				c.expectCloseCode(ws.StatusInternalServerError)
			}},
		{name: "slow consumer", reason: "slow_consumer", code: 1008,
			mod: func(c *Config) { c.MaxQueueBytes = 64 << 10 },
			drive: func(t *testing.T, s *Server) {
				c := dialReadBuffer(t, s, "project=p1&channels[]=files", 4096)
				c.expect("connected")
				big := `{"blob":"` + strings.Repeat("x", 16<<10) + `"}`
				// The client reads nothing more: its buffers and the
				// server's fill, then the queue goes over its limit.
				for range 200 {
					publish(t, s, event("p1", []string{"any"}, []string{"files"}, big))
					if counterValue(t, s, "switchboard_slow_consumer_closes_total") > 0 {
						return
					}
				}
				t.Fatal("never cut as a slow consumer")
			}},
		{name: "shutdown (drain)", reason: "shutdown", code: 1001,
			drive: func(t *testing.T, s *Server) {
				c := dial(t, s, "project=p1&channels[]=files", nil)
				c.expect("connected")
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if err := s.Shutdown(ctx); err != nil {
					t.Fatal(err)
				}
				c.expectCloseCode(ws.StatusGoingAway)
			}},
		heldTooLongCase(t),
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.DebugLevel)
			s := testNodeSendBuffer(t, 4096, func(c *Config) {
				c.Logger = zap.New(core)
				if tc.mod != nil {
					tc.mod(c)
				}
			})
			tc.drive(t, s)
			entry := awaitCloseRecord(t, logs)
			fields := entry.ContextMap()
			if fields["reason"] != tc.reason || fields["code"] != uint16(tc.code) {
				t.Fatalf("close record: reason %v, code %v; want %s, %d (%v)", fields["reason"], fields["code"], tc.reason, tc.code, fields)
			}
			for _, k := range []string{"conn", "lifetime", "bytes_in", "bytes_out", "messages_in", "frames_out"} {
				if _, ok := fields[k]; !ok {
					t.Errorf("close record has no %s: %v", k, fields)
				}
			}
			if got := closesByReason(t, s); len(got) != 1 || got[tc.reason] != 1 {
				t.Fatalf("switchboard_connection_closes_total = %v, want only %s: 1", got, tc.reason)
			}
			if n := logs.FilterMessage("connection closed").Len(); n != 1 {
				t.Fatalf("%d close records, want 1", n)
			}
		})
	}
}

// TestReauthenticationAsSomeoneElseKeepsTheConnection: signing in as
// another user on an open connection (an authentication message, as
// Appwrite's Authentication handler allows) is no way to end it: no close
// is counted, and it goes on receiving what the new user may read.
func TestReauthenticationAsSomeoneElseKeepsTheConnection(t *testing.T) {
	backend := &mutableBackend{roles: map[string][]string{}}
	backend.set("u1", "user:u1")
	backend.set("u2", "user:u2")
	s := testNode(t, func(c *Config) { c.Resolver = newHTTPResolver(t, backend.start(t)) })
	c := dial(t, s, "project=p1&channels[]=files", http.Header{"X-Appwrite-Session": {"s-u1"}})
	c.expect("connected")
	c.send(`{"type":"authentication","data":{"session":"s-u2"}}`)
	c.expect("response")
	publish(t, s, event("p1", []string{"user:u2"}, []string{"files"}, `{"to":"u2"}`))
	c.expectPayload(`{"to":"u2"}`)
	if got := closesByReason(t, s); len(got) != 0 {
		t.Fatalf("closes = %v, want none", got)
	}
}

// TestCloseRecordCountsTheConnectionsTraffic: the record's counters are
// the connection's own: its messages and bytes each way.
func TestCloseRecordCountsTheConnectionsTraffic(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	s := testNode(t, func(c *Config) { c.Logger = zap.New(core) })
	c := dial(t, s, "project=p1&channels[]=files", nil)
	c.expect("connected")
	for range 3 {
		c.send(`{"type":"ping"}`)
		c.expect("pong")
	}
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"n":1}`))
	c.expect("event")
	writeMasked(t, c, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "")))
	c.expectCloseCode(ws.StatusNormalClosure)
	f := awaitCloseRecord(t, logs).ContextMap()
	// The 101, connected, 3 pongs, the event and the close frame.
	if f["messages_in"] != uint32(3) || f["frames_out"] != uint32(7) || f["project"] != "p1" {
		t.Fatalf("record %v: want 3 messages in, 7 frames out, project p1", f)
	}
	in, out := f["bytes_in"].(uint64), f["bytes_out"].(uint64)
	// In: the upgrade request, 3 pings of 6+15 bytes and a close of 8.
	// Out: the 101, connected, pongs, event and close.
	if in < 3*21+8+100 || in > 1000 || out < 200 || out > 2000 {
		t.Fatalf("record %v: bytes in %d, out %d out of range", f, in, out)
	}
}

// TestCloseFramesComeFromTheReasons: every close frame the node writes is
// built by closereason.go, from a closeReason; nowhere else in the package
// may build one, so what a client is told and what is counted agree.
func TestCloseFramesComeFromTheReasons(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") || name == "closereason.go" {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CallExpr:
				switch fn := n.Fun.(type) {
				case *ast.Ident:
					if fn.Name == "closeFrame" {
						t.Errorf("%s: a close frame built outside closereason.go", fset.Position(n.Pos()))
					}
				case *ast.SelectorExpr:
					if x, ok := fn.X.(*ast.Ident); ok && x.Name == "ws" && strings.HasPrefix(fn.Sel.Name, "NewCloseFrame") {
						t.Errorf("%s: ws.%s outside closereason.go", fset.Position(n.Pos()), fn.Sel.Name)
					}
				}
				// A frame compiled with OpClose is a close frame too.
				for _, a := range n.Args {
					if sel, ok := a.(*ast.SelectorExpr); ok && sel.Sel.Name == "OpClose" {
						t.Errorf("%s: a close frame built outside closereason.go", fset.Position(n.Pos()))
					}
				}
			}
			return true
		})
	}
}

// TestCloseFrameReasonStaysUTF8: a long reason is cut to the control frame
// limit (RFC 6455 5.5: 125 bytes of payload) at a character boundary,
// since the reason must be UTF-8 (5.5.1). Appwrite's texts quote the
// client's origin, which may be any host name.
func TestCloseFrameReasonStaysUTF8(t *testing.T) {
	f := closePolicy.frame(0, "Invalid Origin. Register your new client ("+strings.Repeat("é", 100)+")")
	h, n, ok := parseFrameHeader(f)
	if !ok || h.Length > 125 {
		t.Fatalf("header %+v", h)
	}
	code, reason := ws.ParseCloseFrameData(f[n:])
	if code != ws.StatusPolicyViolation || !utf8.ValidString(reason) {
		t.Fatalf("code %d, reason %q (valid UTF-8: %v)", code, reason, utf8.ValidString(reason))
	}
}

// heldTooLongCase: a user whose roles are being re-resolved while more
// than maxHeldEvents of the project's events arrive is closed with 1013.
func heldTooLongCase(t *testing.T) closeCase {
	gate := make(chan struct{})
	var once sync.Once
	mem := broker.NewMemory(4096)
	return closeCase{name: "held too long: a permission change outlasted by the project's events", reason: "held_too_long", code: 1013,
		mod: func(c *Config) {
			backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if !strings.Contains(readAll(r), `"session"`) {
					<-gate // a re-resolution waits for the events
				}
				w.Write([]byte(`{"userId":"u1","roles":["user:u1"]}`))
			}))
			t.Cleanup(backend.Close)
			t.Cleanup(func() { once.Do(func() { close(gate) }) })
			c.Broker = mem
			c.Resolver = newHTTPResolver(t, backend.URL)
			c.AuthTimeout = 10 * time.Second
		},
		drive: func(t *testing.T, s *Server) {
			c := dial(t, s, "project=p1&channels[]=files", http.Header{"X-Appwrite-Session": {"s-u1"}})
			c.expect("connected")
			ctx := context.Background()
			if err := mem.Publish(ctx, []byte(permissionChange("p1", "u1", []string{"user:u1"}, []string{"files"}, `{}`))); err != nil {
				t.Fatal(err)
			}
			// Past the cap with room to spare: backlog 0 leaves at most
			// the last event still being routed.
			for i := range maxHeldEvents + 10 {
				if err := mem.Publish(ctx, []byte(event("p1", []string{"team:x"}, []string{"other"}, `{}`))); err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
			}
			// Every event went through the router before the answer.
			for mem.Backlog() > 0 {
				time.Sleep(time.Millisecond)
			}
			once.Do(func() { close(gate) })
			c.expectCloseCode(statusTryAgainLater)
		}}
}

type panicResolver struct{}

func (panicResolver) Resolve(context.Context, auth.Credentials) (auth.Identity, error) {
	panic("resolver bug")
}

func mustJWT(t *testing.T) auth.Resolver {
	r, err := auth.NewJWT([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func readAll(r *http.Request) string {
	var b bytes.Buffer
	_, _ = b.ReadFrom(r.Body)
	return b.String()
}

func writeMasked(t *testing.T, c *client, f ws.Frame) {
	t.Helper()
	if err := ws.WriteFrame(c.conn, ws.MaskFrameInPlace(f)); err != nil {
		t.Fatal(err)
	}
}

// expectCloseCode reads until the server's close frame and checks its code.
func (c *client) expectCloseCode(want ws.StatusCode) {
	c.t.Helper()
	if code, _ := c.expectClose(); code != want {
		c.t.Fatalf("close code %d, want %d", code, want)
	}
}

func rawConn(t *testing.T, s *Server) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// expectEOF reads until the server closes conn.
func expectEOF(t *testing.T, conn net.Conn) {
	t.Helper()
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	for {
		if _, err := conn.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("the server did not close the connection")
			}
			return
		}
	}
}

// awaitCloseRecord waits for the node's one "connection closed" line: it
// is written when the connection is released, just after its last frame.
func awaitCloseRecord(t *testing.T, logs *observer.ObservedLogs) observer.LoggedEntry {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if got := logs.FilterMessage("connection closed").All(); len(got) > 0 {
			return got[0]
		}
		if time.Now().After(deadline) {
			t.Fatal("no connection closed record")
		}
		time.Sleep(time.Millisecond)
	}
}

// closesByReason is switchboard_connection_closes_total's non-zero series.
func closesByReason(t *testing.T, s *Server) map[string]float64 {
	t.Helper()
	mfs, err := s.cfg.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "switchboard_connection_closes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				out[m.GetLabel()[0].GetValue()] = v
			}
		}
	}
	return out
}

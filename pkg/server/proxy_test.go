package server

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// Tests of the client address behind a load balancer: the PROXY protocol
// header, and (forwarded_test.go) X-Forwarded-For.

// proxyV1 is a version 1 PROXY line from client src.
func proxyV1(src string) []byte {
	a := netip.MustParseAddr(src)
	proto := "TCP4"
	if a.Is6() {
		proto = "TCP6"
	}
	dst := "127.0.0.1"
	if a.Is6() {
		dst = "::1"
	}
	return []byte("PROXY " + proto + " " + src + " " + dst + " 40000 9505\r\n")
}

// proxyV2 is a version 2 PROXY header from client src (TCP over IPv4 or
// IPv6), with one NOOP TLV as HAProxy may pad.
func proxyV2(src string) []byte {
	a := netip.MustParseAddr(src)
	b := []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x00")
	if a.Is4() {
		s := a.As4()
		b = append(append(b, s[:]...), 127, 0, 0, 1)
	} else {
		b[13] = 0x21
		s, d := a.As16(), netip.IPv6Loopback().As16()
		b = append(append(b, s[:]...), d[:]...)
	}
	b = append(b, 0x9c, 0x40, 0x25, 0x21) // ports 40000, 9505
	b = append(b, 0x04, 0x00, 0x01, 0x00) // PP2_TYPE_NOOP, one byte
	binary.BigEndian.PutUint16(b[14:], uint16(len(b)-16))
	return b
}

// proxyV2Local is a version 2 LOCAL header: the balancer's own connection.
func proxyV2Local() []byte { return []byte("\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00") }

// dialFrom dials s from local (an IP; "" for any) and writes prefix before
// the upgrade request, as a balancer puts its PROXY header first.
func dialFrom(t *testing.T, s *Server, local string, prefix []byte, header http.Header) (*client, error) {
	t.Helper()
	d := ws.Dialer{Timeout: 5 * time.Second, NetDial: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var nd net.Dialer
		if local != "" {
			nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
		}
		conn, err := nd.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if len(prefix) > 0 {
			if _, err := conn.Write(prefix); err != nil {
				conn.Close()
				return nil, err
			}
		}
		return conn, nil
	}}
	c, err := tryDialWith(d, s, "project=p1", header)
	if err != nil {
		return nil, err
	}
	c.t = t
	t.Cleanup(func() { c.conn.Close() })
	return c, nil
}

// mustConnect dials and expects `connected`.
func mustConnect(t *testing.T, s *Server, local string, prefix []byte, header http.Header) *client {
	t.Helper()
	c, err := dialFrom(t, s, local, prefix, header)
	if err != nil {
		t.Fatalf("dial from %q with %q: %v", local, prefix, err)
	}
	c.expect("connected")
	return c
}

// mustBeLimited dials and expects error 1013 then close 1013.
func mustBeLimited(t *testing.T, s *Server, local string, prefix []byte, header http.Header) {
	t.Helper()
	c, err := dialFrom(t, s, local, prefix, header)
	if err != nil {
		t.Fatalf("dial from %q with %q: %v", local, prefix, err)
	}
	code, msgs := c.expectClose()
	if code != statusTryAgainLater || len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), `"code":1013`) {
		t.Fatalf("over the limit from %q with %q: close %d after %v, want error 1013 and close 1013", local, prefix, code, msgs)
	}
}

// mustBeRefused sends prefix and an upgrade request from local in one
// write (so the node has read everything when it closes, and closes with a
// FIN, not a reset that could overtake its answer) and expects the HTTP
// status.
func mustBeRefused(t *testing.T, s *Server, local string, prefix []byte, status int) {
	t.Helper()
	var nd net.Dialer
	if local != "" {
		nd.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	conn, err := nd.Dial("tcp", s.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.Write(append(append([]byte(nil), prefix...), upgradeRequest...)); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := io.ReadAll(conn)
	if want := "HTTP/1.1 " + strconv.Itoa(status) + " "; !strings.HasPrefix(string(resp), want) {
		t.Fatalf("from %q with %q: %q (%v), want %s", local, prefix, resp, err, want)
	}
}

// observedNode is a node whose debug log the test can read.
func observedNode(t *testing.T, mod func(*Config)) (*Server, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	s := testNode(t, func(c *Config) {
		c.Logger = zap.New(core)
		mod(c)
	})
	return s, logs
}

// clientsLogged returns the client field of every log line with message
// msg, in order.
func clientsLogged(logs *observer.ObservedLogs, msg string) []string {
	var out []string
	for _, e := range logs.FilterMessage(msg).All() {
		if v, ok := e.ContextMap()["client"]; ok {
			out = append(out, v.(string))
		}
	}
	return out
}

func TestProxyProtocolGivesTheClientAddress(t *testing.T) {
	s, logs := observedNode(t, func(c *Config) {
		c.ProxyProtocol = true
		c.ConnectsPerIP = 2
	})
	// Every connection comes from 127.0.0.1, as through one balancer; the
	// limit counts the clients the headers name.
	mustConnect(t, s, "", proxyV1("192.0.2.1"), nil)
	mustConnect(t, s, "", proxyV2("192.0.2.1"), nil)
	mustBeLimited(t, s, "", proxyV1("192.0.2.1"), nil)
	mustConnect(t, s, "", proxyV2("192.0.2.2"), nil)
	mustConnect(t, s, "", proxyV1("2001:db8::1"), nil)
	mustConnect(t, s, "", proxyV2("::ffff:192.0.2.3"), nil) // IPv4-mapped: counted as 192.0.2.3
	mustConnect(t, s, "", proxyV1("192.0.2.3"), nil)
	mustBeLimited(t, s, "", proxyV2("192.0.2.3"), nil)
	// LOCAL (the balancer's own connection) counts the balancer.
	mustConnect(t, s, "", proxyV2Local(), nil)

	want := []string{"192.0.2.1", "192.0.2.1", "192.0.2.2", "2001:db8::1", "192.0.2.3", "192.0.2.3", "127.0.0.1"}
	if got := clientsLogged(logs, "connection opened"); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("connections logged from %v, want %v", got, want)
	}
	if got := clientsLogged(logs, "connect limit reached"); strings.Join(got, " ") != "192.0.2.1 192.0.2.3" {
		t.Fatalf("limit logged for %v", got)
	}
	for _, e := range logs.FilterMessage("connection opened").All() {
		if e.ContextMap()["client"] != "127.0.0.1" && e.ContextMap()["peer"] != "127.0.0.1" {
			t.Fatalf("log line %v does not name the balancer as the peer", e.ContextMap())
		}
	}
}

func TestIPv6ClientsAreCountedPer64(t *testing.T) {
	s, logs := observedNode(t, func(c *Config) {
		c.ProxyProtocol = true
		c.ConnectsPerIP = 1
	})
	mustConnect(t, s, "", proxyV1("2001:db8:1:2::1"), nil)
	mustBeLimited(t, s, "", proxyV2("2001:db8:1:2:a:b:c:d"), nil) // the same /64
	mustConnect(t, s, "", proxyV2("2001:db8:1:3::1"), nil)
	// The log names the address; only the count is per /64.
	if got := clientsLogged(logs, "connect limit reached"); strings.Join(got, " ") != "2001:db8:1:2:a:b:c:d" {
		t.Fatalf("limit logged for %v", got)
	}
}

func TestProxyProtocolRefusesConnectionsWithoutAValidHeader(t *testing.T) {
	s := testNode(t, func(c *Config) { c.ProxyProtocol = true })
	mustBeRefused(t, s, "", nil, http.StatusBadRequest) // a plain upgrade
	mustBeRefused(t, s, "", []byte("PROXY TCP4 192.0.2.01 127.0.0.1 1 2\r\n"), http.StatusBadRequest)
	mustBeRefused(t, s, "", []byte("PROXY TCP4 192.0.2.1 127.0.0.1 1 2\n"), http.StatusBadRequest)
	mustBeRefused(t, s, "", []byte("\r\n\r\n\x00\r\nQUIT\n\x31\x11\x00\x0c"), http.StatusBadRequest)
	// A v2 header that announces more than a request head may hold is
	// refused before the rest arrives.
	mustBeRefused(t, s, "", []byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"), http.StatusRequestHeaderFieldsTooLarge)
	if got := counterValue(t, s, "switchboard_protocol_errors_total"); got != 5 {
		t.Fatalf("protocol errors = %v, want 5", got)
	}
	mustConnect(t, s, "", proxyV1("192.0.2.1"), nil)
}

func TestProxyProtocolOnlyFromTrustedProxies(t *testing.T) {
	s, logs := observedNode(t, func(c *Config) {
		c.ProxyProtocol = true
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("::ffff:127.0.0.4/127")}
		c.ConnectsPerIP = 1
	})
	mustConnect(t, s, "127.0.0.1", proxyV2("192.0.2.1"), nil)
	mustConnect(t, s, "127.0.0.5", proxyV2("192.0.2.2"), nil) // in ::ffff:127.0.0.4/127
	// Anyone else is refused, forged header or none, whatever it claims.
	mustBeRefused(t, s, "127.0.0.2", proxyV1("192.0.2.9"), http.StatusForbidden)
	mustBeRefused(t, s, "127.0.0.2", proxyV2("192.0.2.10"), http.StatusForbidden)
	mustBeRefused(t, s, "127.0.0.2", nil, http.StatusForbidden)
	if got := clientsLogged(logs, "connection opened"); strings.Join(got, " ") != "192.0.2.1 192.0.2.2" {
		t.Fatalf("connections logged from %v", got)
	}
}

func TestNodeWithoutProxyProtocolRefusesAPROXYHeader(t *testing.T) {
	// A forged header on a node that does not expect one is not HTTP:
	// it changes nothing and the connection is refused.
	s, logs := observedNode(t, func(c *Config) { c.ConnectsPerIP = 1 })
	mustBeRefused(t, s, "127.0.0.2", proxyV1("192.0.2.9"), http.StatusBadRequest)
	mustBeRefused(t, s, "127.0.0.2", proxyV2("192.0.2.9"), http.StatusBadRequest)
	mustConnect(t, s, "127.0.0.2", nil, nil)
	mustBeLimited(t, s, "127.0.0.2", nil, nil)
	if got := clientsLogged(logs, "connection opened"); strings.Join(got, " ") != "127.0.0.2" {
		t.Fatalf("connections logged from %v", got)
	}
}

func TestHalfAPROXYHeaderIsClosedByTheHandshakeTimeout(t *testing.T) {
	s := testNode(t, func(c *Config) {
		c.ProxyProtocol = true
		c.HandshakeTimeout = time.Second
	})
	var conns []net.Conn
	for _, part := range [][]byte{proxyV1("192.0.2.1")[:12], proxyV2("192.0.2.1")[:10], proxyV2("192.0.2.1")[:20]} {
		c, err := net.Dial("tcp", s.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write(part); err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	start := time.Now()
	for i, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); !errors.Is(err, io.EOF) {
			t.Fatalf("connection %d with half a header: %v after %v, want closed", i, err, time.Since(start))
		}
	}
	if got := counterValue(t, s, "switchboard_handshake_timeouts_total"); got != 3 {
		t.Fatalf("handshake timeouts = %v, want 3", got)
	}
}

// TestProxyHeaderInPieces feeds a header and request split at every byte
// boundary into one connection's read path, as TCP may deliver them: the
// header is only taken when whole, and the client is the header's.
func TestProxyHeaderInPieces(t *testing.T) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devnull.Close()
	core, logs := observer.New(zapcore.DebugLevel)
	s := offlineNode(t, Config{Broker: broker.NewMemory(1), ProxyProtocol: true, ConnectsPerIP: Off, Logger: zap.New(core)})
	for _, tc := range []struct {
		hdr  []byte
		want string
	}{{proxyV1("192.0.2.1"), "192.0.2.1"}, {proxyV2("2001:db8::1"), "2001:db8::1"}} {
		in := append(append([]byte(nil), tc.hdr...), upgradeRequest...)
		for split := 1; split < len(in); split++ {
			nc := &fakeNC{}
			c := &conn{Context: context.Background(), srv: s, nc: nc, fd: int(devnull.Fd())}
			c.id = s.idx.Insert(c)
			c.feed(append([]byte(nil), in[:split]...))
			if c.upgraded || nc.closed {
				t.Fatalf("%q split at %d: upgraded %v closed %v after the first piece", in, split, c.upgraded, nc.closed)
			}
			c.feed(append([]byte(nil), in[split:]...))
			if !c.upgraded || nc.closed {
				t.Fatalf("%q split at %d: upgraded %v closed %v", in, split, c.upgraded, nc.closed)
			}
			c.onClosed(nil)
		}
		got := clientsLogged(logs, "connection opened")
		if len(got) != len(in)-1 || strings.Count(strings.Join(got, " ")+" ", tc.want+" ") != len(got) {
			t.Fatalf("connections logged from %v; want %d from %s", got, len(in)-1, tc.want)
		}
		logs.TakeAll()
	}
}

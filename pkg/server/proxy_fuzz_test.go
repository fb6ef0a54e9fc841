package server

import (
	"bytes"
	"context"
	"errors"
	"net/netip"
	"syscall"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/proxyproto"
)

// FuzzUpgradeProxy runs arbitrary bytes through the upgrade of a node with
// --proxy-protocol, as FuzzUpgrade does without it. Besides answering
// every input exactly once (101, a refusal, or waiting for more bytes
// while they still fit), a connection is counted as the header's client
// whenever that client is not a trusted proxy: whatever the request says
// in X-Forwarded-For or X-Real-IP.
func FuzzUpgradeProxy(f *testing.F) {
	xff := bytes.Replace([]byte(upgradeRequest), []byte("Host: x\r\n"), []byte("Host: x\r\nX-Forwarded-For: 6.6.6.6, 198.51.100.1\r\nX-Real-IP: 7.7.7.7\r\n"), 1)
	for _, hdr := range [][]byte{proxyV1("192.0.2.1"), proxyV2("192.0.2.1"), proxyV1("198.51.100.7"), proxyV2("2001:db8::1"), proxyV2Local(), []byte("PROXY UNKNOWN\r\n")} {
		f.Add(append(append([]byte(nil), hdr...), upgradeRequest...))
		f.Add(append(append([]byte(nil), hdr...), xff...))
	}
	f.Add([]byte(upgradeRequest))
	f.Add(proxyV2("192.0.2.1")[:20])
	f.Add([]byte("\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff"))

	core, logs := observer.New(zapcore.DebugLevel)
	// fakeNC's peer is 127.0.0.9; 198.51.100.0/24 stands for a trusted
	// HTTP proxy behind the balancer.
	trusted := []netip.Prefix{netip.MustParsePrefix("127.0.0.9/32"), netip.MustParsePrefix("198.51.100.0/24")}
	s := offlineNode(f, Config{Broker: broker.NewMemory(1), MaxHeaderBytes: 2048, ProxyProtocol: true, TrustedProxies: trusted, ConnectsPerIP: Off, Logger: zap.New(core)})
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		f.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	reply := make([]byte, 64<<10)

	f.Fuzz(func(t *testing.T, in []byte) {
		logs.TakeAll()
		nc := &fakeNC{}
		c := &conn{Context: context.Background(), srv: s, nc: nc, fd: fds[0]}
		c.id = s.idx.Insert(c)
		defer c.onClosed(nil)

		hdr, hn, perr := proxyproto.Parse(in)
		used := c.upgrade(append([]byte(nil), in...))
		n, err := syscall.Read(fds[1], reply)
		if err != nil && !errors.Is(err, syscall.EAGAIN) {
			t.Fatal(err)
		}
		out := reply[:max(n, 0)]
		for n > 0 {
			if n, _ = syscall.Read(fds[1], reply); n <= 0 {
				break
			}
		}
		switch {
		case c.upgraded:
			end := bytes.Index(in[hn:], crlfcrlf)
			if perr != nil || end < 0 || used != hn+end+4 || !bytes.HasPrefix(out, []byte("HTTP/1.1 101 ")) {
				t.Fatalf("upgraded using %d bytes (header %d, %v; head end %d), answered %q", used, hn, perr, end, out)
			}
			opened := logs.FilterMessage("connection opened").All()
			limited := logs.FilterMessage("connect limit reached").All()
			if len(opened)+len(limited) > 1 {
				t.Fatalf("%d connections logged for one", len(opened)+len(limited))
			}
			if len(opened) == 1 && hdr.Source.IsValid() && !s.trusted.contains(hdr.Source.Addr().Unmap()) {
				if got, want := opened[0].ContextMap()["client"], hdr.Source.Addr().Unmap().String(); got != want {
					t.Fatalf("header names untrusted client %s; counted as %v", want, got)
				}
			}
		case c.readClosed:
			if used != len(in) || !nc.closed || !(bytes.HasPrefix(out, []byte("HTTP/1.1 4")) || bytes.HasPrefix(out, []byte("HTTP/1.1 5"))) {
				t.Fatalf("refused using %d of %d bytes, closed %v, answered %q", used, len(in), nc.closed, out)
			}
		default:
			// Waiting: for the rest of the header, or of a head that fits.
			waiting := perr == proxyproto.ErrIncomplete ||
				(perr == nil && bytes.Index(in[hn:], crlfcrlf) < 0 && len(in)-hn <= s.cfg.MaxHeaderBytes)
			if used != 0 || len(out) != 0 || !waiting {
				t.Fatalf("neither upgraded nor refused: used %d, header %d %v, reply %q", used, hn, perr, out)
			}
		}
	})
}

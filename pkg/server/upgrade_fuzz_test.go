package server

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"strings"
	"syscall"
	"testing"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// sdkUpgradeRequest is the upgrade request of the Appwrite web SDK (as a
// browser sends it), with a session cookie and the fallback-cookies header.
const sdkUpgradeRequest = "GET /v1/realtime?project=6561b6f7a1b2c3d4e5f6&channels%5B%5D=account&channels%5B%5D=databases.db1.collections.c1.documents HTTP/1.1\r\n" +
	"Host: cloud.example.com\r\nConnection: Upgrade\r\nPragma: no-cache\r\nCache-Control: no-cache\r\n" +
	"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36\r\n" +
	"Upgrade: websocket\r\nOrigin: https://app.example.com\r\nSec-WebSocket-Version: 13\r\n" +
	"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n" +
	"Cookie: a_session_6561b6f7a1b2c3d4e5f6=eyJpZCI6IjEyMyIsInNlY3JldCI6ImFiYyJ9; a_session_6561b6f7a1b2c3d4e5f6_legacy=old\r\n" +
	"X-Fallback-Cookies: {\"a_session_6561b6f7a1b2c3d4e5f6\":\"fb\"}\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
	"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"

// FuzzUpgrade drives the HTTP upgrade (request line, headers, the
// Appwrite handshake behind it) with an arbitrary request head. Whatever
// the bytes, the server either upgrades (and answers 101) or answers an
// HTTP error and stops reading; it never uses bytes past the head, and the
// reply goes to a real socket so what the client would read is checked.
func FuzzUpgrade(f *testing.F) {
	f.Add([]byte(upgradeRequest))
	f.Add([]byte(sdkUpgradeRequest))
	f.Add([]byte("GET /v1/realtime?project=p1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nX-Appwrite-Project: p2\r\nX-Appwrite-JWT: a.b.c\r\n\r\n"))
	f.Add([]byte("GET /v1/realtime?project=p1&channels[]=files&files[0][]=%7B%22method%22%3A%22select%22%2C%22values%22%3A%5B%22*%22%5D%7D HTTP/1.1\r\n" +
		"Host: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" +
		"X-Appwrite-Session: s1\r\nCookie: a=1\r\nCookie: a_session_p1=%zz\r\n\r\n"))
	// RFC 7692 offers: accepted, declined, several, malformed.
	f.Add([]byte(upgradeRequestDeflate))
	f.Add([]byte(strings.Replace(upgradeRequest, "\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=9, permessage-deflate; client_max_window_bits=15; server_no_context_takeover\r\n"+
		"Sec-WebSocket-Extensions: x-webkit-deflate-frame, permessage-deflate; client_max_window_bits=\"10\"; foo\r\n\r\n", 1)))
	f.Add([]byte("GET /v1/realtime HTTP/1.0\r\n\r\n"))
	f.Add([]byte("POST /v1/realtime?project=p1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"))
	f.Add([]byte("GET /elsewhere HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"))
	f.Add([]byte("GET /v1/realtime?project=p1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: short\r\n\r\n"))
	f.Add([]byte("GET /v1/realtime?project=p1 HTTP/1.1\r\n Folded: header\r\n\tcontinued\r\nUpgrade: websocket\r\n\r\n"))
	f.Add([]byte("GET /v1/realtime?project=p1 HTTP/1.1\nHost: x\nUpgrade: websocket\n\r\n\r\n"))
	f.Add([]byte(strings.Replace(upgradeRequest, "Host: x\r\n", "Host: x\r\nOrigin: https://evil.example.org.attacker.com\r\n", 1)))
	f.Add([]byte(strings.Replace(upgradeRequest, "Host: x\r\n", "Host: x\r\nOrigin: HTTPS://A.B.EXAMPLE.ORG/\r\n", 1)))
	f.Add([]byte("\r\n\r\n"))
	f.Add([]byte("GET  HTTP/1.1\r\n:\r\n\r\n"))

	// Allowed origins are configured so the Origin header's matching is
	// fuzzed too.
	s := offlineNode(f, Config{Broker: broker.NewMemory(1), MaxMessageSize: 4096, MaxHeaderBytes: 2048,
		AllowedOrigins: []string{"https://app.example.com", "*.example.org", "localhost:5173"}, ConnectsPerIP: Off, MessagesPerMinute: Off})
	// The server writes into one end of a socket pair; the test reads the
	// other, as the client would.
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		f.Fatal(err)
	}
	defer syscall.Close(fds[0])
	defer syscall.Close(fds[1])
	reply := make([]byte, 64<<10)

	f.Fuzz(func(t *testing.T, head []byte) {
		nc := &fakeNC{}
		c := &conn{Context: context.Background(), srv: s, nc: nc, fd: fds[0]}
		c.id = s.idx.Insert(c)
		// The close callback undoes what the handshake registered (user,
		// project, open count), as netpoll's would.
		defer c.onClosed(nil)

		data := append([]byte(nil), head...)
		used := c.upgrade(data)
		n, err := syscall.Read(fds[1], reply)
		if err != nil && !errors.Is(err, syscall.EAGAIN) {
			t.Fatal(err)
		}
		out := reply[:max(n, 0)]
		end := bytes.Index(head, crlfcrlf)
		switch {
		case c.upgraded:
			if end < 0 || used != end+4 {
				t.Fatalf("upgraded using %d bytes; head ends at %d", used, end)
			}
			if !bytes.HasPrefix(out, []byte("HTTP/1.1 101 ")) {
				t.Fatalf("upgraded but answered %q", out)
			}
		case c.readClosed:
			if used != len(data) {
				t.Fatalf("rejected but used %d of %d bytes", used, len(data))
			}
			if !nc.closed {
				t.Fatal("rejected without closing")
			}
			if !bytes.HasPrefix(out, []byte("HTTP/1.1 4")) && !bytes.HasPrefix(out, []byte("HTTP/1.1 5")) {
				t.Fatalf("rejected with %q", out)
			}
		default:
			// Waiting for the rest of the head: only when there is no
			// complete head yet, and it still fits.
			if used != 0 || end >= 0 || len(data) > s.cfg.MaxHeaderBytes || len(out) != 0 {
				t.Fatalf("neither upgraded nor rejected: used %d, head end %d, len %d, reply %q", used, end, len(data), out)
			}
		}
		if c.upgraded && !bytes.Contains(out, []byte(`"type":"connected"`)) && !bytes.Contains(out, []byte(`"type":"error"`)) {
			t.Fatalf("upgraded connection got neither connected nor error: %q", out)
		}
		if c.upgraded && c.readClosed && !nc.closed {
			t.Fatal("upgrade failed the Appwrite handshake without closing")
		}
		if c.readClosed && !c.upgraded && bytes.Contains(out, []byte(http.StatusText(http.StatusSwitchingProtocols))) {
			t.Fatalf("rejected after a 101: %q", out)
		}
		// Drain whatever is left so the next input starts clean.
		for n > 0 {
			if n, _ = syscall.Read(fds[1], reply); n <= 0 {
				break
			}
		}
	})
}

package server

import (
	"bytes"
	"context"
	"net"
	"os"
	"strings"
	"testing"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// fakeNC stands in for netpoll's connection where the read path only ever
// closes it.
type fakeNC struct {
	netpoll.Connection
	closed bool
}

func (f *fakeNC) Close() error { f.closed = true; return nil }

func (f *fakeNC) RemoteAddr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 9), Port: 1234} }

const upgradeRequest = "GET /v1/realtime?project=p1&channels[]=files HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"

// upgradeRequestDeflate offers permessage-deflate (RFC 7692), which the
// node accepts: its frames may be compressed.
var upgradeRequestDeflate = strings.Replace(upgradeRequest, "\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n", 1)

// FuzzConsume drives the whole read path (upgrade request and extension
// negotiation, frame headers, unmasking, fragment reassembly, inflation of
// compressed messages, client JSON) with arbitrary bytes fed in arbitrary
// pieces. Writes go to /dev/null.
func FuzzConsume(f *testing.F) {
	mask := func(fr ws.Frame) []byte {
		b, _ := ws.CompileFrame(ws.MaskFrame(fr))
		return b
	}
	f.Add([]byte(upgradeRequest), uint8(7))
	f.Add(append([]byte(upgradeRequest), mask(ws.NewTextFrame([]byte(`{"type":"ping"}`)))...), uint8(50))
	f.Add(append([]byte(upgradeRequest), mask(ws.NewTextFrame([]byte(`{"type":"subscribe","data":[{"channels":["a"]}]}`)))...), uint8(3))
	f.Add(append(append([]byte(upgradeRequest), mask(ws.NewFrame(ws.OpText, false, []byte(`{"ty`)))...), mask(ws.NewFrame(ws.OpContinuation, true, []byte(`pe":"ping"}`)))...), uint8(1))
	f.Add([]byte("GET / HTTP/1.1\r\n\r\n"), uint8(0))
	f.Add([]byte(upgradeRequest+"\x81\xff\x7f\xff\xff\xff\xff\xff\xff\xff"), uint8(9))
	// Real masks, a ping between fragments, UTF-8 cut across them, and a
	// close reason that is not UTF-8: the streaming paths of reader.go.
	m := [4]byte{0x5a, 0xa5, 0x0f, 0xf0}
	f.Add([]byte(upgradeRequest+string(maskedFrame(ws.OpText, false, []byte("{\"type\":\"pi\xce"), m))+string(maskedFrame(ws.OpPing, true, []byte("p"), m))+
		string(maskedFrame(ws.OpContinuation, true, []byte("\xba\",\"x\":\"ng\"}"), m))), uint8(4))
	f.Add([]byte(upgradeRequest+string(maskedFrame(ws.OpClose, true, []byte{0x03, 0xe8, 0xed, 0xa0, 0x80}, m))), uint8(2))

	// Compressed messages (RFC 7692): whole, fragmented around a ping,
	// ending in a final block, a bomb over the limit, and RSV1 where it
	// must not be.
	z := func(frames [][]byte) []byte { return append([]byte(upgradeRequestDeflate), bytes.Join(frames, nil)...) }
	ping := deflated(f, []byte(`{"type":"ping"}`), false)
	f.Add(z(compressedFrames(ping, 1, m)), uint8(11))
	f.Add(z(append(compressedFrames(deflated(f, []byte(`{"type":"subscribe","data":[{"channels":["a","b"]}]}`), false), 3, m), maskedFrame(ws.OpPing, true, nil, m))), uint8(5))
	f.Add(z(compressedFrames(deflated(f, []byte(`{"type":"ping"}`), true), 2, m)), uint8(63))
	f.Add(z(compressedFrames(deflated(f, make([]byte, 64<<10), false), 2, m)), uint8(30))
	f.Add(z([][]byte{func() []byte { b := maskedFrame(ws.OpPing, true, []byte("x"), m); b[0] |= rsv1Bit; return b }()}), uint8(6))
	f.Add(append([]byte(upgradeRequest), compressedFrames(ping, 1, m)[0]...), uint8(8))

	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		f.Fatal(err)
	}
	defer devnull.Close()
	s := offlineNode(f, Config{Broker: broker.NewMemory(1), MaxMessageSize: 4096, MaxHeaderBytes: 1024, ConnectsPerIP: Off, MessagesPerMinute: Off})

	f.Fuzz(func(t *testing.T, data []byte, piece uint8) {
		nc := &fakeNC{}
		c := &conn{Context: context.Background(), srv: s, nc: nc, fd: int(devnull.Fd())}
		c.id = s.idx.Insert(c)
		// Undo what the handshake registered (index entry, user and
		// project tables, open count), as netpoll's close callback would;
		// otherwise every iteration leaks into the next.
		defer c.onClosed(nil)
		step := int(piece)%64 + 1
		for off := 0; off < len(data) && !nc.closed; off += step {
			end := min(off+step, len(data))
			// feed may unmask in place, as it does in netpoll's buffer.
			c.feed(append([]byte(nil), data[off:end]...))
			if limit := s.cfg.MaxHeaderBytes + s.cfg.MaxMessageSize + 14; len(c.pend) > limit {
				t.Fatalf("pending input grew to %d bytes (limit %d)", len(c.pend), limit)
			}
			if c.in != nil && (len(c.in.msg) > s.cfg.MaxMessageSize || cap(c.in.msg) > 2*s.cfg.MaxMessageSize) {
				t.Fatalf("reassembly buffer grew to %d bytes (capacity %d)", len(c.in.msg), cap(c.in.msg))
			}
		}
	})
}

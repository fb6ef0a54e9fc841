package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// maskedFrame is a client frame with a real (non-zero) mask, so that a
// reader which unmasks a payload that arrives in pieces from the wrong
// offset corrupts it.
func maskedFrame(op ws.OpCode, fin bool, payload []byte, mask [4]byte) []byte {
	f := ws.NewFrame(op, fin, append([]byte(nil), payload...))
	f.Header.Masked, f.Header.Mask = true, mask
	ws.Cipher(f.Payload, mask, 0)
	return ws.MustCompileFrame(f)
}

// Autobahn's UTF-8 samples: a valid Greek word, and a code point above
// U+10FFFF (F4 90 80 80) that starts with a byte that may lead a valid one.
var (
	greek   = []byte("\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5")
	edited  = []byte("edited")
	tooHigh = []byte{0xf4, 0x90, 0x80, 0x80}
)

// RFC 6455 5.5.1 lets a close frame carry a reason "encoded as UTF-8", and
// 8.1 requires failing a connection that receives bytes that should be
// UTF-8 but are not: the reply is 1007, not the echo of the client's code
// (Autobahn case 7.5.1).
func TestRFC6455_5_5_1_CloseReasonMustBeUTF8(t *testing.T) {
	s := testNode(t, nil)
	for _, tc := range []struct {
		name   string
		reason []byte
		want   ws.StatusCode
	}{
		{"valid reason is echoed", greek, ws.StatusNormalClosure},
		{"invalid reason", append(append(append([]byte(nil), greek...), 0xed, 0xa0, 0x80), edited...), ws.StatusInvalidFramePayloadData},
		{"reason cut inside a character", greek[:len(greek)-1], ws.StatusInvalidFramePayloadData},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, s, "project=p1", nil)
			c.expect("connected")
			body := append([]byte{0x03, 0xe8}, tc.reason...) // 1000
			if _, err := c.conn.Write(maskedFrame(ws.OpClose, true, body, [4]byte{7, 1, 9, 3})); err != nil {
				t.Fatal(err)
			}
			if code, msgs := c.expectClose(); code != tc.want {
				t.Fatalf("close code %d after %v, want %d", code, msgs, tc.want)
			}
		})
	}
}

// RFC 6455 8.1 with 5.4: the bytes of a fragmented text message are
// checked as each fragment arrives, and the connection fails as soon as
// they cannot be UTF-8 — not when the message ends, which here it never
// does (Autobahn cases 6.4.1 and 6.4.2). A ping between the fragments
// (legal, 5.4) shows that a valid prefix, even one ending inside a
// character, is not failed early.
func TestRFC6455_8_1_InvalidUTF8FailsFastAcrossFragments(t *testing.T) {
	s := testNode(t, nil)
	mask := [4]byte{0x11, 0x22, 0x33, 0x44}
	for _, tc := range []struct {
		name       string
		fine, fail [][]byte // fragment payloads: fine ones are answered by a pong, the next fails
	}{
		// 6.4.1: the second fragment holds the whole out-of-range code point.
		{"6.4.1 invalid code point in one fragment", [][]byte{greek}, [][]byte{tooHigh}},
		// 6.4.2: F4 alone may still begin a character; 90 after it cannot.
		{"6.4.2 invalid continuation in the next fragment", [][]byte{greek, tooHigh[:1]}, [][]byte{append(tooHigh[1:], edited...)}},
		{"lead byte that never starts a character", [][]byte{greek}, [][]byte{{0xc0}}},
		{"surrogate cut after its second byte", [][]byte{greek}, [][]byte{{0xed, 0xa0}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, s, "project=p1", nil)
			c.expect("connected")
			op := ws.OpText
			for i, p := range tc.fine {
				write(t, c, maskedFrame(op, false, p, mask))
				op = ws.OpContinuation
				write(t, c, maskedFrame(ws.OpPing, true, []byte{byte(i)}, mask))
				if err := c.awaitPong([]byte{byte(i)}); err != nil {
					t.Fatalf("after valid fragment %d: %v", i, err)
				}
			}
			for _, p := range tc.fail {
				write(t, c, maskedFrame(op, false, p, mask)) // never the final fragment
			}
			if code, msgs := c.expectClose(); code != ws.StatusInvalidFramePayloadData {
				t.Fatalf("close code %d after %v, want 1007", code, msgs)
			}
		})
	}
}

// The same inside one frame whose payload arrives in pieces (Autobahn
// cases 6.4.3 and 6.4.4): the rest of the frame is never sent, so only a
// reader that checks each piece as it arrives can answer.
func TestRFC6455_8_1_InvalidUTF8FailsFastInsideAFrame(t *testing.T) {
	s := testNode(t, nil)
	for _, tc := range []struct {
		name  string
		sent  []byte
		total int // the frame's announced payload length
	}{
		{"6.4.3 whole invalid code point", slices.Concat(greek, tooHigh), len(greek) + len(tooHigh) + len(edited)},
		{"6.4.4 invalid after two bytes of it", slices.Concat(greek, tooHigh[:2]), len(greek) + len(tooHigh) + len(edited)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, s, "project=p1", nil)
			c.expect("connected")
			mask := [4]byte{0x5a, 0xa5, 0x0f, 0xf0}
			whole := maskedFrame(ws.OpText, true, append(append([]byte(nil), tc.sent...), make([]byte, tc.total-len(tc.sent))...), mask)
			hn := len(whole) - tc.total
			write(t, c, whole[:hn+len(greek)]) // header and the valid part
			write(t, c, whole[hn+len(greek):hn+len(tc.sent)])
			if code, msgs := c.expectClose(); code != ws.StatusInvalidFramePayloadData {
				t.Fatalf("close code %d after %v, want 1007", code, msgs)
			}
		})
	}
}

func write(t *testing.T, c *client, b []byte) {
	t.Helper()
	if _, err := c.conn.Write(b); err != nil {
		t.Fatal(err)
	}
}

// awaitPong reads until the WebSocket pong with payload p.
func (c *client) awaitPong(p []byte) error {
	_ = c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := ws.ReadFrame(c.r)
		if err != nil {
			return err
		}
		switch f.Header.OpCode {
		case ws.OpPong:
			if bytes.Equal(f.Payload, p) {
				return nil
			}
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(f.Payload)
			return fmt.Errorf("closed %d %q", code, reason)
		}
	}
}

// feedHarness runs a connection's read side directly, with replies going to
// one end of a socket pair: a test can cut the client's bytes into reads
// exactly where it wants (inside a frame header, a mask period, a
// character), which a real socket does not promise.
type feedHarness struct {
	s *Server
}

func newFeedHarness(t testing.TB, mod func(*Config)) *feedHarness {
	cfg := Config{Broker: broker.NewMemory(1), MessagesPerMinute: Off}
	if mod != nil {
		mod(&cfg)
	}
	return &feedHarness{s: offlineNode(t, cfg)}
}

// open returns an upgraded connection and a reader of what the server sent
// it after the 101 response.
func (h *feedHarness) open(t testing.TB) (*conn, *bufio.Reader) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Non-blocking, so that os.File polls it and read deadlines work.
	peer := os.NewFile(uintptr(fds[1]), "peer")
	if err := peer.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	nc := &fakeNC{}
	c := &conn{Context: context.Background(), srv: h.s, nc: nc, fd: fds[0]}
	c.id = h.s.idx.Insert(c)
	t.Cleanup(func() {
		c.onClosed(nil)
		unix.Close(fds[0])
		peer.Close()
	})
	c.feed([]byte(upgradeRequest))
	r := bufio.NewReader(peer)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	if m := readMessage(t, r); m.Type != "connected" {
		t.Fatalf("first message %s", m.Type)
	}
	return c, r
}

// readMessage reads the next text frame (skipping pongs) as a message.
func readMessage(t testing.TB, r *bufio.Reader) message {
	t.Helper()
	for {
		f, err := ws.ReadFrame(r)
		if err != nil {
			t.Fatal(err)
		}
		if f.Header.OpCode == ws.OpText {
			var m message
			if err := json.Unmarshal(f.Payload, &m); err != nil {
				t.Fatal(err)
			}
			return m
		}
		if f.Header.OpCode != ws.OpPong {
			t.Fatalf("unexpected frame %v %q", f.Header.OpCode, f.Payload)
		}
	}
}

// RFC 6455 5.2-5.4: a fragmented, masked message with control frames
// between its fragments is the same message however the stream is cut
// into reads — inside headers, extended lengths and masking keys, inside
// payloads at every offset of the mask, inside characters. The subscribe
// response echoes every channel name, so a byte unmasked wrongly or lost
// shows.
func TestRFC6455_5_4_MessageIsTheSameHoweverItIsCut(t *testing.T) {
	h := newFeedHarness(t, func(c *Config) { c.MaxMessageSize = 1 << 20 })
	rng := rand.New(rand.NewPCG(1, 2))
	channels := make([]string, 99) // the connection holds "files" already; 100 is the limit
	for i := range channels {
		// 250 bytes of two-, three- and four-byte characters and ASCII.
		var b strings.Builder
		for b.Len() < 240 {
			b.WriteString([]string{"é", "€", "𝄞", "a", "."}[rng.IntN(5)])
		}
		channels[i] = fmt.Sprintf("c%d.%s", i, b.String())
	}
	msg, _ := json.Marshal(map[string]any{"type": "subscribe", "data": []any{map[string]any{"subscriptionId": "s1", "channels": channels}}})
	var stream []byte
	for rest, i := msg, 0; len(rest) > 0; i++ {
		n := min(len(rest), 1+rng.IntN(9000))
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpText
		}
		mask := [4]byte{byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32()), byte(rng.Uint32())}
		stream = append(stream, maskedFrame(op, n == len(rest), rest[:n], mask)...)
		if len(rest) > n {
			stream = append(stream, maskedFrame(ws.OpPing, true, []byte(fmt.Sprintf("between %d", i)), mask)...)
		}
		rest = rest[n:]
	}
	for _, piece := range []int{1, 2, 3, 5, 13, 125, 1000, 4096, 16 << 10, len(stream)} {
		t.Run(fmt.Sprintf("reads of %d bytes", piece), func(t *testing.T) {
			c, r := h.open(t)
			for off := 0; off < len(stream); off += piece {
				c.feed(append([]byte(nil), stream[off:min(off+piece, len(stream))]...))
			}
			m := readMessage(t, r)
			var resp struct {
				To            string `json:"to"`
				Subscriptions []struct {
					Channels []string `json:"channels"`
				} `json:"subscriptions"`
			}
			if err := json.Unmarshal(m.Data, &resp); err != nil || m.Type != "response" || len(resp.Subscriptions) != 1 {
				t.Fatalf("got %s %s (%v)", m.Type, m.Data, err)
			}
			if !slices.Equal(resp.Subscriptions[0].Channels, channels) {
				t.Fatalf("channels came back changed")
			}
			if c.in != nil || c.pend != nil {
				t.Fatalf("input state kept after the message: in=%v pend=%d bytes", c.in != nil, len(c.pend))
			}
		})
	}
}

// A message that spans many reads is copied once, into a buffer of its
// own size: feeding a 4 MiB frame in 16 KiB reads allocates about 4 MiB,
// where buffering the raw stream and re-parsing it allocated and copied
// far more. (The time side of this is BenchmarkMessageCPUPerMiB in
// cmd/switchboard.)
func TestLargeMessageIsCopiedOnce(t *testing.T) {
	const size = 4 << 20
	h := newFeedHarness(t, func(c *Config) { c.MaxMessageSize = 16 << 20 })
	c, r := h.open(t)
	payload := []byte(`{"type":"ping","pad":"` + strings.Repeat("x", size-24) + `"}`)
	frame := maskedFrame(ws.OpText, true, payload, [4]byte{1, 2, 3, 4})
	reads := make([][]byte, 0, len(frame)/readBufSize+1)
	for off := 0; off < len(frame); off += readBufSize {
		reads = append(reads, frame[off:min(off+readBufSize, len(frame))])
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for _, b := range reads {
		c.feed(b)
	}
	runtime.ReadMemStats(&after)
	if m := readMessage(t, r); m.Type != "pong" {
		t.Fatalf("got %s %s", m.Type, m.Data)
	}
	// JSON decoding of the message allocates a little on its own (its
	// scanner state); the bound leaves it 1/8 of the message.
	if got := after.TotalAlloc - before.TotalAlloc; got > size+size/8 {
		t.Fatalf("reading a %d-byte message allocated %d bytes", size, got)
	}
}

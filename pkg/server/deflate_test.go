package server

import (
	"bufio"
	"bytes"
	"compress/flate"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/internal/permessage"
)

// The tests of permessage-deflate (RFC 7692) go through the real wire:
// handshakes written by hand, so that every offer of the negotiation matrix
// can be sent as is; frames inflated by gobwas's wsflate (client.tryRead)
// and client messages compressed with compress/flate, independently of the
// node's own deflate.go.

// rawUpgrade sends an upgrade request with the given Sec-WebSocket-Extensions
// headers (none when offers is empty) and returns the response and a
// client on the connection, which reads frames after the response.
func rawUpgrade(t *testing.T, s *Server, query string, offers ...string) (*http.Response, *client) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", s.Addr().String(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	req := "GET /v1/realtime?" + query + " HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
	for _, o := range offers {
		req += "Sec-WebSocket-Extensions: " + o + "\r\n"
	}
	if _, err := conn.Write([]byte(req + "\r\n")); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	c := &client{t: t, conn: conn, r: br, deflate: strings.Contains(resp.Header.Get("Sec-WebSocket-Extensions"), deflateExtension)}
	return resp, c
}

// dialDeflate connects a client that offers permessage-deflate as
// browsers do, and checks that the node accepted it.
func dialDeflate(t *testing.T, s *Server, query string) *client {
	t.Helper()
	resp, c := rawUpgrade(t, s, query, "permessage-deflate; client_max_window_bits")
	if resp.StatusCode != http.StatusSwitchingProtocols || !c.deflate {
		t.Fatalf("upgrade: %s, extensions %q", resp.Status, resp.Header.Values("Sec-WebSocket-Extensions"))
	}
	return c
}

// agreed is the node's response to every offer it accepts (RFC 7692
// 7.1.1.1, 7.1.1.2): no context takeover, either way.
const agreed = "permessage-deflate; server_no_context_takeover; client_no_context_takeover"

// RFC 7692 5 (and 7.1 for each parameter): the server accepts the first
// offer it supports and answers with the parameters it agreed to; an offer
// with an unknown parameter, an invalid value or a parameter twice, or a
// configuration it cannot honour, is declined: the upgrade goes on without
// the extension. A client that offers nothing is served as before.
func TestRFC7692_5_NegotiationMatrix(t *testing.T) {
	s := testNode(t, nil)
	for _, tc := range []struct {
		name   string
		offers []string
		want   string // Sec-WebSocket-Extensions of the response; "" when declined
	}{
		{"no offer", nil, ""},
		{"bare offer", []string{"permessage-deflate"}, agreed},
		{"browser offer (7.1.2.2: client_max_window_bits without a value)", []string{"permessage-deflate; client_max_window_bits"}, agreed},
		{"client_max_window_bits=10 (7.1.2.2)", []string{"permessage-deflate; client_max_window_bits=10"}, agreed},
		{"client_max_window_bits quoted", []string{`permessage-deflate; client_max_window_bits="12"`}, agreed},
		{"both no_context_takeover (7.1.1)", []string{"permessage-deflate; server_no_context_takeover; client_no_context_takeover"}, agreed},
		{"server_max_window_bits=15 is echoed (7.1.2.1)", []string{"permessage-deflate; server_max_window_bits=15"}, agreed + "; server_max_window_bits=15"},
		{"server_max_window_bits=10 is not supported: declined (7.1.2.1)", []string{"permessage-deflate; server_max_window_bits=10"}, ""},
		{"declined offer, then an acceptable one (5)", []string{"permessage-deflate; server_max_window_bits=9, permessage-deflate; client_max_window_bits"}, agreed},
		{"offers in two headers", []string{"x-webkit-deflate-frame", "permessage-deflate"}, agreed},
		{"two acceptable offers: one agreement", []string{"permessage-deflate, permessage-deflate; client_no_context_takeover"}, agreed},
		{"unknown parameter (5)", []string{"permessage-deflate; foo"}, ""},
		{"client_max_window_bits=16 (7.1.2.2)", []string{"permessage-deflate; client_max_window_bits=16"}, ""},
		{"client_max_window_bits=7 (7.1.2.2)", []string{"permessage-deflate; client_max_window_bits=7"}, ""},
		{"client_max_window_bits with a leading zero (7.1.2.2)", []string{"permessage-deflate; client_max_window_bits=010"}, ""},
		{"server_max_window_bits without a value (7.1.2.1)", []string{"permessage-deflate; server_max_window_bits"}, ""},
		{"server_no_context_takeover with a value (7.1.1.1)", []string{"permessage-deflate; server_no_context_takeover=1"}, ""},
		{"client_no_context_takeover twice (5)", []string{"permessage-deflate; client_no_context_takeover; client_no_context_takeover"}, ""},
		{"client_max_window_bits twice (5)", []string{"permessage-deflate; client_max_window_bits; client_max_window_bits=10"}, ""},
		{"another extension only", []string{"x-webkit-deflate-frame"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, c := rawUpgrade(t, s, "project=p1", tc.offers...)
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %s, want 101", resp.Status)
			}
			// gobwas writes the parameters without the optional spaces.
			got := strings.Join(resp.Header.Values("Sec-WebSocket-Extensions"), ",")
			if strings.ReplaceAll(got, " ", "") != strings.ReplaceAll(tc.want, " ", "") {
				t.Fatalf("Sec-WebSocket-Extensions %q, want %q", got, tc.want)
			}
			// Whatever was agreed, the connection works.
			c.expect("connected")
		})
	}

	// --compression off declines every offer.
	off := testNode(t, func(c *Config) { c.Compression = Off })
	resp, c := rawUpgrade(t, off, "project=p1", "permessage-deflate; client_max_window_bits")
	if got := resp.Header.Values("Sec-WebSocket-Extensions"); resp.StatusCode != http.StatusSwitchingProtocols || len(got) != 0 {
		t.Fatalf("compression off: %s, extensions %q", resp.Status, got)
	}
	c.expect("connected")
	if n := counterValue(t, off, "switchboard_deflate_upgrades_total"); n != 0 {
		t.Fatalf("compression off: %v upgrades negotiated it", n)
	}
}

// A header that is not the extension grammar at all is a malformed request
// (RFC 6455 4.2.1 leaves its treatment to the server): 400, as for any
// other malformed upgrade header.
func TestRFC7692_MalformedExtensionsHeaderIsRefused(t *testing.T) {
	s := testNode(t, nil)
	resp, _ := rawUpgrade(t, s, "project=p1", "permessage-deflate; =10")
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("status %s, want 400", resp.Status)
	}
}

// deflated compresses p as a client would (RFC 7692 7.2.1): a sync flush
// with its 00 00 ff ff removed, or, with final, a stream that ends in a
// final block (7.2.3.4 lets a sender do that).
func deflated(t testing.TB, p []byte, final bool) []byte {
	t.Helper()
	var b bytes.Buffer
	w, _ := flate.NewWriter(&b, flate.BestCompression)
	if _, err := w.Write(p); err != nil {
		t.Fatal(err)
	}
	if final {
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return b.Bytes()
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	out := b.Bytes()
	if !bytes.HasSuffix(out, permessage.Tail) {
		t.Fatalf("sync flush does not end in 00 00 ff ff: % x", out[len(out)-4:])
	}
	return out[:len(out)-4]
}

// compressedFrames cuts a compressed message into n masked frames, RSV1 on
// the first only (RFC 7692 6).
func compressedFrames(z []byte, n int, mask [4]byte) [][]byte {
	var frames [][]byte
	step := (len(z) + n - 1) / n
	for i := 0; i < n; i++ {
		part := z[min(i*step, len(z)):min((i+1)*step, len(z))]
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpText
		}
		f := ws.NewFrame(op, i == n-1, append([]byte(nil), part...))
		if i == 0 {
			f.Header.Rsv = ws.Rsv(true, false, false)
		}
		f.Header.Masked, f.Header.Mask = true, mask
		ws.Cipher(f.Payload, mask, 0)
		frames = append(frames, ws.MustCompileFrame(f))
	}
	return frames
}

// RFC 7692 6 and 7.2.2: a client's compressed message, in one frame or
// fragmented (with a control frame between its fragments, RFC 6455 5.4),
// ended by a stripped sync flush or by a final block, is inflated and
// handled like its plain form.
func TestRFC7692_7_2_2_CompressedClientMessages(t *testing.T) {
	s := testNode(t, nil)
	ping := []byte(`{"type":"ping","note":"` + strings.Repeat("compressible ", 40) + `"}`)
	mask := [4]byte{0x3c, 0x5a, 0x99, 0x01}
	for _, tc := range []struct {
		name      string
		final     bool
		fragments int
	}{
		{"one frame", false, 1},
		{"one frame ending in a final block", true, 1},
		{"three fragments", false, 3},
		{"fragments cut to single bytes", false, len(deflated(t, ping, false))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialDeflate(t, s, "project=p1")
			c.expect("connected")
			frames := compressedFrames(deflated(t, ping, tc.final), tc.fragments, mask)
			for i, f := range frames {
				write(t, c, f)
				if i == 0 && len(frames) > 1 {
					write(t, c, maskedFrame(ws.OpPing, true, []byte("between"), mask))
				}
			}
			c.expect("pong")
			// An uncompressed message on the same connection: RSV1 is per
			// message.
			c.send(`{"type":"ping"}`)
			c.expect("pong")
		})
	}
	if in, wire := deflateBytes(t, s, "in", "plain"), deflateBytes(t, s, "in", "deflated"); in != float64(4*len(ping)) || wire >= in {
		t.Fatalf("inbound bytes: %v plain, %v deflated; want %d plain and fewer deflated", in, wire, 4*len(ping))
	}
}

// deflateBytes is one series of switchboard_deflate_bytes_total.
func deflateBytes(t *testing.T, s *Server, direction, form string) float64 {
	t.Helper()
	mfs, err := s.cfg.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "switchboard_deflate_bytes_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["direction"] == direction && labels["form"] == form {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// RFC 7692 6: RSV1 marks the first frame of a compressed data message and
// nothing else. On a control frame, on a continuation frame, or on a
// connection that did not negotiate the extension, it fails the connection
// (RFC 6455 5.2: 1002). Compressed data that does not inflate fails it too
// (1007), and so does inflated text that is not UTF-8 (RFC 6455 8.1).
// Bystanders keep their events.
func TestRFC7692_6_InvalidCompressedInputFailsTheConnection(t *testing.T) {
	s := testNode(t, nil)
	bystander := dialDeflate(t, s, "project=p1&channels[]=files")
	bystander.expect("connected")
	mask := [4]byte{9, 8, 7, 6}
	ping := deflated(t, []byte(`{"type":"ping"}`), false)
	rsv1 := func(f []byte) []byte { f[0] |= rsv1Bit; return f }
	for _, tc := range []struct {
		name      string
		negotiate bool
		frames    [][]byte
		want      ws.StatusCode
	}{
		{"RSV1 on a ping", true, [][]byte{rsv1(maskedFrame(ws.OpPing, true, []byte("x"), mask))}, ws.StatusProtocolError},
		{"RSV1 on a close", true, [][]byte{rsv1(maskedFrame(ws.OpClose, true, []byte{3, 0xe8}, mask))}, ws.StatusProtocolError},
		{"RSV1 on a continuation frame", true, [][]byte{
			maskedFrame(ws.OpText, false, []byte(`{"type":`), mask), rsv1(maskedFrame(ws.OpContinuation, true, []byte(`"ping"}`), mask)),
		}, ws.StatusProtocolError},
		{"RSV1 without the extension", false, compressedFrames(ping, 1, mask), ws.StatusProtocolError},
		{"RSV2 with the extension", true, [][]byte{func() []byte { f := maskedFrame(ws.OpText, true, []byte(`{}`), mask); f[0] |= 0x20; return f }()}, ws.StatusProtocolError},
		{"data that does not inflate", true, compressedFrames([]byte{0xff, 0xff, 0xff, 0xff, 0x00}, 1, mask), ws.StatusInvalidFramePayloadData},
		{"stream cut inside a block", true, compressedFrames(deflated(t, []byte(strings.Repeat(`{"type":"ping"}`, 50)), false)[:20], 1, mask), ws.StatusInvalidFramePayloadData},
		{"inflated text that is not UTF-8", true, compressedFrames(deflated(t, []byte("{\"type\":\"\xc3\x28\"}"), false), 2, mask), ws.StatusInvalidFramePayloadData},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c *client
			if tc.negotiate {
				c = dialDeflate(t, s, "project=p1")
			} else {
				c = dial(t, s, "project=p1", nil)
			}
			c.expect("connected")
			for _, f := range tc.frames {
				write(t, c, f)
			}
			if code, msgs := c.expectClose(); code != tc.want {
				t.Fatalf("close code %d after %v, want %d", code, msgs, tc.want)
			}
		})
	}
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"still":"here"}`))
	bystander.expectPayload(`{"still":"here"}`)
}

// A decompression bomb: a few kilobytes that inflate far past the message
// size limit. Inflation stops just past the limit (MaxMessageSize+1 bytes
// of output) and the connection closes with 1009, as an uncompressed
// message over the limit would; a message that inflates to exactly the
// limit passes.
func TestRFC7692_InflationBombCloses1009(t *testing.T) {
	const limit = 16 << 10
	s := testNode(t, func(c *Config) { c.MaxMessageSize = limit })
	bystander := dialDeflate(t, s, "project=p1&channels[]=files")
	bystander.expect("connected")
	mask := [4]byte{1, 2, 3, 4}

	exact := []byte(`{"type":"ping","pad":"` + strings.Repeat("a", limit-len(`{"type":"ping","pad":""}`)) + `"}`)
	c := dialDeflate(t, s, "project=p1")
	c.expect("connected")
	for _, f := range compressedFrames(deflated(t, exact, false), 1, mask) {
		write(t, c, f)
	}
	c.expect("pong")

	for _, fragments := range []int{1, 4} {
		t.Run(fmt.Sprintf("fragments=%d", fragments), func(t *testing.T) {
			bomb := deflated(t, append(exact, make([]byte, 8<<20)...), false) // 8 MiB of zeroes
			if len(bomb) > limit {
				t.Fatalf("bomb is %d bytes: not a bomb", len(bomb))
			}
			c := dialDeflate(t, s, "project=p1")
			c.expect("connected")
			for _, f := range compressedFrames(bomb, fragments, mask) {
				write(t, c, f)
			}
			if code, msgs := c.expectClose(); code != ws.StatusMessageTooBig {
				t.Fatalf("close code %d after %v, want 1009", code, msgs)
			}
		})
	}
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"still":"here"}`))
	bystander.expectPayload(`{"still":"here"}`)
}

// Events to a client that negotiated the extension carry RSV1 and inflate
// (with gobwas's wsflate, which appends 00 00 ff ff as RFC 7692 7.2.2 says)
// to exactly what a plain client receives; each event's shared part is
// compressed once, however many compressing recipients and distinct
// subscription lists it has; an event under CompressionMinBytes goes out
// plain to everyone.
func TestRFC7692_7_2_1_EventsAreCompressedOncePerEvent(t *testing.T) {
	s := testNode(t, nil)
	plain := dial(t, s, "project=p1&channels[]=documents", nil)
	plain.expect("connected")
	var zs []*client
	for i := 0; i < 3; i++ {
		c := dialDeflate(t, s, "project=p1")
		c.expect("connected")
		// Distinct subscription ids: three tails of their own.
		c.send(subscribeMsg(t, fmt.Sprintf("sub-%d", i), []string{"documents"}))
		c.expect("response")
		zs = append(zs, c)
	}
	doc := appwriteDocument(2048)
	publish(t, s, event("p1", []string{"any"}, []string{"documents"}, doc))
	plain.expectPayload(doc)
	for i, c := range zs {
		d := c.expectPayload(doc)
		if c.compressed != 1 || len(d.Subscriptions) != 1 || d.Subscriptions[0] != fmt.Sprintf("sub-%d", i) {
			t.Fatalf("client %d: %d compressed frames, subscriptions %v", i, c.compressed, d.Subscriptions)
		}
	}
	if n := counterValue(t, s, "switchboard_deflate_events_total"); n != 1 {
		t.Fatalf("shared part compressed %v times for one event, want 1", n)
	}
	if n := counterValue(t, s, "switchboard_deflate_deliveries_total"); n != 3 {
		t.Fatalf("%v compressed deliveries, want 3", n)
	}
	before, after := deflateBytes(t, s, "out", "plain"), deflateBytes(t, s, "out", "deflated")
	if before < 3*2048 || after*2 > before {
		t.Fatalf("outbound bytes %v before compression, %v after: want at least 3 x 2 KiB, halved", before, after)
	}

	small := `{"$id":"d1","n":1}` // a whole event message of about 170 bytes
	publish(t, s, event("p1", []string{"any"}, []string{"documents"}, small))
	plain.expectPayload(small)
	for _, c := range zs {
		c.expectPayload(small)
		if c.compressed != 1 {
			t.Fatalf("an event under the minimum went out compressed")
		}
	}
	if n := counterValue(t, s, "switchboard_deflate_events_total"); n != 1 {
		t.Fatalf("an event under the minimum was compressed (%v)", n)
	}
}

// The tail of a compressed frame is stored deflate blocks
// (appendStoredFinal): checked against compress/flate for tails around the
// 65,535-byte block limit, after a shared part from deflateShared.
func TestStoredTailInflates(t *testing.T) {
	var d eventDeflater
	prefix := []byte(appwriteDocument(2048))
	for _, n := range []int{0, 1, 300, 0xffff, 0xffff + 1, 3*0xffff + 7} {
		tail := bytes.Repeat([]byte("t"), n)
		msg := append(d.deflateShared(prefix), appendStoredFinal(nil, tail)...)
		if got := len(appendStoredFinal(nil, tail)); got != storedFinalSize(n) || storedRawSize(got) != n {
			t.Fatalf("tail of %d: %d bytes, storedFinalSize says %d, storedRawSize %d", n, got, storedFinalSize(n), storedRawSize(got))
		}
		var z permessage.Inflater
		out, err := z.Inflate(msg, 1<<20)
		if err != nil || !bytes.Equal(out, append(append([]byte(nil), prefix...), tail...)) {
			t.Fatalf("tail of %d: err %v, %d bytes out", n, err, len(out))
		}
		r := flate.NewReader(bytes.NewReader(append(append(msg, permessage.Tail...), 0x03, 0x00)))
		var b bytes.Buffer
		if _, err := b.ReadFrom(r); err != nil || b.Len() != len(prefix)+n {
			t.Fatalf("tail of %d: compress/flate: %v, %d bytes", n, err, b.Len())
		}
	}
}

func TestAppwriteDocumentSize(t *testing.T) {
	for _, n := range []int{200, 2048} {
		if d := appwriteDocument(n); len(d) != n || !json.Valid([]byte(d)) {
			t.Fatalf("appwriteDocument(%d) is %d bytes, valid JSON %v", n, len(d), json.Valid([]byte(d)))
		}
	}
}

// RFC 7692 7.2.3.6: an empty message may be sent compressed as the single
// byte 00 (an empty stored block's header, its LEN and NLEN stripped);
// Chromium does so. It inflates to nothing.
func TestRFC7692_7_2_3_6_EmptyMessageInflates(t *testing.T) {
	var z permessage.Inflater
	out, err := z.Inflate([]byte{0x00}, 16)
	if err != nil || len(out) != 0 {
		t.Fatalf("inflate(00) = %q, %v; want an empty message", out, err)
	}
}

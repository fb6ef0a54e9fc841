package server

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
)

// rawFrame is a masked client frame header with an announced length and
// whatever payload bytes follow it (possibly none).
func rawFrame(b0 byte, length uint64, payload []byte) []byte {
	b := []byte{b0}
	switch {
	case length < 126:
		b = append(b, 0x80|byte(length))
	case length <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(length))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, length)
	}
	b = append(b, 0, 0, 0, 0) // a zero mask: the payload goes as is
	return append(b, payload...)
}

func TestFrameAbuseClosesWithTheRightCode(t *testing.T) {
	const maxMsg = 1024
	s := testNode(t, func(c *Config) { c.MaxMessageSize = maxMsg })
	bystander := dial(t, s, "project=p1&channels[]=files", nil)
	bystander.expect("connected")

	eAcute := []byte(`{"type":"ping","x":"é"}`) // é is two bytes: split it across frames
	split := strings.Index(string(eAcute), "é") + 1
	cases := []struct {
		name   string
		frames [][]byte
		want   ws.StatusCode // 0: no close, expect a pong
	}{
		// Only a header announcing far more than the limit: refused at
		// once, without buffering or waiting for the payload.
		{"header announces 1 GiB", [][]byte{rawFrame(0x81, 1<<30, nil)}, ws.StatusMessageTooBig},
		{"header announces 2^63", [][]byte{rawFrame(0x81, 1<<63, nil)}, ws.StatusMessageTooBig},
		{"16-bit length over the limit", [][]byte{rawFrame(0x81, 0xffff, nil)}, ws.StatusMessageTooBig},
		{"fragments add up over the limit", [][]byte{
			rawFrame(0x01, 800, make([]byte, 800)), rawFrame(0x80, 800, make([]byte, 800)),
		}, ws.StatusMessageTooBig},
		{"invalid UTF-8 across fragments", [][]byte{
			rawFrame(0x01, 3, []byte(`{"a`)), rawFrame(0x80, 2, []byte{0xc3, 0x28}),
		}, ws.StatusInvalidFramePayloadData},
		{"UTF-8 split across fragments is fine", [][]byte{
			rawFrame(0x01, uint64(split), eAcute[:split]), rawFrame(0x80, uint64(len(eAcute)-split), eAcute[split:]),
		}, 0},
		{"fragmented close", [][]byte{rawFrame(0x08, 2, []byte{3, 0xe8})}, ws.StatusProtocolError},
		{"control frame over 125 bytes", [][]byte{rawFrame(0x89, 126, make([]byte, 126))}, ws.StatusProtocolError},
		{"unknown opcode", [][]byte{rawFrame(0x83, 0, nil)}, ws.StatusProtocolError},
		{"new message inside a fragmented one", [][]byte{
			rawFrame(0x01, 1, []byte("{")), rawFrame(0x81, 2, []byte("{}")),
		}, ws.StatusProtocolError},
		{"close code 1005 on the wire", [][]byte{rawFrame(0x88, 2, []byte{0x03, 0xed})}, ws.StatusProtocolError},
		{"one-byte close payload", [][]byte{rawFrame(0x88, 1, []byte{3})}, ws.StatusProtocolError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, s, "project=p1", nil)
			c.expect("connected")
			start := time.Now()
			for _, f := range tc.frames {
				if _, err := c.conn.Write(f); err != nil {
					t.Fatal(err)
				}
			}
			if tc.want == 0 {
				c.expect("pong")
				return
			}
			if code, msgs := c.expectClose(); code != tc.want {
				t.Fatalf("close code %d after %v, want %d", code, msgs, tc.want)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("close took %v", d)
			}
		})
	}
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"still":"here"}`))
	bystander.expectPayload(`{"still":"here"}`)
}

// floodCounts tallies what the server answered a flood with.
type floodCounts struct{ wsPongs, pongs, errors, events int }

// countUntil reads frames until the server has sent total answers
// (WebSocket pongs, Appwrite pongs and 1013 errors), or fails.
func (c *client) countUntil(total int, timeout time.Duration) (floodCounts, error) {
	var n floodCounts
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	for n.wsPongs+n.pongs+n.errors < total {
		f, err := ws.ReadFrame(c.r)
		if err != nil {
			return n, err
		}
		switch f.Header.OpCode {
		case ws.OpPong:
			n.wsPongs++
		case ws.OpText:
			var m message
			if err := json.Unmarshal(f.Payload, &m); err != nil {
				return n, err
			}
			switch m.Type {
			case "pong":
				n.pongs++
			case "error":
				if !strings.Contains(string(m.Data), `"code":1013`) {
					return n, fmt.Errorf("error %s", m.Data)
				}
				n.errors++
			case "event":
				n.events++
			}
		case ws.OpClose:
			code, reason := ws.ParseCloseFrameData(f.Payload)
			return n, fmt.Errorf("closed %d %q", code, reason)
		}
	}
	return n, nil
}

func TestPingFloodIsAnsweredOrLimitedOthersUnaffected(t *testing.T) {
	const perMinute = 100
	s := testNode(t, func(c *Config) { c.MessagesPerMinute = perMinute })
	bystander := dial(t, s, "project=p1&channels[]=files", nil)
	bystander.expect("connected")
	flooder := dial(t, s, "project=p1&channels[]=files", nil)
	flooder.expect("connected")

	// 10,000 WebSocket pings (with the largest control payload) and 1,000
	// Appwrite pings, written in one burst while the flooder reads.
	const wsPings, appPings = 10000, 1000
	writeErr := make(chan error, 1)
	go func() {
		ping := ws.MustCompileFrame(ws.MaskFrame(ws.NewPingFrame([]byte(strings.Repeat("p", 125)))))
		app := ws.MustCompileFrame(ws.MaskFrame(ws.NewTextFrame([]byte(`{"type":"ping"}`))))
		var buf []byte
		for i := 0; i < wsPings; i++ {
			buf = append(buf, ping...)
			if i%(wsPings/appPings) == 0 {
				buf = append(buf, app...)
			}
		}
		_, err := flooder.conn.Write(buf)
		writeErr <- err
	}()

	// Meanwhile the bystander's events arrive promptly.
	for i := 0; i < 5; i++ {
		start := time.Now()
		publish(t, s, event("p1", []string{"any"}, []string{"files"}, fmt.Sprintf(`{"n":%d}`, i)))
		bystander.expectPayload(fmt.Sprintf(`{"n":%d}`, i))
		if d := time.Since(start); d > time.Second {
			t.Errorf("bystander's event took %v during the flood", d)
		}
	}

	n, err := flooder.countUntil(wsPings+appPings, 15*time.Second)
	if err != nil {
		t.Fatalf("flooder after %+v: %v", n, err)
	}
	if err := <-writeErr; err != nil {
		t.Fatal(err)
	}
	// Every WebSocket ping is answered (each costs the node one small
	// write, and a flooder that stops reading is cut off as a slow
	// consumer, see below). Appwrite pings count against the message limit:
	// those over it get error 1013 and the connection stays open. A minute
	// boundary during the burst may grant one more minute's allowance.
	if n.wsPongs != wsPings || n.pongs < perMinute || n.pongs > 2*perMinute || n.pongs+n.errors != appPings {
		t.Fatalf("flood answered with %+v; want %d pongs, %d..%d Appwrite pongs, the rest 1013", n, wsPings, perMinute, 2*perMinute)
	}
	t.Logf("flood: %+v", n)
	// Still open, still subscribed.
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"after":"flood"}`))
	if _, err := flooder.tryRead(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestPingFloodWithoutReadingIsCutOffAsSlowConsumer(t *testing.T) {
	const maxQueue = 64 << 10
	// The flooder never reads its pongs: a small send buffer on the
	// server's side and a fixed receive buffer on the flooder's keep the
	// kernel from absorbing them on its behalf, whatever tcp_wmem says
	// (stock, the server's send buffer alone holds 3.9 MB).
	s := testNodeSendBuffer(t, 4<<10, func(c *Config) {
		c.MaxQueueBytes = maxQueue
	})
	bystander := dial(t, s, "project=p1&channels[]=files", nil)
	bystander.expect("connected")
	flooder := dialReadBuffer(t, s, "project=p1", testClientReadBuffer)
	flooder.expect("connected")

	ping := ws.MustCompileFrame(ws.MaskFrame(ws.NewPingFrame([]byte(strings.Repeat("p", 125)))))
	batch := make([]byte, 0, 1000*len(ping))
	for i := 0; i < 1000; i++ {
		batch = append(batch, ping...)
	}
	// Up to 100,000 pings (12 MiB of pongs owed): the node must give up on
	// the flooder long before, having queued at most maxQueue for it.
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; i < 100 && counterValue(t, s, "switchboard_slow_consumer_closes_total") == 0; i++ {
		_ = flooder.conn.SetWriteDeadline(time.Now().Add(time.Second))
		if _, err := flooder.conn.Write(batch); err != nil && !isTimeout(err) {
			break // the node closed the socket
		}
		if time.Now().After(deadline) {
			break
		}
	}
	for time.Now().Before(deadline) && counterValue(t, s, "switchboard_slow_consumer_closes_total") == 0 {
		time.Sleep(20 * time.Millisecond)
	}
	if got := counterValue(t, s, "switchboard_slow_consumer_closes_total"); got != 1 {
		t.Fatalf("slow consumer closes = %v, want 1", got)
	}
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"still":"here"}`))
	bystander.expectPayload(`{"still":"here"}`)
}

func TestTenThousandSubscriptionsAreBounded(t *testing.T) {
	const maxSubs = 100
	s := testNode(t, nil) // default --max-subscriptions 100, no message rate limit
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")

	// 2,500 subscriptions in one message (just under the 64 KiB message
	// limit): refused as a whole.
	var b strings.Builder
	b.WriteString(`{"type":"subscribe","data":[`)
	for i := 0; i < 2500; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"channels":["c%d"]}`, i)
	}
	b.WriteString(`]}`)
	c.send(b.String())
	if m := c.expect("error"); !strings.Contains(string(m.Data), "Too many subscriptions") {
		t.Fatalf("2,500 in one message: %s", m.Data)
	}
	if n := s.idx.Subscriptions(); n != 0 {
		t.Fatalf("index holds %d subscriptions after a refused message", n)
	}

	// 7,500 more, one per message, pipelined: the first 100 succeed, every
	// other one is refused and changes nothing.
	const singles = 7500
	type tally struct{ accepted, refused int }
	done := make(chan tally, 1)
	go func() {
		var n tally
		for i := 0; i < singles; i++ {
			m, err := c.tryRead(15 * time.Second)
			if err != nil {
				break
			}
			switch {
			case m.Type == "response":
				n.accepted++
			case m.Type == "error" && strings.Contains(string(m.Data), "Too many subscriptions"):
				n.refused++
			}
		}
		done <- n
	}()
	var msgs []byte
	for i := 0; i < singles; i++ {
		msgs = append(msgs, ws.MustCompileFrame(ws.MaskFrame(ws.NewTextFrame(fmt.Appendf(nil, `{"type":"subscribe","data":[{"subscriptionId":"s%d","channels":["ch%d"]}]}`, i, i))))...)
	}
	if _, err := c.conn.Write(msgs); err != nil {
		t.Fatal(err)
	}
	n := <-done
	if n.accepted != maxSubs || n.refused != singles-maxSubs {
		t.Fatalf("%d accepted, %d refused; want %d and %d", n.accepted, n.refused, maxSubs, singles-maxSubs)
	}
	if got := s.idx.Subscriptions(); got != maxSubs {
		t.Fatalf("index holds %d subscriptions, want %d", got, maxSubs)
	}
	publish(t, s, event("p1", []string{"any"}, []string{fmt.Sprint("ch", singles-1)}, `{"late":1}`))
	publish(t, s, event("p1", []string{"any"}, []string{fmt.Sprint("ch", maxSubs-1)}, `{"last":1}`))
	c.expectPayload(`{"last":1}`)
}

func TestHugeAndControlCharacterChannels(t *testing.T) {
	huge := strings.Repeat("c", 1<<20)

	// Default message limit: a 1 MiB channel name never gets buffered.
	s := testNode(t, nil)
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	// The node refuses on the frame header and closes while the payload is
	// still being written: the write may fail, the close frame arrives.
	go func() {
		_ = ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewTextFrame([]byte(`{"type":"subscribe","data":[{"channels":["`+huge+`"]}]}`))))
	}()
	if code, _ := c.expectClose(); code != ws.StatusMessageTooBig {
		t.Fatalf("1 MiB channel: close %d, want 1009", code)
	}
	// In the URL it is a request head over --max-header-bytes: the node
	// answers 431 and closes after reading about 8 KiB of it, so the
	// client, still writing, sees either the 431 or the reset that closing
	// on unread input causes; never an upgrade, never a wait.
	start := time.Now()
	_, err := tryDial(s, "project=p1&channels[]="+huge, nil)
	if err == nil || !(strings.Contains(err.Error(), "431") || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE)) {
		t.Fatalf("1 MiB channel in the URL: %v, want HTTP 431 or a reset", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("1 MiB channel in the URL refused after %v", d)
	}

	// With a limit that lets the message through, the name itself is
	// refused (1003) and the connection stays open.
	s2 := testNode(t, func(c *Config) { c.MaxMessageSize = 2 << 20 })
	c2 := dial(t, s2, "project=p1", nil)
	c2.expect("connected")
	for _, ch := range []string{huge, `a\u0000b`, `line\r\nbreak`, `\u001b[31mred`, `tab\there`, `\u007f`, ""} {
		c2.send(`{"type":"subscribe","data":[{"channels":["` + ch + `"]}]}`)
		m := c2.expect("error")
		if !strings.Contains(string(m.Data), `"code":1003`) || len(m.Data) > 1024 {
			t.Fatalf("channel %.40q: error %.200s (%d bytes)", ch, m.Data, len(m.Data))
		}
	}
	if n := s2.idx.Subscriptions(); n != 0 {
		t.Fatalf("index holds %d subscriptions", n)
	}
	c2.send(`{"type":"ping"}`)
	c2.expect("pong")
	// The same names in the URL refuse the handshake with 1003, then close.
	for _, ch := range []string{"a%00b", "line%0D%0Abreak", "%1B%5B31mred"} {
		c := dial(t, s2, "project=p1&channels[]="+ch, nil)
		code, msgs := c.expectClose()
		if code != ws.StatusPolicyViolation || len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), `"code":1003`) {
			t.Fatalf("URL channel %q: close %d after %v", ch, code, msgs)
		}
	}
}

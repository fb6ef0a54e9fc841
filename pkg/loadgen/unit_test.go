package loadgen

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
)

func TestHistogramQuantilesWithinPrecision(t *testing.T) {
	var h Histogram
	rng := rand.New(rand.NewPCG(1, 2))
	samples := make([]time.Duration, 100000)
	for i := range samples {
		samples[i] = time.Duration(rng.ExpFloat64() * float64(5*time.Millisecond))
		h.Record(samples[i])
	}
	slices.Sort(samples)
	for _, q := range []float64{.5, .9, .99} {
		exact := samples[int(q*float64(len(samples)))-1]
		got := h.Quantile(q)
		if diff := float64(got-exact) / float64(exact); diff > 0.04 || diff < -0.04 {
			t.Errorf("q%.2f = %v, exact %v (off by %.1f%%)", q, got, exact, diff*100)
		}
	}
	if h.Max != samples[len(samples)-1] || h.Quantile(1) != h.Max {
		t.Errorf("max %v, q1 %v, want %v", h.Max, h.Quantile(1), samples[len(samples)-1])
	}
	var m Histogram
	s := h.sparse()
	m.Merge(s.histogram())
	if m != h {
		t.Error("histogram changed through its JSON form")
	}
}

func TestConnSeeTellsReorderingFromDuplicates(t *testing.T) {
	var c conn
	for _, s := range []uint32{0, 1, 3, 2, 5, 4} {
		if !c.see(s) {
			t.Fatalf("seq %d reported as duplicate", s)
		}
	}
	if c.see(3) || c.see(0) {
		t.Error("repeat not reported as duplicate")
	}
	if c.recv != 6 || c.dups != 2 || c.next != 6 {
		t.Errorf("recv %d dups %d next %d, want 6 2 6", c.recv, c.dups, c.next)
	}
	c.see(200) // a gap: 6..199 missed
	if c.recv != 7 || !c.see(150) || c.see(100) {
		t.Errorf("after a gap: recv %d; 150 (in window) must count, 100 (outside) must not", c.recv)
	}
}

func TestClientFramesAreMaskedAndValid(t *testing.T) {
	for _, n := range []int{0, 5, 125, 126, 300, 70000} {
		payload := bytes.Repeat([]byte("x"), n)
		b := appendClientFrame(nil, opText, payload, [4]byte{1, 2, 3, 4})
		f, err := ws.ReadFrame(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("len %d: %v", n, err)
		}
		if !f.Header.Masked || !f.Header.Fin || f.Header.OpCode != ws.OpText {
			t.Fatalf("len %d: header %+v", n, f.Header)
		}
		ws.Cipher(f.Payload, f.Header.Mask, 0)
		if !bytes.Equal(f.Payload, payload) {
			t.Fatalf("len %d: payload does not round-trip", n)
		}
	}
}

func TestParseFrameHeader(t *testing.T) {
	var buf bytes.Buffer
	for _, n := range []int{3, 200, 70000} {
		buf.Reset()
		if err := ws.WriteFrame(&buf, ws.NewTextFrame(bytes.Repeat([]byte("y"), n))); err != nil {
			t.Fatal(err)
		}
		b := buf.Bytes()
		h, ok, err := parseFrameHeader(b)
		if err != nil || !ok || h.length != n || h.size+h.length != len(b) || !h.fin || h.opcode != opText {
			t.Fatalf("len %d: %+v ok=%v err=%v", n, h, ok, err)
		}
		if _, ok, _ := parseFrameHeader(b[:h.size-1]); ok {
			t.Fatalf("len %d: a cut header parsed", n)
		}
	}
	if _, _, err := parseFrameHeader([]byte{0x81, 0x80 | 3}); err == nil {
		t.Error("masked server frame accepted")
	}
}

func TestEventStamp(t *testing.T) {
	payload := appendPayload(nil, 42, 1700000000123456789, 0)
	frame := fmt.Sprintf(`{"type":"event","data":{"events":["bench.event"],"channels":["files"],"timestamp":"x","payload":%s,"subscriptions":["s"]}}`, payload)
	if string(messageType([]byte(frame))) != "event" {
		t.Fatalf("type %q", messageType([]byte(frame)))
	}
	seq, ts, ok := eventStamp([]byte(frame))
	if !ok || seq != 42 || ts != 1700000000123456789 {
		t.Fatalf("got %d %d %v", seq, ts, ok)
	}
	if _, _, ok := eventStamp([]byte(`{"type":"event","data":{"payload":{"$id":"f"}}}`)); ok {
		t.Error("foreign event parsed as the generator's")
	}
}

func TestPaddedPayloadIsValidJSONOfTheAskedSize(t *testing.T) {
	for _, size := range []int{0, 10, 100, 1024, 4096} {
		p := appendPayload(nil, 7, 1700000000123456789, size)
		var v map[string]any
		if err := json.Unmarshal(p, &v); err != nil {
			t.Fatalf("size %d: %s: %v", size, p, err)
		}
		if size >= 100 && len(p) != size {
			t.Errorf("size %d: payload is %d bytes", size, len(p))
		}
		seq, ts, ok := eventStamp(p)
		if !ok || seq != 7 || ts != 1700000000123456789 {
			t.Errorf("size %d: stamp %d %d %v", size, seq, ts, ok)
		}
	}
}

func TestStalledConnectionsAreSpreadEvenly(t *testing.T) {
	for _, tc := range []struct{ conns, stalled int }{{60, 10}, {11000, 1000}, {7, 3}, {5, 5}, {5, 0}} {
		cfg := Config{Conns: tc.conns, Stalled: tc.stalled}
		n, last, maxGap := 0, -1, 0
		for g := range tc.conns {
			if cfg.isStalled(g) {
				n++
				if last >= 0 {
					maxGap = max(maxGap, g-last)
				}
				last = g
			}
		}
		if n != tc.stalled {
			t.Errorf("%d of %d: %d stalled", tc.stalled, tc.conns, n)
		}
		if tc.stalled > 0 && maxGap > (tc.conns+tc.stalled-1)/tc.stalled {
			t.Errorf("%d of %d: gap %d between stalled connections", tc.stalled, tc.conns, maxGap)
		}
	}
}

func TestPlanSplitsByDescriptorBudget(t *testing.T) {
	cfg := Config{Conns: 250, MaxFDsPerWorker: 100, Loops: 1}
	sh, err := plan(&cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(sh) != 3 {
		t.Fatalf("%d shards, want 3", len(sh))
	}
	next := 0
	for _, s := range sh {
		if s.First != next || s.Count > 100-fdReserve-1 {
			t.Errorf("shard %+v", s)
		}
		next += s.Count
	}
	if next != 250 {
		t.Errorf("shards cover %d connections", next)
	}
	// One process would fit 80 connections, but not beside the
	// publisher's requests: the run splits.
	cfg = Config{Conns: 80, MaxFDsPerWorker: 100, Loops: 1}
	if sh, _ := plan(&cfg); len(sh) != 1 {
		t.Errorf("80 connections without publishing: %d shards, want 1", len(sh))
	}
	cfg.Events, cfg.PublishURL = 5, "http://127.0.0.1:1/v1/publish"
	if sh, _ := plan(&cfg); len(sh) != 2 {
		t.Errorf("80 connections and a publisher: %d shards, want 2", len(sh))
	}
}

// TestServerPingAndCloseAreAnswered runs against a bare WebSocket server
// that pings and then closes, and checks the generator's replies on the
// wire: a masked pong with the ping's payload, a masked close echoing the
// code.
func TestServerPingAndCloseAreAnswered(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverErr := make(chan error, 1)
	go func() { serverErr <- pingThenClose(ln) }()
	sum := run(t, Config{URL: fmt.Sprintf("ws://%s/v1/realtime?project=p&channels[]=c", ln.Addr()), Conns: 1, Hold: time.Second})
	if err := <-serverErr; err != nil {
		t.Fatal(err)
	}
	if c := sum.Counters; c.EverReady != 1 || c.ServerCloses != 1 || c.Dropped != 1 {
		t.Errorf("counters %+v: want one ready connection closed by the server", c)
	}
}

func pingThenClose(ln net.Listener) error {
	nc, err := ln.Accept()
	if err != nil {
		return err
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := ws.Upgrade(nc); err != nil {
		return fmt.Errorf("upgrade: %w", err)
	}
	if err := wsutil.WriteServerText(nc, []byte(`{"type":"connected","data":{"channels":["c"],"subscriptions":[],"user":null}}`)); err != nil {
		return err
	}
	time.Sleep(100 * time.Millisecond)
	if err := ws.WriteFrame(nc, ws.NewPingFrame([]byte("hello"))); err != nil {
		return err
	}
	f, err := ws.ReadFrame(nc)
	if err != nil {
		return fmt.Errorf("reading pong: %w", err)
	}
	ws.Cipher(f.Payload, f.Header.Mask, 0)
	if !f.Header.Masked || f.Header.OpCode != ws.OpPong || string(f.Payload) != "hello" {
		return fmt.Errorf("want a masked pong with hello, got %+v %q", f.Header, f.Payload)
	}
	if err := ws.WriteFrame(nc, ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusGoingAway, "bye"))); err != nil {
		return err
	}
	f, err = ws.ReadFrame(nc)
	if err != nil {
		return fmt.Errorf("reading close: %w", err)
	}
	ws.Cipher(f.Payload, f.Header.Mask, 0)
	if !f.Header.Masked || f.Header.OpCode != ws.OpClose || len(f.Payload) < 2 || binary.BigEndian.Uint16(f.Payload) != uint16(ws.StatusGoingAway) {
		return fmt.Errorf("want a masked close 1001, got %+v %x", f.Header, f.Payload)
	}
	return nil
}

// The generator's promise is well under 1 KB per connection; its table
// entry is the part that scales with connections.
func TestConnStateStaysSmall(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 64 {
		t.Fatalf("conn is %d bytes; keep it at most 64", n)
	}
}

// A server that writes a last message and hangs up without a close frame:
// the data and the FIN arrive in one edge, and the connection must still
// be seen to be gone.
func TestHangupAfterDataIsNoticed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	serverErr := make(chan error, 1)
	go func() {
		nc, err := ln.Accept()
		if err != nil {
			serverErr <- err
			return
		}
		defer nc.Close()
		if _, err := ws.Upgrade(nc); err != nil {
			serverErr <- err
			return
		}
		var b bytes.Buffer
		_ = wsutil.WriteServerText(&b, []byte(`{"type":"connected","data":{}}`))
		_, err = nc.Write(b.Bytes())
		if err == nil {
			time.Sleep(100 * time.Millisecond)
			b.Reset()
			_ = wsutil.WriteServerText(&b, []byte(`{"type":"pong"}`))
			_, err = nc.Write(b.Bytes())
		}
		serverErr <- err
	}()
	sum := run(t, Config{URL: fmt.Sprintf("ws://%s/v1/realtime?project=p&channels[]=c", ln.Addr()), Conns: 1, Hold: 500 * time.Millisecond})
	if err := <-serverErr; err != nil {
		t.Fatal(err)
	}
	if c := sum.Counters; c.EverReady != 1 || c.Dropped != 1 || c.ErrReset != 1 || c.Pongs != 1 {
		t.Errorf("counters %+v: want one ready connection, its pong read, then dropped by EOF", c)
	}
}

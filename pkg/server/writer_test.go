package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// TestConcurrentWritesKeepTheStreamWhole drives both writers of one
// connection at once — the write pool with events, and the read side with
// pong answers — while the client stops reading now and then, so that
// writes end part-way and resume on EPOLLOUT. The writev runs without the
// connection's lock, so this is where frames could interleave, be lost or
// be sent twice: every frame must parse, every event arrive once and in
// order, and every ping be answered. It is a stress test, so a broken rule
// shows only sometimes: with the one-writer-at-a-time check removed from
// flushLocked it failed 15 of 20 runs (19 of 20 under -race), frames
// arriving out of order.
//
// Writes end part-way because the server's sockets get a small send buffer,
// not because the client shrinks its receive buffer: a client window below
// the MSS stalled the stream in TCP's persist timer on hosts with the stock
// tcp_wmem (issue 12), and with the stock send buffer (3.9 MB right after
// the accept on loopback) and a normal client no write ends part-way at all.
func TestConcurrentWritesKeepTheStreamWhole(t *testing.T) {
	const clients, events, pings = 16, 2000, 2000
	mem := broker.NewMemory(events)
	s := testNode(t, func(c *Config) {
		c.Broker = mem
		c.MaxQueueBytes = 64 << 20 // pauses must not make it a slow consumer
		// 128 KiB once doubled: ~60 events, which the client's pauses fill
		// (~400 part-way writes a run), while most writevs still go through
		// whole, so that the two writers' writevs can meet. 8 KiB made
		// nearly every write end part-way (~1,500 a run) and the socket
		// sat full so often that the broken check was caught 0-3 times in 10.
		c.sendBuffer = 64 << 10
	})
	cs := make([]*client, clients)
	for i := range cs {
		cs[i] = dialReadBuffer(t, s, "project=p1&channels[]=files", testClientReadBuffer)
		cs[i].expect("connected")
	}

	pad := strings.Repeat("x", 2048)
	go func() {
		for i := 0; i < events; i++ {
			msg := event("p1", []string{"any"}, []string{"files"}, fmt.Sprintf(`{"n":%d,"pad":%q}`, i, pad))
			if err := mem.Publish(context.Background(), []byte(msg)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	errs := make(chan error, 2*clients)
	for _, c := range cs {
		go func() {
			ping := ws.MustCompileFrame(ws.MaskFrame(ws.NewPingFrame([]byte("p"))))
			for i := 0; i < pings; i++ {
				if _, err := c.conn.Write(ping); err != nil {
					errs <- fmt.Errorf("ping %d: %w", i, err)
					return
				}
				// Spread the pings over the event stream: sent in one
				// burst, 2,000 pings of 7 bytes arrive in a read or two, and
				// the pongs meet only the first events' writes.
				time.Sleep(200 * time.Microsecond)
			}
			errs <- nil
		}()
		go func() { errs <- readWhole(c, events, pings) }()
	}
	for range 2 * clients {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// The test proves something only if writes did end part-way and
	// resume on EPOLLOUT.
	if n := counterValue(t, s, "switchboard_send_buffer_full_total"); n == 0 {
		t.Fatal("no write ended part-way: the send buffer never filled")
	} else {
		t.Logf("%v writes ended part-way and resumed on EPOLLOUT", n)
	}
}

// readWhole reads c's frames, pausing now and then, until it has seen
// events in order and pings pongs, and fails on anything else.
func readWhole(c *client, events, pongs int) error {
	_ = c.conn.SetReadDeadline(time.Now().Add(60 * time.Second))
	next, got := 0, 0
	for frames := 0; next < events || got < pongs; frames++ {
		if frames%20 == 19 {
			time.Sleep(time.Millisecond) // let the server's writes block
		}
		f, err := ws.ReadFrame(c.r)
		if err != nil {
			return fmt.Errorf("after %d events and %d pongs: %w", next, got, err)
		}
		switch f.Header.OpCode {
		case ws.OpPong:
			got++
		case ws.OpText:
			var m struct {
				Type string `json:"type"`
				Data struct {
					Payload struct {
						N int `json:"n"`
					} `json:"payload"`
				} `json:"data"`
			}
			if err := json.Unmarshal(f.Payload, &m); err != nil || m.Type != "event" {
				return fmt.Errorf("frame %d: %v: %.80q", frames, err, f.Payload)
			}
			if m.Data.Payload.N != next {
				return fmt.Errorf("event %d arrived when %d was due", m.Data.Payload.N, next)
			}
			next++
		default:
			return fmt.Errorf("unexpected frame %v", f.Header.OpCode)
		}
	}
	return nil
}

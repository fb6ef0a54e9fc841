package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
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
// flushLocked it failed 4 of 10 runs (1 of 10 under -race).
func TestConcurrentWritesKeepTheStreamWhole(t *testing.T) {
	const clients, events, pings = 16, 2000, 2000
	mem := broker.NewMemory(events)
	s := testNode(t, func(c *Config) {
		c.Broker = mem
		c.MaxQueueBytes = 64 << 20 // pauses must not make it a slow consumer
	})
	cs := make([]*client, clients)
	for i := range cs {
		cs[i] = dial(t, s, "project=p1&channels[]=files", nil)
		cs[i].expect("connected")
		// A small receive buffer makes the server's writes end part-way
		// often.
		if err := cs[i].conn.(*net.TCPConn).SetReadBuffer(4096); err != nil {
			t.Fatal(err)
		}
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

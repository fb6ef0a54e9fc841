package server

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// queueConn is a live connection whose socket is one end of a socket pair,
// on a node with a running waiter and write pool, but no listener: the
// send queue's paths run exactly as on a served connection.
func queueConn(t *testing.T, maxQueue, sndbuf int) (*conn, *os.File) {
	t.Helper()
	s, err := New(Config{Broker: broker.NewMemory(1), MaxQueueBytes: maxQueue})
	if err != nil {
		t.Fatal(err)
	}
	s.pool = newWritePool(2, 64)
	if s.waiter, err = newPoller(unix.EPOLLOUT, (*conn).schedule); err != nil {
		t.Fatal(err)
	}
	go s.waiter.run()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if sndbuf > 0 {
		if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, sndbuf); err != nil {
			t.Fatal(err)
		}
	}
	// Non-blocking, so that os.File polls it and read deadlines work.
	peer := os.NewFile(uintptr(fds[1]), "peer")
	if err := peer.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	c := &conn{Context: context.Background(), srv: s, fd: fds[0], state: stateLive}
	c.id = s.idx.Insert(c)
	s.open.Add(1)
	t.Cleanup(func() {
		c.shut(closeReset)
		s.waiter.close()
		s.pool.stop()
		s.quarantine.closeAll()
		peer.Close()
	})
	return c, peer
}

// queueEvent queues f as the router does: enqueue, then hand the
// connection to the write pool unless it is there or waits for EPOLLOUT.
func queueEvent(c *conn, f outFrame) {
	c.mu.Lock()
	c.enqueueLocked(f)
	wake := c.q.wake(c.state == stateClosing)
	c.mu.Unlock()
	if wake {
		c.srv.pool.ch <- c
	}
}

// invariantHolds checks sendQueue's stated invariant on c.
func invariantHolds(c *conn) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	q := &c.q
	if len(q.frames) > 0 && !q.scheduled && !q.waitOut && !q.writing && c.state != stateClosed {
		return fmt.Errorf("%d frames queued, and nobody is to send them (state %v)", len(q.frames), c.state)
	}
	return nil
}

// Writes to a socket whose buffer fills end part-way and resume on
// EPOLLOUT; replies written at once by their sender (the read side's path)
// interleave with events from the write pool; every frame arrives whole,
// in order and once, and the invariant holds whenever it is looked at.
func TestSendQueueResumesOnEPOLLOUTWithFramesWhole(t *testing.T) {
	c, peer := queueConn(t, 64<<20, 4096)
	const events, replies = 3000, 300
	pad := bytes.Repeat([]byte("x"), 1500)

	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range events {
			queueEvent(c, outFrame{head: compileFrame(ws.OpText, fmt.Appendf(nil, "e%05d%s", i, pad))})
		}
	}()
	go func() {
		defer wg.Done()
		for i := range replies {
			c.send(outFrame{head: compileFrame(ws.OpBinary, fmt.Appendf(nil, "r%05d", i))})
		}
	}()
	stop := make(chan struct{})
	checked := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				checked <- nil
				return
			default:
			}
			if err := invariantHolds(c); err != nil {
				checked <- err
				return
			}
			time.Sleep(50 * time.Microsecond)
		}
	}()

	r := bufio.NewReader(peer)
	nextE, nextR := 0, 0
	for nextE < events || nextR < replies {
		if (nextE+nextR)%100 == 99 {
			time.Sleep(2 * time.Millisecond) // let the socket fill
		}
		f, err := ws.ReadFrame(r)
		if err != nil {
			t.Fatalf("after %d events and %d replies: %v", nextE, nextR, err)
		}
		switch f.Header.OpCode {
		case ws.OpText:
			if want := fmt.Sprintf("e%05d", nextE); !bytes.HasPrefix(f.Payload, []byte(want)) || len(f.Payload) != 6+len(pad) {
				t.Fatalf("event %.6q arrived when %s was due", f.Payload, want)
			}
			nextE++
		case ws.OpBinary:
			if want := fmt.Sprintf("r%05d", nextR); string(f.Payload) != want {
				t.Fatalf("reply %q arrived when %s was due", f.Payload, want)
			}
			nextR++
		}
	}
	wg.Wait()
	close(stop)
	if err := <-checked; err != nil {
		t.Fatal(err)
	}
	if got := counterValue(t, c.srv, "switchboard_send_buffer_full_total"); got == 0 {
		t.Fatal("no write ended part-way: the test did not exercise EPOLLOUT")
	} else {
		t.Logf("%v writes ended part-way and resumed on EPOLLOUT", got)
	}
}

// A client that does not read has its queue cut at the byte limit: the
// frames queued beyond what the socket took are dropped, the slow-consumer
// close (1008) follows the last whole frame, and the connection closes
// without waiting for the client.
func TestSendQueueCutsASlowConsumer(t *testing.T) {
	c, peer := queueConn(t, 64<<10, 4096)
	frame := outFrame{head: compileFrame(ws.OpText, bytes.Repeat([]byte("y"), 4000))}
	for i := 0; i < 100; i++ { // 400 KB: far over socket buffer and limit
		queueEvent(c, frame)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		c.mu.Lock()
		st := c.state
		c.mu.Unlock()
		if st == stateClosed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slow consumer still %v", st)
		}
		time.Sleep(time.Millisecond)
	}
	if got := counterValue(t, c.srv, "switchboard_slow_consumer_closes_total"); got != 1 {
		t.Fatalf("slow consumer closes = %v", got)
	}
	// The client, reading at last, finds whole frames, fewer than were
	// queued, and then the end of the stream (the close frame too, when
	// the socket had room for it).
	r := bufio.NewReader(peer)
	n := 0
	for {
		f, err := ws.ReadFrame(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d frames: %v", n, err)
		}
		if f.Header.OpCode == ws.OpClose {
			if code, _ := ws.ParseCloseFrameData(f.Payload); code != ws.StatusPolicyViolation {
				t.Fatalf("close code %d", code)
			}
			continue
		}
		if !bytes.Equal(f.Payload, frame.head[4:]) {
			t.Fatalf("frame %d changed", n)
		}
		n++
	}
	if n >= 100 {
		t.Fatalf("all %d frames arrived", n)
	}
}

// The byte limit as push applies it: the cut keeps a frame already half
// written (so that what follows it still parses) and ends the queue with
// the slow-consumer close; a single frame over the limit is still queued
// when nothing else is.
func TestSendQueuePush(t *testing.T) {
	f := func(n int) outFrame { return outFrame{head: make([]byte, n)} }
	var q sendQueue
	if err := q.push(f(300), 100); err != nil || q.bytes != 300 {
		t.Fatalf("lone oversized frame: %v, %d bytes", err, q.bytes)
	}
	q = sendQueue{}
	_ = q.push(f(40), 100)
	_ = q.push(f(40), 100)
	if err := q.push(f(40), 100); err != errSlowConsumer {
		t.Fatalf("over the limit: %v", err)
	}
	if len(q.frames) != 1 || !bytes.Equal(q.frames[0].head, closeSlowConsumer.frame(0, "")) || q.bytes != len(closeSlowConsumer.frame(0, "")) {
		t.Fatalf("cut queue %d frames, %d bytes", len(q.frames), q.bytes)
	}
	q = sendQueue{}
	_ = q.push(f(40), 100)
	_ = q.push(f(40), 100)
	q.off = 10 // the first frame is half written
	if err := q.push(f(40), 100); err != errSlowConsumer || len(q.frames) != 2 || len(q.frames[0].head) != 40 || q.bytes != 40+len(closeSlowConsumer.frame(0, "")) {
		t.Fatalf("cut with a half-written frame: %v, %d frames, %d bytes", err, len(q.frames), q.bytes)
	}
}

// A close asked for while a write is in progress waits for the writer: the
// fd stays open under the writev, and the writer, ending its write, is the
// one that finishes the close (settleLocked).
func TestCloseWhileWritingWaitsForTheWriter(t *testing.T) {
	c, _ := queueConn(t, 1<<20, 0)
	c.mu.Lock()
	c.q.writing = true // as sendQueue.write sets it before its writev
	c.mu.Unlock()

	c.shut(closeReset)
	c.mu.Lock()
	st := c.state
	c.mu.Unlock()
	if st != stateClosing {
		t.Fatalf("state %v while a write runs, want closing", st)
	}
	if _, err := unix.FcntlInt(uintptr(c.fd), unix.F_GETFD, 0); err != nil {
		t.Fatalf("fd closed under a writer: %v", err)
	}
	if c.srv.open.Load() != 0 {
		t.Fatalf("open = %d: a closing connection still counts", c.srv.open.Load())
	}

	c.mu.Lock()
	c.q.writing = false // the writev returned
	c.settleLocked()
	c.mu.Lock()
	st = c.state
	c.mu.Unlock()
	if st != stateClosed {
		t.Fatalf("state %v after the writer ended, want closed", st)
	}
}

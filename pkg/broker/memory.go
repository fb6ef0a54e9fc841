package broker

import (
	"context"
	"fmt"
)

// Memory is the embedded single-node broker: messages published on this
// process reach this process's handler. It needs nothing running beside the
// server, which makes it the default.
type Memory struct {
	queue chan []byte
}

// NewMemory returns a Memory broker that buffers up to size messages between
// Publish and the handler; a publisher waits (or gives up with its context)
// when the buffer is full, so a burst is absorbed but never grows memory
// without bound.
func NewMemory(size int) *Memory {
	if size < 1 {
		size = 1
	}
	return &Memory{queue: make(chan []byte, size)}
}

// Publish implements Broker. The message is copied, so the caller may reuse msg.
func (m *Memory) Publish(ctx context.Context, msg []byte) error {
	cp := append([]byte(nil), msg...)
	select {
	case m.queue <- cp:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("memory broker: publish: %w", ctx.Err())
	}
}

// Run implements Broker.
func (m *Memory) Run(ctx context.Context, h Handler) error {
	for {
		select {
		case msg := <-m.queue:
			h(msg)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Ready implements Broker: the in-process queue is always available.
func (m *Memory) Ready() error { return nil }

// Backlog implements Backlogged: messages published and not yet handled.
func (m *Memory) Backlog() int { return len(m.queue) }

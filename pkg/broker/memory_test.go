package broker

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestMemoryDeliversInOrder(t *testing.T) {
	m := NewMemory(16)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan string, 16)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx, func(msg []byte) { got <- string(msg) }) }()

	buf := []byte("one")
	if err := m.Publish(ctx, buf); err != nil {
		t.Fatal(err)
	}
	copy(buf, "xxx") // Publish must have copied the message.
	if err := m.Publish(ctx, []byte("two")); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"one", "two"} {
		select {
		case s := <-got:
			if s != want {
				t.Fatalf("got %q, want %q", s, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("timed out waiting for %q", want)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run returned %v, want context.Canceled", err)
	}
}

func TestMemoryPublishRespectsContextWhenFull(t *testing.T) {
	m := NewMemory(1)
	if err := m.Publish(context.Background(), []byte("a")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := m.Publish(ctx, []byte("b")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Publish on a full queue returned %v, want deadline exceeded", err)
	}
	if err := m.Ready(); err != nil {
		t.Fatalf("Ready = %v", err)
	}
}

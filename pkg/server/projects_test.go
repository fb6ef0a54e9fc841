package server

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// awareBroker records what a project-aware broker is asked for.
type awareBroker struct {
	*broker.Memory
	mu    sync.Mutex
	calls []string
}

func (b *awareBroker) Want(p string)   { b.mu.Lock(); b.calls = append(b.calls, "+"+p); b.mu.Unlock() }
func (b *awareBroker) Unwant(p string) { b.mu.Lock(); b.calls = append(b.calls, "-"+p); b.mu.Unlock() }

func (b *awareBroker) waitFor(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b.mu.Lock()
		got := slices.Clone(b.calls)
		b.mu.Unlock()
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("broker calls %v, want %v", got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestProjectAwareBrokerFollowsConnections(t *testing.T) {
	b := &awareBroker{Memory: broker.NewMemory(16)}
	s := testNode(t, func(c *Config) { c.Broker = b })
	a1 := dial(t, s, "project=pa", nil)
	a1.expect("connected")
	a2 := dial(t, s, "project=pa", nil)
	a2.expect("connected")
	z := dial(t, s, "project=pz", nil)
	z.expect("connected")
	b.waitFor(t, "+pa", "+pz")
	a1.conn.Close()
	z.conn.Close()
	b.waitFor(t, "+pa", "+pz", "-pz")
	a2.conn.Close()
	b.waitFor(t, "+pa", "+pz", "-pz", "-pa")
}

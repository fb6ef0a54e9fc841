package broker

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metricValue reads a gauge or counter from reg.
func metricValue(t testing.TB, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	t.Fatalf("metric %s is not registered", name)
	return 0
}

// runBroker runs b until the test ends and returns what its handler
// receives. Cleanup checks that Run returns context.Canceled promptly.
func runBroker(t testing.TB, b Broker) <-chan string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	msgs := make(chan string, 4096)
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx, func(m []byte) { msgs <- string(m) }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) {
				t.Errorf("Run returned %v, want context.Canceled", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("Run did not return within 5 s of cancel")
		}
	})
	return msgs
}

// expect reads the next messages from msgs and compares them with want.
func expect(t testing.TB, who string, msgs <-chan string, want ...string) {
	t.Helper()
	for i, w := range want {
		select {
		case got := <-msgs:
			if got != w {
				t.Fatalf("%s: message %d = %q, want %q", who, i, got, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: timed out waiting for message %d (%q)", who, i, w)
		}
	}
}

// expectNothingQueued fails if msgs holds a message.
func expectNothingQueued(t testing.TB, who string, msgs <-chan string) {
	t.Helper()
	select {
	case got := <-msgs:
		t.Fatalf("%s received an unexpected message %q", who, got)
	default:
	}
}

package server

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

func TestLatencyBucketBounds(t *testing.T) {
	for i := 0; i < latencyBuckets; i++ {
		bound := int64(latencyBase << i)
		if got := bucket(bound); got != i {
			t.Errorf("bucket(%v) = %d, want %d (its own bound)", time.Duration(bound), got, i)
		}
		if got := bucket(bound + 1); got != min(i+1, latencyBuckets) {
			t.Errorf("bucket(%v+1ns) = %d, want %d", time.Duration(bound), got, i+1)
		}
	}
	for _, ns := range []int64{0, 1, int64(latencyBase) - 1} {
		if got := bucket(ns); got != 0 {
			t.Errorf("bucket(%dns) = %d, want 0", ns, got)
		}
	}
	if got := bucket(int64(time.Hour)); got != latencyBuckets {
		t.Errorf("bucket(1h) = %d, want the +Inf bucket %d", got, latencyBuckets)
	}
}

// latencySamples reads switchboard_delivery_latency_seconds from the
// node's registry: its count, sum and bucket bounds.
func latencySamples(t *testing.T, s *Server) (count uint64, sum time.Duration, bounds []float64) {
	t.Helper()
	mfs, err := s.cfg.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "switchboard_delivery_latency_seconds" {
			h := mf.GetMetric()[0].GetHistogram()
			for _, b := range h.GetBucket() {
				bounds = append(bounds, b.GetUpperBound())
			}
			return h.GetSampleCount(), time.Duration(h.GetSampleSum() * 1e9), bounds
		}
	}
	t.Fatal("switchboard_delivery_latency_seconds is not registered")
	return 0, 0, nil
}

// Every event frame written is one sample, replies are none, and a
// delivery's latency lies inside the span its client measured (publish
// call to frame read): the node's sum is at most the clients'.
func TestDeliveryLatencyCountsEveryDeliveryOverTheWire(t *testing.T) {
	s := testNode(t, nil)
	a := dial(t, s, "project=p1&channels[]=files", nil)
	b := dial(t, s, "project=p1&channels[]=files", nil)
	other := dial(t, s, "project=p1&channels[]=documents", nil)
	for _, c := range []*client{a, b, other} {
		c.expect("connected")
	}
	const events = 20
	var clientSum time.Duration
	for i := 0; i < events; i++ {
		start := time.Now()
		publish(t, s, event("p1", []string{"any"}, []string{"files"}, fmt.Sprintf(`{"n":%d}`, i)))
		for _, c := range []*client{a, b} {
			c.expectPayload(fmt.Sprintf(`{"n":%d}`, i))
			clientSum += time.Since(start)
		}
	}
	other.send(`{"type":"ping"}`)
	other.expect("pong")

	const want = 2 * events
	var count uint64
	var nodeSum time.Duration
	var bounds []float64
	// A client may read its frame before the writer, back from writev,
	// has recorded it.
	redistest.Eventually(t, 5*time.Second, "every delivery recorded", func() bool {
		count, nodeSum, bounds = latencySamples(t, s)
		return count >= want
	})
	if count != want {
		t.Fatalf("%d samples, want %d: one per event frame written, none for the replies", count, want)
	}
	if len(bounds) != latencyBuckets || bounds[0] != 10e-6 || bounds[len(bounds)-1] < 10 {
		t.Fatalf("bucket bounds %v: want %d from 10µs to past 10s", bounds, latencyBuckets)
	}
	// The slack covers a writer preempted between its writev and its clock
	// read, which the client does not wait for.
	slack := want * time.Millisecond
	if nodeSum <= 0 || nodeSum > clientSum+slack {
		t.Fatalf("node's latency sum %v, clients' %v (+%v slack): want 0 < node <= clients", nodeSum, clientSum, slack)
	}
	t.Logf("mean delivery latency: node %v, client (publish call to read) %v", nodeSum/want, clientSum/want)
}

// A client that stops reading leaves frames queued while its socket waits
// for EPOLLOUT: the gauge shows their age, no older than the first publish,
// and falls back to 0 once the client reads its queue dry.
func TestSendQueueOldestSecondsWhileAClientStalls(t *testing.T) {
	s := testNodeSendBuffer(t, 64<<10, func(c *Config) {
		c.MaxQueueBytes = 8 << 20 // never cut: the frames must stay queued
	})
	stalled := dialReadBuffer(t, s, "project=p1&channels[]=files", testClientReadBuffer)
	stalled.expect("connected")
	oldest := func() time.Duration {
		v, err := metricSum(s, "switchboard_send_queue_oldest_seconds")
		if err != nil {
			t.Fatal(err)
		}
		return time.Duration(v * 1e9)
	}
	if got := oldest(); got != 0 {
		t.Fatalf("oldest queued frame %v before any event, want 0", got)
	}
	big := `{"blob":"` + strings.Repeat("x", 32<<10) + `"}`
	const events = 40 // 1.3 MiB: well past both socket buffers
	start := time.Now()
	for i := 0; i < events; i++ {
		publish(t, s, event("p1", []string{"any"}, []string{"files"}, big))
	}
	redistest.Eventually(t, 10*time.Second, "the stalled socket waits for EPOLLOUT", func() bool { return oldest() > 0 })
	if got, bound := oldest(), time.Since(start); got > bound {
		t.Fatalf("oldest queued frame %v old, but the first event was published %v ago", got, bound)
	}
	for i := 0; i < events; i++ {
		stalled.expect("event")
	}
	redistest.Eventually(t, 10*time.Second, "the gauge back to 0 once the queue drained", func() bool { return oldest() == 0 })
}

// While the router is busy (here: held), backbone messages wait in the
// broker's buffer and the backlog gauge counts them, for the embedded
// broker and for Redis; they are all delivered once it is free.
func TestRouterBacklogCountsMessagesWaitingForTheRouter(t *testing.T) {
	rs := redistest.Start(t)
	for name, s := range map[string]*Server{"memory": testNode(t, nil), "redis": redisNode(t, rs.URL(), nil)} {
		t.Run(name, func(t *testing.T) {
			c := dial(t, s, "project=p1&channels[]=files", nil)
			c.expect("connected")
			const n = 5
			s.router.mu.Lock()
			for i := 0; i < n; i++ {
				msg := event("p1", []string{"any"}, []string{"files"}, fmt.Sprintf(`{"n":%d}`, i))
				if err := s.cfg.Broker.Publish(context.Background(), []byte(msg)); err != nil {
					s.router.mu.Unlock()
					t.Fatal(err)
				}
			}
			// The first message is in route, waiting for the lock; the
			// rest wait in the buffer.
			backlog := func() float64 { return counterValue(t, s, "switchboard_router_backlog") }
			ok := false
			for deadline := time.Now().Add(10 * time.Second); !ok && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				ok = backlog() == n-1
			}
			s.router.mu.Unlock()
			if !ok {
				t.Fatalf("backlog %v while the router was held, want %d", backlog(), n-1)
			}
			for i := 0; i < n; i++ {
				c.expectPayload(fmt.Sprintf(`{"n":%d}`, i))
			}
			if got := backlog(); got != 0 {
				t.Fatalf("backlog %v once every message was delivered, want 0", got)
			}
		})
	}
}

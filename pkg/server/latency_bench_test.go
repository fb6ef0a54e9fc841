package server

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// BenchmarkRedisEndToEndLatency measures publish -> frame read by a client
// on another node: the event is PUBLISHed through node A's broker at
// 1,000 msgs/s and read by a WebSocket client of node B. It reports the
// p50/p99/max latency over b.N events (use -benchtime 2000x).
func BenchmarkRedisEndToEndLatency(b *testing.B) {
	rs := redistest.Start(b)
	a := redisNode(b, rs.URL(), nil)
	n := redisNode(b, rs.URL(), nil)
	c, err := tryDial(n, "project=p1&channels[]=files", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.conn.Close()
	if m, err := c.tryRead(5 * time.Second); err != nil || m.Type != "connected" {
		b.Fatalf("connect: %v %v", m, err)
	}
	lat := make([]time.Duration, 0, b.N)
	done := make(chan error, 1)
	go func() {
		for len(lat) < b.N {
			m, err := c.tryRead(10 * time.Second)
			if err != nil {
				done <- err
				return
			}
			var d struct {
				Payload struct{ Sent int64 } `json:"payload"`
			}
			if err := json.Unmarshal(m.Data, &d); err != nil {
				done <- err
				return
			}
			lat = append(lat, time.Since(time.Unix(0, d.Payload.Sent)))
		}
		done <- nil
	}()
	tick := time.NewTicker(time.Millisecond) // 1,000 msgs/s
	defer tick.Stop()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		<-tick.C
		msg := event("p1", []string{"any"}, []string{"files"}, fmt.Sprintf(`{"Sent":%d}`, time.Now().UnixNano()))
		if err := a.cfg.Broker.Publish(context.Background(), []byte(msg)); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	slices.Sort(lat)
	q := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Microseconds()) }
	b.ReportMetric(q(0.50), "p50-µs")
	b.ReportMetric(q(0.99), "p99-µs")
	b.ReportMetric(float64(lat[len(lat)-1].Microseconds()), "max-µs")
}

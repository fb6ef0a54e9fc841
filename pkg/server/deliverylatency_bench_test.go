package server

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkDeliveryLatency is the histogram's cost per delivery on the
// write side, from two goroutines at once as the write pool's workers
// record (b.RunParallel, GOMAXPROCS of them), each on its own sockets.
// With "frames=1" every writev carries one event frame (the fan-out case:
// each recipient gets its frame in a writev of its own), which is the
// worst case: one clock read and two atomic adds per delivery.
// "frames=8/events=8" is a busy connection's batch of eight events,
// "frames=8/events=1" eight frames of one event in one batch (as when a
// run of them was queued on the same connection before a write).
// prometheus.Histogram.Observe per delivery is beside them for comparison.
func BenchmarkDeliveryLatency(b *testing.B) {
	d := newDeliveryLatency()
	batch := func(events int) []outFrame {
		frames := make([]outFrame, 8)
		for i := range frames {
			frames[i].born = d.stamp() - int64(i%events)*int64(time.Microsecond)
		}
		return frames
	}
	var fds atomic.Int64
	for _, bc := range []struct {
		name   string
		frames []outFrame
	}{
		{"frames=1", batch(1)[:1]},
		{"frames=8/events=8", batch(8)},
		{"frames=8/events=1", batch(1)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				fd := int(fds.Add(1))
				for pb.Next() {
					d.written(bc.frames, fd)
				}
			})
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(bc.frames)), "ns/delivery")
		})
	}
	b.Run("prometheus.Histogram/frames=1", func(b *testing.B) {
		h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "h", Buckets: prometheus.ExponentialBuckets(10e-6, 2, latencyBuckets)})
		born := d.stamp()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				h.Observe(float64(d.stamp()-born) / 1e9)
			}
		})
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/delivery")
	})
}

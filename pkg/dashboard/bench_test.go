package dashboard

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkTick is one second's work of the dashboard: a gather of a
// registry shaped like a node's (its counters, without the Go and process
// collectors, which the server keeps out of it), the process's own
// figures, the sample and the cluster rows ("closed"), and with a page
// open also the tick's JSON pushed to it ("open"). Its cost is per second,
// whatever the deliveries: ns/op / 1e9 is the share of one core it takes.
func BenchmarkTick(b *testing.B) {
	b.Run("closed", func(b *testing.B) { benchmarkTick(b, false) })
	b.Run("open", func(b *testing.B) { benchmarkTick(b, true) })
}

func benchmarkTick(b *testing.B, open bool) {
	reg := prometheus.NewRegistry()
	for _, name := range []string{metricEvents, metricDeliveries, metricSlow, metricWritev} {
		reg.MustRegister(prometheus.NewCounter(prometheus.CounterOpts{Name: name}))
	}
	reg.MustRegister(prometheus.NewGauge(prometheus.GaugeOpts{Name: metricConns}))
	up := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricUpgrades}, []string{"result"})
	up.WithLabelValues("ok").Inc()
	up.WithLabelValues("rejected").Inc()
	reg.MustRegister(up)
	lat := prometheus.NewHistogram(prometheus.HistogramOpts{Name: metricLatency, Buckets: prometheus.ExponentialBuckets(10e-6, 2, 21)})
	reg.MustRegister(lat)
	top := make([]ProjectCount, topProjects)
	for i := range top {
		top[i] = ProjectCount{Project: "project-" + string(rune('a'+i)), Conns: 1000 - i}
	}
	d, err := New(Options{Node: "host:9505 pid 1", Gatherer: reg, TopProjects: func(int) []ProjectCount { return top }})
	if err != nil {
		b.Fatal(err)
	}
	page := make(chan []byte, 1)
	if open {
		d.streams[page] = struct{}{}
	}
	now := time.Now()
	for b.Loop() {
		lat.Observe(0.001)
		now = now.Add(time.Second)
		d.tick(now)
		if open {
			<-page
		}
	}
}

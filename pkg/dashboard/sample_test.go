package dashboard

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestSampleRatesAndQuantiles drives a registry holding the node's metric
// names and checks that rates come from counter deltas over the elapsed
// time and latency quantiles from the bucket deltas of the last interval
// only (observations before it must not count).
func TestSampleRatesAndQuantiles(t *testing.T) {
	reg := prometheus.NewRegistry()
	conns := prometheus.NewGauge(prometheus.GaugeOpts{Name: metricConns})
	upgrades := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricUpgrades}, []string{"result"})
	events := prometheus.NewCounter(prometheus.CounterOpts{Name: metricEvents})
	deliveries := prometheus.NewCounter(prometheus.CounterOpts{Name: metricDeliveries})
	latency := prometheus.NewHistogram(prometheus.HistogramOpts{Name: metricLatency, Buckets: []float64{0.001, 0.002, 0.005, 0.01}})
	oldest := prometheus.NewGauge(prometheus.GaugeOpts{Name: metricOldest})
	reg.MustRegister(conns, upgrades, events, deliveries, latency, oldest)
	s := sampler{gatherer: reg}
	t0 := time.Unix(1000, 0)

	for range 1000 {
		latency.Observe(5) // before the first sample: must not weigh on any quantile
	}
	first, err := s.take(t0)
	if err != nil {
		t.Fatal(err)
	}
	if first.Events.Known() || first.P50.Known() {
		t.Fatalf("first sample has rates without a previous one: %+v", first)
	}
	if first.Writev.Known() || first.Backlog.Known() {
		t.Fatalf("figures whose metrics are not registered must be unknown: %+v", first)
	}
	if first.RSS < 1<<20 || first.Heap < 1<<10 || first.Goroutines < 1 {
		t.Fatalf("the process's own figures: RSS %v, heap %v, goroutines %v", first.RSS, first.Heap, first.Goroutines)
	}

	conns.Set(2000)
	oldest.Set(0.25)
	upgrades.WithLabelValues("ok").Add(300)
	upgrades.WithLabelValues("rejected").Add(4)
	events.Add(100)
	deliveries.Add(4000)
	for range 99 {
		latency.Observe(0.0015)
	}
	latency.Observe(0.009)
	second, err := s.take(t0.Add(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name      string
		got, want Figure
	}{
		// The upgrades vector had no children at the first sample: zero
		// then, so this second has a rate.
		{"connections", second.Conns, 2000}, {"oldest queued", second.Oldest, 0.25}, {"upgrades/s", second.Upgrades, 150}, {"rejected/s", second.Rejected, 2},
		{"events/s", second.Events, 50}, {"deliveries/s", second.Deliveries, 2000},
		// rank 50 of 99 in (1 ms, 2 ms]: 1 ms + 1 ms x 50/99.
		{"p50", second.P50, Figure(0.001 + 0.001*50/99.0)},
		// rank 99: the last of the 99 in (1 ms, 2 ms].
		{"p99", second.P99, 0.002},
	} {
		if math.Abs(float64(c.got-c.want)) > 1e-9 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}

	third, err := s.take(t0.Add(3 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if third.P50.Known() || third.Deliveries != 0 {
		t.Fatalf("a second without deliveries has no latency and 0 deliveries/s: %+v", third)
	}
}

// TestQuantileBeyondLastBound: observations above every finite bound
// answer the highest bound, never +Inf (JSON has no infinity).
func TestQuantileBeyondLastBound(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: metricLatency, Buckets: []float64{0.001, 0.01}})
	reg.MustRegister(h)
	s := sampler{gatherer: reg}
	if _, err := s.take(time.Unix(0, 0)); err != nil {
		t.Fatal(err)
	}
	h.Observe(3)
	got, err := s.take(time.Unix(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	if got.P99 != 0.01 {
		t.Fatalf("p99 above the last bound = %v, want the bound 0.01", got.P99)
	}
}

func TestFigureJSON(t *testing.T) {
	b, err := json.Marshal(Sample{Node: "n", Conns: 1234567, P50: unknown, Events: 12.345678})
	if err != nil {
		t.Fatal(err)
	}
	var back Sample
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Conns != 1234567 || back.P50.Known() || math.Abs(float64(back.Events)-12.3457) > 1e-9 {
		t.Fatalf("round trip of %s = %+v", b, back)
	}
}

// TestSampleClosesByReason: closes/s come per reason from the labelled
// counter's deltas; a reason first counted in an interval has its rate
// from zero.
func TestSampleClosesByReason(t *testing.T) {
	reg := prometheus.NewRegistry()
	closes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: metricCloses}, []string{"reason"})
	reg.MustRegister(closes)
	closes.WithLabelValues("idle").Add(10)
	s := sampler{gatherer: reg}
	t0 := time.Unix(1000, 0)
	first, err := s.take(t0)
	if err != nil {
		t.Fatal(err)
	}
	if first.Closes["idle"].Known() {
		t.Fatalf("first sample has a rate: %v", first.Closes)
	}
	closes.WithLabelValues("idle").Add(4)
	closes.WithLabelValues("slow_consumer").Add(2)
	second, err := s.take(t0.Add(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(second.Closes) != 2 || second.Closes["idle"] != 2 || second.Closes["slow_consumer"] != 1 {
		t.Fatalf("closes/s = %v, want idle 2, slow_consumer 1", second.Closes)
	}
	// The counters themselves, for the page's closes table.
	if len(second.ClosesTotal) != 2 || second.ClosesTotal["idle"] != 14 || second.ClosesTotal["slow_consumer"] != 2 {
		t.Fatalf("closes total = %v, want idle 14, slow_consumer 2", second.ClosesTotal)
	}
	b, _ := json.Marshal(second)
	var back Sample
	if err := json.Unmarshal(b, &back); err != nil || back.Closes["idle"] != 2 {
		t.Fatalf("round trip %s: %v %v", b, back.Closes, err)
	}
}

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/switchboard-rt/switchboard/pkg/loadgen"
)

// latencyHistogram is a node's switchboard_delivery_latency_seconds as
// scraped: cumulative counts by upper bound, in the exposition's order.
type latencyHistogram struct {
	bounds []float64 // seconds; the last is +Inf
	counts []float64
	count  float64
	sum    float64
}

func scrapeLatency(t *testing.T, n *node) latencyHistogram {
	t.Helper()
	var h latencyHistogram
	for _, s := range n.scrape(t) {
		switch name := s.series; {
		case name == "switchboard_delivery_latency_seconds_count":
			h.count = s.value
		case name == "switchboard_delivery_latency_seconds_sum":
			h.sum = s.value
		case strings.HasPrefix(name, `switchboard_delivery_latency_seconds_bucket{le="`):
			le := strings.TrimSuffix(strings.TrimPrefix(name, `switchboard_delivery_latency_seconds_bucket{le="`), `"}`)
			b, err := strconv.ParseFloat(le, 64)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			h.bounds, h.counts = append(h.bounds, b), append(h.counts, s.value)
		}
	}
	if len(h.bounds) == 0 || !math.IsInf(h.bounds[len(h.bounds)-1], 1) {
		t.Fatalf("no switchboard_delivery_latency_seconds histogram on /metrics: %+v", h)
	}
	return h
}

// quantile is Prometheus's histogram_quantile: linear within the bucket
// that holds rank q.
func (h latencyHistogram) quantile(q float64) float64 {
	rank := q * h.count
	lower, below := 0.0, 0.0
	for i, b := range h.bounds {
		if h.counts[i] >= rank {
			if math.IsInf(b, 1) {
				return lower
			}
			return lower + (b-lower)*(rank-below)/(h.counts[i]-below)
		}
		lower, below = b, h.counts[i]
	}
	return lower
}

// under is the share of deliveries in buckets bounded by at most twice d
// (seconds): one bucket of slack for the buckets' resolution.
func (h latencyHistogram) under(d float64) float64 {
	for i, b := range h.bounds {
		if b >= 2*d {
			return h.counts[i] / h.count
		}
	}
	return 1
}

// TestDeliveryLatencyAgreesWithTheLoadGenerator runs `switchboard bench`
// against `switchboard serve` and puts the node's delivery-latency
// histogram beside the load generator's latency of the same deliveries.
// The node's span (arrival at its router to writev) lies inside the load
// generator's (publish to frame parsed: the publish's HTTP request and
// the client's read are outside the node's), so the node must have one
// sample per delivery and its p50 and p99 must be at most the load
// generator's, to within one bucket.
func TestDeliveryLatencyAgreesWithTheLoadGenerator(t *testing.T) {
	n := startNode(t, "--connects-per-ip", "-1")
	const conns, events = 200, 20
	cmd := exec.Command(switchboardBin, "bench",
		"--url", fmt.Sprintf("ws://%s/v1/realtime?project=p1&channels[]=files", n.addr),
		"--conns", fmt.Sprint(conns), "--rate", "0", "--hold", "0s",
		"--events", fmt.Sprint(events), "--publish-rate", "50",
		"--publish-url", "http://"+n.admin+"/v1/publish")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench: %v\n%s", err, stderr.String())
	}
	var sum loadgen.Summary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		t.Fatalf("bench output: %v: %q", err, stdout.String())
	}
	if ev := sum.Events; ev == nil || ev.Received != conns*events || ev.Duplicates != 0 {
		t.Fatalf("events %+v, want %d deliveries", sum.Events, conns*events)
	}
	h := scrapeLatency(t, n)
	lg := sum.Events.Latency
	t.Logf("delivery latency, node (router to writev): p50 %.3f ms, p99 %.3f ms, mean %.3f ms over %.0f deliveries",
		h.quantile(.5)*1e3, h.quantile(.99)*1e3, h.sum/h.count*1e3, h.count)
	t.Logf("delivery latency, load generator (publish to frame parsed): p50 %.3f ms, p99 %.3f ms over %d deliveries", lg.P50, lg.P99, lg.Count)
	if h.count != conns*events {
		t.Fatalf("the node recorded %.0f deliveries, the load generator received %d", h.count, conns*events)
	}
	if h.sum <= 0 {
		t.Fatalf("the node's latency sum is %v", h.sum)
	}
	if share := h.under(lg.P50 / 1e3); share < .5 {
		t.Errorf("only %.1f%% of the node's deliveries within twice the load generator's p50 (%.3f ms)", share*100, lg.P50)
	}
	if share := h.under(lg.P99 / 1e3); share < .99 {
		t.Errorf("only %.1f%% of the node's deliveries within twice the load generator's p99 (%.3f ms)", share*100, lg.P99)
	}
}

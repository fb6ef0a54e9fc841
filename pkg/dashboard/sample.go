package dashboard

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime/metrics"
	"slices"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Figure is one number of a Sample. NaN means "not known" (the metric is
// not registered, or a rate has no previous second yet) and is written as
// JSON null, which the page shows as "n/a" and charts as a gap.
type Figure float64

// unknown is the Figure of a figure this node does not have.
var unknown = Figure(math.NaN())

// Known reports whether f holds a value.
func (f Figure) Known() bool { return !math.IsNaN(float64(f)) }

// MarshalJSON writes the number, or null when it is not known.
func (f Figure) MarshalJSON() ([]byte, error) {
	if !f.Known() || math.IsInf(float64(f), 0) {
		return []byte("null"), nil
	}
	v := float64(f)
	if v == math.Trunc(v) && math.Abs(v) < 1<<53 {
		return strconv.AppendInt(nil, int64(v), 10), nil // counts stay exact
	}
	return strconv.AppendFloat(nil, v, 'g', 6, 64), nil // rates and seconds: 6 digits is plenty
}

// UnmarshalJSON reads a number, or null as not known.
func (f *Figure) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*f = unknown
		return nil
	}
	v, err := strconv.ParseFloat(string(b), 64)
	if err != nil {
		return fmt.Errorf("figure %q: %w", b, err)
	}
	*f = Figure(v)
	return nil
}

// ProjectCount is one project's upgraded connections on a node.
type ProjectCount struct {
	Project string `json:"p"`
	Conns   int    `json:"n"`
}

// ProjectValue is a project and its count of one usage metric.
type ProjectValue struct {
	Project string `json:"p"`
	Value   int64  `json:"n"`
}

// UsageTop is this node's top projects by each usage metric (Appwrite's
// realtime.connections, .messages.sent, .inbound, .outbound) over the
// last full minute and the current one so far, most first.
type UsageTop struct {
	Connections []ProjectValue `json:"conns"`
	Messages    []ProjectValue `json:"msgs"`
	Inbound     []ProjectValue `json:"in"`  // bytes
	Outbound    []ProjectValue `json:"out"` // bytes
	// Since is the start of the earlier of the two minutes, Unix
	// milliseconds: GET /v1/usage from it to a minute later answers the
	// same span.
	Since int64 `json:"since"`
}

// Sample is one second of one node's figures: what the page charts and
// what a node publishes to the others (compact JSON, about 650 bytes with
// ten projects). Rates are per second over the last interval; Dropped and
// SlowCloses are rates too, so a chart shows when they happened.
type Sample struct {
	Node string `json:"node"`
	At   int64  `json:"at"` // unix milliseconds

	Conns      Figure            `json:"conns"`            // open client sockets
	Upgrades   Figure            `json:"upg"`              // upgrades/s that succeeded
	Rejected   Figure            `json:"rej"`              // upgrades/s refused
	Events     Figure            `json:"ev"`               // backbone events/s routed
	Deliveries Figure            `json:"del"`              // event frames/s queued for recipients
	P50        Figure            `json:"p50"`              // delivery latency, seconds, over the last interval
	P99        Figure            `json:"p99"`              //
	Oldest     Figure            `json:"oldest"`           // seconds the oldest frame waiting on a socket has waited
	Backlog    Figure            `json:"backlog"`          // backbone messages waiting for the router
	SlowCloses Figure            `json:"slow"`             // slow-consumer closes/s
	Closes     map[string]Figure `json:"closes,omitempty"` // connections ended/s, by reason (switchboard_connection_closes_total)
	// ClosesTotal is connections ended since the node started, by reason:
	// the counter itself, so the page can show exact numbers beside the
	// chart. This node's page only, like Usage.
	ClosesTotal map[string]Figure `json:"closed,omitempty"`
	Writev      Figure            `json:"writev"`         // writev calls/s
	RSS         Figure            `json:"rss"`            // resident bytes
	Heap        Figure            `json:"heap"`           // live heap bytes
	Goroutines  Figure            `json:"gor"`            //
	BrokerUp    bool              `json:"up"`             // the broker can carry events
	BrokerErr   string            `json:"berr,omitempty"` // why not, when it cannot
	Dropped     Figure            `json:"drop"`           // backbone messages/s dropped by the broker
	Top         []ProjectCount    `json:"top"`            // projects with the most connections, most first
	// Usage is this node's page only: never published to the peers,
	// whose rows do not show it (and the sample stays under 1 KB).
	Usage *UsageTop `json:"usage,omitempty"`
}

// maxSampleBytes bounds a peer's published sample; a larger message on the
// nodes channel is not one of ours.
const maxSampleBytes = 16 << 10

// maxNodeName bounds a node's name in a peer's sample.
const maxNodeName = 256

// decodeSample parses a peer's sample from the nodes channel, refusing
// what no node of ours would send.
func decodeSample(b []byte) (Sample, error) {
	var s Sample
	if len(b) > maxSampleBytes {
		return s, fmt.Errorf("sample of %d bytes is over %d", len(b), maxSampleBytes)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("sample: %w", err)
	}
	if s.Node == "" || len(s.Node) > maxNodeName {
		return s, errors.New("sample: node name is empty or over 256 bytes")
	}
	if len(s.Top) > topProjects {
		s.Top = s.Top[:topProjects]
	}
	return s, nil
}

// Metric names the sampler reads from the node's registry. The delivery
// latency histogram, the queue and backlog gauges and the broker's drops
// are optional: a figure whose metric is absent is unknown. RSS, heap and
// goroutines are read from the process itself (readProcess), not from the
// process collector: see Options.Gatherer.
const (
	metricConns      = "switchboard_connections"
	metricUpgrades   = "switchboard_upgrades_total"
	metricEvents     = "switchboard_events_total"
	metricDeliveries = "switchboard_deliveries_total"
	metricSlow       = "switchboard_slow_consumer_closes_total"
	metricCloses     = "switchboard_connection_closes_total"
	metricWritev     = "switchboard_writev_calls_total"
	metricLatency    = "switchboard_delivery_latency_seconds"
	metricOldest     = "switchboard_send_queue_oldest_seconds"
	metricBacklog    = "switchboard_router_backlog"
	metricDropped    = "broker_dropped_messages_total"
)

// counters are the raw counter values of one gather, kept to turn the
// next gather's values into rates.
type counters struct {
	at                                     time.Time
	upgrades, rejected, events, deliveries Figure
	slow, writev, dropped                  Figure
	closes                                 map[string]Figure // by reason
	latency                                *dto.Histogram
}

// sampler turns gathers of a registry into Samples.
type sampler struct {
	gatherer prometheus.Gatherer
	prev     counters
}

// take gathers the registry at now and returns the figures, rates taken
// against the previous call.
func (s *sampler) take(now time.Time) (Sample, error) {
	mfs, err := s.gatherer.Gather()
	if err != nil && len(mfs) == 0 {
		return Sample{}, fmt.Errorf("gather metrics: %w", err)
	}
	byName := make(map[string]*dto.MetricFamily, len(mfs))
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	cur := counters{
		at:         now,
		upgrades:   sum(byName[metricUpgrades], "result", "ok"),
		rejected:   sum(byName[metricUpgrades], "result", "rejected"),
		events:     sum(byName[metricEvents], "", ""),
		deliveries: sum(byName[metricDeliveries], "", ""),
		slow:       sum(byName[metricSlow], "", ""),
		writev:     sum(byName[metricWritev], "", ""),
		dropped:    sum(byName[metricDropped], "", ""),
		closes:     byLabel(byName[metricCloses], "reason"),
		latency:    histogram(byName[metricLatency]),
	}
	p := s.prev
	var dt float64 // the first sample has no rates
	if !p.at.IsZero() {
		dt = now.Sub(p.at).Seconds()
	}
	smp := Sample{
		At:         now.UnixMilli(),
		Conns:      sum(byName[metricConns], "", ""),
		Upgrades:   rate(p.upgrades, cur.upgrades, dt),
		Rejected:   rate(p.rejected, cur.rejected, dt),
		Events:     rate(p.events, cur.events, dt),
		Deliveries: rate(p.deliveries, cur.deliveries, dt),
		SlowCloses: rate(p.slow, cur.slow, dt),
		Writev:     rate(p.writev, cur.writev, dt),
		Dropped:    rate(p.dropped, cur.dropped, dt),
		P50:        quantile(0.50, p.latency, cur.latency),
		P99:        quantile(0.99, p.latency, cur.latency),
		Oldest:     sum(byName[metricOldest], "", ""),
		Backlog:    sum(byName[metricBacklog], "", ""),
	}
	if cur.closes != nil {
		smp.Closes = make(map[string]Figure, len(cur.closes))
		for reason, v := range cur.closes {
			prev, ok := p.closes[reason]
			if !ok && p.closes != nil {
				prev = 0 // a reason first counted in this interval
			} else if !ok {
				prev = unknown
			}
			smp.Closes[reason] = rate(prev, v, dt)
		}
		smp.ClosesTotal = cur.closes
	}
	smp.RSS, smp.Heap, smp.Goroutines = readProcess()
	s.prev = cur
	return smp, nil
}

// sum adds the values of mf's series (those whose label has the given
// value, when label is set). Absent mf is unknown, except for a labelled
// series: a vector without children is not gathered at all, so its
// absence means nothing counted yet.
func sum(mf *dto.MetricFamily, label, value string) Figure {
	if mf == nil {
		if label != "" {
			return 0
		}
		return unknown
	}
	var total float64
	for _, m := range mf.GetMetric() {
		if label != "" && !hasLabel(m, label, value) {
			continue
		}
		switch {
		case m.GetCounter() != nil:
			total += m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			total += m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			total += m.GetUntyped().GetValue()
		}
	}
	return Figure(total)
}

// byLabel is mf's counters by the value of one label; nil when mf is
// absent. The node's reasons are bounded (a dozen and a half).
func byLabel(mf *dto.MetricFamily, label string) map[string]Figure {
	if mf == nil {
		return nil
	}
	out := make(map[string]Figure, len(mf.GetMetric()))
	for _, m := range mf.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == label {
				out[lp.GetValue()] += Figure(m.GetCounter().GetValue())
			}
		}
	}
	return out
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, lp := range m.GetLabel() {
		if lp.GetName() == name {
			return lp.GetValue() == value
		}
	}
	return false
}

// rate is the per-second increase from prev to cur over dt seconds;
// unknown on the first sample, and across a counter reset.
func rate(prev, cur Figure, dt float64) Figure {
	if !prev.Known() || !cur.Known() || dt <= 0 || cur < prev {
		return unknown
	}
	return Figure(float64(cur-prev) / dt)
}

// histogram is mf's first series (the latency histogram has no labels).
func histogram(mf *dto.MetricFamily) *dto.Histogram {
	if mf == nil || len(mf.GetMetric()) == 0 {
		return nil
	}
	return mf.GetMetric()[0].GetHistogram()
}

// quantile estimates the q-quantile of the observations made between two
// gathers of a histogram, from the increase of each bucket, interpolating
// linearly inside the bucket as Prometheus's histogram_quantile does.
// Unknown when either gather lacks the histogram or nothing was observed
// in between (no delivery in that second: there is no latency to show).
func quantile(q float64, prev, cur *dto.Histogram) Figure {
	if prev == nil || cur == nil {
		return unknown
	}
	total := float64(cur.GetSampleCount()) - float64(prev.GetSampleCount())
	if total <= 0 {
		return unknown
	}
	before := make(map[float64]uint64, len(prev.GetBucket()))
	for _, b := range prev.GetBucket() {
		before[b.GetUpperBound()] = b.GetCumulativeCount()
	}
	buckets := slices.SortedFunc(slices.Values(cur.GetBucket()), func(a, b *dto.Bucket) int {
		return cmp.Compare(a.GetUpperBound(), b.GetUpperBound())
	})
	rank := q * total
	lower, below := 0.0, 0.0
	for _, b := range buckets {
		upper := b.GetUpperBound()
		n := float64(b.GetCumulativeCount()) - float64(before[upper])
		if n >= rank {
			if math.IsInf(upper, 1) {
				return Figure(lower) // beyond the last bound: the bound is all we know
			}
			if n == below {
				return Figure(upper)
			}
			return Figure(lower + (upper-lower)*(rank-below)/(n-below))
		}
		lower, below = upper, n
	}
	// Above the last finite bound (the +Inf bucket is implicit).
	return Figure(lower)
}

// processMetrics are the runtime/metrics read for the heap and goroutines:
// reading them stops nothing (runtime.ReadMemStats would stop the world).
var processMetrics = [...]string{"/memory/classes/heap/objects:bytes", "/sched/goroutines:goroutines"}

// readProcess returns this process's resident bytes (/proc/self/statm:
// one small read), live heap bytes and goroutines; unknown where the
// system does not say.
func readProcess() (rss, heap, goroutines Figure) {
	rss = unknown
	if b, err := os.ReadFile("/proc/self/statm"); err == nil {
		if f := bytes.Fields(b); len(f) > 1 {
			if pages, err := strconv.ParseInt(string(f[1]), 10, 64); err == nil {
				rss = Figure(pages * int64(os.Getpagesize()))
			}
		}
	}
	samples := []metrics.Sample{{Name: processMetrics[0]}, {Name: processMetrics[1]}}
	metrics.Read(samples)
	return rss, uintFigure(samples[0].Value), uintFigure(samples[1].Value)
}

func uintFigure(v metrics.Value) Figure {
	if v.Kind() != metrics.KindUint64 {
		return unknown
	}
	return Figure(v.Uint64())
}

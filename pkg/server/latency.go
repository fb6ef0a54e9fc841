package server

import (
	"math/bits"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// deliveryLatency is switchboard_delivery_latency_seconds: for every event
// frame written, the time from the event's arrival at the router to the
// writev that finished sending the frame.
//
// It is its own collector rather than a prometheus.Histogram for two
// reasons, both measured per delivery (BenchmarkDeliveryLatency):
//   - the frames of one event that leave in one writev batch share their
//     latency, so a run of them is one bucket add of n (a prometheus
//     Histogram has no weighted Observe: it would take n Observes);
//   - its counters are striped by fd over cache-line-padded stripes, so
//     the write workers rarely add to the same line (a Histogram's atomics
//     are shared by every worker).
//
// Every delivery is counted, none sampled: the series' count is the event
// frames written.
type deliveryLatency struct {
	epoch   time.Time // arrival stamps are nanoseconds since epoch (monotonic)
	desc    *prometheus.Desc
	stripes [latencyStripes]latencyStripe
}

// latencyBuckets is the number of finite buckets: upper bounds 10 µs·2^i
// for i in [0, latencyBuckets), so 10 µs to 10.5 s. Doubling bounds make
// the bucket of a latency one bit length (see bucket); finer bounds would
// cost a search per run and more series per node.
const (
	latencyBuckets  = 21
	latencyBase     = 10 * time.Microsecond
	latencyStripes  = 8 // a power of two: the stripe is fd&(latencyStripes-1)
	latencyBoundary = 256
)

// latencyStripe is one stripe's counters: buckets (the last is +Inf, not
// cumulative) and the sum in nanoseconds, padded to whole cache lines so
// that stripes never share one.
type latencyStripe struct {
	counts [latencyBuckets + 1]atomic.Uint64
	sumNs  atomic.Uint64
	_      [latencyBoundary - (latencyBuckets+2)*8]byte
}

func newDeliveryLatency() *deliveryLatency {
	return &deliveryLatency{
		epoch: time.Now(),
		desc: prometheus.NewDesc("switchboard_delivery_latency_seconds",
			"Time from an event's arrival at the router (from the backbone) to the writev that sent its frame to a client, per delivery; "+
				"the time in the broker's buffer before that is switchboard_router_backlog's.", nil, nil),
	}
}

// stamp is an arrival time for outFrame.born: never 0, which marks a frame
// that is not an event's.
func (d *deliveryLatency) stamp() int64 {
	return int64(time.Since(d.epoch)) | 1
}

// bucket is the index of the first bucket whose bound is at least ns.
func bucket(ns int64) int {
	if ns <= int64(latencyBase) {
		return 0
	}
	return min(bits.Len64(uint64(ns-1)/uint64(latencyBase)), latencyBuckets)
}

// written records the event frames of sent, which one writev batch (to fd)
// just finished. Frames of the same event sit next to each other (a
// connection gets an event once) or not at all, so it walks runs of equal
// stamps; a non-event frame (born 0) is not counted.
func (d *deliveryLatency) written(sent []outFrame, fd int) {
	var now int64
	st := &d.stripes[fd&(latencyStripes-1)]
	for i := 0; i < len(sent); {
		born := sent[i].born
		j := i + 1
		for j < len(sent) && sent[j].born == born {
			j++
		}
		if born != 0 {
			if now == 0 {
				now = d.stamp()
			}
			ns := max(now-born, 0)
			n := uint64(j - i)
			st.counts[bucket(ns)].Add(n)
			st.sumNs.Add(n * uint64(ns))
		}
		i = j
	}
}

// Describe implements prometheus.Collector.
func (d *deliveryLatency) Describe(ch chan<- *prometheus.Desc) { ch <- d.desc }

// Collect implements prometheus.Collector: the stripes summed into one
// cumulative histogram. A scrape during writes may see a sum a few
// deliveries ahead of or behind the buckets; the count is always theirs.
func (d *deliveryLatency) Collect(ch chan<- prometheus.Metric) {
	var counts [latencyBuckets + 1]uint64
	var sumNs uint64
	for i := range d.stripes {
		st := &d.stripes[i]
		for b := range counts {
			counts[b] += st.counts[b].Load()
		}
		sumNs += st.sumNs.Load()
	}
	buckets := make(map[float64]uint64, latencyBuckets)
	var total uint64
	for b := 0; b < latencyBuckets; b++ {
		total += counts[b]
		buckets[(latencyBase << b).Seconds()] = total
	}
	total += counts[latencyBuckets]
	ch <- prometheus.MustNewConstHistogram(d.desc, total, float64(sumNs)/1e9, buckets)
}

// maxOldestScan bounds the waiting sockets one scrape of
// switchboard_send_queue_oldest_seconds looks at: past it the gauge is the
// oldest of a sample (the map's random iteration order picks it), so a
// scrape during a storm of slow clients costs at most this many lock
// round trips (about 50 ns each) rather than one per waiting socket.
const maxOldestScan = 4096

// oldestQueued is the age of the oldest event frame queued on a socket that
// waits for EPOLLOUT, or 0 when none waits. A waiting queue's frames do not
// move until the socket drains, so its first stamped frame is its oldest.
func (s *Server) oldestQueued() time.Duration {
	if !s.serving.Load() { // s.waiter is set before serving, and stays
		return 0
	}
	var oldest int64
	for _, c := range s.waiter.sample(maxOldestScan) {
		c.mu.Lock()
		if c.q.waitOut {
			if born := c.q.oldestBorn(); born != 0 && (oldest == 0 || born < oldest) {
				oldest = born
			}
		}
		c.mu.Unlock()
	}
	if oldest == 0 {
		return 0
	}
	return time.Duration(max(s.latency.stamp()-oldest, 0))
}

// registerDeliveryMetrics adds the delivery-path series that are computed
// rather than counted: the latency histogram, the oldest queued frame
// (computed on scrape), and the router's backlog when the broker buffers.
func (s *Server) registerDeliveryMetrics(reg prometheus.Registerer) {
	reg.MustRegister(s.latency, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "switchboard_send_queue_oldest_seconds",
		Help: "Age of the oldest event frame queued on a socket that waits for EPOLLOUT (its client reads slower than events come); " +
			"0 when none waits. Over " + itoa(maxOldestScan) + " waiting sockets, the oldest of a sample of that many.",
	}, func() float64 { return s.oldestQueued().Seconds() }))
	if b, ok := s.cfg.Broker.(broker.Backlogged); ok {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "switchboard_router_backlog",
			Help: "Backbone messages received and waiting in the broker's buffer for the router.",
		}, func() float64 { return float64(b.Backlog()) }))
	}
}

// Package dashboard is a node's live dashboard: one page on the admin
// listener, embedded in the binary (it loads nothing from elsewhere), fed
// once a second over Server-Sent Events with the node's figures, and, when
// nodes share a backbone, with every node's.
//
// It owns sampling the node's Prometheus registry once a second into a
// Sample (rates from counter deltas, latency quantiles from histogram
// bucket deltas), the last minutes of samples, the table of peer nodes
// and their publishing, and the page's HTTP handler. It reads the
// node's figures only through the registry and three small functions the
// node hands it: it never touches the event path, and its cost per second
// does not grow with the number of deliveries.
package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

const (
	// interval is how often the node samples, publishes and pushes to the
	// page: the issue asks for a page that moves at least once a second.
	interval = time.Second
	// keep is how many samples the page gets when it opens: five minutes.
	keep = 300
	// goneAfter: a peer silent this long is shown gone. Peers publish every
	// interval, so a dead one is marked within goneAfter+interval (4 s).
	goneAfter = 3 * time.Second
	// forgetAfter: a gone peer leaves the table after this.
	forgetAfter = 5 * time.Minute
	// maxPeers bounds the peer table: whatever is published on the nodes
	// channel, it costs no more than this many rows.
	maxPeers = 1024
	// topProjects is how many projects a sample names.
	topProjects = 10
	// topUsage is how many projects the page lists by each usage metric.
	topUsage = 5
	// maxStreams bounds the open event streams (pages); more get 503.
	maxStreams = 64
	// writeTimeout bounds one push to a page that stopped reading.
	writeTimeout = 10 * time.Second
)

//go:embed assets
var assets embed.FS

// Options configures New.
type Options struct {
	// Node names this node in the cluster view; required.
	Node string
	// Gatherer is the node's registry, gathered every second; required.
	// It should not hold the process collector: that one lists
	// /proc/self/fd on kernels before 6.2 (measured 0.8 µs a descriptor,
	// so most of a second at 1M connections). The dashboard reads RSS,
	// heap and goroutines itself.
	Gatherer prometheus.Gatherer
	// Ready reports the broker's state (nil: up); nil: always up.
	Ready func() error
	// TopProjects returns up to n projects with the most connections,
	// most first; nil: none shown.
	TopProjects func(n int) []ProjectCount
	// TopUsage returns up to n projects by each usage metric; nil: none
	// shown.
	TopUsage func(n int) UsageTop
	// Peers carries the samples between nodes (a broker on its own
	// channel, never the event channel); nil: this node alone.
	Peers broker.Broker
	// Logger; nil discards.
	Logger *zap.Logger
}

// Dashboard samples a node and serves its page. Run drives it.
type Dashboard struct {
	opts    Options
	log     *zap.Logger
	sampler sampler
	outbox  chan []byte // the latest sample for the peers, published beside the ticks
	stopped chan struct{}

	mu      sync.Mutex
	self    []Sample // last keep samples of this node, oldest first
	totals  []Total  // last keep cluster totals, oldest first
	rows    []NodeRow
	peers   map[string]*peer
	streams map[chan []byte]struct{}
	badPeer uint64 // peer messages that were not samples
}

// peer is the last word from another node.
type peer struct {
	sample Sample
	seen   time.Time // by this node's clock: peers' clocks may differ
}

// NodeRow is one line of the cluster table.
type NodeRow struct {
	Sample
	Gone bool    `json:"gone"`
	Age  float64 `json:"age"` // seconds since its last sample arrived
}

// Total is the cluster's figures for one second: the sums over the nodes
// that reported.
type Total struct {
	At         int64  `json:"at"`
	Nodes      int    `json:"nodes"` // reporting
	Gone       int    `json:"gone"`
	Conns      Figure `json:"conns"`
	Upgrades   Figure `json:"upg"`
	Deliveries Figure `json:"del"`
	SlowCloses Figure `json:"slow"`
	RSS        Figure `json:"rss"`
}

// tick is what a page gets every interval.
type tick struct {
	Self  Sample    `json:"self"`
	Total Total     `json:"total"`
	Nodes []NodeRow `json:"nodes"`
}

// history is what a page gets when it opens.
type history struct {
	Node    string    `json:"node"`
	Cluster bool      `json:"cluster"`
	Self    []Sample  `json:"self"`
	Totals  []Total   `json:"totals"`
	Nodes   []NodeRow `json:"nodes"`
}

// New builds a dashboard; Run starts sampling.
func New(o Options) (*Dashboard, error) {
	if o.Node == "" || o.Gatherer == nil {
		return nil, errors.New("dashboard: a node name and a gatherer are required")
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	return &Dashboard{
		opts:    o,
		log:     o.Logger,
		sampler: sampler{gatherer: o.Gatherer},
		outbox:  make(chan []byte, 1),
		stopped: make(chan struct{}),
		peers:   make(map[string]*peer),
		streams: make(map[chan []byte]struct{}),
		// Empty, not nil: a page that opens before the first sample (the
		// node has just started; a page reconnecting after a restart
		// often has) gets [] to iterate, where null stopped its script.
		self:   []Sample{},
		totals: []Total{},
		rows:   []NodeRow{},
	}, nil
}

// Run samples every second until ctx ends, publishing to and listening
// for the peers when there are any; open pages are closed when it returns.
func (d *Dashboard) Run(ctx context.Context) {
	defer close(d.stopped)
	var wg sync.WaitGroup
	if d.opts.Peers != nil {
		wg.Add(2)
		go func() { defer wg.Done(); d.listen(ctx) }()
		go func() { defer wg.Done(); d.publish(ctx) }()
	}
	defer wg.Wait()
	t := time.NewTicker(interval)
	defer t.Stop()
	d.tick(time.Now())
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			d.tick(now)
		}
	}
}

// tick takes a sample, offers it to the peers, and pushes it to the pages.
func (d *Dashboard) tick(now time.Time) {
	s, err := d.sampler.take(now)
	if err != nil {
		d.log.Warn("dashboard sample", zap.Error(err))
	}
	s.Node = d.opts.Node
	s.BrokerUp = true
	if d.opts.Ready != nil {
		if err := d.opts.Ready(); err != nil {
			s.BrokerUp, s.BrokerErr = false, err.Error()
		}
	}
	if d.opts.TopProjects != nil {
		s.Top = d.opts.TopProjects(topProjects)
	}
	if d.opts.Peers != nil {
		pub := s
		pub.ClosesTotal = nil // this node's page only: the sample stays under 1 KB
		if b, err := json.Marshal(pub); err == nil {
			// s.Usage is still nil here: set below, for this node's page.
			offer(d.outbox, b)
		}
	}
	if d.opts.TopUsage != nil {
		u := d.opts.TopUsage(topUsage)
		s.Usage = &u
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	d.self = appendKept(d.self, s)
	d.rows = append(d.rows[:0], NodeRow{Sample: s})
	for name, p := range d.peers {
		age := now.Sub(p.seen)
		if age > forgetAfter {
			delete(d.peers, name)
			continue
		}
		d.rows = append(d.rows, NodeRow{Sample: p.sample, Gone: age > goneAfter, Age: age.Seconds()})
	}
	slices.SortFunc(d.rows[1:], func(a, b NodeRow) int { return strings.Compare(a.Node, b.Node) })
	total := sumRows(now, d.rows)
	d.totals = appendKept(d.totals, total)
	if len(d.streams) == 0 {
		return // nobody is watching: the history is enough for the next page
	}
	msg, err := json.Marshal(tick{Self: s, Total: total, Nodes: d.rows})
	if err != nil {
		d.log.Warn("dashboard encode", zap.Error(err))
		return
	}
	for ch := range d.streams {
		offer(ch, msg)
	}
}

// offer puts msg in ch, replacing the oldest message when ch is full: a
// page or publisher that falls behind skips seconds, and never holds up
// the sampler or grows memory.
func offer(ch chan []byte, msg []byte) {
	for {
		select {
		case ch <- msg:
			return
		default:
		}
		select {
		case <-ch:
		default:
		}
	}
}

// appendKept appends v, keeping the last keep values.
func appendKept[T any](s []T, v T) []T {
	if len(s) == keep {
		copy(s, s[1:])
		s = s[:keep-1]
	}
	return append(s, v)
}

// sumRows is the cluster total over the rows that are not gone.
func sumRows(now time.Time, rows []NodeRow) Total {
	t := Total{At: now.UnixMilli()}
	for _, r := range rows {
		if r.Gone {
			t.Gone++
			continue
		}
		t.Nodes++
		t.Conns = add(t.Conns, r.Conns)
		t.Upgrades = add(t.Upgrades, r.Upgrades)
		t.Deliveries = add(t.Deliveries, r.Deliveries)
		t.SlowCloses = add(t.SlowCloses, r.SlowCloses)
		t.RSS = add(t.RSS, r.RSS)
	}
	return t
}

// add sums figures, skipping unknown ones (a node that lacks a figure
// does not make the cluster's unknown).
func add(a, b Figure) Figure {
	if !b.Known() {
		return a
	}
	return a + b
}

// Nodes names the nodes believed alive: this one and every peer heard
// from within goneAfter, sorted. The admin API's cluster questions wait for
// these to answer.
func (d *Dashboard) Nodes() []string {
	now := time.Now()
	out := []string{d.opts.Node}
	d.mu.Lock()
	for name, p := range d.peers {
		if now.Sub(p.seen) <= goneAfter {
			out = append(out, name)
		}
	}
	d.mu.Unlock()
	slices.Sort(out)
	return out
}

// listen keeps the peer table from the nodes channel until ctx ends.
func (d *Dashboard) listen(ctx context.Context) {
	err := d.opts.Peers.Run(ctx, func(msg []byte) {
		s, err := decodeSample(msg)
		d.mu.Lock()
		defer d.mu.Unlock()
		if err != nil {
			d.badPeer++
			if d.badPeer&(d.badPeer-1) == 0 { // 1st, 2nd, 4th, ...: a flood logs a few lines
				d.log.Warn("dashboard: not a node sample on the nodes channel", zap.Uint64("so_far", d.badPeer), zap.Error(err))
			}
			return
		}
		if s.Node == d.opts.Node {
			return // our own, back from Redis
		}
		p := d.peers[s.Node]
		if p == nil {
			if len(d.peers) >= maxPeers {
				return
			}
			p = &peer{}
			d.peers[s.Node] = p
		}
		p.sample, p.seen = s, time.Now()
	})
	if err != nil && ctx.Err() == nil {
		d.log.Warn("dashboard: nodes channel stopped", zap.Error(err))
	}
}

// publish sends the latest sample to the peers; a slow or absent Redis
// delays only this goroutine, and only the newest sample waits.
func (d *Dashboard) publish(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-d.outbox:
			pctx, cancel := context.WithTimeout(ctx, interval)
			err := d.opts.Peers.Publish(pctx, msg)
			cancel()
			if err != nil && ctx.Err() == nil {
				// The broker's own state (and the page) says Redis is down;
				// one line a second would only repeat it.
				d.log.Debug("dashboard: publish sample", zap.Error(err))
			}
		}
	}
}

// Handler serves the page at "/" and its files and event stream under
// "/dashboard/". The caller guards it (the admin API key).
func (d *Dashboard) Handler() http.Handler {
	mux := http.NewServeMux()
	files, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "no-store")
		http.ServeFileFS(w, r, files, "index.html")
	})
	mux.Handle("GET /dashboard/", http.StripPrefix("/dashboard/", http.FileServerFS(files)))
	mux.HandleFunc("GET /dashboard/events", d.serveEvents)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The browser itself then refuses anything from another origin:
		// the page works on a host with no way out.
		w.Header().Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		mux.ServeHTTP(w, r)
	})
}

// serveEvents streams the history, then a tick every interval, as
// Server-Sent Events ("init", then "tick"), until the page goes or Run
// stops.
func (d *Dashboard) serveEvents(w http.ResponseWriter, r *http.Request) {
	ch := make(chan []byte, 2)
	first, ok := d.open(ch)
	if !ok {
		http.Error(w, fmt.Sprintf("dashboard: %d pages are open already", maxStreams), http.StatusServiceUnavailable)
		return
	}
	defer d.close(ch)
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // a proxy in front must not hold the stream back
	send := func(event string, data []byte) error {
		_ = rc.SetWriteDeadline(time.Now().Add(writeTimeout))
		// JSON from encoding/json holds no newline, so one data line is
		// the whole message.
		if _, err := fmt.Fprintf(w, "event: %s\ndata: %s\n\n", event, data); err != nil {
			return err
		}
		return rc.Flush()
	}
	// A page whose node restarted (make bench starts one per run) comes
	// back within a second rather than the browser's default three.
	if _, err := fmt.Fprint(w, "retry: 1000\n"); err != nil {
		return
	}
	if err := send("init", first); err != nil {
		return
	}
	for {
		select {
		case <-r.Context().Done():
			return
		case <-d.stopped:
			return
		case msg := <-ch:
			if err := send("tick", msg); err != nil {
				return
			}
		}
	}
}

// open registers a page's channel and returns the history it starts from.
func (d *Dashboard) open(ch chan []byte) ([]byte, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.streams) >= maxStreams {
		return nil, false
	}
	d.streams[ch] = struct{}{}
	b, err := json.Marshal(history{Node: d.opts.Node, Cluster: d.opts.Peers != nil, Self: d.self, Totals: d.totals, Nodes: d.rows})
	if err != nil {
		delete(d.streams, ch)
		d.log.Warn("dashboard encode", zap.Error(err))
		return nil, false
	}
	return b, true
}

func (d *Dashboard) close(ch chan []byte) {
	d.mu.Lock()
	delete(d.streams, ch)
	d.mu.Unlock()
}

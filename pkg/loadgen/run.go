package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
)

// fdReserve is what a process needs besides its connections: stdio, the
// Go runtime's poller, pipes to the parent, one epoll per loop (added).
const fdReserve = 10

// Summary is the one JSON line a run ends with.
type Summary struct {
	// URL, Conns, Workers, Loops and SourceIPs are the run's shape
	// (SourceIPs is 0 when the target is not loopback).
	URL       string `json:"url"`
	Conns     int    `json:"conns"`
	Workers   int    `json:"workers"`
	Loops     int    `json:"loops_per_worker"`
	SourceIPs int    `json:"source_ips"`
	// OpenAtFull is how many connections were open when the ramp ended.
	OpenAtFull int64 `json:"open_at_full"`
	// RampSeconds is the time from the first connect to the last
	// connection ready or failed; ConnectRate is ready connections over it.
	RampSeconds float64 `json:"ramp_seconds"`
	ConnectRate float64 `json:"connect_rate"`
	// Counters are the final totals over all workers.
	Counters Progress `json:"counters"`
	// Sources counts connections per local address (from getsockname).
	Sources map[string]int `json:"sources"`
	// Events is present when the run published. With Stalled connections
	// its figures cover the healthy connections only.
	Events *EventSummary `json:"events,omitempty"`
	// Storm is present when the run was one (Config.Storm).
	Storm *StormSummary `json:"storm,omitempty"`
	// Seqs is present with resuming connections: every connection's
	// events checked over [its first, the last published].
	Seqs *SeqSummary `json:"seqs,omitempty"`
	// Stalled is present when the run had stalled connections.
	Stalled *StalledSummary `json:"stalled,omitempty"`
	// Servers are the --server-pid processes; Generator is the sum over
	// the generator's processes.
	Servers   []ProcMem `json:"servers,omitempty"`
	Generator ProcMem   `json:"generator"`
	// KernelBefore is sampled before the first connect, KernelAfter at full count.
	KernelBefore Kernel `json:"kernel_before"`
	KernelAfter  Kernel `json:"kernel_after"`
	// Seconds is the whole run, close included.
	Seconds float64 `json:"seconds"`
}

// ProcMem is one process's (or, for the generator, all workers') RSS
// before the connections and at full count.
type ProcMem struct {
	// PID is 0 for the generator.
	PID int `json:"pid,omitempty"`
	// RSSBefore and RSSAfter are in bytes.
	RSSBefore int64 `json:"rss_before"`
	RSSAfter  int64 `json:"rss_after"`
	// RSSEnd is sampled after the hold and the deliveries, before the
	// generator closes its connections; RSSPeak is the largest of the
	// samples taken every 250 ms from full count to then. Both are for
	// server processes only (0 for the generator).
	RSSEnd  int64 `json:"rss_end,omitempty"`
	RSSPeak int64 `json:"rss_peak,omitempty"`
	// PerConn is (after - before) / open connections at full count.
	PerConn float64 `json:"rss_per_conn"`
	// CPUSeconds is the CPU time (user + system) used from the start of
	// the run to the end of the hold, so a reader can tell which side was
	// the bottleneck.
	CPUSeconds float64 `json:"cpu_seconds"`
	// Error says why a figure is missing (e.g. the process is gone).
	Error string `json:"error,omitempty"`
}

// EventSummary is what publishing measured.
type EventSummary struct {
	Published     int    `json:"published"`
	PublishErrors int    `json:"publish_errors"`
	PublishError  string `json:"publish_error,omitempty"`
	// PublishRate is the rate achieved: events sent over the time from
	// the first send to the last (the asked rate unless the server or
	// the in-flight bound held the publisher back).
	PublishRate float64 `json:"publish_rate"`
	// Expected is connections that were ready x events; Received the
	// distinct deliveries, Completeness their ratio. ConnsComplete got
	// every event, ConnsMissing missed at least one (Missing in all);
	// Duplicates are extra copies, on ConnsWithDups connections.
	Expected      int64   `json:"expected"`
	Received      int64   `json:"received"`
	Duplicates    int64   `json:"duplicates"`
	Completeness  float64 `json:"completeness"`
	ConnsComplete int     `json:"conns_complete"`
	ConnsMissing  int     `json:"conns_missing"`
	Missing       int64   `json:"missing"`
	ConnsWithDups int     `json:"conns_with_dups"`
	// Latency is publish (the stamp in the payload) to frame parsed, per delivery.
	Latency Percentiles `json:"latency"`
	// TimeToLast is, per broadcast, publish to its last delivery.
	TimeToLast Percentiles `json:"time_to_last_delivery"`
	// DeliveriesPerSec is deliveries over first publish to last delivery;
	// below conns x publish rate it only measures the offered load.
	DeliveriesPerSec float64 `json:"deliveries_per_sec"`
}

// StalledSummary is what became of the connections that stopped reading
// (Config.Stalled).
type StalledSummary struct {
	// Conns is how many were asked to stall; Ready how many of them
	// reached `connected` (and stopped reading then).
	Conns int `json:"conns"`
	Ready int `json:"ready"`
	// ClosedByServer were closed by the server while stalled: its FIN,
	// a reset or its close frame was found behind the unread bytes when
	// the generator read them at the end. OpenAtEnd were still open then.
	ClosedByServer int64 `json:"closed_by_server"`
	OpenAtEnd      int64 `json:"open_at_end"`
}

// Run executes one benchmark: connect, hold, publish, measure, close. It
// prints a progress line every second on progress and returns the summary;
// cancelling ctx cuts the run short but still closes and summarises.
func Run(ctx context.Context, cfg Config, progress io.Writer, workerStderr io.Writer) (*Summary, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	t, err := parseTarget(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	if cfg.Resume && cfg.SubscriptionPrefix == "" {
		cfg.SubscriptionPrefix = fmt.Sprintf("lg%x-", time.Now().UnixNano())
	}
	var pub *publisher
	if cfg.publishing() {
		if pub, err = newPublisher(&cfg, t); err != nil {
			return nil, fmt.Errorf("bench: %w", err)
		}
	}
	shards, err := plan(&cfg)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	began := time.Now()
	sum := &Summary{URL: cfg.URL, Conns: cfg.Conns, Workers: len(shards), Loops: cfg.Loops, SourceIPs: cfg.SourceIPs}
	if !t.loopback {
		sum.SourceIPs = 0
	}
	sum.KernelBefore, _ = readKernel()
	sum.Servers = make([]ProcMem, len(cfg.ServerPIDs))
	serverCPU := make([]time.Duration, len(cfg.ServerPIDs))
	for i, pid := range cfg.ServerPIDs {
		sum.Servers[i].PID = pid
		if sum.Servers[i].RSSBefore, err = readRSS(pid); err != nil {
			sum.Servers[i].Error = err.Error()
		}
		serverCPU[i], _ = ProcessCPU(pid)
	}
	ownCPU, _ := ProcessCPU(0)

	workers, err := startWorkers(&cfg, t, shards, workerStderr)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	for _, w := range workers {
		sum.Generator.RSSBefore += w.startRSS()
	}
	rep := newReporter(progress, workers, cfg.Conns, cfg.Resume)
	defer rep.stop()

	// Ramp: until every connection is ready or failed.
	for !allRamped(workers) && ctx.Err() == nil {
		sleep(ctx, pollInterval)
	}
	rampedAt := time.Now()
	full := total(workers)
	sum.OpenAtFull = full.Open
	sum.RampSeconds = rampedAt.Sub(began).Seconds()
	if sum.RampSeconds > 0 {
		sum.ConnectRate = float64(full.EverReady) / sum.RampSeconds
	}
	sum.KernelAfter, _ = readKernel()
	for i := range sum.Servers {
		s := &sum.Servers[i]
		if s.Error == "" {
			if s.RSSAfter, err = readRSS(s.PID); err != nil {
				s.Error = err.Error()
			}
			s.PerConn = perConn(s.RSSBefore, s.RSSAfter, full.Open)
		}
	}
	for _, w := range workers {
		r, err := w.rss()
		if err != nil {
			sum.Generator.Error = err.Error()
		}
		sum.Generator.RSSAfter += r
	}
	sum.Generator.PerConn = perConn(sum.Generator.RSSBefore, sum.Generator.RSSAfter, full.Open)

	// Hold, and publish meanwhile.
	peaks := sampleRSS(cfg.ServerPIDs)
	prep := publishReport{Sent: cfg.Events}
	if cfg.Storm != nil && ctx.Err() == nil {
		sum.Storm, prep = runStorm(ctx, &cfg, pub, workers)
	} else if pub != nil && ctx.Err() == nil {
		// Stalled connections read nothing: only the healthy ones are
		// waited for.
		rep.setExpected(full.healthyOpen() * int64(cfg.Events))
		prep = pub.run(ctx, nil)
		drainBy := time.Now().Add(cfg.Drain)
		for ctx.Err() == nil && time.Now().Before(drainBy) {
			if p := total(workers); p.Events >= p.healthyOpen()*int64(prep.Published) {
				break
			}
			sleep(ctx, pollInterval)
		}
	}
	if d := time.Until(rampedAt.Add(cfg.Hold)); d > 0 {
		sleep(ctx, d)
	}
	peak := peaks.stop()
	for i := range sum.Servers {
		s := &sum.Servers[i]
		if r, err := readRSS(s.PID); err == nil {
			s.RSSEnd = r
		}
		s.RSSPeak = max(peak[i], s.RSSEnd)
	}
	rep.stop()
	for i := range sum.Servers {
		if c, err := ProcessCPU(sum.Servers[i].PID); err == nil {
			sum.Servers[i].CPUSeconds = (c - serverCPU[i]).Seconds()
		}
	}
	sum.Generator.CPUSeconds = generatorCPU(workers, ownCPU).Seconds()

	results, err := finishAll(workers, prep.Sent-1)
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	merge(sum, results, &cfg, pub != nil, prep)
	if sum.Storm != nil {
		sum.Storm.Seqs = sum.Seqs
		seqMax := make([]int64, cfg.Events)
		for _, r := range results {
			for i := range min(len(seqMax), len(r.SeqMaxLat)) {
				seqMax[i] = max(seqMax[i], r.SeqMaxLat[i])
			}
		}
		sum.Storm.caughtUp(prep.At, seqMax)
	}
	sum.Seconds = time.Since(began).Seconds()
	return sum, nil
}

// plan splits the run into per-process shards that fit the descriptor
// budget.
func plan(cfg *Config) ([]shard, error) {
	budget := cfg.MaxFDsPerWorker
	if budget <= 0 {
		budget = nofileLimit()
	}
	per := budget - fdReserve - cfg.Loops
	if per <= 0 {
		return nil, fmt.Errorf("descriptor budget %d leaves no room for connections", budget)
	}
	n := cfg.Workers
	if n <= 0 {
		n = (cfg.Conns + per - 1) / per
		// A run in one process also publishes from it: the publisher's
		// requests need descriptors beside the connections.
		if n == 1 && cfg.publishing() && cfg.Conns > per-maxInFlight {
			n = 2
		}
	}
	n = min(n, cfg.Conns)
	if (cfg.Conns+n-1)/n > per {
		return nil, fmt.Errorf("%d connections over %d workers exceed %d descriptors per worker: use more workers", cfg.Conns, n, budget)
	}
	shards := make([]shard, n)
	first := 0
	for i := range shards {
		c := cfg.Conns / n
		if i < cfg.Conns%n {
			c++
		}
		shards[i] = shard{First: first, Count: c, Rate: cfg.Rate * float64(c) / float64(cfg.Conns)}
		first += c
	}
	return shards, nil
}

func startWorkers(cfg *Config, t *target, shards []shard, stderr io.Writer) ([]worker, error) {
	if len(shards) == 1 {
		w, err := startLocal(cfg, t, shards[0])
		if err != nil {
			return nil, err
		}
		return []worker{w}, nil
	}
	var ws []worker
	for _, sh := range shards {
		w, err := startProc(cfg, sh, stderr)
		if err != nil {
			_, ferr := finishAll(ws, cfg.Events-1)
			return nil, errors.Join(err, ferr)
		}
		ws = append(ws, w)
	}
	return ws, nil
}

func finishAll(ws []worker, lastSeq int) ([]*workerResult, error) {
	res := make([]*workerResult, len(ws))
	errs := make([]error, len(ws))
	var wg sync.WaitGroup
	for i, w := range ws {
		wg.Go(func() { res[i], errs[i] = w.finish(lastSeq) })
	}
	wg.Wait()
	return res, errors.Join(errs...)
}

// generatorCPU is the CPU time of this process since own plus that of the
// worker processes (whose whole life is the run).
func generatorCPU(ws []worker, own time.Duration) time.Duration {
	c, _ := ProcessCPU(0)
	c -= own
	for _, w := range ws {
		if w.pid() != 0 {
			wc, _ := ProcessCPU(w.pid())
			c += wc
		}
	}
	return c
}

func allRamped(ws []worker) bool {
	for _, w := range ws {
		if !w.rampDone() {
			return false
		}
	}
	return true
}

func total(ws []worker) Progress {
	var p Progress
	for _, w := range ws {
		p.add(w.progress())
	}
	return p
}

// rssSampler records the largest RSS of some processes until stopped.
type rssSampler struct {
	done chan struct{}
	peak chan []int64
}

// sampleRSS samples the RSS of pids every 250 ms in a goroutine.
func sampleRSS(pids []int) *rssSampler {
	s := &rssSampler{done: make(chan struct{}), peak: make(chan []int64, 1)}
	go func() {
		peak := make([]int64, len(pids))
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			for i, pid := range pids {
				if r, err := readRSS(pid); err == nil {
					peak[i] = max(peak[i], r)
				}
			}
			select {
			case <-s.done:
				s.peak <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

// stop ends the sampling and returns the peak per process.
func (s *rssSampler) stop() []int64 {
	close(s.done)
	return <-s.peak
}

func perConn(before, after, n int64) float64 {
	if n <= 0 {
		return 0
	}
	return float64(after-before) / float64(n)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// merge folds the workers' results into the summary.
func merge(sum *Summary, results []*workerResult, cfg *Config, published bool, prep publishReport) {
	sum.Sources = map[string]int{}
	var (
		lat                   Histogram
		seqMax                = make([]int64, cfg.Events)
		ready, complete, miss int
		missing               int64
		withDups              int
		firstRecv, lastRecv   int64
		stalledReady          int
	)
	if cfg.Resume {
		sum.Seqs = &SeqSummary{LastSeq: prep.Sent - 1}
	}
	for _, r := range results {
		sum.Counters.add(r.Progress)
		if sum.Seqs != nil {
			sum.Seqs.merge(r.Seqs)
		}
		stalledReady += r.StalledReady
		for a, n := range r.Sources {
			sum.Sources[a] += n
		}
		lat.Merge(r.Latency.histogram())
		for i := range min(len(seqMax), len(r.SeqMaxLat)) {
			seqMax[i] = max(seqMax[i], r.SeqMaxLat[i])
		}
		ready += r.ConnsReady
		complete += r.ConnsComplete
		miss += r.ConnsMissing
		missing += r.Missing
		withDups += r.ConnsWithDups
		if r.FirstRecv != 0 && (firstRecv == 0 || r.FirstRecv < firstRecv) {
			firstRecv = r.FirstRecv
		}
		lastRecv = max(lastRecv, r.LastRecv)
	}
	if cfg.Stalled > 0 {
		sum.Stalled = &StalledSummary{
			Conns: cfg.Stalled, Ready: stalledReady,
			ClosedByServer: sum.Counters.StalledClosed,
			OpenAtEnd:      int64(stalledReady) - sum.Counters.StalledClosed,
		}
	}
	if !published {
		return
	}
	ev := &EventSummary{
		Published: prep.Published, PublishErrors: prep.Errors,
		Expected:      int64(ready) * int64(cfg.Events),
		Received:      sum.Counters.Events,
		Duplicates:    sum.Counters.Duplicates,
		ConnsComplete: complete, ConnsMissing: miss, Missing: missing, ConnsWithDups: withDups,
		Latency: lat.Percentiles(),
	}
	if prep.FirstErr != nil {
		ev.PublishError = prep.FirstErr.Error()
	}
	if span := prep.Last.Sub(prep.First); span > 0 && prep.Published > 1 {
		ev.PublishRate = float64(prep.Published+prep.Errors-1) / span.Seconds()
	}
	if sum.Seqs != nil {
		// The workers counted against cfg.Events; resuming connections
		// are checked against what was sent, from each one's first event.
		ev.Expected = int64(ready) * int64(prep.Sent)
		ev.Missing, ev.ConnsMissing = sum.Seqs.Missing, sum.Seqs.ConnsMissing
		ev.ConnsComplete = ready - ev.ConnsMissing
	}
	if ev.Expected > 0 {
		ev.Completeness = float64(ev.Received) / float64(ev.Expected)
	}
	var ttl Histogram
	for _, d := range seqMax {
		if d > 0 {
			ttl.Record(time.Duration(d))
		}
	}
	ev.TimeToLast = ttl.Percentiles()
	if lastRecv > 0 && !prep.First.IsZero() {
		if span := time.Duration(lastRecv - prep.First.UnixNano()); span > 0 {
			ev.DeliveriesPerSec = float64(ev.Received) / span.Seconds()
		}
	}
	sum.Events = ev
}

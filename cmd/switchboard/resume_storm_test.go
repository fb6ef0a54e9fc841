package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/loadgen"
)

// Issue 24's resume storm: connections spread over two `switchboard serve`
// nodes on a real redis-server, each subscribed by message under an id of
// its own as SDK 25+ does, events published straight to Redis at 25/s as
// Appwrite publishes them; then one is drained (SIGTERM: close 1001
// spread over --drain-time's 5 s). Its connections come back to the other
// after the SDK's 1 s and send the same subscribe. Every connection must
// then hold every event from its first on exactly once and in order:
// missing 0, duplicated 0, out of order 0. The test logs the figures the
// issue asks for: the time until every connection is live again, the rate
// of replayed events (the survivor's switchboard_resume_replayed_events_total,
// and what the clients saw), and the nodes' CPU during the storm.
//
// TestResumeStorm is the small one (200 connections, in make test);
// TestResumeStormFullSize the 19,000 (make resume-storm).

// stormShape is one storm's size and timing.
type stormShape struct {
	conns int
	// workers are load generator processes (0: in the test process);
	// rampRate is connections per second.
	workers  int
	rampRate float64
	// before is how long events flow before the drain, after how long
	// once every connection is back; liveWithin bounds the wait for that
	// (from the drain's start); within bounds the whole run.
	before, after, liveWithin, within time.Duration
	// deliverWithin bounds the wait for the last deliveries.
	deliverWithin time.Duration
	// drain picks the node drained: "" node 0, "lease" the one holding
	// the history appender's lease, "other" the one not holding it.
	drain string
}

// stormRate is the publishing rate.
const stormRate = 25.0

func TestResumeStorm(t *testing.T) {
	if testing.Short() {
		t.Skip("resume storm: runs ~20 s")
	}
	runResumeStorm(t, stormShape{
		conns: 200, rampRate: 0,
		before: 2 * time.Second, after: 2 * time.Second,
		liveWithin: 15 * time.Second, deliverWithin: 10 * time.Second, within: 60 * time.Second,
	})
}

// TestResumeStormFullSize is the size; SWITCHBOARD_RESUME_STORM_CONNS
// sets another (e.g. to find the size this machine holds).
func TestResumeStormFullSize(t *testing.T) {
	if os.Getenv("SWITCHBOARD_RESUME_STORM") != "1" {
		t.Skip("set SWITCHBOARD_RESUME_STORM=1 (make resume-storm) for the 19,000-connection storm; SWITCHBOARD_RESUME_STORM_CONNS=N for another size, SWITCHBOARD_RESUME_STORM_DRAIN=lease|other to drain the node holding the history appender's lease or the other")
	}
	conns := 19000
	if v := os.Getenv("SWITCHBOARD_RESUME_STORM_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 || n > 39000 {
			t.Fatalf("SWITCHBOARD_RESUME_STORM_CONNS=%q: want 2 to 39000", v)
		}
		conns = n
	}
	drain := os.Getenv("SWITCHBOARD_RESUME_STORM_DRAIN")
	if drain != "" && drain != "lease" && drain != "other" {
		t.Fatalf("SWITCHBOARD_RESUME_STORM_DRAIN=%q: want lease or other", drain)
	}
	runResumeStorm(t, stormShape{
		drain: drain,
		// Two worker processes: one holds at most ~19,900 sockets
		// (RLIMIT_NOFILE 20,000). 4,000/s keeps the nodes' accept
		// queues (somaxconn 4096) from overflowing on 2 cores.
		conns: conns, workers: 2, rampRate: 4000,
		before: 5 * time.Second, after: 5 * time.Second,
		liveWithin: 60 * time.Second, deliverWithin: 60 * time.Second, within: 4 * time.Minute,
	})
}

// metricSample is one scrape of the metrics a storm follows.
type metricSample struct {
	at       time.Time
	replayed float64 // switchboard_resume_replayed_events_total; -1: not exported
}

func runResumeStorm(t *testing.T, sh stormShape) {
	rs := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	t.Cleanup(func() { rdb.Close() })
	nodes := []*node{
		startNode(t, "--redis-url", rs.URL(), "--connects-per-ip", "-1"),
		startNode(t, "--redis-url", rs.URL(), "--connects-per-ip", "-1"),
	}
	waitReady(t, nodes...)
	drained, survivor := nodes[0], nodes[1]
	if sh.drain != "" {
		// The lease's value names its holder's pid ("host:pid:random").
		var holder string
		redistest.Eventually(t, 10*time.Second, "a node holding the appender's lease", func() bool {
			holder = appenderLease(rdb)
			return holder != "nobody"
		})
		holds0 := strings.Contains(holder, fmt.Sprintf(":%d:", nodes[0].cmd.Process.Pid))
		if holds0 != (sh.drain == "lease") {
			drained, survivor = nodes[1], nodes[0]
		}
		t.Logf("draining the node %s the lease (held by %s)", map[bool]string{true: "holding", false: "not holding"}[sh.drain == "lease"], holder)
	}
	t.Logf("drained node pid %d on %s, surviving node pid %d on %s; redis %s", drained.cmd.Process.Pid, drained.addr, survivor.cmd.Process.Pid, survivor.addr, rs.Addr())

	var (
		mu       sync.Mutex
		samples  []metricSample
		before   map[string]float64
		lease    string
		sampling = make(chan struct{})
		sampled  = make(chan struct{})
	)
	go func() {
		// The survivor's replay counter every 250 ms through the storm.
		defer close(sampled)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		<-sampling
		for {
			m, err := scrapeMap(survivor.admin)
			s := metricSample{at: time.Now(), replayed: -1}
			if v, ok := m["switchboard_resume_replayed_events_total"]; ok && err == nil {
				s.replayed = v
			}
			mu.Lock()
			samples = append(samples, s)
			mu.Unlock()
			select {
			case <-tick.C:
			case <-sampling:
				return
			}
		}
	}()
	drain := func(ctx context.Context) error {
		m, err := scrapeMap(survivor.admin)
		if err != nil {
			return fmt.Errorf("the surviving node's metrics before the drain: %w", err)
		}
		mu.Lock()
		before, lease = m, appenderLease(rdb)
		mu.Unlock()
		sampling <- struct{}{}
		if err := drained.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			return fmt.Errorf("SIGTERM the drained node: %w", err)
		}
		// --shutdown-timeout (10 s) bounds the drain; past it the node
		// is stuck.
		select {
		case err := <-drained.exited:
			drained.exited <- err // for the cleanup
			if err != nil {
				return fmt.Errorf("the drained node exited with %v after SIGTERM", err)
			}
			return nil
		case <-time.After(30 * time.Second):
			return errors.New("the drained node still running 30 s after SIGTERM")
		case <-ctx.Done():
			return ctx.Err()
		}
	}

	events := int(stormRate * (sh.before + sh.liveWithin + sh.after + 10*time.Second).Seconds())
	cfg := loadgen.Config{
		URL:            fmt.Sprintf("ws://%s/v1/realtime?project=p1&channels[]=files", drained.addr),
		Nodes:          []string{survivor.addr},
		Conns:          sh.conns,
		Rate:           sh.rampRate,
		Workers:        sh.workers,
		Resume:         true,
		ReconnectDelay: loadgen.DefaultReconnectDelay,
		ConnectTimeout: 20 * time.Second,
		Events:         events,
		PublishRate:    stormRate,
		// The wait for the last deliveries ends early when they are
		// all in or none came for 2 s; a node behind after the storm
		// may need long, and lateness is not loss.
		Drain: sh.deliverWithin,
		Publish: func(ctx context.Context, msg []byte) error {
			// As Appwrite publishes: PUBLISH realtime.
			return rdb.Publish(ctx, "realtime", msg).Err()
		},
		Storm:      &loadgen.Storm{Before: sh.before, After: sh.after, LiveWithin: sh.liveWithin, Disrupt: drain},
		ServerPIDs: []int{drained.cmd.Process.Pid, survivor.cmd.Process.Pid},
		WorkerCommand: func() (string, []string, []string) {
			return switchboardBin, []string{"bench", workerFlag}, nil
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), sh.within)
	defer cancel()
	progress := new(syncBuffer)
	sum, err := loadgen.Run(ctx, cfg, progress, os.Stderr)
	// Stops the sampler, also one still waiting for a drain that never
	// started (the drain, which starts it, has returned with Run).
	close(sampling)
	<-sampled
	if err != nil {
		t.Fatalf("load generator: %v\nprogress:\n%s", err, progress)
	}
	if ctx.Err() != nil {
		t.Fatalf("the storm did not end within %v (a hang: the generator was cut short)\nprogress:\n%s\nthe drained node:\n%s\nthe surviving node:\n%s", sh.within, progress, drained.stderr, survivor.stderr)
	}
	st, seqs, p := sum.Storm, sum.Seqs, sum.Counters
	if st == nil || seqs == nil {
		t.Fatalf("no storm figures: %+v", sum)
	}
	after, err := scrapeMap(survivor.admin)
	if err != nil {
		t.Fatalf("the surviving node's metrics after the storm: %v", err)
	}

	// The figures.
	t.Logf("resume storm: %d connections over 2 nodes on Redis (%d load generator processes), %.0f events/s; the node drained (its drain took %.1f s, the appender lease was held by %s)",
		sh.conns, sum.Workers, stormRate, st.DisruptSeconds, lease)
	if st.LiveAgain {
		t.Logf("every connection live again (its subscribe answered) %.2f s after the SIGTERM; every connection had every event published until then %.2f s after it", st.LiveAgainSeconds, st.CaughtUpSeconds)
	} else {
		t.Errorf("NOT every connection live again within %v: %d still away", sh.liveWithin, st.StillAway)
	}
	t.Logf("returns: %d connections went away (%d with close 1001), %d tries to come back (%d failed), %d subscribed again; subscribe responses: new %d, resumed %d, live %d (incomplete %d), without a resume field %d",
		p.WentAway, p.GoingAway, p.Reconnects, p.ReconnectFailures, p.Resubscribed, p.ResumeNew, p.ResumeResumed, p.ResumeLive, p.ResumeLiveIncomplete, p.ResumeAbsent)
	t.Logf("the surviving node's counters over the storm: %s", resumeDelta(before, after))
	replayed := after["switchboard_resume_replayed_events_total"] - before["switchboard_resume_replayed_events_total"]
	peak := peakRate(samples, time.Unix(0, st.Start), time.Unix(0, st.LiveAt).Add(time.Second))
	if st.LiveAgainSeconds > 0 {
		t.Logf("replayed events: the surviving node %.0f (%.0f/s over the %.2f s to live again, busiest second %.0f/s); the clients caught up with %d (received after coming back, published before: the replay and any live event the node was late with)",
			replayed, replayed/st.LiveAgainSeconds, st.LiveAgainSeconds, peak, p.CaughtUp)
	}
	for i, s := range st.Servers {
		t.Logf("%s node (pid %d) CPU from the SIGTERM to live again: %.2f s, %.2f cores on average, %.2f in the busiest second", []string{"drained", "surviving"}[i], s.PID, s.CPUSeconds, s.Cores, s.PeakCores)
	}
	t.Logf("load generator CPU over the whole run: %.1f s (%d processes); node RSS at the end: %d MB and %d MB", sum.Generator.CPUSeconds, sum.Workers, sum.Servers[0].RSSEnd>>20, sum.Servers[1].RSSEnd>>20)
	if l := sum.Events.Latency; l.Count > 0 {
		t.Logf("event latency, publish to client, over the whole run: p50 %.0f ms, p99 %.0f ms, max %.0f ms", l.P50, l.P99, l.Max)
	}
	ttl := st.TimeToLast
	t.Logf("publish to the last connection's delivery, per event: before the drain p50 %.0f ms, max %.0f ms; from the drain until all were back p50 %.0f ms, max %.0f ms; after p50 %.0f ms, max %.0f ms",
		ttl.Before.P50, ttl.Before.Max, ttl.During.P50, ttl.During.Max, ttl.After.P50, ttl.After.Max)
	t.Logf("events: %d published (seq %d when the drain began, %d when all were back); per connection over [first received, last published]: missing %d on %d connections, duplicated %d on %d, out of order %d on %d, %d received nothing, %d started after seq 0",
		sum.Events.Published, st.SeqAtDisrupt, st.SeqAtLive, seqs.Missing, seqs.ConnsMissing, seqs.Duplicated, seqs.ConnsDuplicated, seqs.OutOfOrder, seqs.ConnsOutOfOrder, seqs.ConnsNothing, seqs.ConnsFirstAfterZero)

	// The verdict.
	if st.DisruptError != "" {
		t.Errorf("the drain: %s\nthe drained node:\n%s", st.DisruptError, drained.stderr)
	}
	if sum.Events.PublishErrors > 0 || st.PublishEndedEarly {
		t.Errorf("publishing: %d errors (%s), ended early %v", sum.Events.PublishErrors, sum.Events.PublishError, st.PublishEndedEarly)
	}
	if sum.OpenAtFull != int64(sh.conns) || p.WentAway == 0 {
		t.Errorf("%d of %d connections open before the drain, %d went away in it: no storm", sum.OpenAtFull, sh.conns, p.WentAway)
	}
	if !seqs.Clean() {
		var worst []string
		for _, w := range seqs.Worst {
			worst = append(worst, w.String())
		}
		var order []string
		for _, w := range seqs.WorstOrder {
			order = append(order, w.String())
		}
		t.Errorf("per connection, want missing 0, duplicated 0, out of order 0; got missing %d (%d connections), duplicated %d (%d), out of order %d (%d), nothing at all on %d. Worst:\n  %s\nWorst duplicated or out of order:\n  %s\nevents published from seq %d when the drain began; every connection back at seq %d",
			seqs.Missing, seqs.ConnsMissing, seqs.Duplicated, seqs.ConnsDuplicated, seqs.OutOfOrder, seqs.ConnsOutOfOrder, seqs.ConnsNothing,
			strings.Join(worst, "\n  "), strings.Join(order, "\n  "), st.SeqAtDisrupt, st.SeqAtLive)
	}
	if t.Failed() {
		t.Logf("progress:\n%s", progress)
		t.Logf("the drained node's log:\n%s", tail(drained.stderr.String(), 40))
		t.Logf("the surviving node's log:\n%s", tail(survivor.stderr.String(), 40))
	}
}

// scrapeMap reads a node's /metrics into series -> value (errors are the
// caller's: a node may be gone).
func scrapeMap(admin string) (map[string]float64, error) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 16<<20))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i <= 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			out[line[:i]] = v
		}
	}
	return out, sc.Err()
}

// resumeDelta is the change of every switchboard_resume_* series.
func resumeDelta(before, after map[string]float64) string {
	var parts []string
	for k, v := range after {
		if strings.HasPrefix(k, "switchboard_resume_") {
			parts = append(parts, fmt.Sprintf("%s +%g", k, v-before[k]))
		}
	}
	if len(parts) == 0 {
		return "no switchboard_resume_* series in /metrics (the node does not resume)"
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// peakRate is the largest increase per second of the replay counter over
// a second or more of samples within [from, to].
func peakRate(samples []metricSample, from, to time.Time) float64 {
	peak := 0.0
	for i, a := range samples {
		if a.replayed < 0 || a.at.Before(from) || a.at.After(to) {
			continue
		}
		for _, b := range samples[i+1:] {
			if d := b.at.Sub(a.at); d >= time.Second {
				if b.replayed >= 0 {
					peak = max(peak, (b.replayed-a.replayed)/d.Seconds())
				}
				break
			}
		}
	}
	return peak
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

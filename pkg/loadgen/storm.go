package loadgen

import (
	"context"
	"time"
)

// Storm is a disruption in the middle of a run of resuming connections
// (Config.Resume), issue 24's resume storm: events flow for Before, then
// Disrupt runs (it drains a node, say, and returns once the node has
// exited); the run then waits, up to LiveWithin from the disruption's
// start, until every connection is subscribed again, and lets events flow
// for After more. Config.Events bounds what is published: it must cover
// Before + LiveWithin + After at PublishRate, or publishing ends early
// (StormSummary.PublishEndedEarly).
type Storm struct {
	Before     time.Duration `json:"before"`
	After      time.Duration `json:"after"`
	LiveWithin time.Duration `json:"live_within"`
	// Disrupt is called once, from the coordinator.
	Disrupt func(ctx context.Context) error `json:"-"`
}

// StormSummary is what a storm measured. The resume counters (statuses,
// reconnects, events caught up with) are in Summary.Counters.
type StormSummary struct {
	// DisruptSeconds is how long Disrupt took; DisruptError what it
	// returned.
	DisruptSeconds float64 `json:"disrupt_seconds"`
	DisruptError   string  `json:"disrupt_error,omitempty"`
	// LiveAgain says every connection was subscribed again within
	// LiveWithin; LiveAgainSeconds is from the disruption's start to the
	// last subscribe response of a returning connection (0 when none
	// returned). StillAway is how many were not back when the wait ended.
	LiveAgain        bool    `json:"live_again"`
	LiveAgainSeconds float64 `json:"live_again_seconds"`
	// CaughtUpSeconds is from the disruption's start to the moment the
	// last connection received the last of the events published before
	// every connection was back (SeqAtLive): each has then had what it
	// missed, replay included.
	CaughtUpSeconds float64 `json:"caught_up_seconds"`
	StillAway       int64   `json:"still_away"`
	// SeqAtDisrupt and SeqAtLive are the sequences being published when
	// the disruption started and when every connection was back;
	// PublishEndedEarly says Config.Events ran out before the storm did.
	SeqAtDisrupt      int  `json:"seq_at_disrupt"`
	SeqAtLive         int  `json:"seq_at_live"`
	PublishEndedEarly bool `json:"publish_ended_early,omitempty"`
	// CaughtUpPerSec is Counters.CaughtUp (events received after a
	// return, published before it) over LiveAgainSeconds.
	CaughtUpPerSec float64 `json:"caught_up_per_sec"`
	// Servers is the CPU of Config.ServerPIDs from the disruption's start
	// to every connection being back.
	Servers []StormCPU `json:"servers,omitempty"`
	// TimeToLast is, per event, the time from its publish to its last
	// delivery (over the connections that got it), for the events
	// published before the disruption, from then until every connection
	// was back, and after: how far behind the nodes (or the generator)
	// were in each phase.
	TimeToLast struct {
		Before Percentiles `json:"before"`
		During Percentiles `json:"during"`
		After  Percentiles `json:"after"`
	} `json:"time_to_last_delivery"`
	// Seqs is the check of every connection's events.
	Seqs *SeqSummary `json:"seqs"`
	// Start and LiveAt are the disruption's start and the last return
	// (unix ns), to line the figures up with a server's own.
	Start  int64 `json:"start"`
	LiveAt int64 `json:"live_at"`
}

// StormCPU is one server process's CPU during a storm.
type StormCPU struct {
	PID int `json:"pid"`
	// CPUSeconds is user + system time; Cores that over the window's
	// length; PeakCores the busiest second (samples 250 ms apart).
	CPUSeconds float64 `json:"cpu_seconds"`
	Cores      float64 `json:"cores"`
	PeakCores  float64 `json:"peak_cores"`
}

// cpuSample is the CPU time of each watched process at one moment (-1:
// the process is gone).
type cpuSample struct {
	at  time.Time
	cpu []time.Duration
}

// cpuSampler samples the CPU time of some processes every 250 ms.
type cpuSampler struct {
	done    chan struct{}
	samples chan []cpuSample
}

func sampleCPU(pids []int) *cpuSampler {
	s := &cpuSampler{done: make(chan struct{}), samples: make(chan []cpuSample, 1)}
	go func() {
		var out []cpuSample
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			cs := cpuSample{at: time.Now(), cpu: make([]time.Duration, len(pids))}
			for i, pid := range pids {
				c, err := ProcessCPU(pid)
				if err != nil {
					c = -1
				}
				cs.cpu[i] = c
			}
			out = append(out, cs)
			select {
			case <-s.done:
				s.samples <- out
				return
			case <-tick.C:
			}
		}
	}()
	return s
}

func (s *cpuSampler) stop() []cpuSample {
	close(s.done)
	return <-s.samples
}

// stormCPU is each process's CPU over [from, to] out of samples; a
// process that ended counts what its last sample saw.
func stormCPU(pids []int, samples []cpuSample, from, to time.Time) []StormCPU {
	out := make([]StormCPU, len(pids))
	span := to.Sub(from).Seconds()
	for i, pid := range pids {
		out[i].PID = pid
		var first, last time.Duration = -1, -1
		for k, s := range samples {
			if s.at.After(to.Add(250*time.Millisecond)) || s.cpu[i] < 0 {
				continue
			}
			if first < 0 {
				first = s.cpu[i]
			}
			last = s.cpu[i]
			// The busiest second: from this sample to the first one a
			// second or more later.
			for _, t := range samples[k+1:] {
				if d := t.at.Sub(s.at); d >= time.Second {
					if t.cpu[i] >= 0 {
						out[i].PeakCores = max(out[i].PeakCores, (t.cpu[i]-s.cpu[i]).Seconds()/d.Seconds())
					}
					break
				}
			}
		}
		if first >= 0 {
			out[i].CPUSeconds = (last - first).Seconds()
			if span > 0 {
				out[i].Cores = out[i].CPUSeconds / span
			}
		}
	}
	return out
}

// caughtUp sets CaughtUpSeconds and TimeToLast from the publish times
// and, per sequence, the largest latency over the connections that
// received it.
func (s *StormSummary) caughtUp(at []int64, seqMaxLat []int64) {
	var before, during, after Histogram
	for seq, d := range seqMaxLat[:min(len(seqMaxLat), len(at))] {
		if d <= 0 {
			continue
		}
		switch {
		case seq < s.SeqAtDisrupt:
			before.Record(time.Duration(d))
		case seq < s.SeqAtLive:
			during.Record(time.Duration(d))
		default:
			after.Record(time.Duration(d))
		}
	}
	s.TimeToLast.Before, s.TimeToLast.During, s.TimeToLast.After = before.Percentiles(), during.Percentiles(), after.Percentiles()
	last := int64(0)
	for seq := s.SeqAtDisrupt; seq < min(s.SeqAtLive, len(at), len(seqMaxLat)); seq++ {
		if seqMaxLat[seq] > 0 {
			last = max(last, at[seq]+seqMaxLat[seq])
		}
	}
	if last > s.Start {
		s.CaughtUpSeconds = float64(last-s.Start) / 1e9
	}
}

// stormQuiet is how long no event may arrive before the wait for the last
// deliveries of a storm ends: workers report every 100 ms, and a node
// still delivering delivers many times a second.
const stormQuiet = 2 * time.Second

// runStorm is the hold of a storm run: publish, disrupt, wait for every
// connection to be back, publish on, then wait for the deliveries.
func runStorm(ctx context.Context, cfg *Config, pub *publisher, workers []worker) (*StormSummary, publishReport) {
	st := cfg.Storm
	sum := &StormSummary{}
	stop := make(chan struct{})
	done := make(chan publishReport, 1)
	go func() { done <- pub.run(ctx, stop) }()
	sleep(ctx, st.Before)

	cpu := sampleCPU(cfg.ServerPIDs)
	start := time.Now()
	sum.Start = start.UnixNano()
	sum.SeqAtDisrupt = int(pub.sent.Load())
	if err := st.Disrupt(ctx); err != nil {
		sum.DisruptError = err.Error()
	}
	sum.DisruptSeconds = time.Since(start).Seconds()
	// Workers report every 100 ms: after this, what they report
	// includes every close the disruption made.
	sleep(ctx, 300*time.Millisecond)
	liveBy := start.Add(st.LiveWithin)
	liveAt := time.Now()
	for {
		p := total(workers)
		if p.Open >= p.EverReady {
			sum.LiveAgain = true
			liveAt = time.Now()
			if p.LastLiveAt > sum.Start {
				liveAt = time.Unix(0, p.LastLiveAt)
				sum.LiveAgainSeconds = liveAt.Sub(start).Seconds()
			}
			break
		}
		if ctx.Err() != nil || time.Now().After(liveBy) {
			sum.StillAway = p.EverReady - p.Open
			break
		}
		sleep(ctx, pollInterval)
	}
	sum.LiveAt = liveAt.UnixNano()
	sum.SeqAtLive = int(pub.sent.Load())
	sleep(ctx, st.After)
	sum.Servers = stormCPU(cfg.ServerPIDs, cpu.stop(), start, liveAt)
	sum.PublishEndedEarly = int(pub.sent.Load()) >= cfg.Events
	close(stop)
	prep := <-done
	// Every connection should get every event from its first on. A node
	// behind after the storm may take long to deliver them: the wait ends
	// when they are all in, or when nothing arrived for stormQuiet (what
	// is missing then is missing), or after cfg.Drain.
	drainBy := time.Now().Add(cfg.Drain)
	var seen int64
	quietSince := time.Now()
	for ctx.Err() == nil && time.Now().Before(drainBy) {
		p := total(workers)
		if p.Events >= p.EverReady*int64(prep.Sent) {
			break
		}
		if p.Events != seen {
			seen, quietSince = p.Events, time.Now()
		} else if time.Since(quietSince) > stormQuiet {
			break
		}
		sleep(ctx, pollInterval)
	}
	if sum.LiveAgainSeconds > 0 {
		sum.CaughtUpPerSec = float64(total(workers).CaughtUp) / sum.LiveAgainSeconds
	}
	return sum, prep
}

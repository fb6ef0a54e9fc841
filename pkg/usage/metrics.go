package usage

import "github.com/prometheus/client_golang/prometheus"

// BoundMetrics returns counters of what the bounds on usage memory cost
// (Stats), read at scrape, for the node's registry: a non-zero one means
// some usage answers are marked incomplete.
func (c *Collector) BoundMetrics() []prometheus.Collector {
	series := []struct {
		name, help string
		of         func(Stats) int64
	}{
		{"switchboard_usage_spilled_total",
			"Projects' usage counts credited to no project on this node: a second's tally (or the minutes waiting for a failing store) already held MaxProjects (100,000) projects.",
			func(s Stats) int64 { return s.Spilled }},
		{"switchboard_usage_pending_collapsed_total",
			"Minutes waiting for a failing usage store whose counts were kept without their projects, to hold at most MaxProjects projects.",
			func(s Stats) int64 { return s.PendingCollapsed }},
		{"switchboard_usage_pending_dropped_total",
			"Minutes of usage dropped unstored after 10 minutes of a failing usage store.",
			func(s Stats) int64 { return s.PendingDropped }},
		{"switchboard_usage_store_lost_minutes_total",
			"Minutes the embedded usage store dropped before their retention, to stay within its bound of project-minutes.",
			func(s Stats) int64 { return s.StoreLostMinutes }},
		{"switchboard_usage_store_spilled_total",
			"Projects' usage counts the embedded usage store credited to no project: its bound was reached within one minute.",
			func(s Stats) int64 { return s.StoreSpilled }},
	}
	out := make([]prometheus.Collector, len(series))
	for i, s := range series {
		out[i] = prometheus.NewCounterFunc(prometheus.CounterOpts{Name: s.name, Help: s.help},
			func() float64 { return float64(s.of(c.Stats())) })
	}
	return out
}

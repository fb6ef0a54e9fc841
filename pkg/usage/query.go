package usage

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"
)

// Range is what a usage query asks for: a project's minutes From..To
// (Unix minutes, both included).
type Range struct {
	Project  string
	From, To int64
}

// DefaultQuerySpan is the span a query without from covers: the hour up
// to to.
const DefaultQuerySpan = time.Hour

// ParseRange reads GET /v1/usage's parameters: project (required), from
// and to, each an RFC 3339 time or Unix seconds; to defaults to now and
// from to DefaultQuerySpan before to. Both are taken down to their minute,
// whose counts are included: to=now includes the minute in progress.
func ParseRange(q url.Values, now time.Time) (Range, error) {
	var r Range
	r.Project = q.Get("project")
	if r.Project == "" {
		return r, errors.New("project is required")
	}
	to, err := parseTime(q.Get("to"), now)
	if err != nil {
		return r, fmt.Errorf("to: %w", err)
	}
	from, err := parseTime(q.Get("from"), to.Add(-DefaultQuerySpan+time.Minute))
	if err != nil {
		return r, fmt.Errorf("from: %w", err)
	}
	r.From, r.To = floorMinute(from), floorMinute(to)
	if r.From > r.To {
		return r, errors.New("from is after to")
	}
	return r, nil
}

// floorMinute is t's Unix minute (the one it falls in, also before 1970).
func floorMinute(t time.Time) int64 {
	s := t.Unix()
	if s < 0 {
		return (s - 59) / 60
	}
	return s / 60
}

// parseTime reads an RFC 3339 time or Unix seconds; "" is def.
func parseTime(s string, def time.Time) (time.Time, error) {
	if s == "" {
		return def, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		// Bounded so that minutes stay far from overflow: years 0 to 9999.
		if n < -62135596800 || n > 253402300799 {
			return time.Time{}, fmt.Errorf("%q is out of range", s)
		}
		return time.Unix(n, 0), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither RFC 3339 nor Unix seconds", s)
	}
	return t, nil
}

// Report is GET /v1/usage's answer.
type Report struct {
	Project    string    `json:"project"`
	From       time.Time `json:"from"`       // the first minute's start
	To         time.Time `json:"to"`         // the last minute's end
	Resolution string    `json:"resolution"` // always "1m"
	Retention  string    `json:"retention"`  // how far back minutes are kept
	// Total sums the minutes. The metric names are Appwrite's:
	// realtime.connections, realtime.messages.sent, realtime.inbound,
	// realtime.outbound.
	Total   Counts           `json:"total"`
	Metrics map[string]int64 `json:"metrics"`
	// Incomplete is set when a minute of the range is (see
	// ReportMinute): then Total may be short of what the project used.
	Incomplete bool `json:"incomplete"`
	// Minutes lists the minutes with usage, and the incomplete ones,
	// oldest first.
	Minutes []ReportMinute `json:"minutes"`
}

// ReportMinute is one minute of a Report.
type ReportMinute struct {
	Time time.Time `json:"time"` // the minute's start
	Counts
	// Incomplete: a bound on memory took some of the minute's counts off
	// their project (Unattributed holds them, summed over every project
	// they came from), or dropped the minute early (Lost), so Counts may
	// be short. A minute not marked is exact.
	Incomplete   bool    `json:"incomplete,omitempty"`
	Unattributed *Counts `json:"unattributed,omitempty"`
	Lost         bool    `json:"lost,omitempty"`
}

// Query answers r from s.
func Query(ctx context.Context, s Store, r Range) (Report, error) {
	ms, err := s.Query(ctx, r.Project, r.From, r.To)
	if err != nil {
		return Report{}, err
	}
	rep := Report{
		Project: r.Project, From: time.Unix(r.From*60, 0).UTC(), To: time.Unix((r.To+1)*60, 0).UTC(),
		Resolution: "1m", Retention: s.Retention().String(), Minutes: make([]ReportMinute, 0, len(ms)),
		Metrics: make(map[string]int64, numMetrics),
	}
	for _, m := range ms {
		rep.Total.Add(m.Counts)
		rm := ReportMinute{Time: time.Unix(m.Minute*60, 0).UTC(), Counts: m.Counts, Incomplete: m.Incomplete(), Lost: m.Lost}
		if !m.Unattributed.IsZero() {
			rm.Unattributed = &m.Unattributed
		}
		rep.Incomplete = rep.Incomplete || rm.Incomplete
		rep.Minutes = append(rep.Minutes, rm)
	}
	for _, m := range Metrics {
		rep.Metrics[m.String()] = rep.Total.Of(m)
	}
	return rep, nil
}

// Package usage counts what each project used: connections opened,
// messages sent to clients, inbound bytes and outbound bytes, the four
// realtime metrics Appwrite's realtime server reports per project
// (realtime.connections, realtime.messages.sent, realtime.inbound,
// realtime.outbound: the triggerStats calls of app/realtime.php). README's
// "Usage" section says what each one counts and where that differs from
// Appwrite.
//
// It owns the node's counters and their once-a-second fold into a Store
// (Memory for one node, Redis for a cluster, where every node adds into the
// same per-project, per-minute keys so a query sums the cluster). It never
// sees a connection or a frame: the server hands it counts, per event and
// per client message, never per delivery.
package usage

import (
	"strings"
)

// Counts is one project's usage over some span.
type Counts struct {
	// Connections opened: upgraded, accepted, and sent `connected`.
	Connections int64 `json:"connections"`
	// Messages sent to clients: every event delivered (one per
	// recipient) and every response to a client message.
	Messages int64 `json:"messages"`
	// Inbound bytes: the upgrade request's head and every client
	// message's payload.
	Inbound int64 `json:"inbound"`
	// Outbound bytes: the payloads of the messages counted in Messages,
	// and of `connected`.
	Outbound int64 `json:"outbound"`
}

// Add adds o to c.
func (c *Counts) Add(o Counts) {
	c.Connections += o.Connections
	c.Messages += o.Messages
	c.Inbound += o.Inbound
	c.Outbound += o.Outbound
}

// IsZero reports whether c counts nothing.
func (c Counts) IsZero() bool { return c == Counts{} }

// Metric names one of the four counts.
type Metric int

// The four metrics, in Appwrite's names' order.
const (
	Connections Metric = iota
	Messages
	Inbound
	Outbound
	numMetrics
)

// Metrics lists the four metrics.
var Metrics = [numMetrics]Metric{Connections, Messages, Inbound, Outbound}

// String is the metric's Appwrite name.
func (m Metric) String() string {
	switch m {
	case Connections:
		return "realtime.connections"
	case Messages:
		return "realtime.messages.sent"
	case Inbound:
		return "realtime.inbound"
	case Outbound:
		return "realtime.outbound"
	}
	return "usage.Metric(?)"
}

// Of returns c's count of m.
func (c Counts) Of(m Metric) int64 {
	switch m {
	case Connections:
		return c.Connections
	case Messages:
		return c.Messages
	case Inbound:
		return c.Inbound
	case Outbound:
		return c.Outbound
	}
	return 0
}

// Tally is per-project counts owned by one goroutine (or guarded by its
// owner's lock): nothing in it is synchronised. It holds an entry only for
// a project that has counted something since the last Reset.
type Tally struct {
	m map[string]Counts
}

// NewTally returns an empty tally.
func NewTally() *Tally { return &Tally{m: make(map[string]Counts)} }

// Add adds c to project's counts. A project new to the tally is stored
// under a copy of its name: the caller's string may borrow a buffer that
// is reused (a backbone message's bytes).
func (t *Tally) Add(project string, c Counts) {
	if old, ok := t.m[project]; ok {
		old.Add(c)
		t.m[project] = old
		return
	}
	t.m[strings.Clone(project)] = c
}

// Merge adds every count of o to t; o's names are t's own strings after
// it (no copy: a Tally's names are never a borrowed buffer).
func (t *Tally) Merge(o *Tally) {
	for p, c := range o.m {
		old := t.m[p]
		old.Add(c)
		t.m[p] = old
	}
}

// Delete removes project's counts.
func (t *Tally) Delete(project string) { delete(t.m, project) }

// Len is the number of projects with counts.
func (t *Tally) Len() int { return len(t.m) }

// Get returns project's counts.
func (t *Tally) Get(project string) Counts { return t.m[project] }

// All calls f for every project with its counts, in no order.
func (t *Tally) All(f func(project string, c Counts)) {
	for p, c := range t.m {
		f(p, c)
	}
}

// resetKeep is the most entries whose map Reset keeps for reuse: a map
// that a burst of projects grew past it is dropped instead, so a tally's
// memory follows the projects of the last second, not the most ever seen
// (a Go map never shrinks).
const resetKeep = 4096

// Reset empties t.
func (t *Tally) Reset() {
	if len(t.m) > resetKeep {
		t.m = make(map[string]Counts)
		return
	}
	clear(t.m)
}

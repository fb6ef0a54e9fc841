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

// Unattributed is the pseudo-project a full Tally or Memory credits
// counts to: they are kept, in the right minute, but no longer under
// their project. No project is named "" (an upgrade without one is
// refused, and an event of no project has no recipient), and a query
// must name one, so it mixes with nothing real.
const Unattributed = ""

// MaxProjects is the most projects a Tally holds: past it, a project new
// to the tally is credited to Unattributed. It makes the node's memory
// for usage a fixed bound whatever the number of projects: 97 bytes a
// project (BenchmarkMemoryAt100kProjects), 9.3 MiB a tally. It is 100,000
// so that a node with every one of 100,000 projects busy in the same
// second still counts each exactly.
const MaxProjects = 100_000

// Tally is per-project counts owned by one goroutine (or guarded by its
// owner's lock): nothing in it is synchronised. It holds an entry only for
// a project that has counted something since the last Reset, and at most
// its bound of them (MaxProjects unless made smaller) plus Unattributed.
type Tally struct {
	m       map[string]Counts
	max     int
	spilled int64 // adds credited to Unattributed since the last Reset
}

// NewTally returns an empty tally of at most MaxProjects projects.
func NewTally() *Tally { return newTally(MaxProjects) }

func newTally(max int) *Tally { return &Tally{m: make(map[string]Counts), max: max} }

// Add adds c to project's counts. A project new to the tally is stored
// under a copy of its name: the caller's string may borrow a buffer that
// is reused (a backbone message's bytes). A project new to a full tally
// is counted under Unattributed (and in Spilled).
func (t *Tally) Add(project string, c Counts) {
	if old, ok := t.m[project]; ok {
		old.Add(c)
		t.m[project] = old
		return
	}
	if project = t.room(project); project == Unattributed {
		old := t.m[project]
		old.Add(c)
		c = old
	} else {
		project = strings.Clone(project)
	}
	t.m[project] = c
}

// room returns project, or Unattributed when project is new and the
// tally full. The caller has checked that project has no entry.
func (t *Tally) room(project string) string {
	n := len(t.m)
	if _, ok := t.m[Unattributed]; ok {
		n-- // the bound is on projects: Unattributed is always let in
	}
	if n < t.max || project == Unattributed {
		return project
	}
	t.spilled++
	return Unattributed
}

// Merge adds every count of o to t, within t's bound; o's names are t's
// own strings after it (no copy: a Tally's names are never a borrowed
// buffer).
func (t *Tally) Merge(o *Tally) {
	for p, c := range o.m {
		old, ok := t.m[p]
		if !ok {
			if p = t.room(p); p == Unattributed {
				old = t.m[p]
			}
		}
		old.Add(c)
		t.m[p] = old
	}
}

// Spilled is how many times, since the last Reset, a project new to t
// was credited to Unattributed because t was full.
func (t *Tally) Spilled() int64 { return t.spilled }

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
	t.spilled = 0
	if len(t.m) > resetKeep {
		t.m = make(map[string]Counts)
		return
	}
	clear(t.m)
}

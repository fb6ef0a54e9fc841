package server

import (
	"encoding/json"
	"slices"
	"sort"
	"testing"

	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/pkg/explain"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// TestExplainAgreesWithDelivery explains random events for every
// connection of random worlds (the no-leak property test's), then
// publishes each event for real and checks that explain was right every
// time: delivered exactly when the connection received it, naming exactly
// the subscriptions its frame lists. Each reason is also checked against
// the model (a channel not subscribed is one the model's subscription
// lacks, and so on), and explaining must change nothing. It runs worlds
// until at least 1,000 cases were compared and every reason was the answer
// at least 10 times: connections closing, users held for a permission
// change and queues near a small limit are part of the worlds.
func TestExplainAgreesWithDelivery(t *testing.T) {
	seen := map[explain.Reason]int{}
	cases := 0
	reasons := []explain.Reason{explain.Delivered, explain.OtherProject, explain.ChannelNotSubscribed, explain.RoleNotHeld,
		explain.QueryFalse, explain.ConnectionClosing, explain.UserHeld, explain.QueueOverLimit}
	enough := func() bool {
		for _, r := range reasons {
			if seen[r] < 10 {
				return false
			}
		}
		return cases >= 1000
	}
	seed := uint64(0)
	for ; !enough(); seed++ {
		if seed == 1000 {
			t.Fatalf("1,000 worlds and still %d cases, reasons %v", cases, seen)
		}
		cases += explainWorld(t, seed, seen)
		if t.Failed() {
			return
		}
	}
	t.Logf("%d worlds, %d cases (connection, event) compared; subscription answers by reason: %v", seed, cases, seen)
}

// explainWorld runs one world and returns how many (connection, event)
// cases it compared, counting the subscriptions' reasons in seen.
func explainWorld(t *testing.T, seed uint64, seen map[explain.Reason]int) int {
	// Half the worlds have a queue limit of a few event frames, and
	// connections that never read: their queues fill up.
	small := seed%2 == 1
	w := newWorld(t, seed, func(c *Config) {
		if small {
			c.MaxQueueBytes = 300
		}
	})
	defer w.null.Close()
	rng, s := w.rng, w.s
	stalled := map[*modelConn]bool{}
	cases, n := 0, 0
	compare := func(step int, ev *protocol.Event, p modelPayload) {
		t.Helper()
		for _, m := range w.live {
			if !stalled[m] {
				drainQueue(m.c)
			}
		}
		msg, err := protocol.MarshalEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		x := explainer{srv: s, ev: ev, prefix: protocol.AppendEventPrefix(nil, ev)}
		x.doc.Reset(ev.Payload)
		subsBefore := s.idx.Subscriptions()
		answers := make([]explain.Explained, len(w.live))
		queued := make([]int, len(w.live))
		for i, m := range w.live {
			before := snapshotConn(m.c)
			answers[i] = x.conn(m.c.id, m.c)
			if after := snapshotConn(m.c); after != before {
				t.Fatalf("seed %d step %d: explaining changed conn %d: %+v, was %+v", seed, step, i, after, before)
			}
			queued[i] = len(m.c.q.frames)
		}
		if s.idx.Subscriptions() != subsBefore {
			t.Fatalf("seed %d step %d: explaining changed the index", seed, step)
		}
		s.router.route(msg)
		for len(s.pool.ch) > 0 {
			<-s.pool.ch
		}
		for i, m := range w.live {
			a := answers[i]
			got, ok := receivedEvent(t, m.c, n)
			var want []string
			for _, v := range a.Subscriptions {
				seen[v.Reason]++
				if v.Delivered {
					want = append(want, v.ID)
				}
				checkReason(t, seed, step, m, ev, p, v)
			}
			sort.Strings(want)
			if a.Delivered != ok || a.Delivered != (len(want) > 0) || !slices.Equal(got, want) {
				t.Fatalf("seed %d step %d: conn %d (project %s roles %v subs %v): explain said delivered %v to %v (%+v), the client received %v naming %v",
					seed, step, i, m.project, m.roles, m.subs, a.Delivered, want, a.Subscriptions, ok, got)
			}
			if len(a.Subscriptions) > 0 {
				cases++
			}
		}
		n++
	}
	for step := 0; step < 30; step++ {
		switch op := rng.IntN(12); {
		case op < 2 || len(w.live) == 0:
			m := w.connect()
			if small && rng.IntN(2) == 0 {
				stalled[m] = true
			}
		case op == 2:
			w.subscribe(w.live[rng.IntN(len(w.live))])
		case op == 3:
			w.unsubscribe(w.live[rng.IntN(len(w.live))])
		case op == 4: // authenticate as someone
			m := w.live[rng.IntN(len(w.live))]
			uid := w.pick(worldUsers)
			m.c.handleMessage([]byte(`{"type":"authentication","data":{"session":"s-` + uid + `"}}`))
			m.roles = w.modelRoles(uid)
		case op == 5: // leave
			i := rng.IntN(len(w.live))
			_ = w.live[i].c.onClosed(nil)
			w.live = slices.Delete(w.live, i, i+1)
		case op == 6: // going: closing, not yet released
			m := w.live[rng.IntN(len(w.live))]
			m.c.mu.Lock()
			m.c.closeLocked(closeShutdown, ws.StatusGoingAway)
			m.c.mu.Unlock()
		case op == 7: // a membership change, and events while it is resolved
			uid, tm := w.pick(worldUsers), w.pick(worldTeams)
			gate := make(chan struct{})
			w.res.mu.Lock()
			w.res.teams[uid][tm] = !w.res.teams[uid][tm]
			w.res.gate = gate
			w.res.mu.Unlock()
			ev, p := w.randomEvent(n)
			ev.PermissionsChanged, ev.UserID = true, uid
			project := ev.Project
			compare(step, ev, p)
			for range rng.IntN(4) {
				ev, p := w.randomEvent(n)
				compare(step, ev, p)
			}
			close(gate)
			waitHolds(t, s)
			w.res.mu.Lock()
			w.res.gate = nil
			w.res.mu.Unlock()
			for _, m := range w.live {
				if m.project == project && uidOf(m) == uid { // re-resolved: the ones held
					m.roles = w.modelRoles(uid)
				}
			}
		default:
			ev, p := w.randomEvent(n)
			compare(step, ev, p)
		}
		if t.Failed() {
			break
		}
	}
	return cases
}

// connSnapshot is what explaining must leave alone.
type connSnapshot struct {
	state  connState
	flags  connFlags
	frames int
	bytes  int
	subs   int
	roles  int
}

func snapshotConn(c *conn) connSnapshot {
	c.mu.Lock()
	defer c.mu.Unlock()
	return connSnapshot{c.state, c.flags, len(c.q.frames), c.q.bytes, len(c.subs), len(c.roles)}
}

// receivedEvent finds event n among the frames queued on c and returns
// the subscriptions it names, sorted. Other frames (earlier events on a
// connection that does not read, a slow consumer's close) are skipped.
func receivedEvent(t *testing.T, c *conn, n int) ([]string, bool) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	found := false
	for _, f := range c.q.frames {
		b := slices.Concat(f.head, f.body, f.tail)
		h, hn, ok := parseFrameHeader(b)
		if !ok || h.OpCode != ws.OpText {
			continue
		}
		var fr eventFrame
		if err := json.Unmarshal(b[hn:], &fr); err != nil {
			t.Fatalf("bad frame %q", b)
		}
		if fr.Type != "event" || fr.Data.Payload.N != n {
			continue
		}
		if found {
			t.Fatalf("event %d queued twice", n)
		}
		found, ids = true, fr.Data.Subscriptions
	}
	sort.Strings(ids)
	return ids, found
}

// checkReason checks one subscription's answer against the model: the
// reason given is true of the world, and the ones checked before it are
// false.
func checkReason(t *testing.T, seed uint64, step int, m *modelConn, ev *protocol.Event, p modelPayload, v explain.Verdict) {
	t.Helper()
	sub, ok := m.subs[v.ID]
	if !ok {
		t.Fatalf("seed %d step %d: explain names subscription %q the model does not have (%v)", seed, step, v.ID, m.subs)
	}
	sameProject := m.project == ev.Project
	channel := slices.ContainsFunc(sub.channels, func(x string) bool { return slices.Contains(ev.Channels, x) })
	role := slices.Contains(ev.Roles, "any") || slices.ContainsFunc(m.roles, func(x string) bool { return slices.Contains(ev.Roles, x) })
	pass := sub.pass(p)
	var right bool
	switch v.Reason {
	case explain.OtherProject:
		right = !sameProject
	case explain.ChannelNotSubscribed:
		right = sameProject && !channel
	case explain.RoleNotHeld:
		right = sameProject && channel && !role
	case explain.QueryFalse:
		right = sameProject && channel && role && !pass && v.Query != nil && v.Query.Detail != ""
	default: // the connection's condition, or delivered: the subscription itself matches
		right = sameProject && channel && role && pass
	}
	if !right {
		t.Fatalf("seed %d step %d: subscription %s (channels %v) of a conn of %s with roles %v: reason %s for event %s roles %v channels %v payload %+v",
			seed, step, v.ID, sub.channels, m.project, m.roles, v.Reason, ev.Project, ev.Roles, ev.Channels, p)
	}
}

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/history"
)

// withMemoryResume turns resuming on with the embedded history, as
// `switchboard serve` does without Redis.
func withMemoryResume(window time.Duration) func(*Config) {
	return func(cfg *Config) {
		store := history.NewMemory(history.Config{Window: window}, nil)
		cfg.Resume = &ResumeConfig{
			Window:  window,
			Reader:  store,
			Records: history.NewMemoryRecords(window, nil),
			Feed: func(project string, msg []byte) {
				_, _ = store.Append(context.Background(), project, msg)
			},
		}
	}
}

// seqEvent is event number n of project p on channel files, for everyone.
func seqEvent(p string, n int) string {
	return event(p, []string{"any"}, []string{"files"}, `{"n":`+strconv.Itoa(n)+`}`)
}

// subscribeAs sends a subscribe of one subscription id on channels and
// returns its resume status ("" when the response has none).
func (c *client) subscribeAs(id string, channels ...string) string {
	c.t.Helper()
	ch, _ := json.Marshal(channels)
	c.send(`{"type":"subscribe","data":[{"subscriptionId":"` + id + `","channels":` + string(ch) + `,"queries":[]}]}`)
	m := c.expect("response")
	st, err := parseResumeStatus(m, id)
	if err != nil {
		c.t.Fatalf("subscribe response %s (%v)", m.Data, err)
	}
	return st
}

// parseResumeStatus reads the resume status of subscription id, the one
// subscription of a subscribe response: "resumed", "new", "live_<reason>",
// or "" when the response has no resume field.
func parseResumeStatus(m message, id string) (string, error) {
	if m.Type != "response" {
		return "", fmt.Errorf("not a response")
	}
	var resp struct {
		Subscriptions []struct {
			SubscriptionID string `json:"subscriptionId"`
			Resume         *struct {
				Status string `json:"status"`
				Reason string `json:"reason"`
			} `json:"resume"`
		} `json:"subscriptions"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return "", err
	}
	if len(resp.Subscriptions) != 1 || resp.Subscriptions[0].SubscriptionID != id {
		return "", fmt.Errorf("not the response for %s", id)
	}
	switch r := resp.Subscriptions[0].Resume; {
	case r == nil:
		return "", nil
	case r.Reason != "":
		return r.Status + "_" + r.Reason, nil
	default:
		return r.Status, nil
	}
}

// seqs reads events until one numbered last arrives and returns their
// numbers in the order received.
func (c *client) seqsUntil(last int) []int {
	c.t.Helper()
	var got []int
	for {
		d := c.expectEvent()
		var p struct{ N int }
		if err := json.Unmarshal(d.Payload, &p); err != nil {
			c.t.Fatalf("payload %s: %v", d.Payload, err)
		}
		got = append(got, p.N)
		if p.N == last {
			return got
		}
		if len(got) > 100000 {
			c.t.Fatalf("no event %d in %v", last, got[:20])
		}
	}
}

// waitClosed waits until the node holds no upgraded connection.
func waitClosed(t *testing.T, s *Server) { t.Helper(); waitOpen(t, s, 0) }

// waitOpen waits until the node holds n upgraded connections.
func waitOpen(t *testing.T, s *Server, n int64) {
	t.Helper()
	redistest.Eventually(t, 5*time.Second, "the node to hold "+strconv.FormatInt(n, 10)+" connections", func() bool { return s.open.Load() == n })
}

func span(from, to int) []int {
	var s []int
	for i := from; i <= to; i++ {
		s = append(s, i)
	}
	return s
}

func equalInts(a, b []int) bool {
	return fmt.Sprint(a) == fmt.Sprint(b)
}

// resumeCount reads switchboard_resume_total{result}.
func resumeCount(t *testing.T, s *Server, result string) float64 {
	t.Helper()
	return labelledCounter(t, s, "switchboard_resume_total", "result", result)
}

func labelledCounter(t *testing.T, s *Server, name, label, value string) float64 {
	t.Helper()
	mfs, err := s.cfg.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A client whose connection drops comes back under the same subscription
// id and gets, in order and once, every event published while it was
// away, then live events: the SDK (25+) resends its ids on reconnect.
func TestResumeAfterTheConnectionDrops(t *testing.T) {
	s := testNode(t, withMemoryResume(time.Minute))
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	if st := c.subscribeAs("6650f1e2a3b4c5d", "files"); st != "new" {
		t.Fatalf("first subscribe: resume status %q, want new", st)
	}
	for n := 1; n <= 5; n++ {
		publish(t, s, seqEvent("p1", n))
	}
	if got := c.seqsUntil(5); !equalInts(got, span(1, 5)) {
		t.Fatalf("before the drop: %v", got)
	}
	// Past the margin: what was acknowledged before it is not sent again.
	time.Sleep(resumeMargin + 200*time.Millisecond)
	c.conn.Close()
	waitClosed(t, s)
	for n := 6; n <= 10; n++ {
		publish(t, s, seqEvent("p1", n))
	}

	c2 := dial(t, s, "project=p1", nil)
	c2.expect("connected")
	if st := c2.subscribeAs("6650f1e2a3b4c5d", "files"); st != "resumed" {
		t.Fatalf("subscribe again: resume status %q, want resumed", st)
	}
	publish(t, s, seqEvent("p1", 11))
	if got := c2.seqsUntil(11); !equalInts(got, span(6, 11)) {
		t.Fatalf("after coming back: %v, want 6..11", got)
	}
	if n := resumeCount(t, s, "resumed"); n != 1 {
		t.Fatalf("switchboard_resume_total{result=resumed} = %v", n)
	}
}

// Events published while a subscription resumes reach it after the missed
// ones, with no gap, duplicate or reordering at the seam.
func TestResumeSeamUnderLoad(t *testing.T) {
	s := testNode(t, withMemoryResume(time.Minute))
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	c.subscribeAs("seam1", "files")
	publish(t, s, seqEvent("p1", 1))
	c.seqsUntil(1)
	time.Sleep(resumeMargin + 200*time.Millisecond)
	c.conn.Close()
	waitClosed(t, s)

	var wg sync.WaitGroup
	stop := make(chan struct{})
	published := make(chan int, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		n := 1
		defer func() { published <- n }()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if code, err := postNoFail(s, seqEvent("p1", n+1)); err != nil || code != 202 {
				return
			}
			n++
		}
	}()
	time.Sleep(50 * time.Millisecond)
	c2 := dial(t, s, "project=p1", nil)
	c2.expect("connected")
	if st := c2.subscribeAs("seam1", "files"); st != "resumed" {
		t.Fatalf("resume status %q", st)
	}
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	last := <-published
	publish(t, s, seqEvent("p1", last+1))
	got := c2.seqsUntil(last + 1)
	if !equalInts(got, span(2, last+1)) {
		t.Fatalf("received %d events, want 2..%d in order: %v", len(got), last+1, got)
	}
}

// Ids the node has no record of start live ("new"); an id recorded for
// another user does not resume ("live", "user"); nor does one that left
// longer ago than the window.
func TestResumeRefusals(t *testing.T) {
	const secret = "k" // mustJWT's
	s := testNode(t, func(cfg *Config) {
		withMemoryResume(1500 * time.Millisecond)(cfg)
		cfg.Resolver = mustJWT(t)
	})
	alice := jwtFor(t, secret, jwt.MapClaims{"userId": "alice", "projectId": "p1", "exp": time.Now().Add(time.Hour).Unix()})
	bob := jwtFor(t, secret, jwt.MapClaims{"userId": "bob", "projectId": "p1", "exp": time.Now().Add(time.Hour).Unix()})

	c := dial(t, s, "project=p1&jwt="+alice, nil)
	c.expect("connected")
	c.subscribeAs("alices", "files")
	c.conn.Close()
	waitClosed(t, s)
	publish(t, s, seqEvent("p1", 1))

	b := dial(t, s, "project=p1&jwt="+bob, nil)
	b.expect("connected")
	if st := b.subscribeAs("alices", "files"); st != "live_user" {
		t.Fatalf("bob taking alice's id: %q, want live_user", st)
	}
	publish(t, s, seqEvent("p1", 2))
	if got := b.seqsUntil(2); !equalInts(got, []int{2}) {
		t.Fatalf("bob got %v, want only the live event 2", got)
	}

	// The id is bob's now: the record follows the last subscriber.
	// Another of alice's, gone longer than the window, starts live too.
	a := dial(t, s, "project=p1&jwt="+alice, nil)
	a.expect("connected")
	if st := a.subscribeAs("alices2", "files"); st != "new" {
		t.Fatalf("unknown id: %q, want new", st)
	}
	time.Sleep(resumeMargin)
	a.conn.Close()
	waitOpen(t, s, 1)                   // bob's
	time.Sleep(1600 * time.Millisecond) // past the window
	a2 := dial(t, s, "project=p1&jwt="+alice, nil)
	a2.expect("connected")
	if st := a2.subscribeAs("alices2", "files"); st != "live_window" && st != "new" {
		t.Fatalf("alice after the window: %q, want live_window, or new once the record expired", st)
	}
}

// A role the user lost while away is honoured: missed events are matched
// against the roles the returning connection has now, so nothing leaks.
func TestResumeMatchesTheRolesOfNow(t *testing.T) {
	const secret = "k" // mustJWT's
	s := testNode(t, func(cfg *Config) {
		withMemoryResume(time.Minute)(cfg)
		cfg.Resolver = mustJWT(t)
	})
	// The JWT resolver gives a user their own roles; events for team:t1
	// reach only members, and the second token has none.
	member := jwtFor(t, secret, jwt.MapClaims{"userId": "u1", "projectId": "p1", "roles": []string{"team:t1"}, "exp": time.Now().Add(time.Hour).Unix()})
	removed := jwtFor(t, secret, jwt.MapClaims{"userId": "u1", "projectId": "p1", "exp": time.Now().Add(time.Hour).Unix()})
	teamEvent := func(n int) string {
		return event("p1", []string{"team:t1"}, []string{"files"}, `{"n":`+strconv.Itoa(n)+`}`)
	}
	c := dial(t, s, "project=p1&jwt="+member, nil)
	c.expect("connected")
	c.subscribeAs("u1files", "files")
	publish(t, s, teamEvent(1))
	if got := c.seqsUntil(1); !equalInts(got, []int{1}) {
		t.Fatalf("member got %v", got)
	}
	time.Sleep(resumeMargin + 200*time.Millisecond)
	c.conn.Close()
	waitClosed(t, s)
	publish(t, s, teamEvent(2))      // for members only: u1 is no longer one
	publish(t, s, seqEvent("p1", 3)) // for anyone

	c2 := dial(t, s, "project=p1&jwt="+removed, nil)
	c2.expect("connected")
	if st := c2.subscribeAs("u1files", "files"); st != "resumed" {
		t.Fatalf("resume status %q", st)
	}
	if got := c2.seqsUntil(3); !equalInts(got, []int{3}) {
		t.Fatalf("after losing team:t1 while away, got %v, want only 3", got)
	}
}

// A subscription that comes back under another filter resumes under the
// new one (RESUME.md): the missed events it wants now, nothing twice.
func TestResumeUnderOtherChannels(t *testing.T) {
	s := testNode(t, withMemoryResume(time.Minute))
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	c.subscribeAs("x1", "files")
	time.Sleep(resumeMargin + 200*time.Millisecond)
	c.conn.Close()
	waitClosed(t, s)
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"n":1}`))
	publish(t, s, event("p1", []string{"any"}, []string{"documents"}, `{"n":2}`))
	publish(t, s, event("p1", []string{"any"}, []string{"files", "documents"}, `{"n":3}`))

	c2 := dial(t, s, "project=p1", nil)
	c2.expect("connected")
	if st := c2.subscribeAs("x1", "documents"); st != "resumed" {
		t.Fatalf("resume status %q", st)
	}
	if got := c2.seqsUntil(3); !equalInts(got, []int{2, 3}) {
		t.Fatalf("got %v, want the missed documents events 2, 3", got)
	}
}

// Without resuming configured, a subscribe response has no resume field:
// byte for byte what it was.
func TestNoResumeFieldWithoutResume(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	c.send(`{"type":"subscribe","data":[{"subscriptionId":"a","channels":["files"],"queries":[]}]}`)
	if m := c.expect("response"); strings.Contains(string(m.Data), "resume") {
		t.Fatalf("response %s", m.Data)
	}
}

// BenchmarkIdleSubscribedConnHeap is the heap an idle connection costs the
// node once it subscribed by message under an id of its own, as SDK 25+
// does, with resuming off and on (the embedded history, as `switchboard
// serve` runs it alone): issue 24's "no per-connection state beyond what
// is held today".
func BenchmarkIdleSubscribedConnHeap(b *testing.B) {
	req := strings.Replace(upgradeRequest, "&channels[]=files", "", 1)
	for _, resume := range []bool{false, true} {
		b.Run("resume="+strconv.FormatBool(resume), func(b *testing.B) {
			cfg := Config{Broker: broker.NewMemory(1), ConnectsPerIP: Off, MessagesPerMinute: Off}
			if resume {
				withMemoryResume(time.Minute)(&cfg)
			}
			s := offlineNode(b, cfg)
			if s.resume != nil {
				s.resume.start()
				b.Cleanup(func() { _ = s.resume.shutdown(context.Background()) })
			}
			frames := make([][]byte, b.N)
			for i := range frames {
				// Ids as the SDK makes them: 20 hex digits, each its own.
				sub := fmt.Sprintf(`{"type":"subscribe","data":[{"subscriptionId":"%020x","channels":["files"],"queries":[]}]}`, i)
				frames[i] = maskedFrame(ws.OpText, true, []byte(sub), [4]byte{1, 2, 3, 4})
			}
			conns := idleConnHeap(b, s, func(i int) []byte { return append([]byte(req), frames[i]...) })
			if len(conns[0].subs) != 1 {
				b.Fatalf("subscriptions: %d", len(conns[0].subs))
			}
		})
	}
}

// A node died (kill -9) within a second of a resume that queued missed
// events to a subscription: its record, still open, stands where the
// subscription stood before the replay, and the floor taken from the
// node's last checkpoint (everything routed before it, less the queued
// age and the margin, had left the node) must not pass over the replayed
// events, which are older than that floor and may never have reached the
// client. Before, it did: the returning subscription was given nothing
// of them (issue 24: "a node crash loses nothing"). A replay queued well
// before the checkpoint's floor was received, and the floor applies.
func TestResumeAfterACrashRightAfterAReplay(t *testing.T) {
	var offset atomic.Int64 // the records' clock runs ahead of the history's
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	store := history.NewMemory(history.Config{Window: time.Minute}, nil)
	records := history.NewMemoryRecords(time.Minute, clock)
	s := testNode(t, func(cfg *Config) {
		cfg.Resume = &ResumeConfig{Window: time.Minute, Reader: store, Records: records,
			Feed: func(project string, msg []byte) { _, _ = store.Append(context.Background(), project, msg) }}
	})
	var anchor history.Anchor
	for n := 1; n <= 5; n++ {
		msg := seqEvent("p1", n)
		publish(t, s, msg)
		if n <= 2 {
			anchor.Push(history.Digest([]byte(msg)))
		}
	}
	redistest.Eventually(t, 5*time.Second, "five events in history", func() bool {
		span, err := store.ReadFrom(context.Background(), "p1", anchor, 0)
		return err == nil && len(span.Events)-span.Start == 3
	})
	ctx := context.Background()
	// The dead node's last checkpoint, 5 s after the events were
	// appended; then silence past deadAfter.
	offset.Store(int64(5 * time.Second))
	if err := records.Checkpoint(ctx, "dead", 0); err != nil {
		t.Fatal(err)
	}
	cp, _, _ := records.LastCheckpoint(ctx, "dead")
	offset.Store(int64(5*time.Second + deadAfter + time.Second))
	for _, tc := range []struct {
		name     string
		replayMS uint64
		want     int // events to replay
	}{
		{"replay just before the crash", cp.MS - 500, 3},
		{"replay long before the crash", cp.MS - 3000, 0},
		{"no replay", 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := history.Record{Project: "p1", ID: "sub", Node: "dead", Open: true, Anchor: anchor, ReplayMS: tc.replayMS}
			if err := records.Put(ctx, -1, rec); err != nil {
				t.Fatal(err)
			}
			p := s.resume.plan(ctx, "p1", "", "sub")
			if p.result != resumeResumed {
				t.Fatalf("plan: %s", p.result)
			}
			if got := len(p.span.Events) - p.span.Start; got != tc.want {
				t.Fatalf("%d events to replay (floor %d, checkpoint at %d), want %d", got, p.floorMS, cp.MS, tc.want)
			}
		})
	}
}

// BenchmarkResumeReplay is the cost of a resume's replay per replayed
// event: a subscription comes back under its id having missed `events`
// events of the embedded history, and a client on loopback reads the
// response and every one of them. ns/event is wall time; cpu-ns/event is
// the process's CPU, node and client together (an upper bound on the
// node's), per replayed event.
func BenchmarkResumeReplay(b *testing.B) {
	const events = 1000
	store := history.NewMemory(history.Config{Window: time.Minute}, nil)
	records := history.NewMemoryRecords(time.Minute, nil)
	s := testNode(b, func(cfg *Config) {
		cfg.MaxQueueBytes = 64 << 20
		cfg.Resume = &ResumeConfig{Window: time.Minute, Reader: store, Records: records,
			Feed: func(project string, msg []byte) { _, _ = store.Append(context.Background(), project, msg) }}
	})
	ctx := context.Background()
	var anchor history.Anchor
	for n := 0; n <= events; n++ {
		msg := seqEvent("p1", n)
		if n == 0 {
			anchor.Push(history.Digest([]byte(msg)))
		}
		if err := s.cfg.Broker.Publish(ctx, []byte(msg)); err != nil {
			b.Fatal(err)
		}
	}
	redistest.Eventually(b, 10*time.Second, "the events in history", func() bool {
		span, err := store.ReadFrom(ctx, "p1", anchor, 0)
		return err == nil && span.Complete && len(span.Events)-span.Start == events
	})
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	b.ResetTimer()
	cpu0, wall0 := cpu(), time.Now()
	for i := range b.N {
		id := "replay" + strconv.Itoa(i)
		if err := records.Put(ctx, -1, history.Record{Project: "p1", ID: id, Anchor: anchor}); err != nil {
			b.Fatal(err)
		}
		c, err := tryDial(s, "project=p1", nil)
		if err != nil {
			b.Fatal(err)
		}
		if m, err := c.tryRead(5 * time.Second); err != nil || m.Type != "connected" {
			b.Fatalf("%v %s", err, m.Type)
		}
		if err := wsutil.WriteClientText(c.conn, []byte(`{"type":"subscribe","data":[{"subscriptionId":"`+id+`","channels":["files"],"queries":[]}]}`)); err != nil {
			b.Fatal(err)
		}
		m, err := c.tryRead(5 * time.Second)
		if st, perr := parseResumeStatus(m, id); err != nil || perr != nil || st != "resumed" {
			b.Fatalf("subscribe: %v %v %q", err, perr, st)
		}
		for n := 1; n <= events; n++ {
			m, err := c.tryRead(5 * time.Second)
			if err != nil {
				b.Fatal(err)
			}
			if got, err := eventSeq(m); err != nil || got != n {
				b.Fatalf("event %d: got %d (%v)", n, got, err)
			}
		}
		c.conn.Close()
	}
	wall, used := time.Since(wall0), cpu()-cpu0
	b.StopTimer()
	b.ReportMetric(float64(wall.Nanoseconds())/float64(b.N*events), "ns/event")
	b.ReportMetric(float64(used.Nanoseconds())/float64(b.N*events), "cpu-ns/event")
}

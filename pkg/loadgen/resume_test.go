package loadgen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/server"
)

// The bitmap tells missing, duplicated and late events apart at any
// distance, where conn.see's 64-wide window cannot (a drain's replay is
// hundreds of events).
func TestSeqLogCountsEachFault(t *testing.T) {
	s := newSeqLog(2, 200)
	see := func(i int, seqs ...int) (dups, late int) {
		next := uint32(0)
		for _, q := range seqs {
			isNew, l := s.see(i, uint32(q), next)
			if !isNew {
				dups++
				continue
			}
			if l {
				late++
			}
			next = max(next, uint32(q)+1)
		}
		return dups, late
	}
	// Slot 0: from 5, 10-89 never come, 150 comes twice, 120 after 130.
	var seqs []int
	for q := 5; q < 200; q++ {
		if (q >= 10 && q < 90) || q == 120 {
			continue
		}
		seqs = append(seqs, q)
		if q == 130 {
			seqs = append(seqs, 120)
		}
		if q == 150 {
			seqs = append(seqs, 150)
		}
	}
	dups, late := see(0, seqs...)
	if dups != 1 || late != 1 {
		t.Errorf("slot 0: %d duplicates, %d late; want 1 and 1", dups, late)
	}
	n, runs := s.missing(0, 199, 4)
	if n != 80 || fmt.Sprint(runs) != "[[10 89]]" {
		t.Errorf("slot 0 missing %d %v; want 80 [[10 89]]", n, runs)
	}
	// Up to a last sequence past what arrived: the tail is missing too.
	if n, runs := s.missing(0, 205, 4); n != 86 || fmt.Sprint(runs) != "[[10 89] [200 205]]" {
		t.Errorf("slot 0 missing up to 205: %d %v; want 86 [[10 89] [200 205]]", n, runs)
	}
	// Slot 1 got nothing: everything is missing, from 0.
	if n, _ := s.missing(1, 99, 4); n != 100 || s.first[1] != -1 {
		t.Errorf("slot 1 missing %d (first %d); want 100", n, s.first[1])
	}
	// Word boundaries: every other event.
	s2 := newSeqLog(1, 256)
	for q := 0; q < 256; q += 2 {
		s2.see(0, uint32(q), uint32(q))
	}
	if n, runs := s2.missing(0, 254, 200); n != 127 || len(runs) != 127 || runs[126] != [2]int{253, 253} {
		t.Errorf("every other: %d missing in %d runs, last %v", n, len(runs), runs[len(runs)-1])
	}
}

func TestResumeStatusAndSubscribeMessage(t *testing.T) {
	for _, c := range []struct {
		msg    string
		st     uint8
		reason string
	}{
		{`{"type":"response","data":{"to":"subscribe","success":true,"subscriptions":[{"subscriptionId":"a","channels":["files"],"queries":[],"resume":{"status":"resumed"}}]}}`, resumeResumed, ""},
		{`{"type":"response","data":{"to":"subscribe","success":true,"subscriptions":[{"subscriptionId":"a","channels":["files"],"queries":[],"resume":{"status":"live","reason":"incomplete"}}]}}`, resumeLive, "incomplete"},
		{`{"type":"response","data":{"to":"subscribe","success":true,"subscriptions":[{"subscriptionId":"a","channels":["files"],"queries":[],"resume":{"status":"new"}}]}}`, resumeNew, ""},
		{`{"type":"response","data":{"to":"subscribe","success":true,"subscriptions":[{"subscriptionId":"a","channels":["files"],"queries":[]}]}}`, resumeAbsent, ""},
	} {
		st, reason := resumeStatus([]byte(c.msg))
		if st != c.st || reason != c.reason {
			t.Errorf("%s: status %d %q, want %d %q", c.msg, st, reason, c.st, c.reason)
		}
		if string(responseTo([]byte(c.msg))) != "subscribe" {
			t.Errorf("%s: not seen as the subscribe response", c.msg)
		}
	}
	if got := string(subscribeMessage("lg1-7", []string{"files", "a\"b"})); got != `{"type":"subscribe","data":[{"subscriptionId":"lg1-7","channels":["files","a\"b"],"queries":[]}]}` {
		t.Errorf("subscribe message %s", got)
	}
}

// A storm over two nodes that do not resume (each on its own in-process
// backbone, both fed every event), from two worker processes: the connections on the drained node
// come back to the other after the delay, subscribe under the same ids,
// and the generator finds exactly what they missed while away; those on
// the other node miss nothing.
func TestStormFindsWhatTheReconnectLost(t *testing.T) {
	const conns, rate = 60, 50.0
	brokers := []*broker.Memory{broker.NewMemory(1024), broker.NewMemory(1024)}
	nodes := make([]*server.Server, 2)
	for i := range nodes {
		nodes[i] = startNode(t, func(c *server.Config) {
			c.Broker = brokers[i]
			c.DrainTime = 300 * time.Millisecond
		})
	}
	cfg := Config{
		URL:   fmt.Sprintf("ws://%s/v1/realtime?project=p1&channels[]=files", nodes[0].Addr()),
		Nodes: []string{nodes[1].Addr().String()},
		Conns: conns,
		// Two processes: the checks travel in the workers' results, and
		// the last sequence in the line that stops them.
		Workers:        2,
		WorkerCommand:  testWorkerCommand,
		Resume:         true,
		ReconnectDelay: 500 * time.Millisecond,
		Events:         int(rate * 20),
		PublishRate:    rate,
		Drain:          2 * time.Second,
		ConnectTimeout: 5 * time.Second,
		Publish: func(ctx context.Context, msg []byte) error {
			return errors.Join(brokers[0].Publish(ctx, msg), brokers[1].Publish(ctx, msg))
		},
		Storm: &Storm{
			Before: time.Second, After: time.Second, LiveWithin: 10 * time.Second,
			Disrupt: func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				return nodes[0].Shutdown(ctx)
			},
		},
		ServerPIDs: []int{os.Getpid()},
	}
	sum := run(t, cfg)
	st, seqs, p := sum.Storm, sum.Seqs, sum.Counters
	if st == nil || seqs == nil {
		t.Fatalf("no storm or seqs in the summary: %+v", sum)
	}
	t.Logf("storm %+v; counters %+v", *st, p)
	for _, w := range seqs.Worst {
		t.Logf("%s", w)
	}
	half := int64(conns / 2)
	if st.CaughtUpSeconds <= 0 || st.CaughtUpSeconds > st.LiveAgainSeconds+2 {
		t.Errorf("caught up %.2f s after the disruption, live again %.2f s", st.CaughtUpSeconds, st.LiveAgainSeconds)
	}
	if !st.LiveAgain || st.LiveAgainSeconds < 0.5 || st.DisruptError != "" {
		t.Errorf("live again %v after %.2fs (disrupt error %q); want back after at least the 0.5 s delay", st.LiveAgain, st.LiveAgainSeconds, st.DisruptError)
	}
	if p.WentAway != half || p.GoingAway != half || p.Resubscribed != half || p.ReconnectFailures != 0 {
		t.Errorf("went away %d (1001: %d), resubscribed %d, failed tries %d; want %d, %d, %d, 0", p.WentAway, p.GoingAway, p.Resubscribed, p.ReconnectFailures, half, half, half)
	}
	if p.ResumeAbsent != conns+half || p.ResumeResumed != 0 {
		t.Errorf("statuses: absent %d resumed %d; want %d and 0 (these nodes do not resume)", p.ResumeAbsent, p.ResumeResumed, conns+half)
	}
	// At 50 events/s, 0.5 s away loses about 25 each.
	if seqs.ConnsMissing != int(half) || seqs.Missing < half*15 || seqs.Duplicated != 0 || seqs.OutOfOrder != 0 || seqs.ConnsNothing != 0 {
		t.Errorf("seqs %+v; want the %d drained connections missing ~25 events each, nothing else", *seqs, half)
	}
	if w := seqs.Worst; len(w) == 0 || w[0].LeftAfter < 0 || w[0].BackWith != w[0].LeftAfter+w[0].Missing+1 || w[0].DupFirst != -1 {
		t.Errorf("worst %+v: want it back with the seq after the ones it missed", w)
	}
	if len(seqs.Worst) == 0 || seqs.Worst[0].Conn%2 != 0 || seqs.Worst[0].Reconnects != 1 || seqs.Worst[0].LastStatus != "absent" || !strings.HasPrefix(seqs.Worst[0].ID, "lg") {
		t.Errorf("worst %+v: want an even connection (node 0's) that came back once", seqs.Worst)
	}
	if sum.Events.Published != seqs.LastSeq+1 || st.PublishEndedEarly {
		t.Errorf("published %d, last seq %d, ended early %v", sum.Events.Published, seqs.LastSeq, st.PublishEndedEarly)
	}
}

// A connection whose node drained tries the next one, refused, and after
// another delay the one after, which takes it; the refused try is counted.
// (Connection 1 starts on the refused address: never ready, it counts as
// failed and never comes back.)
func TestResumingConnectionTriesTheNextNode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	refused := ln.Addr().String()
	ln.Close()
	brokers := []*broker.Memory{broker.NewMemory(64), broker.NewMemory(64)}
	nodes := make([]*server.Server, 2)
	for i := range nodes {
		nodes[i] = startNode(t, func(c *server.Config) { c.Broker = brokers[i]; c.DrainTime = server.Off })
	}
	cfg := Config{
		URL:            fmt.Sprintf("ws://%s/v1/realtime?project=p1&channels[]=files", nodes[0].Addr()),
		Nodes:          []string{refused, nodes[1].Addr().String()},
		Conns:          3,
		Resume:         true,
		ReconnectDelay: 200 * time.Millisecond,
		ConnectTimeout: 2 * time.Second,
		Events:         200,
		PublishRate:    50,
		Drain:          time.Second,
		Publish: func(ctx context.Context, msg []byte) error {
			return errors.Join(brokers[0].Publish(ctx, msg), brokers[1].Publish(ctx, msg))
		},
		Storm: &Storm{
			Before: 300 * time.Millisecond, After: 300 * time.Millisecond, LiveWithin: 5 * time.Second,
			Disrupt: func(ctx context.Context) error {
				ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
				defer cancel()
				return nodes[0].Shutdown(ctx)
			},
		},
	}
	sum := run(t, cfg)
	p := sum.Counters
	if p.Failed != 1 || sum.OpenAtFull != 2 || p.WentAway != 1 || p.Reconnects != 2 || p.ReconnectFailures != 1 || p.Resubscribed != 1 || !sum.Storm.LiveAgain {
		t.Errorf("counters %+v; storm %+v", p, *sum.Storm)
	}
	// Away 0.4 s at 50 events/s: about 20 missed, on connection 0 only.
	if sum.Seqs.ConnsMissing != 1 || sum.Seqs.Worst[0].Conn != 0 || sum.Seqs.Worst[0].Reconnects != 2 {
		t.Errorf("seqs %+v, worst %v", *sum.Seqs, sum.Seqs.Worst)
	}
}

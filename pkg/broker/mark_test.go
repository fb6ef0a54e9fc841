package broker

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// marker is what both Redis brokers offer for marks.
type marker interface {
	Broker
	Mark(ctx context.Context, partition int, mark string) error
}

// markedRun runs b and returns one ordered record of what it hands on:
// "msg <payload>" from the handler, "mark <partition> <mark>" from
// OnMark (which newTestMarked wired to record). Both are called from
// Run's goroutine, so the record's order is the order of the hand-over.
type markedRun struct {
	mu  sync.Mutex
	got []string
}

func (m *markedRun) add(s string) {
	m.mu.Lock()
	m.got = append(m.got, s)
	m.mu.Unlock()
}

func (m *markedRun) snapshot() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.got)
}

func (m *markedRun) onMark(p int, mark string) { m.add(fmt.Sprintf("mark %d %s", p, mark)) }

// run runs b with a handler that records into m, until the test ends.
func (m *markedRun) run(t *testing.T, b Broker) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = b.Run(ctx, func(msg []byte) { m.add("msg " + string(msg)) })
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// interleave publishes msgs through pub and marks of partition through
// mk at the same time, and waits until every record in runs holds all of
// them.
func interleave(t *testing.T, pub, mk marker, partition int, msgs, marks []string, runs ...*markedRun) {
	t.Helper()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for _, m := range msgs {
			if err := pub.Publish(context.Background(), []byte(m)); err != nil {
				t.Errorf("Publish: %v", err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for _, k := range marks {
			if err := mk.Mark(context.Background(), partition, k); err != nil {
				t.Errorf("Mark: %v", err)
				return
			}
		}
	}()
	wg.Wait()
	for i, r := range runs {
		redistest.Eventually(t, 10*time.Second, fmt.Sprintf("run %d received everything", i), func() bool {
			return len(r.snapshot()) >= len(msgs)+len(marks)
		})
	}
}

// checkSameOrder checks that every run handed on the same sequence, with
// each message once and each mark once: a mark keeps its place among the
// messages on every node, which is what lets a node that heard a mark say
// that it heard every message published after it.
func checkSameOrder(t *testing.T, msgs, marks []string, runs ...*markedRun) {
	t.Helper()
	first := runs[0].snapshot()
	var gotMsgs, gotMarks []string
	for _, s := range first {
		if len(s) > 4 && s[:4] == "msg " {
			gotMsgs = append(gotMsgs, s[4:])
		} else {
			gotMarks = append(gotMarks, s)
		}
	}
	if !slices.Equal(gotMsgs, msgs) {
		t.Fatalf("the handler got %d messages %v..., want the %d published, in order", len(gotMsgs), gotMsgs[:min(5, len(gotMsgs))], len(msgs))
	}
	if len(gotMarks) != len(marks) {
		t.Fatalf("OnMark got %d marks, want %d: %v", len(gotMarks), len(marks), gotMarks)
	}
	for i, r := range runs[1:] {
		if got := r.snapshot(); !slices.Equal(got, first) {
			t.Fatalf("run %d handed on another order than run 0:\n%v\nvs\n%v", i+1, got, first)
		}
	}
}

func numbered(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s%d", prefix, i)
	}
	return out
}

func TestRedisMarksKeepTheirPlaceAmongMessages(t *testing.T) {
	srv := redistest.Start(t)
	var runs [2]markedRun
	var nodes [2]*Redis
	for i := range nodes {
		r, err := NewRedis(RedisOptions{URL: srv.URL(), OnMark: runs[i].onMark})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		nodes[i] = r
		runs[i].run(t, r)
		waitReady(t, fmt.Sprintf("node %d", i), r)
	}
	// A node without OnMark neither subscribes to marks nor hands them
	// to its handler as messages.
	plain, _, _ := newTestRedis(t, srv.URL(), 0)
	plainMsgs := runBroker(t, plain)
	waitReady(t, "plain node", plain)

	msgs, marks := numbered(`{"project":"p","n":`, 300), numbered("k", 60)
	for i := range msgs {
		msgs[i] += "}"
	}
	interleave(t, nodes[0], nodes[1], 0, msgs, marks, &runs[0], &runs[1])
	checkSameOrder(t, msgs, marks, &runs[0], &runs[1])
	expect(t, "plain node", plainMsgs, msgs...)
	expectNothingQueued(t, "plain node", plainMsgs)

	if err := nodes[0].Mark(context.Background(), 1, "k"); err == nil {
		t.Error("Mark of partition 1 on the single channel succeeded")
	}
}

func TestRedisShardedMarksKeepTheirPlaceAmongMessages(t *testing.T) {
	cl := redistest.StartCluster(t)
	const n = 8
	p := Partition("p", n)
	var runs [2]markedRun
	var nodes [2]*RedisSharded
	for i := range nodes {
		reg := prometheus.NewRegistry()
		s, err := NewRedisSharded(RedisShardedOptions{
			RedisOptions: RedisOptions{URL: cl.URL(), OnMark: runs[i].onMark, Registerer: reg},
			Partitions:   n,
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		s.Want("p")
		nodes[i] = s
		runs[i].run(t, s)
		waitSubscribed(t, fmt.Sprintf("node %d", i), reg, 1)
	}
	// A node of another partition hears neither the messages nor the
	// marks of p's.
	other := "q"
	for Partition(other, n) == p {
		other += "q"
	}
	var elsewhere markedRun
	oreg := prometheus.NewRegistry()
	o, err := NewRedisSharded(RedisShardedOptions{
		RedisOptions: RedisOptions{URL: cl.URL(), OnMark: elsewhere.onMark, Registerer: oreg},
		Partitions:   n,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	o.Want(other)
	elsewhere.run(t, o)
	waitSubscribed(t, "node of another partition", oreg, 1)

	msgs := make([]string, 300)
	for i := range msgs {
		msgs[i] = fmt.Sprintf(`{"project":"p","n":%d}`, i)
	}
	marks := numbered("k", 60)
	interleave(t, nodes[0], nodes[1], p, msgs, marks, &runs[0], &runs[1])
	checkSameOrder(t, msgs, marks, &runs[0], &runs[1])
	if err := o.Mark(context.Background(), Partition(other, n), "own"); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "the other partition's node hears its own partition's mark", func() bool {
		return len(elsewhere.snapshot()) > 0
	})
	if got := elsewhere.snapshot(); !slices.Equal(got, []string{fmt.Sprintf("mark %d own", Partition(other, n))}) {
		t.Fatalf("the node of partition %d handed on %v, want only its own partition's mark", Partition(other, n), got)
	}
	if err := nodes[0].Mark(context.Background(), n, "k"); err == nil {
		t.Error("Mark of a partition out of range succeeded")
	}
}

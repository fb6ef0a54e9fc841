package explain

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// bus is a broker that hands every message to every endpoint's handler,
// as Redis Pub/Sub does with the nodes subscribed to one channel.
type bus struct {
	mu   sync.Mutex
	subs []chan []byte
}

type endpoint struct {
	b  *bus
	ch chan []byte
}

func (b *bus) endpoint() *endpoint {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := &endpoint{b: b, ch: make(chan []byte, 64)}
	b.subs = append(b.subs, e.ch)
	return e
}

func (e *endpoint) Publish(_ context.Context, msg []byte) error {
	e.b.mu.Lock()
	defer e.b.mu.Unlock()
	for _, ch := range e.b.subs {
		ch <- append([]byte(nil), msg...)
	}
	return nil
}

func (e *endpoint) Run(ctx context.Context, h broker.Handler) error {
	for {
		select {
		case m := <-e.ch:
			h(m)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (e *endpoint) Ready() error { return nil }

// node starts a Cluster named name on b whose answer is its name and the
// question's body; live names the nodes believed alive.
func node(t *testing.T, b *bus, name string, live []string, answer func(ctx context.Context, kind string, body []byte) ([]byte, error)) *Cluster {
	t.Helper()
	if answer == nil {
		answer = func(_ context.Context, kind string, body []byte) ([]byte, error) {
			return json.Marshal(map[string]string{"node": name, "kind": kind, "body": string(body)})
		}
	}
	c := New(Options{Node: name, Peers: b.endpoint(), Live: func() []string { return live }, Answer: answer, Wait: 300 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

func answered(as []Answer) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.Node)
	}
	slices.Sort(out)
	return out
}

func TestAskGathersEveryLiveNode(t *testing.T) {
	b := &bus{}
	live := []string{"a", "b", "c"}
	a := node(t, b, "a", live, nil)
	node(t, b, "b", live, nil)
	node(t, b, "c", live, nil)
	start := time.Now()
	as, nodes := a.Ask(context.Background(), "explain", []byte(`{"x":1}`), "")
	if got := answered(as); !slices.Equal(got, live) || !slices.Equal(nodes.Answered, live) || len(nodes.Missing) != 0 {
		t.Fatalf("answers from %v, nodes %+v", got, nodes)
	}
	// It stopped when the last live node answered, not at the bound.
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Fatalf("Ask took %v with every node answering", d)
	}
	for _, x := range as {
		if !strings.Contains(string(x.Body), `"body":"{\"x\":1}"`) || !strings.Contains(string(x.Body), `"kind":"explain"`) {
			t.Fatalf("answer %s", x.Body)
		}
	}
}

func TestAskNamesTheSilentNode(t *testing.T) {
	b := &bus{}
	live := []string{"a", "b", "gone"}
	a := node(t, b, "a", live, nil)
	node(t, b, "b", live, nil)
	start := time.Now()
	_, nodes := a.Ask(context.Background(), "connections", []byte(`{}`), "")
	if !slices.Equal(nodes.Answered, []string{"a", "b"}) || !slices.Equal(nodes.Missing, []string{"gone"}) {
		t.Fatalf("nodes %+v", nodes)
	}
	if d := time.Since(start); d < 300*time.Millisecond || d > 2*time.Second {
		t.Fatalf("Ask took %v, want the 300ms bound", d)
	}
}

func TestAskOnlyOneNode(t *testing.T) {
	b := &bus{}
	live := []string{"a", "b", "c"}
	var asked sync.Map
	counting := func(name string) func(context.Context, string, []byte) ([]byte, error) {
		return func(context.Context, string, []byte) ([]byte, error) {
			asked.Store(name, true)
			return []byte(`{}`), nil
		}
	}
	a := node(t, b, "a", live, counting("a"))
	node(t, b, "b", live, counting("b"))
	node(t, b, "c", live, counting("c"))
	as, nodes := a.Ask(context.Background(), "explain", []byte(`{}`), "b")
	if got := answered(as); !slices.Equal(got, []string{"b"}) || len(nodes.Missing) != 0 {
		t.Fatalf("answers from %v, nodes %+v", got, nodes)
	}
	time.Sleep(50 * time.Millisecond)
	for _, n := range []string{"a", "c"} {
		if _, ok := asked.Load(n); ok {
			t.Fatalf("node %s answered a question for b", n)
		}
	}
	// A question for this node itself never leaves it.
	as, _ = a.Ask(context.Background(), "explain", []byte(`{}`), "a")
	if got := answered(as); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("answers from %v", got)
	}
	if _, ok := asked.Load("b"); !ok {
		t.Fatal("b was never asked")
	}
}

func TestAnswerErrorsAndBounds(t *testing.T) {
	b := &bus{}
	live := []string{"a", "big", "bad"}
	a := node(t, b, "a", live, nil)
	node(t, b, "big", live, func(context.Context, string, []byte) ([]byte, error) {
		return make([]byte, MaxAnswerBytes+1), nil
	})
	node(t, b, "bad", live, func(context.Context, string, []byte) ([]byte, error) {
		return nil, errors.New("broken")
	})
	as, nodes := a.Ask(context.Background(), "explain", []byte(`{}`), "")
	if got := answered(as); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("answers from %v", got)
	}
	if nodes.Failed["bad"] != "broken" || !strings.Contains(nodes.Failed["big"], "over the") || len(nodes.Missing) != 0 {
		t.Fatalf("nodes %+v", nodes)
	}
}

func TestParseConnID(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want ConnID
		err  bool
	}{
		{"host:9505 pid 12/7", ConnID{"host:9505 pid 12", 7}, false},
		{"a/b/42", ConnID{"a/b", 42}, false},
		{"42", ConnID{}, true},
		{"/42", ConnID{}, true},
		{"n/", ConnID{}, true},
		{"n/x", ConnID{}, true},
		{"n/4294967296", ConnID{}, true},
		{"n/-1", ConnID{}, true},
	} {
		got, err := ParseConnID(tt.in)
		if (err != nil) != tt.err || got != tt.want {
			t.Errorf("ParseConnID(%q) = %+v, %v", tt.in, got, err)
		}
		if err == nil && got.String() != tt.in {
			t.Errorf("%q reads back as %q", tt.in, got.String())
		}
	}
}

func TestPageIsInNodeIDOrderAndSkipsNothing(t *testing.T) {
	conns := func(node string, ids ...int) []Connection {
		var out []Connection
		for _, id := range ids {
			out = append(out, Connection{Identity: Identity{Connection: ConnID{node, uint32(id)}.String(), Node: node}})
		}
		return out
	}
	names := func(cs []Connection) string {
		var out []string
		for _, c := range cs {
			out = append(out, c.Connection)
		}
		return strings.Join(out, " ")
	}
	// b had more than it sent: c's connections wait for a later page.
	page, next := Page(map[string]NodeList{
		"c": {Connections: conns("c", 1)},
		"a": {Connections: conns("a", 3, 5)},
		"b": {Connections: conns("b", 2), More: true},
	}, 10)
	if names(page) != "a/3 a/5 b/2" || next != "b/2" {
		t.Fatalf("page %q next %q", names(page), next)
	}
	page, next = Page(map[string]NodeList{"a": {Connections: conns("a", 1, 2)}, "b": {Connections: conns("b", 1)}}, 2)
	if names(page) != "a/1 a/2" || next != "a/2" {
		t.Fatalf("page %q next %q", names(page), next)
	}
	page, next = Page(map[string]NodeList{"a": {Connections: conns("a", 1)}}, 2)
	if names(page) != "a/1" || next != "" {
		t.Fatalf("page %q next %q", names(page), next)
	}
	r := ListRequest{After: "b/2"}
	for _, tt := range []struct {
		node string
		id   uint32
		want bool
	}{{"a", 9, false}, {"b", 2, false}, {"b", 3, true}, {"c", 0, true}} {
		if r.Includes(tt.node, tt.id) != tt.want {
			t.Errorf("after b/2 includes %s/%d: %v", tt.node, tt.id, !tt.want)
		}
	}
	if _, err := ParseLimit("0"); err == nil {
		t.Error("limit 0 accepted")
	}
	if n, err := ParseLimit(""); err != nil || n != DefaultLimit {
		t.Errorf("empty limit: %d %v", n, err)
	}
	if _, err := ParseLimit(fmt.Sprint(MaxLimit + 1)); err == nil {
		t.Error("limit over the maximum accepted")
	}
}

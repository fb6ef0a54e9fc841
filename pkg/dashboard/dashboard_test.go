package dashboard

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// event is one Server-Sent Event read off the stream.
type event struct {
	name string
	data []byte
}

// stream opens url's event stream over a real socket and returns its
// events; it ends with the test.
func stream(t *testing.T, url string) <-chan event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("event stream: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	out := make(chan event, 64)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(out)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(nil, 1<<20)
		var e event
		for sc.Scan() {
			line := sc.Text()
			switch {
			case strings.HasPrefix(line, "event: "):
				e.name = line[len("event: "):]
			case strings.HasPrefix(line, "data: "):
				e.data = []byte(line[len("data: "):])
			case line == "":
				out <- e
				e = event{}
			}
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close(); wg.Wait() })
	return out
}

// nextTick waits for the next tick on ch.
func nextTick(t *testing.T, ch <-chan event) tick {
	t.Helper()
	for {
		select {
		case e, ok := <-ch:
			if !ok {
				t.Fatal("event stream ended")
			}
			if e.name != "tick" {
				continue
			}
			var tk tick
			if err := json.Unmarshal(e.data, &tk); err != nil {
				t.Fatalf("tick %s: %v", e.data, err)
			}
			return tk
		case <-time.After(5 * time.Second):
			t.Fatal("no tick for 5 s")
		}
	}
}

// startDashboard runs a dashboard for a registry holding a connections
// gauge, serves it over HTTP, and stops both with the test.
func startDashboard(t *testing.T, node string, peers broker.Broker) (conns prometheus.Gauge, url string, stop func()) {
	t.Helper()
	reg := prometheus.NewRegistry()
	conns = prometheus.NewGauge(prometheus.GaugeOpts{Name: metricConns})
	reg.MustRegister(conns)
	d, err := New(Options{Node: node, Gatherer: reg, Peers: peers,
		TopProjects: func(n int) []ProjectCount { return []ProjectCount{{Project: "p-" + node, Conns: 7}}[:min(n, 1)] },
		TopUsage: func(n int) UsageTop {
			return UsageTop{Messages: []ProjectValue{{Project: "p-" + node, Value: 9}}[:min(n, 1)]}
		}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	srv := httptest.NewServer(d.Handler())
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done; srv.Close() }) }
	t.Cleanup(stop)
	return conns, srv.URL, stop
}

// TestPageOpenedBeforeTheFirstSample: before Run has taken a sample (a
// node just started, which a page reconnecting after a restart often
// meets), the history is empty arrays, never null, which the page's
// script would fail to iterate (app.js, start).
func TestPageOpenedBeforeTheFirstSample(t *testing.T) {
	d, err := New(Options{Node: "fresh", Gatherer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(d.Handler())
	t.Cleanup(srv.Close)
	first := <-stream(t, srv.URL+"/dashboard/events")
	if first.name != "init" || !bytes.Contains(first.data, []byte(`"self":[],"totals":[],"nodes":[]`)) {
		t.Fatalf("first event %q %s, want init with empty arrays", first.name, first.data)
	}
}

// TestStreamStartsWithHistoryThenTicks reads the page's stream: the
// history first, then a tick about every second carrying what the
// registry holds at that moment, without reopening the stream. A page
// opened before the first sample gets an empty history, as arrays: the
// page's script iterates them.
func TestStreamStartsWithHistoryThenTicks(t *testing.T) {
	conns, url, _ := startDashboard(t, "solo", nil)
	conns.Set(3)
	early := stream(t, url+"/dashboard/events")
	first := <-early
	var h history
	if first.name != "init" || json.Unmarshal(first.data, &h) != nil || h.Node != "solo" || h.Cluster ||
		h.Self == nil || h.Totals == nil || h.Nodes == nil {
		t.Fatalf("first event %q %s, want init with this node's history, arrays even when empty", first.name, first.data)
	}
	nextTick(t, early) // a sample has been taken: the history holds it
	ch := stream(t, url+"/dashboard/events")
	first = <-ch
	if first.name != "init" || json.Unmarshal(first.data, &h) != nil || len(h.Self) == 0 || h.Self[len(h.Self)-1].Conns != 3 {
		t.Fatalf("first event %q %s, want init with this node's history", first.name, first.data)
	}
	conns.Set(41)
	start := time.Now()
	for {
		tk := nextTick(t, ch)
		if tk.Self.Conns == 41 {
			if len(tk.Self.Top) != 1 || tk.Self.Top[0].Project != "p-solo" || len(tk.Nodes) != 1 {
				t.Fatalf("tick %+v: want the top projects and one node", tk)
			}
			if u := tk.Self.Usage; u == nil || len(u.Messages) != 1 || u.Messages[0] != (ProjectValue{"p-solo", 9}) {
				t.Fatalf("tick's usage %+v: want the top projects by messages", u)
			}
			break
		}
		if time.Since(start) > 3*time.Second {
			t.Fatalf("connections still %v after 3 s of ticks", tk.Self.Conns)
		}
	}
}

// TestPageIsSelfContained: the page and the files it names are served
// from the binary, and none is fetched from another origin.
func TestPageIsSelfContained(t *testing.T) {
	_, url, _ := startDashboard(t, "solo", nil)
	resp, err := http.Get(url + "/")
	if err != nil {
		t.Fatal(err)
	}
	var page strings.Builder
	_, _ = bufio.NewReader(resp.Body).WriteTo(&page)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET / = %d:\n%s", resp.StatusCode, page.String())
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'self'") {
		t.Errorf("Content-Security-Policy %q lets the page load from elsewhere", csp)
	}
	for _, ref := range []string{"dashboard/uplot/uPlot.iife.min.js", "dashboard/uplot/uPlot.min.css", "dashboard/app.js", "dashboard/style.css", "dashboard/favicon.svg"} {
		if !strings.Contains(page.String(), `"`+ref+`"`) {
			t.Errorf("the page does not load %s", ref)
		}
		r, err := http.Get(url + "/" + ref)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != 200 {
			t.Errorf("GET /%s = %d", ref, r.StatusCode)
		}
	}
	for _, name := range []string{"index.html", "app.js", "style.css"} {
		b, err := assets.ReadFile("assets/" + name)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), "http://") || strings.Contains(string(b), "https://") || strings.Contains(string(b), "//cdn") {
			t.Errorf("%s refers to another origin", name)
		}
	}
}

// TestClusterViewOverRedis: two nodes on one real redis-server see each
// other in the cluster table and totals; when one stops publishing, the
// other marks it gone within 5 s.
func TestClusterViewOverRedis(t *testing.T) {
	rs := redistest.Start(t)
	peers := func() broker.Broker {
		b, err := broker.NewRedis(broker.RedisOptions{URL: rs.URL(), Channel: "test.nodes"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return b
	}
	aConns, aURL, _ := startDashboard(t, "node-a", peers())
	bConns, _, stopB := startDashboard(t, "node-b", peers())
	aConns.Set(10)
	bConns.Set(32)
	ch := stream(t, aURL+"/dashboard/events")
	deadline := time.Now().Add(10 * time.Second)
	for {
		tk := nextTick(t, ch)
		if len(tk.Nodes) == 2 && tk.Total.Conns == 42 && tk.Total.Nodes == 2 {
			if tk.Nodes[0].Node != "node-a" || tk.Nodes[1].Node != "node-b" || tk.Nodes[1].Top[0].Project != "p-node-b" {
				t.Fatalf("cluster table %+v: want this node first, then node-b with its figures", tk.Nodes)
			}
			// A node's usage top is its own page's: not published.
			if tk.Nodes[1].Usage != nil || tk.Nodes[0].Usage == nil {
				t.Fatalf("usage tops: node-a %+v, node-b %+v; want node-a's only", tk.Nodes[0].Usage, tk.Nodes[1].Usage)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node-b never showed in node-a's cluster view: %+v", tk)
		}
	}
	stopB()
	stopped := time.Now()
	for {
		tk := nextTick(t, ch)
		if len(tk.Nodes) == 2 && tk.Nodes[1].Gone {
			if tk.Total.Nodes != 1 || tk.Total.Gone != 1 || tk.Total.Conns != 10 {
				t.Fatalf("totals with node-b gone: %+v", tk.Total)
			}
			t.Logf("node-b marked gone %v after it stopped", time.Since(stopped).Round(100*time.Millisecond))
			break
		}
		if time.Since(stopped) > 5*time.Second {
			t.Fatalf("node-b not marked gone 5 s after it stopped: %+v", tk.Nodes)
		}
	}
}

// TestNodesChannelGarbageHarmsNoOne: messages on the nodes channel that
// are not samples are counted and dropped; the view goes on.
func TestNodesChannelGarbageHarmsNoOne(t *testing.T) {
	rs := redistest.Start(t)
	b, err := broker.NewRedis(broker.RedisOptions{URL: rs.URL(), Channel: "test.nodes"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	_, url, _ := startDashboard(t, "node-a", b)
	ch := stream(t, url+"/dashboard/events")
	pub, err := broker.NewRedis(broker.RedisOptions{URL: rs.URL(), Channel: "test.nodes"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pub.Close() })
	redistest.Eventually(t, 5*time.Second, "node-a subscribed", func() bool { return b.Ready() == nil })
	for _, msg := range []string{"not json", `{"node":""}`, `{"node":"` + strings.Repeat("x", 300) + `"}`, `{"node":"n","conns":"many"}`} {
		if err := pub.Publish(context.Background(), []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}
	if err := pub.Publish(context.Background(), []byte(`{"node":"real","conns":5}`)); err != nil {
		t.Fatal(err)
	}
	for start := time.Now(); ; {
		tk := nextTick(t, ch)
		if len(tk.Nodes) == 2 && tk.Nodes[1].Node == "real" && tk.Total.Conns == 5 {
			break
		}
		if len(tk.Nodes) > 2 || time.Since(start) > 5*time.Second {
			t.Fatalf("nodes after garbage: %+v", tk.Nodes)
		}
	}
}

// FuzzDecodeSample: whatever arrives on the nodes channel, decoding
// returns an error or a sample that is named and bounded.
func FuzzDecodeSample(f *testing.F) {
	f.Add([]byte(`{"node":"a:9505 pid 1","at":1,"conns":3,"p99":null,"top":[{"p":"x","n":2}]}`))
	f.Add([]byte(`{"node":"a","conns":1e400}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decodeSample(b)
		if err != nil {
			return
		}
		if s.Node == "" || len(s.Node) > maxNodeName || len(s.Top) > topProjects {
			t.Fatalf("accepted %q as %+v", b, s)
		}
		if _, err := json.Marshal(s); err != nil {
			t.Fatalf("accepted sample does not encode again: %v", err)
		}
	})
}

// TestStreamsAreBounded: pages past maxStreams get 503 and cost nothing;
// one closing makes room again.
func TestStreamsAreBounded(t *testing.T) {
	_, url, _ := startDashboard(t, "solo", nil)
	var closers []context.CancelFunc
	for range maxStreams {
		ctx, cancel := context.WithCancel(context.Background())
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/dashboard/events", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("stream %d: %v %v", len(closers), err, resp)
		}
		closers = append(closers, func() { cancel(); resp.Body.Close() })
	}
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	resp, err := http.Get(url + "/dashboard/events")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("stream %d: %d, want 503", maxStreams+1, resp.StatusCode)
	}
	closers[0]()
	redistest.Eventually(t, 5*time.Second, "a closed page makes room", func() bool {
		resp, err := http.Get(url + "/dashboard/events")
		if err != nil {
			return false
		}
		resp.Body.Close() // ends the stream it opened, if it did
		return resp.StatusCode == http.StatusOK
	})
}

// TestNodesAreThisAndTheLivePeers: a peer silent for more than goneAfter
// is not believed alive.
func TestNodesAreThisAndTheLivePeers(t *testing.T) {
	d, err := New(Options{Node: "node-b", Gatherer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	d.peers["node-a"] = &peer{seen: time.Now()}
	d.peers["node-c"] = &peer{seen: time.Now().Add(-goneAfter - time.Second)}
	if got := d.Nodes(); !slices.Equal(got, []string{"node-a", "node-b"}) {
		t.Fatalf("Nodes() = %v", got)
	}
}

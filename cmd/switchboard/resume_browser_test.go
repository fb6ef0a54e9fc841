package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/browsertest"
	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// Issue 24's browser acceptance test: the unchanged Appwrite Web SDKs
// 28.0.0 and 25.2.0 in headless Chromium keep every event across a
// reconnect. Two `switchboard serve` nodes on a real redis-server (default
// settings: resuming is on by default, within --resume-window's default),
// HAProxy in front checking each node's /readyz, one page per SDK
// (test/browser/resume.test.mjs: each subscribes to `documents` as a
// guest, through both of its subscription APIs), and events published
// straight to Redis at 20/s, as Appwrite publishes them, each carrying its
// sequence number. Then, one after the other:
//
//  0. nothing (control): every event exactly once, in order.
//  1. SIGTERM the node holding the pages: every event exactly once, in
//     order; and the node they came back to counted the resumes.
//  2. kill -9 the node holding them: every event at least once, repeats
//     only of events published within crashDupBound before the kill.
//  3. cut the browser's TCP connections (`ss -K`, as root): every event at
//     least once, repeats only within cutDupBound before the cut.
//
// Each scenario checks, per page and API, every event from the first one
// it received in the scenario to the last one published. The node stopped
// is started again, on the same addresses, for the next.

const (
	// resumeEvery is the publishing rate: 20 events/s, the issue's.
	resumeEvery = 50 * time.Millisecond
	// crashDupBound: after kill -9, a resuming node replays from the dead
	// node's last checkpoint, minus the age of its oldest queued frame,
	// minus a margin (RESUME.md, "Positions per subscription"). Events
	// published within checkpoint interval (1 s) + send-queue age + margin
	// (1 s) before the crash may come twice: 2 s + 0.5 s for the queue age
	// on a loaded box.
	crashDupBound = 2500 * time.Millisecond
	// cutDupBound: a cut connection is closed by the node with what the
	// kernel had not had acknowledged; on loopback that is next to
	// nothing, and the bound is the network drop's (last ACK − RTT − queue
	// age − margin): 2 s.
	cutDupBound = 2 * time.Second
	// liveBefore is how long events flow to the pages before each
	// disruption: longer than the duplicate bounds, so every event that
	// may come twice was published within the scenario.
	liveBefore = 3 * time.Second
	// liveAfter is how long events flow after every page is back.
	liveAfter = 3 * time.Second
	// reconnectWait bounds the SDKs' way back: a drain spreads its closes
	// over 5 s (--drain-time's default), HAProxy needs two failed checks
	// to take a node out, each SDK waits 1 s before a try and a try may
	// land on the draining node; generous for a loaded machine.
	reconnectWait = 30 * time.Second
)

// resumeNode is one of the two nodes, always on the same addresses, so
// that HAProxy finds it again after a restart.
type resumeNode struct {
	name        string // HAProxy's: node1, node2
	addr, admin string
	args        []string
	*node
}

// start runs the node on its addresses, again if one was taken meanwhile
// as some connection's source port (that ends soon).
func (n *resumeNode) start(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		nd, err := tryStartNodeAt(t, n.addr, n.admin, n.args...)
		if err == nil {
			n.node = nd
			return
		}
		if !errors.Is(err, errPortTaken) || time.Now().After(deadline) {
			t.Fatalf("%s: %v", n.name, err)
		}
		time.Sleep(100 * time.Millisecond) // retry pace
	}
}

// stopped waits for the node's process to end.
func (n *resumeNode) stopped(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case err := <-n.exited:
		n.exited <- err // for the cleanup
		return err
	case <-time.After(within):
		t.Fatalf("%s still running %v after the signal\n%s", n.name, within, n.stderr)
	}
	return nil
}

// resumePublisher publishes seq 0, 1, 2, … to Redis every resumeEvery while
// running, and remembers when each went.
type resumePublisher struct {
	rdb  *redis.Client
	mu   sync.Mutex
	at   []time.Time // at[seq]: just before its PUBLISH
	errs []string
	stop chan struct{}
	done chan struct{}
}

func (p *resumePublisher) start() {
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go func() {
		defer close(p.done)
		tick := time.NewTicker(resumeEvery)
		defer tick.Stop()
		for {
			p.mu.Lock()
			seq := len(p.at)
			p.at = append(p.at, time.Now())
			p.mu.Unlock()
			// Appwrite's message for a document update, guests included.
			msg := fmt.Sprintf(`{"project":"p1","roles":["any"],"permissionsChanged":false,"userId":null,`+
				`"data":{"events":["databases.db.collections.c.documents.d%d.update","databases.*.collections.*.documents.*.update"],`+
				`"channels":["documents","databases.db.collections.c.documents"],"timestamp":%q,"payload":{"$id":"d%d","seq":%d}}}`,
				seq, time.Now().UTC().Format("2006-01-02T15:04:05.000+00:00"), seq, seq)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			err := p.rdb.Publish(ctx, "realtime", msg).Err()
			cancel()
			if err != nil {
				p.mu.Lock()
				p.errs = append(p.errs, fmt.Sprintf("seq %d: %v", seq, err))
				p.mu.Unlock()
			}
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
		}
	}()
}

// halt stops publishing and returns the last seq published.
func (p *resumePublisher) halt(t *testing.T) int {
	t.Helper()
	close(p.stop)
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.errs) > 0 {
		t.Fatalf("publishing to Redis failed: %v", p.errs)
	}
	return len(p.at) - 1
}

func (p *resumePublisher) next() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.at)
}

func (p *resumePublisher) when(seq int) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.at[seq]
}

// browserState is resume.test.mjs's answer to "state".
type browserState struct {
	Now   string `json:"now"` // the clock of the pages' console lines
	Pages []struct {
		SDK        string           `json:"sdk"`
		Streams    map[string][]int `json:"streams"`
		Sockets    []pageSocket     `json:"sockets"`
		IDs        []string         `json:"ids"`
		ForeignIDs []string         `json:"foreignIds"`
		Console    []string         `json:"console"`
		Errors     []string         `json:"errors"`
	} `json:"pages"`
}

// pageSocket is one WebSocket a page opened, as Playwright saw it.
type pageSocket struct {
	N          int      `json:"n"`
	OpenedAt   string   `json:"openedAt"`
	ClosedAt   string   `json:"closedAt"`
	Connected  bool     `json:"connected"`
	Closed     bool     `json:"closed"`
	Subscribed []string `json:"subscribed"`
	Error      string   `json:"error"`
}

func socketLines(ss []pageSocket) string {
	var lines []string
	for _, s := range ss {
		l := fmt.Sprintf("#%d %s-%s connected=%v subscribed %v", s.N, s.OpenedAt, s.ClosedAt, s.Connected, s.Subscribed)
		if s.Error != "" {
			l += " error " + s.Error
		}
		lines = append(lines, l)
	}
	return strings.Join(lines, "\n    ")
}

// appenderLease says which node held the Redis history's appender lease
// (RESUME.md; plain Redis: partition 0), for the log: a crash of the
// appender leaves the history without one for up to the lease's TTL.
func appenderLease(rdb *redis.Client) string {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	v, err := rdb.Get(ctx, "switchboard:history:{0}:lease").Result()
	switch {
	case errors.Is(err, redis.Nil):
		return "nobody"
	case err != nil:
		return err.Error()
	}
	return strconv.Quote(v)
}

var resumeAPIs = []string{"client", "realtime"}

func TestResumeInChromium(t *testing.T) {
	env := browsertest.Find(t)
	haproxy := needBinary(t, "haproxy")
	if os.Geteuid() != 0 {
		// ss -K needs CAP_NET_ADMIN; CI runs as root.
		if os.Getenv("CI") == "true" {
			t.Fatal("TestResumeInChromium cuts sockets with ss -K and must run as root in CI")
		}
		t.Skip("ss -K needs root to cut the browser's sockets")
	}
	ss := needBinary(t, "ss")
	rs := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: rs.Addr()})
	t.Cleanup(func() { rdb.Close() })

	ports := redistest.FreePorts(t, 5)
	addr := func(i int) string { return "127.0.0.1:" + strconv.Itoa(ports[i]) }
	front := addr(0)
	args := []string{"--redis-url", rs.URL()}
	nodes := []*resumeNode{
		{name: "node1", addr: addr(1), admin: addr(2), args: args},
		{name: "node2", addr: addr(3), admin: addr(4), args: args},
	}
	cfg := `global
    maxconn 1000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout client-fin 30s
    retries 2
    option redispatch
frontend realtime
    bind ` + front + `
    default_backend switchboard
backend switchboard
    balance leastconn
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
    server node1 ` + nodes[0].addr + ` check port ` + port(nodes[0].admin) + `
    server node2 ` + nodes[1].addr + ` check port ` + port(nodes[1].admin) + `
`
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// The pages' origin: the SDK bundles and a page per SDK.
	www := http.NewServeMux()
	for sdk, pkg := range map[string]string{"28": "appwrite", "25": "appwrite25"} {
		js, err := os.ReadFile(filepath.Join(env.Dir, "node_modules", pkg, "dist", "iife", "sdk.js"))
		if err != nil {
			t.Fatal(err) // npm ci --prefix test/browser installs both
		}
		www.HandleFunc("/sdk"+sdk+".js", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/javascript")
			_, _ = w.Write(js)
		})
		page := `<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>sdk` + sdk + `</title><script src="/sdk` + sdk + `.js"></script><pre id="log">waiting</pre>`
		www.HandleFunc("/sdk"+sdk+".html", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			_, _ = w.Write([]byte(page))
		})
	}
	origin := httptest.NewServer(www)
	t.Cleanup(origin.Close)

	// Node 1 only at first, so that both pages connect to it; HAProxy
	// must have found node 2 down first.
	nodes[0].start(t)
	waitReady(t, nodes[0].node)
	hlog := new(syncBuffer)
	runProxy(t, hlog, haproxy, "-db", "-f", cfgPath)
	waitHAProxy(t, hlog, 0, "node2 is DOWN")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("HAProxy:\n%s", hlog)
		}
	})

	pub := &resumePublisher{rdb: rdb}
	br := env.Start(t, browsertest.Script{
		Path:    "resume.test.mjs",
		Env:     []string{"ORIGIN=" + origin.URL, "ENDPOINT=http://" + front + "/v1"},
		Timeout: 3 * time.Minute,
	})
	var ready struct{ Ready bool }
	if line := br.Next(t, 60*time.Second); json.Unmarshal(line, &ready) != nil || !ready.Ready {
		t.Fatalf("resume.test.mjs: %s, want ready", line)
	}
	state := func(t *testing.T) *browserState {
		t.Helper()
		var s browserState
		line := br.Ask(t, "state", 30*time.Second)
		if err := json.Unmarshal(line, &s); err != nil || len(s.Pages) != 2 {
			t.Fatalf("resume.test.mjs state: %v: %.500s", err, line)
		}
		return &s
	}

	// Node 2 joins once the pages sit on node 1.
	pub.start()
	waitReceiving(t, state, 0)
	pub.halt(t)
	hmark := len(hlog.String())
	nodes[1].start(t)
	waitHAProxy(t, hlog, hmark, "node2 is UP")
	for _, n := range nodes {
		t.Logf("%s: listen %s, admin %s", n.name, n.addr, n.admin)
	}

	// holder is the node holding the pages, other the one they go to.
	holder, other := nodes[0], nodes[1]
	// ok: the last scenario left the nodes and pages ready for the next
	// (its checks of the events may have failed).
	ok := true
	scenario := func(name string, disrupt func(t *testing.T) (from, to time.Time), dupBound time.Duration, after func(t *testing.T)) {
		if !ok {
			t.Errorf("%s: not run, an earlier scenario could not set up", name)
			return
		}
		ok = false
		t.Run(name, func(t *testing.T) {
			start := pub.next()
			pub.start()
			halted := false
			defer func() {
				if !halted {
					pub.halt(t)
				}
			}()
			waitReceiving(t, state, start)
			time.Sleep(liveBefore)
			before := state(t)
			from, to := time.Now(), time.Now()
			if disrupt != nil {
				lease := appenderLease(rdb)
				from, to = disrupt(t)
				t.Logf("%s at +%v of the scenario's events (seq %d published then), just after %s on the console's clock; the history appender's lease was held by %s",
					name, from.Sub(pub.when(start)).Round(time.Millisecond), pub.next()-1, before.Now, lease)
				backAt := waitReconnected(t, state, before)
				t.Logf("every page back %v after the disruption", backAt.Sub(from).Round(time.Millisecond))
			}
			time.Sleep(liveAfter)
			last := pub.halt(t)
			halted = true
			// Every page got the last event, or never will: 10 s, then
			// half a second for anything after it.
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) && !allGot(state(t), last) {
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond)
			final := state(t)
			dupOK := func(seq int) bool {
				at := pub.when(seq)
				return dupBound > 0 && !at.Before(from.Add(-dupBound)) && !at.After(to)
			}
			for _, p := range final.Pages {
				for _, api := range resumeAPIs {
					r := checkSeqs(p.Streams[api], start, last, dupOK)
					if r.bad() {
						t.Errorf("SDK %s %s: %s\n  events %d..%d published, the disruption between seq %s (just after %s on the console's clock); duplicates allowed: %s\n  SDK console:\n    %s\n  sockets (opened-closed on the console's clock, subscription ids sent):\n    %s",
							p.SDK, api, r, start, last, what(disrupt != nil, pubRange(pub, from, to), "none: this is the control"), before.Now, dupAllowance(dupBound), strings.Join(p.Console, "\n    "), socketLines(p.Sockets))
					} else {
						t.Logf("SDK %s %s: events %d..%d: %d received, none missing, %d duplicates (allowed: %s)", p.SDK, api, r.first, last, r.received, len(r.dups), dupAllowance(dupBound))
					}
				}
				if len(p.ForeignIDs) > 0 || len(p.IDs) != 2 {
					t.Errorf("SDK %s: subscribe ids %v, new ones after a reconnect %v: want the same 2 ids sent again", p.SDK, p.IDs, p.ForeignIDs)
				}
			}
			if after != nil {
				after(t)
			}
			ok = true
		})
	}

	// No disruption: the pages and the checks lose nothing by themselves,
	// so what the next scenarios miss is the reconnects'.
	scenario("control", nil, 0, nil)

	scenario("SIGTERM", func(t *testing.T) (time.Time, time.Time) {
		at := time.Now()
		if err := holder.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		return at, at
	}, 0, func(t *testing.T) {
		// The node the pages came back to resumed their subscriptions
		// (4: two pages, two APIs each).
		const series = `switchboard_resume_total{result="resumed"}`
		var got []string
		resumed := -1.0
		for _, s := range other.scrape(t) {
			if strings.HasPrefix(s.series, "switchboard_resume_total") {
				got = append(got, fmt.Sprintf("%s %v", s.series, s.value))
			}
			// Whatever other labels the series grows.
			if strings.HasPrefix(s.series, "switchboard_resume_total{") && strings.Contains(s.series, `result="resumed"`) {
				resumed = max(resumed, 0) + s.value
			}
		}
		switch {
		case resumed < 0:
			t.Errorf("%s (the node the pages reconnected to) has no %s in /metrics: it does not count resumes (the server side of issue 24 is missing); its switchboard_resume_total: %v", other.name, series, got)
		case resumed < 1:
			t.Errorf("%s (the node the pages reconnected to): %s = %v, want >= 1 (%v)", other.name, series, resumed, got)
		default:
			t.Logf("%s: %v", other.name, got)
		}
	})
	// The stopped node drains within --shutdown-timeout (10 s) and comes
	// back for the next scenario. (Here, not in the subtest: the node
	// lives as long as the test.)
	if ok {
		if err := holder.stopped(t, 20*time.Second); err != nil {
			t.Errorf("%s exited with %v after SIGTERM\n%s", holder.name, err, holder.stderr)
		}
		restart(t, hlog, holder)
		holder, other = other, holder
	}

	scenario("kill-9", func(t *testing.T) (time.Time, time.Time) {
		at := time.Now()
		if err := holder.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		holder.stopped(t, 10*time.Second)
		return at, time.Now()
	}, crashDupBound, nil)
	if ok {
		restart(t, hlog, holder)
		holder, other = other, holder
	}

	scenario("cut-TCP", func(t *testing.T) (time.Time, time.Time) {
		// The browser's sockets to HAProxy, destroyed in the kernel:
		// Chromium reads ECONNABORTED, HAProxy gets a reset and closes
		// its side to the node.
		at := time.Now()
		out, err := exec.Command(ss, "-K", "dst", "127.0.0.1", "dport", "=", ":"+port(front)).CombinedOutput()
		to := time.Now()
		if err != nil {
			t.Fatalf("ss -K: %v\n%s", err, out)
		}
		if n := strings.Count(string(out), "ESTAB"); n < 4 {
			t.Fatalf("ss -K cut %d established sockets, want the pages' 4:\n%s", n, out)
		}
		return at, to
	}, cutDupBound, nil)
	// The script ends when the test does: its stdin closes.
}

// restart starts a stopped node again and waits until HAProxy sends to it.
func restart(t *testing.T, hlog *syncBuffer, n *resumeNode) {
	t.Helper()
	mark := len(hlog.String())
	n.start(t)
	waitHAProxy(t, hlog, mark, n.name+" is UP")
}

// waitHAProxy waits until HAProxy's log, after offset mark, says what.
func waitHAProxy(t *testing.T, hlog *syncBuffer, mark int, what string) {
	t.Helper()
	redistest.Eventually(t, 20*time.Second, "HAProxy logging "+what, func() bool {
		return strings.Contains(hlog.String()[mark:], what)
	})
}

// waitReceiving waits until every page's every API got an event numbered
// from or later.
func waitReceiving(t *testing.T, state func(*testing.T) *browserState, from int) {
	t.Helper()
	deadline := time.Now().Add(reconnectWait)
	for {
		s := state(t)
		var waiting []string
		for _, p := range s.Pages {
			for _, api := range resumeAPIs {
				if !slices.ContainsFunc(p.Streams[api], func(seq int) bool { return seq >= from }) {
					waiting = append(waiting, p.SDK+" "+api)
				}
			}
		}
		if len(waiting) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, no event from seq %d on %v (is the node subscribed to Redis? are the pages connected?)\n%s", reconnectWait, from, waiting, consoles(s))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitReconnected waits until every page has, besides the sockets of
// before, two open sockets that got `connected` and sent their
// subscriptions, and returns when.
func waitReconnected(t *testing.T, state func(*testing.T) *browserState, before *browserState) time.Time {
	t.Helper()
	deadline := time.Now().Add(reconnectWait)
	for {
		s := state(t)
		var waiting []string
		for i, p := range s.Pages {
			back := 0
			for _, so := range p.Sockets[len(before.Pages[i].Sockets):] {
				if so.Connected && !so.Closed && len(so.Subscribed) > 0 {
					back++
				}
			}
			if back < len(resumeAPIs) {
				waiting = append(waiting, fmt.Sprintf("SDK %s (%d of %d sockets back)", p.SDK, back, len(resumeAPIs)))
			}
		}
		if len(waiting) == 0 {
			return time.Now()
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v, not reconnected: %v\n%s", reconnectWait, waiting, consoles(s))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func allGot(s *browserState, last int) bool {
	for _, p := range s.Pages {
		for _, api := range resumeAPIs {
			if !slices.Contains(p.Streams[api], last) {
				return false
			}
		}
	}
	return true
}

func consoles(s *browserState) string {
	var b strings.Builder
	for _, p := range s.Pages {
		fmt.Fprintf(&b, "SDK %s console:\n    %s\n  sockets:\n    %s\n", p.SDK, strings.Join(p.Console, "\n    "), socketLines(p.Sockets))
	}
	return b.String()
}

// seqReport is what one stream got wrong.
type seqReport struct {
	first, received int
	missing         []int
	dups            []int    // seqs received more than once within the bound
	badDups         []int    // seqs received more than once, outside it
	outOfOrder      [][2]int // adjacent first receptions not increasing
	before          []int    // seqs from before the scenario, received in it
}

func (r seqReport) bad() bool {
	return len(r.missing) > 0 || len(r.badDups) > 0 || len(r.outOfOrder) > 0 || len(r.before) > 0 || r.first < 0
}

func (r seqReport) String() string {
	if r.first < 0 {
		return "received no event of the scenario"
	}
	var parts []string
	if len(r.missing) > 0 {
		parts = append(parts, fmt.Sprintf("%d MISSING %s", len(r.missing), ranges(r.missing)))
	}
	if len(r.badDups) > 0 {
		parts = append(parts, fmt.Sprintf("%d DUPLICATED outside the bound %s", len(r.badDups), ranges(r.badDups)))
	}
	if len(r.dups) > 0 {
		parts = append(parts, fmt.Sprintf("%d duplicated within the bound %s", len(r.dups), ranges(r.dups)))
	}
	if len(r.outOfOrder) > 0 {
		parts = append(parts, fmt.Sprintf("%d OUT OF ORDER (each pair: received first, then) %v", len(r.outOfOrder), r.outOfOrder))
	}
	if len(r.before) > 0 {
		parts = append(parts, fmt.Sprintf("events from before the scenario received again %s", ranges(r.before)))
	}
	return fmt.Sprintf("from seq %d, %d received: %s", r.first, r.received, strings.Join(parts, "; "))
}

// checkSeqs checks got (the seqs a callback received, in order) from the
// first one at or after start to last: each exactly once and increasing,
// except that a seq for which dupOK holds may come again (and its repeat
// is then out of order by nature: order is checked on first receptions).
func checkSeqs(got []int, start, last int, dupOK func(int) bool) seqReport {
	r := seqReport{first: -1}
	i := slices.IndexFunc(got, func(seq int) bool { return seq >= start })
	if i < 0 {
		return r
	}
	got = got[i:]
	r.first, r.received = got[0], len(got)
	count := map[int]int{}
	prev := -1
	for _, seq := range got {
		count[seq]++
		if seq < start {
			r.before = append(r.before, seq)
			continue
		}
		if count[seq] > 1 {
			continue
		}
		if prev >= 0 && seq <= prev {
			r.outOfOrder = append(r.outOfOrder, [2]int{prev, seq})
		}
		prev = max(prev, seq)
	}
	for seq := r.first; seq <= last; seq++ {
		switch c := count[seq]; {
		case c == 0:
			r.missing = append(r.missing, seq)
		case c > 1 && dupOK(seq):
			r.dups = append(r.dups, seq)
		case c > 1:
			r.badDups = append(r.badDups, seq)
		}
	}
	return r
}

// ranges writes sorted seqs as runs: [3-7 9 12-13].
func ranges(seqs []int) string {
	var parts []string
	for i := 0; i < len(seqs); {
		j := i
		for j+1 < len(seqs) && seqs[j+1] == seqs[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(seqs[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", seqs[i], seqs[j]))
		}
		i = j + 1
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func what(disrupted bool, yes, no string) string {
	if disrupted {
		return yes
	}
	return no
}

// pubRange names the seqs published around the disruption's moment.
func pubRange(p *resumePublisher, from, to time.Time) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	lo, hi := -1, -1
	for seq, at := range p.at {
		if at.Before(from) {
			lo = seq
		}
		if !at.After(to) {
			hi = seq
		}
	}
	return fmt.Sprintf("%d and %d", lo, hi+1)
}

func dupAllowance(bound time.Duration) string {
	if bound == 0 {
		return "none"
	}
	return fmt.Sprintf("events published within %v before the disruption", bound)
}

// TestCheckSeqs: the browser test's verdicts, on streams made up to
// show each way a reconnect can go wrong (no browser needed).
func TestCheckSeqs(t *testing.T) {
	seq := func(from, to int) []int {
		var s []int
		for i := from; i <= to; i++ {
			s = append(s, i)
		}
		return s
	}
	cat := func(parts ...[]int) []int { return slices.Concat(parts...) }
	within := func(lo, hi int) func(int) bool { return func(s int) bool { return s >= lo && s <= hi } }
	none := func(int) bool { return false }
	for _, c := range []struct {
		name  string
		got   []int
		dupOK func(int) bool
		want  string // seqReport.String() when bad, "" when good
	}{
		{"exactly once", cat(seq(0, 9), seq(10, 30)), none, ""},
		{"earlier scenarios ignored", cat(seq(0, 4), seq(10, 30)), none, ""},
		{"starts late: from the first received", seq(12, 30), none, ""},
		{"lost across the reconnect", cat(seq(10, 14), seq(20, 30)), none, "from seq 10, 16 received: 5 MISSING [15-19]"},
		{"crash replay within the bound", cat(seq(10, 20), seq(18, 30)), within(17, 20), ""},
		{"crash replay beyond the bound", cat(seq(10, 20), seq(15, 30)), within(17, 20), "from seq 10, 27 received: 2 DUPLICATED outside the bound [15-16]; 4 duplicated within the bound [17-20]"},
		{"drain replays nothing twice", cat(seq(10, 20), seq(20, 30)), none, "from seq 10, 22 received: 1 DUPLICATED outside the bound [20]"},
		{"reordered at the seam", cat(seq(10, 14), []int{16, 15}, seq(17, 30)), none, "from seq 10, 21 received: 1 OUT OF ORDER (each pair: received first, then) [[16 15]]"},
		{"an old event again", cat(seq(10, 20), []int{3}, seq(21, 30)), none, "from seq 10, 22 received: events from before the scenario received again [3]"},
		{"nothing", seq(0, 5), none, "received no event of the scenario"},
	} {
		r := checkSeqs(c.got, 10, 30, c.dupOK)
		got := ""
		if r.bad() {
			got = r.String()
		}
		if got != c.want {
			t.Errorf("%s: got %q, want %q", c.name, got, c.want)
		}
	}
}

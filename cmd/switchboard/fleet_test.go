package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// Fleet tests: several `switchboard serve` processes on one real
// redis-server, and what happens to clients when a node drains, dies, or
// Redis pauses.

// wsConn is a WebSocket client for the fleet tests.
type wsConn struct {
	conn net.Conn
	r    io.Reader
}

func wsDial(addr, query string) (*wsConn, error) {
	d := ws.Dialer{Timeout: 5 * time.Second}
	conn, br, _, err := d.Dial(context.Background(), "ws://"+addr+"/v1/realtime?"+query)
	if err != nil {
		return nil, err
	}
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	return &wsConn{conn: conn, r: r}, nil
}

// next returns the next text message's type and data, or the close code
// (with typ "close"), or an error.
func (c *wsConn) next(timeout time.Duration) (typ string, data json.RawMessage, code ws.StatusCode, err error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	for {
		f, err := ws.ReadFrame(c.r)
		if err != nil {
			return "", nil, 0, err
		}
		switch f.Header.OpCode {
		case ws.OpClose:
			code, _ := ws.ParseCloseFrameData(f.Payload)
			return "close", nil, code, nil
		case ws.OpText:
			var m struct {
				Type string          `json:"type"`
				Data json.RawMessage `json:"data"`
			}
			if err := json.Unmarshal(f.Payload, &m); err != nil {
				return "", nil, 0, fmt.Errorf("invalid JSON %q: %w", f.Payload, err)
			}
			return m.Type, m.Data, 0, nil
		}
	}
}

// wsConnected dials addr subscribed to "files" in project p1, waits for
// `connected`, and closes the connection when the test ends.
func wsConnected(t *testing.T, addr string) *wsConn {
	t.Helper()
	c, err := wsDial(addr, "project=p1&channels[]=files")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.conn.Close() })
	if typ, _, _, err := c.next(5 * time.Second); err != nil || typ != "connected" {
		t.Fatalf("connect: %s %v", typ, err)
	}
	return c
}

// eventSeq extracts payload.seq from an event's data.
func eventSeq(data json.RawMessage) (int, error) {
	var d struct {
		Payload struct {
			Seq *int `json:"seq"`
		} `json:"payload"`
	}
	if err := json.Unmarshal(data, &d); err != nil || d.Payload.Seq == nil {
		return 0, fmt.Errorf("event without seq: %s", data)
	}
	return *d.Payload.Seq, nil
}

func waitReady(t *testing.T, nodes ...*node) {
	t.Helper()
	for _, n := range nodes {
		redistest.Eventually(t, 10*time.Second, "node ready", func() bool { return readyz(n) == http.StatusOK })
	}
}

func readyz(n *node) int {
	resp, err := http.Get("http://" + n.admin + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// publishSeq posts event seq through n's admin API and reports whether it
// was accepted.
func publishSeq(n *node, seq int) bool {
	body := fmt.Sprintf(`{"project":"p1","roles":["any"],"data":{"events":["e"],"channels":["files"],"payload":{"seq":%d}}}`, seq)
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Post("http://"+n.admin+"/v1/publish", "application/json", strings.NewReader(body))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusAccepted
}

// sent is one published event and when its POST started and ended.
type sent struct {
	seq        int
	start, end time.Time
}

// publisher publishes seq 0, 1, 2, … through n every interval until
// stopped.
type publisher struct {
	mu   sync.Mutex
	log  []sent
	stop chan struct{}
	done chan struct{}
}

func startPublisher(n *node, interval time.Duration) *publisher {
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for seq := 0; ; seq++ {
			select {
			case <-p.stop:
				return
			case <-time.After(interval):
			}
			start := time.Now()
			if publishSeq(n, seq) {
				p.mu.Lock()
				p.log = append(p.log, sent{seq, start, time.Now()})
				p.mu.Unlock()
			}
		}
	}()
	return p
}

// await waits until n more events have been accepted than when it was
// called: events flowing, however slow the machine, rather than a fixed
// time that a loaded one fills with fewer of them.
func (p *publisher) await(t *testing.T, n int) {
	t.Helper()
	p.mu.Lock()
	want := len(p.log) + n
	p.mu.Unlock()
	redistest.Eventually(t, 10*time.Second, fmt.Sprintf("%d events published", want), func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		return len(p.log) >= want
	})
}

// finish stops publishing and returns what was accepted.
func (p *publisher) finish() []sent {
	close(p.stop)
	<-p.done
	return p.log
}

// TestRollingRestartMovesClientsToTheOtherNode drains node A (SIGTERM,
// --drain-time 1s) while events are published every 5 ms through node B.
// A's clients reconnect to B when told 1001, as behind a load balancer. The
// only events a client may miss are those published between its close and
// its reconnect, and the only ones it may see twice (once on each
// connection) are those still in flight to B when it got there; it misses
// none other and never receives one twice on one connection. A exits 0.
func TestRollingRestartMovesClientsToTheOtherNode(t *testing.T) {
	rs := redistest.Start(t)
	a := startNode(t, "--redis-url", rs.URL(), "--drain-time", "1s")
	b := startNode(t, "--redis-url", rs.URL())
	waitReady(t, a, b)

	const clients = 40
	type record struct {
		got, onA        map[int]int
		closed, resumed time.Time
		closeCode       ws.StatusCode
		err             error
	}
	recs := make([]*record, clients)
	const final = 1 << 30 // the marker published after the run
	var wg sync.WaitGroup
	connected := make(chan struct{}, clients)
	for i := range recs {
		r := &record{got: map[int]int{}, onA: map[int]int{}}
		recs[i] = r
		c, err := wsDial(a.addr, "project=p1&channels[]=files")
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { c.conn.Close() }()
			onB := false
			for {
				typ, data, code, err := c.next(15 * time.Second)
				switch {
				case err != nil:
					r.err = err
					return
				case typ == "connected":
					if onB {
						r.resumed = time.Now()
					} else {
						connected <- struct{}{}
					}
				case typ == "close" && !onB:
					r.closed, r.closeCode = time.Now(), code
					c.conn.Close()
					if c, err = wsDial(b.addr, "project=p1&channels[]=files"); err != nil {
						r.err = err
						return
					}
					onB = true
				case typ == "close":
					r.err = fmt.Errorf("node B closed the connection: %d", code)
					return
				case typ == "event":
					seq, err := eventSeq(data)
					if err != nil {
						r.err = err
						return
					}
					if seq == final {
						return
					}
					r.got[seq]++
					if !onB {
						r.onA[seq]++
					}
				}
			}
		}()
	}
	for range clients {
		<-connected
	}

	pub := startPublisher(b, 5*time.Millisecond)
	pub.await(t, 50) // ~250 ms of events before the drain
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// A 503 can only come from the drain: before it /readyz says 200, after
	// it nothing answers. The drain lasts 1 s (~100 polls), so the load
	// balancer learns of it while it runs; 10 s bounds a stuck node.
	redistest.Eventually(t, 10*time.Second, "A answering /readyz 503 while it drains", func() bool {
		return readyz(a) == http.StatusServiceUnavailable
	})
	select {
	case err := <-a.exited:
		a.exited <- err
		if err != nil {
			t.Fatalf("node A exit: %v\n%s", err, a.stderr)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("node A did not exit after SIGTERM")
	}
	pub.await(t, 50) // events to the moved clients, on B alone
	log := pub.finish()
	if !publishSeq(b, final) {
		t.Fatal("final marker refused")
	}
	wg.Wait()

	var gaps []time.Duration
	missedTotal, twiceTotal := 0, 0
	const margin = 100 * time.Millisecond
	for i, r := range recs {
		if r.err != nil {
			t.Fatalf("client %d: %v", i, r.err)
		}
		if r.closeCode != ws.StatusGoingAway || r.resumed.IsZero() {
			t.Fatalf("client %d: close %d, resumed %v", i, r.closeCode, r.resumed)
		}
		gaps = append(gaps, r.resumed.Sub(r.closed))
		for _, s := range log {
			n := r.got[s.seq]
			inGap := !s.end.Before(r.closed.Add(-margin)) && !s.start.After(r.resumed.Add(margin))
			switch {
			case n == 2 && r.onA[s.seq] == 1 && inGap:
				// Still in flight to B when the client arrived there: once
				// per connection, never twice on one.
				twiceTotal++
			case n > 1:
				t.Fatalf("client %d got seq %d %d times (%d on A)", i, s.seq, n, r.onA[s.seq])
			case n == 0 && !inGap:
				t.Fatalf("client %d missed seq %d published %v..%v, outside its reconnect %v..%v",
					i, s.seq, s.start.Format("15:04:05.000"), s.end.Format("15:04:05.000"),
					r.closed.Format("15:04:05.000"), r.resumed.Format("15:04:05.000"))
			case n == 0:
				missedTotal++
			}
		}
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })
	t.Logf("%d events published, one every >=5 ms; %d clients moved from A to B; reconnect gap p50 %v, max %v; inside the gaps %d events missed and %d received on both connections, in all",
		len(log), clients, gaps[len(gaps)/2].Round(time.Microsecond), gaps[len(gaps)-1].Round(time.Microsecond), missedTotal, twiceTotal)
	if spread := recs[0].closed; spread.IsZero() {
		t.Fatal("no close recorded")
	}
	var first, lastClose time.Time
	for _, r := range recs {
		if first.IsZero() || r.closed.Before(first) {
			first = r.closed
		}
		if r.closed.After(lastClose) {
			lastClose = r.closed
		}
	}
	if lastClose.Sub(first) < 500*time.Millisecond {
		t.Errorf("closes not spread over the 1 s drain: %v", lastClose.Sub(first))
	}
}

// TestKilledNodeLeavesOthersUnaffected kills one of three nodes with
// SIGKILL: clients of the other two keep receiving every event.
func TestKilledNodeLeavesOthersUnaffected(t *testing.T) {
	rs := redistest.Start(t)
	nodes := []*node{
		startNode(t, "--redis-url", rs.URL()),
		startNode(t, "--redis-url", rs.URL()),
		startNode(t, "--redis-url", rs.URL()),
	}
	waitReady(t, nodes...)
	var conns [3][]*wsConn
	for i, n := range nodes {
		for range 5 {
			c := wsConnected(t, n.addr)
			conns[i] = append(conns[i], c)
		}
	}
	if err := nodes[2].cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-nodes[2].exited
	nodes[2].exited <- nil
	for _, c := range conns[2] {
		if _, _, _, err := c.next(5 * time.Second); err == nil {
			t.Fatal("a client of the killed node still reads")
		}
	}
	for seq := range 20 {
		if !publishSeq(nodes[seq%2], seq) {
			t.Fatalf("publish %d refused", seq)
		}
	}
	for i := range 2 {
		for _, c := range conns[i] {
			for want := range 20 {
				typ, data, _, err := c.next(5 * time.Second)
				if err != nil || typ != "event" {
					t.Fatalf("node %d client: %s %v", i, typ, err)
				}
				if seq, err := eventSeq(data); err != nil || seq != want {
					t.Fatalf("node %d client: seq %d (%v), want %d", i, seq, err, want)
				}
			}
		}
	}
	waitReady(t, nodes[0], nodes[1])
}

// TestRedisPauseIsSurvived pauses Redis for 3 s with DEBUG SLEEP while
// events are published every 20 ms: the nodes recover on their own, every
// event published after the pause reaches every client, and what was lost
// during the pause (Pub/Sub is at-most-once) is counted and logged.
func TestRedisPauseIsSurvived(t *testing.T) {
	rs := redistest.Start(t, "--enable-debug-command", "yes")
	a := startNode(t, "--redis-url", rs.URL())
	b := startNode(t, "--redis-url", rs.URL())
	waitReady(t, a, b)
	var conns []*wsConn
	for _, n := range []*node{a, b} {
		for range 3 {
			c := wsConnected(t, n.addr)
			conns = append(conns, c)
		}
	}
	got := make([]map[int]bool, len(conns))
	var wg sync.WaitGroup
	final := 1_000_000 // a marker published once Redis is back
	for i, c := range conns {
		got[i] = map[int]bool{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				typ, data, _, err := c.next(30 * time.Second)
				if err != nil {
					return
				}
				if typ == "event" {
					if seq, err := eventSeq(data); err == nil {
						got[i][seq] = true
						if seq == final {
							return
						}
					}
				}
			}
		}()
	}

	pub := startPublisher(a, 20*time.Millisecond)
	pub.await(t, 15) // ~300 ms of events before the pause
	cli := redistest.Binary(t, "redis-cli")
	start := time.Now()
	if out, err := exec.Command(cli, "-p", fmt.Sprint(rs.Port), "DEBUG", "SLEEP", "3").CombinedOutput(); err != nil {
		t.Fatalf("DEBUG SLEEP: %v: %s", err, out)
	}
	pause := time.Since(start)
	// A node notices the pause when a PING it sent during it times out:
	// silent for one health interval (1 s), it pings and gives the reply
	// another, so with a 3 s pause the timeout is due by the time Redis
	// wakes. Until the node has acted on it, /readyz may still say 200 for
	// a subscription about to be dropped, and the marker below would be
	// lost on it. 500 ms is the margin for that timer's goroutine to run
	// late on a loaded machine; no event tells the test that a node will
	// not notice at all (a PING answered in time).
	time.Sleep(500 * time.Millisecond)
	waitReady(t, a, b)
	log := pub.finish()
	// After the pause: the marker must reach everyone.
	redistest.Eventually(t, 10*time.Second, "marker published", func() bool { return publishSeq(b, final) })
	wg.Wait()
	lost := 0
	for i := range conns {
		if !got[i][final] {
			t.Fatalf("client %d did not receive the event published after the pause", i)
		}
		for _, s := range log {
			if !got[i][s.seq] {
				lost++
			}
		}
	}
	t.Logf("Redis paused %v: %d events accepted by the publish API during the run, %d of %d deliveries lost (at-most-once Pub/Sub)",
		pause.Round(time.Millisecond), len(log), lost, len(log)*len(conns))
}

// TestSecretsNeverLogged runs a node at debug level with every kind of
// secret configured and handed to it, then checks its whole log: the API
// key, the JWT secret, the Redis password and the clients' tokens and
// sessions appear nowhere.
func TestSecretsNeverLogged(t *testing.T) {
	const (
		redisPass = "redis-pass-8d1f"
		apiKey    = "api-key-3c9a"
		jwtSecret = "jwt-secret-77b2"
		session   = "session-value-5e0c"
	)
	rs := redistest.Start(t, "--requirepass", redisPass)
	n := startNode(t, "--redis-url", "redis://:"+redisPass+"@"+rs.Addr(), "--api-key", apiKey,
		"--auth", "jwt", "--jwt-secret", jwtSecret, "--log-level", "debug")
	waitReady(t, n)
	// A token signed with another key, a session where a JWT is expected,
	// a wrong API key, a right one.
	forged := "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2lnbmF0dXJlLW5vdC12YWxpZA"
	if c, err := wsDial(n.addr, "project=p1&channels[]=files&jwt="+forged); err == nil {
		c.conn.Close()
	}
	if c, err := wsDial(n.addr, "project=p1&channels[]=files"); err == nil {
		_ = ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewTextFrame([]byte(`{"type":"authentication","data":{"session":"`+session+`"}}`))))
		_, _, _, _ = c.next(2 * time.Second)
		_, _, _, _ = c.next(2 * time.Second)
		c.conn.Close()
	}
	for _, key := range []string{"wrong-" + apiKey, apiKey} {
		req, _ := http.NewRequest("POST", "http://"+n.admin+"/v1/publish",
			strings.NewReader(`{"project":"p1","roles":["any"],"data":{"channels":["files"],"payload":{}}}`))
		req.Header.Set("Authorization", "Bearer "+key)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-n.exited
	n.exited <- nil
	logs := n.stderr.String()
	if !strings.Contains(logs, "debug") && !strings.Contains(logs, "DEBUG") {
		t.Fatalf("no debug lines logged; the test proves nothing:\n%s", logs)
	}
	for _, secret := range []string{redisPass, apiKey, jwtSecret, session, forged, "c2lnbmF0dXJl"} {
		if strings.Contains(logs, secret) {
			t.Errorf("secret %q appears in the log:\n%s", secret, logs)
		}
	}
}

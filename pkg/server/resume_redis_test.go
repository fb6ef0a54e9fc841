package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/history"
)

// resumeRedisNode starts a node on the Redis at url with resuming on, as
// `switchboard serve --redis-url` runs it: the shared history and
// records, and the appender fed beside the router. Its drain time is
// drain (Off: all at once). mods change its Config further.
func resumeRedisNode(t *testing.T, url string, window, drain time.Duration, mods ...func(*Config)) *Server {
	t.Helper()
	return resumeNode(t, url, 0, window, drain, mods...)
}

// resumeNode is resumeRedisNode on plain Redis (partitions 0), or on a
// Redis Cluster with the sharded broker's partitions, as `switchboard
// serve --redis-sharded` runs it.
func resumeNode(t *testing.T, url string, partitions int, window, drain time.Duration, mods ...func(*Config)) *Server {
	t.Helper()
	return resumeNodeSendBuffer(t, url, partitions, 0, window, drain, mods...)
}

// resumeNodeSendBuffer is resumeNode with Server.sendBuffer set (when
// positive): see testNodeSendBuffer.
func resumeNodeSendBuffer(t *testing.T, url string, partitions, sendBuffer int, window, drain time.Duration, mods ...func(*Config)) *Server {
	t.Helper()
	newClient := func() redis.UniversalClient {
		var client redis.UniversalClient
		if partitions > 0 {
			opts, err := redis.ParseClusterURL(url)
			if err != nil {
				t.Fatal(err)
			}
			client = redis.NewClusterClient(opts)
		} else {
			opts, err := redis.ParseURL(url)
			if err != nil {
				t.Fatal(err)
			}
			client = redis.NewClient(opts)
		}
		t.Cleanup(func() { client.Close() })
		return client
	}
	// As serve: the lease and appends on a client of their own.
	client, appendClient := newClient(), newClient()
	node := "node-" + strconv.FormatInt(time.Now().UnixNano(), 36)
	store, err := history.NewRedis(history.RedisOptions{Client: client, Partitions: partitions, Node: node, Config: history.Config{Window: window}})
	if err != nil {
		t.Fatal(err)
	}
	records, err := history.NewRedisRecords(history.RedisRecordsOptions{Client: client, Partitions: partitions, Window: window})
	if err != nil {
		t.Fatal(err)
	}
	appendStore, err := history.NewRedis(history.RedisOptions{Client: appendClient, Partitions: partitions, Node: node, Config: history.Config{Window: window}})
	if err != nil {
		t.Fatal(err)
	}
	lease := history.NewLease(appendStore, 0)
	feed := history.NewFeed(history.NewAppender(appendStore, lease, 0), lease, 0)
	feed.OnError = func(project string, err error) { t.Logf("%s: append to %s: %v", node, project, err) }
	reg := prometheus.NewRegistry()
	bopts := broker.RedisOptions{URL: url, Registerer: reg, OnLoss: feed.Lost, OnMark: feed.Mark}
	var b interface {
		broker.Broker
		history.Marker
		Close() error
	}
	if partitions > 0 {
		sb, err := broker.NewRedisSharded(broker.RedisShardedOptions{RedisOptions: bopts, Partitions: partitions})
		if err != nil {
			t.Fatal(err)
		}
		sb.WantAll()
		b = sb
	} else {
		if b, err = broker.NewRedis(bopts); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { _ = b.Close() })
	feed.Marker = b
	s := testNodeSendBuffer(t, sendBuffer, func(c *Config) {
		c.Broker, c.Registry, c.DrainTime = b, reg, drain
		c.Resume = &ResumeConfig{Window: window, Reader: store, Records: records, Feed: feed.Offer, Run: feed.Run, Shared: true}
		for _, mod := range mods {
			mod(c)
		}
	})
	redistest.Eventually(t, 15*time.Second, "node subscribed to Redis", func() bool { return b.Ready() == nil })
	return s
}

// publisher publishes numbered events of project p1 through node s until
// stopped, and tells the last number published.
type publisher struct {
	stop chan struct{}
	done chan struct{}
	last atomic.Int64
}

func startPublisher(t *testing.T, through func() *Server, every time.Duration) *publisher {
	p := &publisher{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		for n := int64(1); ; {
			select {
			case <-p.stop:
				return
			case <-tick.C:
			}
			if code, err := postNoFail(through(), seqEvent("p1", int(n))); err == nil && code == 202 {
				p.last.Store(n)
				n++
			}
		}
	}()
	return p
}

func (p *publisher) halt() int {
	close(p.stop)
	<-p.done
	return int(p.last.Load())
}

// A drained node's clients come back on another node and get every event
// exactly once and in order: the node records, between two events, what
// it queued before each close frame (issue 24: "a drain loses nothing and
// duplicates nothing").
func TestResumeAcrossADrainExactlyOnce(t *testing.T) {
	rd := redistest.Start(t)
	a := resumeRedisNode(t, rd.URL(), time.Minute, 300*time.Millisecond)
	b := resumeRedisNode(t, rd.URL(), time.Minute, Off)
	testDrainExactlyOnce(t, a, b)
}

// The same on a Redis Cluster in sharded mode: the history, records and
// channel of a project share its partition's slot.
func TestResumeAcrossADrainOnRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	const parts = 16
	a := resumeNode(t, cl.URL(), parts, time.Minute, 300*time.Millisecond)
	b := resumeNode(t, cl.URL(), parts, time.Minute, Off)
	testDrainExactlyOnce(t, a, b)
}

// testDrainExactlyOnce drains node a while its clients receive events
// published through b, brings them back on b under their ids, and checks
// that each received every event exactly once, in order.
func testDrainExactlyOnce(t *testing.T, a, b *Server) {

	const clients = 20
	conns := subscribedClients(t, a, clients)
	pub := startPublisher(t, func() *Server { return b }, 5*time.Millisecond)
	redistest.Eventually(t, 5*time.Second, "events flowing", func() bool { return pub.last.Load() > 20 })

	var wg sync.WaitGroup
	got := make([][]int, clients)
	errs := make(chan string, clients)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Read until the drain's close frame, then come back on b.
			for {
				m, err := c.tryRead(10 * time.Second)
				if err != nil {
					var closed wsutil.ClosedError
					if !errors.As(err, &closed) || closed.Code != ws.StatusGoingAway {
						errs <- "client " + strconv.Itoa(i) + ": " + err.Error()
						return
					}
					break
				}
				n, err := eventSeq(m)
				if err != nil {
					errs <- "client " + strconv.Itoa(i) + ": " + err.Error()
					return
				}
				got[i] = append(got[i], n)
			}
			c2, err := tryDial(b, "project=p1", nil)
			if err != nil {
				errs <- err.Error()
				return
			}
			c2.t = t
			t.Cleanup(func() { c2.conn.Close() })
			conns[i] = c2
		}()
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Shutdown(ctx)
	}()
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	for i, c := range conns {
		c.expect("connected")
		if st := c.subscribeAs("sub"+strconv.Itoa(i), "files"); st != "resumed" {
			t.Fatalf("client %d back on b: resume status %q", i, st)
		}
	}
	time.Sleep(200 * time.Millisecond)
	last := pub.halt()
	publish(t, b, seqEvent("p1", last+1))
	for i, c := range conns {
		got[i] = append(got[i], c.seqsUntil(last+1)...)
		first := got[i][0]
		if !equalInts(got[i], span(first, last+1)) {
			t.Fatalf("client %d received %v, want %d..%d exactly once, in order", i, got[i], first, last+1)
		}
	}
	if n := resumeCount(t, b, "resumed"); n != clients {
		t.Fatalf("b: switchboard_resume_total{result=resumed} = %v, want %d", n, clients)
	}
}

// subscribedClients dials n clients of project p1 to s, each subscribed
// to files under its own id, sub<i>, new to the node.
func subscribedClients(t *testing.T, s *Server, n int) []*client {
	t.Helper()
	conns := make([]*client, n)
	for i := range conns {
		conns[i] = dial(t, s, "project=p1", nil)
		conns[i].expect("connected")
		if st := conns[i].subscribeAs("sub"+strconv.Itoa(i), "files"); st != "new" {
			t.Fatalf("client %d: resume status %q", i, st)
		}
	}
	return conns
}

// eventSeq is the number of an event message.
func eventSeq(m message) (int, error) {
	if m.Type != "event" {
		return 0, fmt.Errorf("got %s %s, want an event", m.Type, m.Data)
	}
	var d struct {
		Payload struct{ N int } `json:"payload"`
	}
	err := json.Unmarshal(m.Data, &d)
	return d.Payload.N, err
}

// A client that comes back on a node whose router is behind the node it
// left (its Pub/Sub feed lags): the returning subscription must get no
// event twice and miss none, the seam waiting for the router to reach
// where the client stood.
func TestResumeOnANodeThatIsBehind(t *testing.T) {
	rd := redistest.Start(t)
	a := resumeRedisNode(t, rd.URL(), time.Minute, Off)
	b := resumeRedisNode(t, rd.URL(), time.Minute, Off)
	c := dial(t, a, "project=p1", nil)
	c.expect("connected")
	c.subscribeAs("behind1", "files")
	for n := 1; n <= 5; n++ {
		publish(t, a, seqEvent("p1", n))
	}
	got := c.seqsUntil(5)
	redistest.Eventually(t, 5*time.Second, "b routed the first events", func() bool { return counterValue(t, b, "switchboard_events_total") >= 5 })

	// b's router stops (as if its feed lagged): what is published now
	// waits in its broker's buffer, while a delivers it.
	b.router.mu.Lock()
	locked := true
	defer func() {
		if locked {
			b.router.mu.Unlock()
		}
	}()
	for n := 6; n <= 40; n++ {
		publish(t, a, seqEvent("p1", n))
	}
	got = append(got, c.seqsUntil(40)...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() { _ = a.Shutdown(ctx) }()
	if code, _ := c.expectClose(); code != ws.StatusGoingAway {
		t.Fatalf("close %d", code)
	}
	c2 := dial(t, b, "project=p1", nil)
	c2.expect("connected")
	status := make(chan string, 1)
	go func() {
		// The subscribe waits for b's router (the job registers with it).
		c2.send(`{"type":"subscribe","data":[{"subscriptionId":"behind1","channels":["files"],"queries":[]}]}`)
		status <- "sent"
	}()
	<-status
	time.Sleep(50 * time.Millisecond)
	b.router.mu.Unlock()
	locked = false
	m := c2.expect("response")
	if !strings.Contains(string(m.Data), `"resume":{"status":"resumed"}`) {
		t.Fatalf("response %s", m.Data)
	}
	for n := 41; n <= 45; n++ {
		publish(t, b, seqEvent("p1", n))
	}
	got = append(got, c2.seqsUntil(45)...)
	if !equalInts(got, span(1, 45)) {
		t.Fatalf("received %v, want 1..45 once each, in order", got)
	}
}

// A drain that finds a client's socket full: the node holds events the
// client has not read yet, and queues its close frame behind them. The
// client then reads them all, and the close, and comes back on another
// node: every event exactly once. The node keeps the connection until the
// rest of its queue has reached the socket (up to drainFlushWait), and
// the drain's record waits for it (conn.goAway). Before, the connection
// was closed with its queue unwritten: the client got part of it and no
// close frame, and came back with a dropped connection's record, given
// the events of its last second or so again (issue 24: "a drain loses
// nothing and duplicates nothing").
func TestResumeAcrossADrainOfASlowReader(t *testing.T) {
	rd := redistest.Start(t)
	// A small send buffer, and no drain time: every client is told at
	// once, in one pass under the router's lock.
	a := resumeNodeSendBuffer(t, rd.URL(), 0, 4096, time.Minute, Off)
	b := resumeRedisNode(t, rd.URL(), time.Minute, Off)
	slow := dialReadBuffer(t, a, "project=p1", testClientReadBuffer)
	slow.expect("connected")
	if st := slow.subscribeAs("slow", "files"); st != "new" {
		t.Fatalf("resume status %q", st)
	}
	watch := dial(t, a, "project=p1", nil)
	watch.expect("connected")
	watch.subscribeAs("watch", "files")

	// 40 events of 16 KiB: more than the slow client's receive window and
	// the node's send buffer hold, less than max-queue-bytes.
	pad := strings.Repeat("x", 16<<10)
	big := func(n int) string {
		return event("p1", []string{"any"}, []string{"files"}, `{"n":`+strconv.Itoa(n)+`,"pad":"`+pad+`"}`)
	}
	for n := 1; n <= 40; n++ {
		publish(t, b, big(n))
	}
	watch.seqsUntil(40) // a has queued all 40 for the slow client too
	if full := counterValue(t, a, "switchboard_send_buffer_full_total"); full == 0 {
		t.Fatal("the slow client's socket never filled: the test shows nothing")
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = a.Shutdown(ctx)
	}()
	if _, err := watch.tryRead(10 * time.Second); !isGoingAway(err) {
		t.Fatalf("watching client: %v, want close 1001", err)
	}
	// Told; the slow client has read none of its queue yet. What is
	// published now it misses.
	for n := 41; n <= 45; n++ {
		publish(t, b, big(n))
	}
	var got []int
	for {
		m, err := slow.tryRead(10 * time.Second)
		if isGoingAway(err) {
			break
		}
		if err != nil {
			t.Fatalf("slow client, after %d events: %v", len(got), err)
		}
		n, err := eventSeq(m)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, n)
	}
	back := dial(t, b, "project=p1", nil)
	back.expect("connected")
	if st := back.subscribeAs("slow", "files"); st != "resumed" {
		t.Fatalf("back on b: resume status %q", st)
	}
	publish(t, b, big(46))
	got = append(got, back.seqsUntil(46)...)
	if !equalInts(got, span(1, 46)) {
		t.Fatalf("the slow client received %v, want 1..46 exactly once, in order", got)
	}
}

// isGoingAway tells whether err is a close frame with 1001.
func isGoingAway(err error) bool {
	var closed wsutil.ClosedError
	return errors.As(err, &closed) && closed.Code == ws.StatusGoingAway
}

// A rolling deploy on a Redis Cluster in sharded mode while the project
// is quiet: node a appended the project's events; node b starts after
// them, so its feed never holds history's last event; a drains. a hands
// each partition it leads over with a mark on the partition's own marks
// channel, which b hears, and b continues history right after it: a's
// clients come back on b and get what was published after the drain,
// resumed, with no event missing and none twice. Without the hand-over b
// recorded a gap, and every one of them started live (incomplete).
func TestResumeRollingDeployOnRedisCluster(t *testing.T) {
	cl := redistest.StartCluster(t)
	const parts = 16
	a := resumeNode(t, cl.URL(), parts, time.Minute, 200*time.Millisecond)
	redistest.Eventually(t, 15*time.Second, "a subscribed to every partition", func() bool {
		v, err := metricSum(a, "broker_subscribed_partitions")
		return err == nil && v == parts
	})
	const clients = 5
	conns := subscribedClients(t, a, clients)
	for n := 1; n <= 10; n++ {
		publish(t, a, seqEvent("p1", n))
	}
	got := make([][]int, clients)
	for i, c := range conns {
		got[i] = c.seqsUntil(10)
	}
	rdb := redis.NewClusterClient(&redis.ClusterOptions{Addrs: []string{cl.Nodes[0].Addr()}})
	t.Cleanup(func() { rdb.Close() })
	key := fmt.Sprintf("%s:{%d}:s:p1", history.DefaultPrefix, broker.Partition("p1", parts))
	redistest.Eventually(t, 10*time.Second, "a appended the ten events", func() bool {
		return rdb.XLen(context.Background(), key).Val() == 10
	})

	b := resumeNode(t, cl.URL(), parts, time.Minute, Off)
	redistest.Eventually(t, 15*time.Second, "b subscribed to every partition", func() bool {
		v, err := metricSum(b, "broker_subscribed_partitions")
		return err == nil && v == parts
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	for i, c := range conns {
		if _, err := c.tryRead(5 * time.Second); !isGoingAway(err) {
			t.Fatalf("client %d: %v, want close 1001", i, err)
		}
	}
	publish(t, b, seqEvent("p1", 11)) // missed by every client
	for i := range conns {
		c := dial(t, b, "project=p1", nil)
		c.expect("connected")
		if st := c.subscribeAs("sub"+strconv.Itoa(i), "files"); st != "resumed" {
			t.Fatalf("client %d back on b: resume status %q", i, st)
		}
		conns[i] = c
	}
	publish(t, b, seqEvent("p1", 12))
	for i, c := range conns {
		got[i] = append(got[i], c.seqsUntil(12)...)
		if !equalInts(got[i], span(1, 12)) {
			t.Fatalf("client %d received %v, want 1..12 exactly once, in order", i, got[i])
		}
	}
}

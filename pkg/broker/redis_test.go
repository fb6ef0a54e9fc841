package broker

import (
	"context"
	"errors"
	"fmt"
	"github.com/switchboard-rt/switchboard/internal/redistest"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

func TestMain(m *testing.M) {
	// Route go-redis's process-wide logger through zap (discarded here), as
	// main does; otherwise every refused dial prints a line on stderr.
	redis.SetLogger(NewRedisLogger(nil))
	os.Exit(m.Run())
}

// newTestRedis returns a Redis broker on url with its own registry and an
// observed logger; it is closed when the test ends.
func newTestRedis(t testing.TB, url string, buffer int) (*Redis, *prometheus.Registry, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.DebugLevel)
	reg := prometheus.NewRegistry()
	r, err := NewRedis(RedisOptions{URL: url, Buffer: buffer, Logger: zap.New(core), Registerer: reg})
	if err != nil {
		t.Fatalf("NewRedis: %v", err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return r, reg, logs
}

func waitReady(t testing.TB, name string, b Broker) {
	t.Helper()
	redistest.Eventually(t, 15*time.Second, name+" is ready", func() bool { return b.Ready() == nil })
}

func publish(t testing.TB, b Broker, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		if err := b.Publish(context.Background(), []byte(m)); err != nil {
			t.Fatalf("Publish(%q): %v", m, err)
		}
	}
}

func TestPartitionIsFNV1aModN(t *testing.T) {
	for _, p := range []string{"", "a", "b", "console", "6502f1c3a9e1b0", "проект"} {
		for _, n := range []int{1, 2, 7, 64, 1000} {
			h := uint32(2166136261)
			for _, c := range []byte(p) {
				h = (h ^ uint32(c)) * 16777619
			}
			if got, want := Partition(p, n), int(h%uint32(n)); got != want {
				t.Errorf("Partition(%q, %d) = %d, want %d", p, n, got, want)
			}
		}
	}
	// Known FNV-1a 32 vector: fnv32a("a") = 0xe40c292c.
	if got := Partition("a", 1<<31-1); got != int(uint32(0xe40c292c)%(1<<31-1)) {
		t.Errorf("Partition(a) = %d, not FNV-1a", got)
	}
	if got := ShardChannel("realtime", 12); got != "realtime:{12}" {
		t.Errorf("ShardChannel = %q", got)
	}
}

func TestNewRedisRejectsBadOptions(t *testing.T) {
	if _, err := NewRedis(RedisOptions{}); err == nil {
		t.Error("NewRedis without URL succeeded")
	}
	if _, err := NewRedis(RedisOptions{URL: "http://127.0.0.1:6379"}); err == nil {
		t.Error("NewRedis with an http URL succeeded")
	}
	_, err := NewRedis(RedisOptions{URL: "redis://user:s3cret@127.0.0.1:6379/x%zz"})
	if err == nil {
		t.Fatal("NewRedis with a malformed URL succeeded")
	}
	if strings.Contains(err.Error(), "s3cret") {
		t.Errorf("URL error leaks the password: %v", err)
	}

	reg := prometheus.NewRegistry()
	if _, err := NewRedis(RedisOptions{URL: "redis://127.0.0.1:1", Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := NewRedis(RedisOptions{URL: "redis://127.0.0.1:1", Registerer: reg}); err == nil {
		t.Error("a second broker registered the same metrics without error")
	}
	for _, name := range []string{"broker_connected", "broker_reconnects_total", "broker_messages_total", "broker_dropped_messages_total"} {
		metricValue(t, reg, name)
	}
}

func TestRedisDeliversInOrder(t *testing.T) {
	srv := redistest.Start(t)
	r, reg, _ := newTestRedis(t, srv.URL(), 0)
	if err := r.Ready(); err == nil {
		t.Fatal("Ready is nil before Run")
	} else if !strings.Contains(err.Error(), srv.Addr()) {
		t.Errorf("Ready before Run does not say where: %v", err)
	}
	msgs := runBroker(t, r)
	waitReady(t, "broker", r)

	var want []string
	for i := range 200 {
		want = append(want, fmt.Sprintf(`{"project":"p","n":%d}`, i))
	}
	publish(t, r, want...)
	expect(t, "broker", msgs, want...)
	if got := metricValue(t, reg, "broker_messages_total"); got != 200 {
		t.Errorf("broker_messages_total = %v, want 200", got)
	}
	if got := metricValue(t, reg, "broker_connected"); got != 1 {
		t.Errorf("broker_connected = %v, want 1", got)
	}
	if got := metricValue(t, reg, "broker_dropped_messages_total"); got != 0 {
		t.Errorf("broker_dropped_messages_total = %v, want 0", got)
	}
}

func TestRedisTwoNodesReceiveEachMessageOnce(t *testing.T) {
	srv := redistest.Start(t)
	a, _, _ := newTestRedis(t, srv.URL(), 0)
	b, _, _ := newTestRedis(t, srv.URL(), 0)
	msgsA, msgsB := runBroker(t, a), runBroker(t, b)
	waitReady(t, "node A", a)
	waitReady(t, "node B", b)

	// Publish alternately through both nodes: Redis orders them, and
	// each node must see every message exactly once, in that order.
	var want []string
	for i := range 50 {
		m := fmt.Sprintf("m%d", i)
		want = append(want, m)
		if i%2 == 0 {
			publish(t, a, m)
		} else {
			publish(t, b, m)
		}
	}
	publish(t, a, "end")
	want = append(want, "end")
	expect(t, "node A", msgsA, want...)
	expect(t, "node B", msgsB, want...)
	expectNothingQueued(t, "node A", msgsA)
	expectNothingQueued(t, "node B", msgsB)
}

func TestRedisBecomesReadyWhenRedisStartsLate(t *testing.T) {
	srv := redistest.New(t, redistest.FreePorts(t, 1)[0]) // nothing listens yet
	r, reg, logs := newTestRedis(t, srv.URL(), 0)
	msgs := runBroker(t, r)

	redistest.Eventually(t, 5*time.Second, "Ready reports the refused connection", func() bool {
		err := r.Ready()
		return err != nil && strings.Contains(err.Error(), "refused")
	})
	if got := metricValue(t, reg, "broker_connected"); got != 0 {
		t.Errorf("broker_connected = %v while Redis is down", got)
	}
	if err := r.Ready(); !strings.Contains(err.Error(), srv.Addr()) {
		t.Errorf("Ready does not name the server: %v", err)
	}

	srv.Start()
	waitReady(t, "broker", r)
	publish(t, r, "hello")
	expect(t, "broker", msgs, "hello")
	if got := metricValue(t, reg, "broker_reconnects_total"); got != 0 {
		t.Errorf("broker_reconnects_total = %v, want 0 (a first connection is no reconnect)", got)
	}
	if n := logs.FilterMessage("backbone unavailable; retrying in the background").Len(); n != 1 {
		t.Errorf("logged the outage %d times, want once", n)
	}
	if n := logs.FilterMessage("backbone subscription established after retrying").Len(); n != 1 {
		t.Errorf("logged the recovery %d times, want once", n)
	}
}

// TestRedisLogsOncePerOutage points the broker at a port that accepts and
// at once closes every connection, counts the attempts, and checks that many
// failed attempts make one log line.
func TestRedisLogsOncePerOutage(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var attempts atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			attempts.Add(1)
			c.Close()
		}
	}()
	r, _, logs := newTestRedis(t, "redis://"+ln.Addr().String(), 0)
	r.timing.backoffMin, r.timing.backoffMax = 5*time.Millisecond, 20*time.Millisecond
	runBroker(t, r)
	redistest.Eventually(t, 10*time.Second, "five connection attempts", func() bool { return attempts.Load() >= 5 })
	if r.Ready() == nil {
		t.Fatal("Ready is nil with nothing behind the port")
	}
	if n := logs.FilterLevelExact(zapcore.WarnLevel).Len(); n != 1 {
		t.Errorf("%d warnings for one outage of %d attempts, want 1: %v", n, attempts.Load(), logs.All())
	}
}

func TestBackoffIsCappedExponentialWithJitter(t *testing.T) {
	d := defaultTiming()
	b := backoff{min: d.backoffMin, max: d.backoffMax}
	for round := range 2 {
		step := d.backoffMin
		for i := range 12 {
			got := b.next()
			if got < step/2 || got > step {
				t.Fatalf("round %d, wait %d = %v, want within [%v, %v]", round, i, got, step/2, step)
			}
			step = min(2*step, d.backoffMax)
		}
		b.reset()
	}
}

func TestRedisResubscribesAfterRedisRestart(t *testing.T) {
	srv := redistest.Start(t)
	r, reg, logs := newTestRedis(t, srv.URL(), 0)
	msgs := runBroker(t, r)
	waitReady(t, "broker", r)
	publish(t, r, "before")
	expect(t, "broker", msgs, "before")

	srv.Kill()
	redistest.Eventually(t, 10*time.Second, "Ready reports the outage", func() bool { return r.Ready() != nil })
	if got := metricValue(t, reg, "broker_connected"); got != 0 {
		t.Errorf("broker_connected = %v during the outage", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	start := time.Now()
	err := r.Publish(ctx, []byte("lost"))
	cancel()
	if err == nil {
		t.Error("Publish succeeded with Redis down")
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Publish with Redis down took %v", took)
	}

	srv.Start()
	waitReady(t, "broker after the restart", r)
	if got := metricValue(t, reg, "broker_reconnects_total"); got != 1 {
		t.Errorf("broker_reconnects_total = %v, want 1", got)
	}
	if got := metricValue(t, reg, "broker_connected"); got != 1 {
		t.Errorf("broker_connected = %v after the restart", got)
	}
	publish(t, r, "after")
	expect(t, "broker", msgs, "after")
	expectNothingQueued(t, "broker", msgs)
	if n := logs.FilterMessage("backbone subscription lost; resubscribing").Len(); n != 1 {
		t.Errorf("logged the loss %d times, want once", n)
	}
	if n := logs.FilterMessage("backbone subscription restored").Len(); n != 1 {
		t.Errorf("logged the restore %d times, want once", n)
	}
}

func TestRedisPublishWhileDownFailsFast(t *testing.T) {
	r, _, _ := newTestRedis(t, "redis://"+redistest.RefusedAddr(t), 0)
	// Without a deadline of its own, Publish is bounded by its own timeout.
	start := time.Now()
	if err := r.Publish(context.Background(), []byte("x")); err == nil {
		t.Fatal("Publish succeeded with nothing listening")
	} else if !strings.Contains(err.Error(), "publish") {
		t.Errorf("error lacks context: %v", err)
	}
	if took := time.Since(start); took > r.timing.publishTimeout+time.Second {
		t.Errorf("Publish took %v, want at most about %v", took, r.timing.publishTimeout)
	}
	// With a short deadline, the caller's deadline wins.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start = time.Now()
	if err := r.Publish(ctx, []byte("x")); err == nil {
		t.Fatal("Publish succeeded with nothing listening")
	}
	if took := time.Since(start); took > 500*time.Millisecond {
		t.Errorf("Publish with a 50 ms deadline took %v", took)
	}
}

func TestRedisStalledHandlerDropsInsteadOfBlocking(t *testing.T) {
	srv := redistest.Start(t)
	r, reg, _ := newTestRedis(t, srv.URL(), 1)
	release := make(chan struct{})
	var handled atomic.Int32
	got := make(chan string, 100)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- r.Run(ctx, func(m []byte) {
			if handled.Add(1) == 1 {
				<-release // the first message stalls the handler
			}
			got <- string(m)
		})
	}()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v", err)
		}
	}()
	waitReady(t, "broker", r)

	const n = 50
	for i := range n {
		publish(t, r, fmt.Sprint(i))
	}
	// The reader keeps reading: every message is received and all but
	// those in the handler and the one-slot buffer are dropped.
	redistest.Eventually(t, 10*time.Second, "all messages received from Redis", func() bool {
		return metricValue(t, reg, "broker_messages_total") == n
	})
	dropped := metricValue(t, reg, "broker_dropped_messages_total")
	if dropped < n-2 {
		t.Errorf("dropped %v messages, want at least %d", dropped, n-2)
	}
	if err := r.Ready(); err != nil {
		t.Errorf("a stalled handler made the broker unready: %v", err)
	}

	close(release)
	redistest.Eventually(t, 5*time.Second, "the handler catches up", func() bool {
		return float64(handled.Load())+dropped == n
	})
	for range handled.Load() {
		<-got
	}
	// Nothing is wedged: the next message goes straight through.
	publish(t, r, "after")
	expect(t, "broker", got, "after")
}

// freezeProxy forwards TCP to a target until frozen; frozen, it swallows
// everything in both directions while keeping the connections open: what a
// dead network path looks like, with no RST or FIN ever arriving.
type freezeProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	frozen bool
	conns  []net.Conn
}

func newFreezeProxy(t *testing.T, target string) *freezeProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &freezeProxy{ln: ln, target: target}
	t.Cleanup(func() {
		ln.Close()
		p.closeAll()
	})
	go p.serve()
	return p
}

// Addr is the proxy's listening address.
func (p *freezeProxy) Addr() string { return p.ln.Addr().String() }

func (p *freezeProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		go p.pipe(c, u)
		go p.pipe(u, c)
	}
}

func (p *freezeProxy) pipe(src, dst net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			dst.Close()
			return
		}
		p.mu.Lock()
		frozen := p.frozen
		p.mu.Unlock()
		if frozen {
			continue
		}
		if _, err := dst.Write(buf[:n]); err != nil {
			src.Close()
			return
		}
	}
}

func (p *freezeProxy) setFrozen(f bool) {
	p.mu.Lock()
	p.frozen = f
	p.mu.Unlock()
}

func (p *freezeProxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func TestRedisDetectsSilentConnection(t *testing.T) {
	srv := redistest.Start(t)
	proxy := newFreezeProxy(t, srv.Addr())
	r, reg, logs := newTestRedis(t, "redis://"+proxy.Addr(), 0)
	r.timing.health = 100 * time.Millisecond
	r.timing.subscribeTimeout = 300 * time.Millisecond
	r.timing.backoffMax = 200 * time.Millisecond
	msgs := runBroker(t, r)
	waitReady(t, "broker", r)
	// A healthy idle link answers its PINGs and stays up: watch it through
	// a few health intervals (observing that nothing happens needs a
	// fixed window).
	time.Sleep(6 * r.timing.health)
	if err := r.Ready(); err != nil || logs.FilterMessage("backbone subscription lost; resubscribing").Len() != 0 {
		t.Fatalf("an idle healthy link was declared dead: Ready = %v, logs %v", err, logs.All())
	}

	proxy.setFrozen(true)
	start := time.Now()
	redistest.Eventually(t, 5*time.Second, "the silent connection is declared dead", func() bool { return r.Ready() != nil })
	// Three health intervals (300 ms) at most, plus generous slack for a
	// loaded CI machine under -race.
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("detecting the dead connection took %v", took)
	}
	lost := logs.FilterMessage("backbone subscription lost; resubscribing").All()
	if len(lost) != 1 || !strings.Contains(fmt.Sprint(lost[0].ContextMap()["error"]), "PING") {
		t.Errorf("want one loss logged with a PING error, got %v", lost)
	}

	// The path heals: stale connections die, new ones pass.
	proxy.setFrozen(false)
	proxy.closeAll()
	waitReady(t, "broker after the network heals", r)
	if got := metricValue(t, reg, "broker_reconnects_total"); got != 1 {
		t.Errorf("broker_reconnects_total = %v, want 1", got)
	}
	direct := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer direct.Close()
	if err := direct.Publish(context.Background(), DefaultChannel, "after").Err(); err != nil {
		t.Fatal(err)
	}
	expect(t, "broker", msgs, "after")
}

func TestRedisPasswordAndDatabaseInURL(t *testing.T) {
	srv := redistest.Start(t, "--requirepass", "s3cret")

	wrong, _, _ := newTestRedis(t, "redis://:nope@"+srv.Addr()+"/2", 0)
	runBroker(t, wrong)
	redistest.Eventually(t, 5*time.Second, "Ready reports the refused password", func() bool {
		err := wrong.Ready()
		return err != nil && strings.Contains(strings.ToUpper(err.Error()), "WRONGPASS")
	})
	if err := wrong.Ready(); strings.Contains(err.Error(), "nope") {
		t.Errorf("Ready leaks the password: %v", err)
	}

	r, _, _ := newTestRedis(t, "redis://:s3cret@"+srv.Addr()+"/2", 0)
	msgs := runBroker(t, r)
	waitReady(t, "broker", r)
	publish(t, r, "authenticated")
	expect(t, "broker", msgs, "authenticated")
}

func TestRedisRunStopsOnCancelAndClose(t *testing.T) {
	srv := redistest.Start(t)
	r, _, _ := newTestRedis(t, srv.URL(), 0)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, func([]byte) {}) }()
	waitReady(t, "broker", r)
	if err := r.Run(ctx, func([]byte) {}); err == nil || !strings.Contains(err.Error(), "already running") {
		t.Errorf("second concurrent Run returned %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if r.Ready() == nil {
		t.Error("Ready is nil after Run returned")
	}

	// Run again, then Close: Run returns ErrClosed, Publish too.
	go func() { done <- r.Run(context.Background(), func([]byte) {}) }()
	waitReady(t, "broker", r)
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("Run returned %v after Close, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	if err := r.Publish(context.Background(), []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close returned %v", err)
	}
}

// benchMessage is a typical Appwrite backbone message (about 450 bytes).
var benchMessage = []byte(`{"project":"6502f1c3a9e1b0","roles":["user:6502f1c3","team:65aa/owner"],` +
	`"permissionsChanged":false,"userId":null,"data":{"events":["databases.db.collections.c.documents.d.update",` +
	`"databases.*.collections.*.documents.*.update","databases.db.collections.c.documents.d"],` +
	`"channels":["documents","databases.db.collections.c.documents","databases.db.collections.c.documents.d"],` +
	`"timestamp":"2026-11-23T02:40:00.000+00:00","payload":{"$id":"d","title":"hello","done":false}}}`)

// BenchmarkRedisPublishToHandler measures throughput from PUBLISH to the
// handler through a local redis-server: a separate client pipelines
// PUBLISHes in batches of 256, the broker's single subscription receives
// them with the default Buffer, and the clock stops when the handler has
// seen all b.N (or they were counted as dropped, which is reported).
func BenchmarkRedisPublishToHandler(b *testing.B) {
	srv := redistest.Start(b)
	r, reg, _ := newTestRedis(b, srv.URL(), 0)
	var handled atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx, func([]byte) { handled.Add(1) }) }()
	defer func() {
		cancel()
		<-done
	}()
	waitReady(b, "broker", r)
	pub := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer pub.Close()

	b.SetBytes(int64(len(benchMessage)))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; {
		k := min(256, b.N-sent)
		pipe := pub.Pipeline()
		for range k {
			pipe.Publish(ctx, DefaultChannel, benchMessage)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			b.Fatal(err)
		}
		sent += k
	}
	deadline := time.Now().Add(30 * time.Second)
	var dropped float64
	for {
		dropped = metricValue(b, reg, "broker_dropped_messages_total")
		if float64(handled.Load())+dropped >= float64(b.N) {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("handled %d + dropped %v of %d after 30 s", handled.Load(), dropped, b.N)
		}
		time.Sleep(100 * time.Microsecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
	b.ReportMetric(dropped, "dropped")
}

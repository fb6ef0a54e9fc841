package loadgen

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/server"
)

// startNode runs a real Switchboard node on free loopback ports, with the
// per-connection message limit and the drain off (a test that checks the
// per-IP connect limit sets it).
func startNode(t *testing.T, mod func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.Config{
		Listen:            "127.0.0.1:0",
		AdminListen:       "127.0.0.1:0",
		MessagesPerMinute: server.Off,
		DrainTime:         server.Off,
		Broker:            broker.NewMemory(1024),
		Registry:          prometheus.NewRegistry(),
	}
	if mod != nil {
		mod(&cfg)
	}
	s, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(ctx)
	})
	return s
}

func benchConfig(s *server.Server, conns, events int) Config {
	return Config{
		URL:            fmt.Sprintf("ws://%s/v1/realtime?project=p1&channels[]=files&channels[]=other", s.Addr()),
		PublishURL:     fmt.Sprintf("http://%s/v1/publish", s.AdminAddr()),
		Conns:          conns,
		Events:         events,
		PublishRate:    200,
		Drain:          5 * time.Second,
		ConnectTimeout: 5 * time.Second,
		ServerPIDs:     []int{os.Getpid()},
	}
}

func run(t *testing.T, cfg Config) *Summary {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Second)
	defer cancel()
	var progress strings.Builder
	sum, err := Run(ctx, cfg, &progress, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	if ctx.Err() != nil {
		t.Fatalf("run did not end by itself; progress:\n%s", progress.String())
	}
	return sum
}

func checkComplete(t *testing.T, sum *Summary, conns, events int) {
	t.Helper()
	c := sum.Counters
	if sum.OpenAtFull != int64(conns) || c.EverReady != int64(conns) || c.Failed != 0 || c.Dropped != 0 {
		t.Fatalf("connections: open at full %d, counters %+v; want %d ready, none failed or dropped", sum.OpenAtFull, c, conns)
	}
	if c.ClosedClean != int64(conns) {
		t.Errorf("closed cleanly %d of %d (close timeouts %d)", c.ClosedClean, conns, c.CloseTimeouts)
	}
	ev := sum.Events
	if ev == nil {
		t.Fatal("no event summary")
	}
	want := int64(conns * events)
	if ev.Published != events || ev.Expected != want || ev.Received != want || ev.Completeness != 1 ||
		ev.ConnsComplete != conns || ev.ConnsMissing != 0 || ev.Missing != 0 || ev.Duplicates != 0 {
		t.Fatalf("events: %+v; want %d published, %d received by all %d connections", ev, events, want, conns)
	}
	if ev.Latency.Count != uint64(want) || ev.Latency.P50 <= 0 || ev.Latency.P99 < ev.Latency.P50 || ev.Latency.Max < ev.Latency.P99 {
		t.Errorf("latency %+v: want %d samples, 0 < p50 <= p99 <= max", ev.Latency, want)
	}
	if ev.TimeToLast.Count != uint64(events) || ev.TimeToLast.P50 <= 0 || ev.DeliveriesPerSec <= 0 || ev.PublishRate <= 0 {
		t.Errorf("time to last delivery %+v, deliveries/s %v, publish rate %v", ev.TimeToLast, ev.DeliveriesPerSec, ev.PublishRate)
	}
}

// sourcesUsed checks the connections came from several 127.0.0.x
// addresses other than 127.0.0.1 and returns how many.
func sourcesUsed(t *testing.T, sum *Summary, conns int) int {
	t.Helper()
	n := 0
	for a, c := range sum.Sources {
		ip, err := netip.ParseAddr(a)
		if err != nil || !ip.Is4() || ip.As4()[0] != 127 || ip.As4()[3] < 2 {
			t.Errorf("source address %q: want 127.0.0.2 or above", a)
		}
		n += c
	}
	if n != conns || len(sum.Sources) < 2 {
		t.Errorf("sources %v: want %d connections over at least two addresses", sum.Sources, conns)
	}
	return len(sum.Sources)
}

func TestFanOutCompleteFromSeveralSourceAddresses(t *testing.T) {
	const conns, events = 200, 20
	// The node allows 120 connects per client address per minute: 200
	// connections only all get in when they really come from several
	// addresses, which checks the spreading from the server's side.
	s := startNode(t, func(c *server.Config) { c.ConnectsPerIP = 120 })
	cfg := benchConfig(s, conns, events)
	cfg.SourceIPs = 3
	cfg.Rate = 2000
	cfg.PingEvery = 200 * time.Millisecond
	cfg.Hold = 300 * time.Millisecond
	sum := run(t, cfg)
	checkComplete(t, sum, conns, events)
	if got := sourcesUsed(t, sum, conns); got != 3 {
		t.Errorf("%d source addresses, want 3", got)
	}
	if sum.Workers != 1 {
		t.Errorf("workers %d, want 1", sum.Workers)
	}
	if sum.Counters.Pongs == 0 {
		t.Error("no pong came back for the Appwrite pings")
	}
	if len(sum.Servers) != 1 || sum.Servers[0].RSSBefore <= 0 || sum.Servers[0].RSSAfter <= 0 {
		t.Errorf("server memory %+v: want RSS before and after", sum.Servers)
	}
	if sum.Generator.CPUSeconds <= 0 || sum.Servers[0].CPUSeconds <= 0 {
		t.Errorf("CPU seconds: generator %v, server %v; want both above zero", sum.Generator.CPUSeconds, sum.Servers[0].CPUSeconds)
	}
	if sum.Generator.RSSBefore <= 0 || sum.KernelAfter.TCPInUse < int64(conns) {
		t.Errorf("generator %+v, kernel after %+v", sum.Generator, sum.KernelAfter)
	}
}

func TestWorkerProcessesSplitTheRun(t *testing.T) {
	const conns, events = 250, 5
	s := startNode(t, func(c *server.Config) { c.ConnectsPerIP = server.Off })
	cfg := benchConfig(s, conns, events)
	cfg.MaxFDsPerWorker = 100
	cfg.Loops = 1
	cfg.WorkerCommand = testWorkerCommand
	sum := run(t, cfg)
	if sum.Workers != 3 {
		t.Fatalf("workers %d, want 3 (250 connections, 100 descriptors each)", sum.Workers)
	}
	checkComplete(t, sum, conns, events)
	sourcesUsed(t, sum, conns)
	if sum.Generator.RSSBefore <= 0 || sum.Generator.RSSAfter <= 0 {
		t.Errorf("generator memory %+v: want the workers' RSS", sum.Generator)
	}
}

func TestRunRefusesWhatTheBudgetCannotHold(t *testing.T) {
	cfg := Config{URL: "ws://127.0.0.1:1/v1/realtime", Conns: 500, Workers: 2, MaxFDsPerWorker: 100}
	if _, err := Run(context.Background(), cfg, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "descriptors") {
		t.Fatalf("error %v, want one about descriptors per worker", err)
	}
	cfg = Config{URL: "wss://127.0.0.1:1/v1/realtime", Conns: 5}
	if _, err := Run(context.Background(), cfg, io.Discard, io.Discard); err == nil {
		t.Fatal("wss URL accepted")
	}
	cfg = Config{URL: "ws://127.0.0.1:1/v1/realtime", Conns: 5, Events: 3, PublishURL: "http://127.0.0.1:1/v1/publish"}
	if _, err := Run(context.Background(), cfg, io.Discard, io.Discard); err == nil || !strings.Contains(err.Error(), "channels") {
		t.Fatalf("error %v, want one about project and channels", err)
	}
}

func TestRefusedConnectionsAreCountedAsFailed(t *testing.T) {
	// A port nobody listens on: every connect is refused.
	addr := redistest.RefusedAddr(t)
	sum := run(t, Config{URL: "ws://" + addr + "/v1/realtime?project=p1&channels[]=files", Conns: 20, ConnectTimeout: 2 * time.Second})
	if sum.Counters.Failed != 20 || sum.Counters.ErrConnect != 20 || sum.OpenAtFull != 0 {
		t.Fatalf("counters %+v: want 20 failed connects", sum.Counters)
	}
}

func TestAuthenticationMessageGivesTheUsersRoles(t *testing.T) {
	secret := []byte("bench-secret")
	res, err := auth.NewJWT(secret)
	if err != nil {
		t.Fatal(err)
	}
	s := startNode(t, func(c *server.Config) { c.Resolver = res; c.ConnectsPerIP = server.Off })
	token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	if err != nil {
		t.Fatal(err)
	}
	const conns, events = 30, 4
	cfg := benchConfig(s, conns, events)
	cfg.Auth = token
	// Only user u1 may read these events: they arrive only if the
	// authentication message was sent and accepted.
	cfg.Roles = []string{"user:u1"}
	sum := run(t, cfg)
	checkComplete(t, sum, conns, events)
	if sum.Counters.AuthFailed != 0 {
		t.Errorf("auth failures %d", sum.Counters.AuthFailed)
	}

	cfg.Auth = "not-a-token"
	cfg.Events = 0
	sum = run(t, cfg)
	if sum.Counters.AuthFailed != conns || sum.Counters.ErrorFrames != conns || sum.OpenAtFull != conns {
		t.Errorf("bad session: counters %+v; want %d auth failures, connections kept as guests", sum.Counters, conns)
	}
}

// TestStalledConnectionsAreClosedAsSlowConsumers stalls every sixth
// connection: those stop reading after `connected`, their kernel buffers
// fill, then the node's queue (a small --max-queue-bytes), and the node
// closes them with 1008. The healthy ones must still get every event, and
// the generator must find each server close behind the unread bytes.
func TestStalledConnectionsAreClosedAsSlowConsumers(t *testing.T) {
	const conns, stalled, events = 30, 6, 200
	reg := prometheus.NewRegistry()
	s := startNode(t, func(c *server.Config) {
		c.ConnectsPerIP = server.Off
		c.MaxQueueBytes = 1 << 20 // 64 events of slack for a healthy reader
		c.Registry = reg
	})
	// 200 events of 16 KB are 3.2 MB per connection, far more than a
	// socket that is not read holds before the node's queue starts: the
	// node's send buffer is capped at 128 KiB here, the client's receive
	// buffer stays at tcp_rmem's default (128 KiB stock, 4 KiB tuned) as it
	// never reads. So every stalled connection overflows its 1 MiB queue.
	// Left to the kernel, the node's send buffer is sized at once from the
	// initial congestion window and the loopback MSS: 3.9 MB on Linux 6.18
	// (this comment said 2.6 MB before), a margin that followed the kernel
	// version. A healthy reader may stall for 1.6 s (64 events at 40/s,
	// 640 KB/s a connection) before it is cut: with 60 connections at
	// 60/s and 512 KiB, a healthy reader of the -race generator on a
	// machine at load 6 (two test suites on 2 cores) was cut, 13 of 50.
	capListenerSendBuffer(t, s, 64<<10)
	cfg := benchConfig(s, conns, events)
	cfg.Stalled = stalled
	cfg.PayloadBytes = 16 << 10
	cfg.PublishRate = 40
	sum := run(t, cfg)

	c := sum.Counters
	if sum.OpenAtFull != conns || c.Failed != 0 || c.Dropped != 0 {
		t.Fatalf("open at full %d, counters %+v; want %d open, none failed or dropped", sum.OpenAtFull, c, conns)
	}
	ev := sum.Events
	healthy := conns - stalled
	if ev == nil || ev.Published != events || ev.Expected != int64(healthy*events) || ev.Completeness != 1 ||
		ev.ConnsComplete != healthy || ev.Duplicates != 0 || ev.Latency.Count != uint64(healthy*events) {
		t.Fatalf("events %+v; want all %d events on each of the %d healthy connections", ev, events, healthy)
	}
	st := sum.Stalled
	if st == nil || st.Conns != stalled || st.Ready != stalled || st.ClosedByServer != stalled || st.OpenAtEnd != 0 {
		t.Fatalf("stalled %+v; want all %d ready, then closed by the server", st, stalled)
	}
	if c.ClosedClean != int64(healthy) {
		t.Errorf("closed cleanly %d, want the %d healthy connections", c.ClosedClean, healthy)
	}
	if got := counterValue(t, reg, "switchboard_slow_consumer_closes_total"); got != stalled {
		t.Errorf("node's slow consumer closes %v, want %d", got, stalled)
	}
	if srv := sum.Servers; len(srv) != 1 || srv[0].RSSEnd <= 0 || srv[0].RSSPeak < srv[0].RSSEnd {
		t.Errorf("servers %+v: want RSS at the end and a peak at least as large", srv)
	}
}

// TestStalledConnectionsTheNodeKeepsAreReportedOpen stalls connections
// that receive too little to overflow anything: none may be reported as
// closed by the server, and their close handshake still completes.
func TestStalledConnectionsTheNodeKeepsAreReportedOpen(t *testing.T) {
	const conns, stalled, events = 20, 5, 10
	s := startNode(t, func(c *server.Config) { c.ConnectsPerIP = server.Off })
	cfg := benchConfig(s, conns, events)
	cfg.Stalled = stalled
	sum := run(t, cfg)
	if ev := sum.Events; ev == nil || ev.Completeness != 1 || ev.ConnsComplete != conns-stalled {
		t.Fatalf("events %+v", sum.Events)
	}
	if st := sum.Stalled; st == nil || st.Ready != stalled || st.ClosedByServer != 0 || st.OpenAtEnd != stalled {
		t.Fatalf("stalled %+v; want %d ready and kept open", sum.Stalled, stalled)
	}
	if sum.Counters.ClosedClean != conns {
		t.Errorf("closed cleanly %d of %d", sum.Counters.ClosedClean, conns)
	}
}

// TestStalledConnectionsCutShortAreNotCountedAsClosed stalls connections
// under a queue limit they cannot reach, and cuts the end's read-again
// short (a tiny close timeout) while megabytes are still queued for them:
// the node then answers the generator's close frame by closing at once,
// without its echo, which must not be taken for a slow-consumer close.
func TestStalledConnectionsCutShortAreNotCountedAsClosed(t *testing.T) {
	const conns, stalled, events = 20, 5, 300
	reg := prometheus.NewRegistry()
	s := startNode(t, func(c *server.Config) {
		c.ConnectsPerIP = server.Off
		c.MaxQueueBytes = 64 << 20
		c.Registry = reg
	})
	cfg := benchConfig(s, conns, events)
	cfg.Stalled = stalled
	cfg.PayloadBytes = 16 << 10
	cfg.PublishRate = 60
	cfg.CloseTimeout = 100 * time.Millisecond
	sum := run(t, cfg)
	if ev := sum.Events; ev == nil || ev.Completeness != 1 {
		t.Fatalf("events %+v", sum.Events)
	}
	if got := counterValue(t, reg, "switchboard_slow_consumer_closes_total"); got != 0 {
		t.Fatalf("node's slow consumer closes %v: the queue limit was reached", got)
	}
	if st := sum.Stalled; st == nil || st.Ready != stalled || st.ClosedByServer != 0 || st.OpenAtEnd != stalled {
		t.Fatalf("stalled %+v; want %d ready, none closed by the server", sum.Stalled, stalled)
	}
}

// capListenerSendBuffer sets SO_SNDBUF (the kernel doubles n) on the
// node's listening socket, which the sockets it accepts inherit, locked
// against autotuning. The node runs in this process but keeps its
// listener to itself, so the socket is found among the process's
// descriptors: the listening one bound to the node's address.
func capListenerSendBuffer(t *testing.T, s *server.Server, n int) {
	t.Helper()
	want := s.Addr().(*net.TCPAddr)
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	set := 0
	for _, e := range fds {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on != 1 {
			continue
		}
		sa, err := unix.Getsockname(fd)
		if a, ok := sa.(*unix.SockaddrInet4); err != nil || !ok || a.Port != want.Port || !want.IP.Equal(net.IP(a.Addr[:])) {
			continue
		}
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, n); err != nil {
			t.Fatal(err)
		}
		set++
	}
	if set == 0 {
		t.Fatalf("no listening socket on %v among this process's descriptors", want)
	}
}

// counterValue is the value of an unlabelled counter in reg.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}

// With Compressing, that fraction of the connections offers
// permessage-deflate as a browser does; the node agrees, sends them every
// event compressed, and they inflate and count each as a delivery like the
// plain ones.
func TestCompressingConnectionsInflateEveryEvent(t *testing.T) {
	const conns, events = 100, 10
	reg := prometheus.NewRegistry()
	s := startNode(t, func(c *server.Config) { c.Registry = reg })
	cfg := benchConfig(s, conns, events)
	cfg.Compressing = 0.5
	cfg.PayloadBytes = 2048
	cfg.Hold = 200 * time.Millisecond
	sum := run(t, cfg)
	checkComplete(t, sum, conns, events)
	if c := sum.Counters; c.DeflateAgreed != conns/2 || c.CompressedMessages != conns/2*events {
		t.Fatalf("%d connections agreed on compression, %d compressed messages; want %d and %d", c.DeflateAgreed, c.CompressedMessages, conns/2, conns/2*events)
	}
	if n := counterValue(t, reg, "switchboard_deflate_deliveries_total"); n != conns/2*events {
		t.Fatalf("node queued %v compressed deliveries, want %d", n, conns/2*events)
	}
}

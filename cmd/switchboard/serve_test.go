package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// switchboardBin is the switchboard binary built once for the end-to-end tests.
var switchboardBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "switchboard-e2e")
	if err != nil {
		panic(err)
	}
	switchboardBin = filepath.Join(dir, "switchboard")
	if out, err := exec.Command("go", "build", "-o", switchboardBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building switchboard: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// freePort is a loopback address on a port free when chosen; see
// redistest.FreePorts for why it may be taken by the time a node binds it.
func freePort(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", redistest.FreePorts(t, 1)[0])
}

type node struct {
	cmd         *exec.Cmd
	addr, admin string
	stderr      *syncBuffer // the node's log, readable while it runs
	exited      chan error
}

// errPortTaken reports that a node exited at start because an address it
// was given was taken between its choice and the bind.
var errPortTaken = errors.New("address taken")

// startNode runs `switchboard serve` as a subprocess on free ports, on
// other ones if one was taken meanwhile (each rarely is, so the fifth
// attempt is the last).
func startNode(t testing.TB, args ...string) *node {
	t.Helper()
	for attempt := 1; ; attempt++ {
		n, err := tryStartNode(t, freePort(t), args...)
		if err == nil {
			return n
		}
		if !errors.Is(err, errPortTaken) || attempt == 5 {
			t.Fatal(err)
		}
		t.Logf("%v; trying other ports", err)
	}
}

// tryStartNode runs `switchboard serve --listen addr`, configured through
// the environment for the admin address to prove SWITCHBOARD_* works, and
// waits until it is healthy or has exited.
func tryStartNode(t testing.TB, addr string, args ...string) (*node, error) {
	t.Helper()
	return tryStartNodeAt(t, addr, freePort(t), args...)
}

// tryStartNodeAt is tryStartNode on a given admin address too (a node
// restarted where a load balancer checks it).
func tryStartNodeAt(t testing.TB, addr, admin string, args ...string) (*node, error) {
	t.Helper()
	n := &node{addr: addr, admin: admin, stderr: new(syncBuffer), exited: make(chan error, 1)}
	n.cmd = exec.Command(switchboardBin, append([]string{"serve", "--listen", n.addr}, args...)...)
	n.cmd.Env = append(os.Environ(), "SWITCHBOARD_ADMIN_LISTEN="+n.admin, "SWITCHBOARD_LOG_LEVEL=warn")
	n.cmd.Stderr = n.stderr
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.exited <- n.cmd.Wait() }()
	t.Cleanup(func() {
		_ = n.cmd.Process.Kill()
		<-n.exited
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get("http://" + n.admin + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return n, nil
			}
		}
		select {
		case exit := <-n.exited:
			n.exited <- exit // for the cleanup
			// Wait has returned: stderr is complete and no longer written.
			if strings.Contains(n.stderr.String(), "address already in use") {
				return nil, fmt.Errorf("%w: node exited at start: %s", errPortTaken, n.stderr)
			}
			return nil, fmt.Errorf("node exited at start: %v\n%s", exit, n.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("node never became healthy: %v\n%s", err, n.stderr)
		}
	}
}

// sample is one line of a node's /metrics: the series (name and labels,
// as exposed) and its value.
type sample struct {
	series string
	value  float64
}

// scrape reads every sample of the node's /metrics, in the exposition's
// order.
func (n *node) scrape(t testing.TB) []sample {
	t.Helper()
	resp, err := http.Get("http://" + n.admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out []sample
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if i <= 0 || err != nil {
			t.Fatalf("/metrics line %q: %v", line, err)
		}
		out = append(out, sample{line[:i], v})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// metric reads one sample from the node's /metrics: name is the series as
// exposed, with its labels if it has any.
func (n *node) metric(t testing.TB, name string) float64 {
	t.Helper()
	for _, s := range n.scrape(t) {
		if s.series == name {
			return s.value
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

// rawClient is a minimal WebSocket client on a plain socket: the test holds
// thousands of them without a goroutine each.
type rawClient struct {
	conn net.Conn
	buf  []byte
}

func rawDial(addr, query string) (*rawClient, error) {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	req := "GET /v1/realtime?" + query + " HTTP/1.1\r\nHost: " + addr +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
	if _, err := io.WriteString(conn, req); err != nil {
		conn.Close()
		return nil, err
	}
	c := &rawClient{conn: conn}
	if err := c.readUntil([]byte(`"type":"connected"`)); err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// readUntil reads until want has arrived, keeping what follows it.
func (c *rawClient) readUntil(want []byte) error {
	_ = c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		if i := bytes.Index(c.buf, want); i >= 0 {
			c.buf = c.buf[i+len(want):]
			return nil
		}
		var b [4096]byte
		n, err := c.conn.Read(b[:])
		if err != nil {
			return fmt.Errorf("waiting for %q: %w (have %q)", want, err, c.buf)
		}
		c.buf = append(c.buf, b[:n]...)
	}
}

func TestServeHolds10000ConnectionsWithoutGoroutinePerConnection(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 10,000 sockets")
	}
	n := startNode(t, "--connects-per-ip", "-1", "--messages-per-minute", "-1")
	const conns = 10000
	before := n.metric(t, "go_goroutines")
	rssBefore := n.metric(t, "process_resident_memory_bytes")
	clients := make([]*rawClient, 0, conns)
	defer func() {
		for _, c := range clients {
			c.conn.Close()
		}
	}()
	start := time.Now()
	for i := 0; i < conns; i++ {
		c, err := rawDial(n.addr, "project=p1&channels[]=files")
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		clients = append(clients, c)
	}
	connectTime := time.Since(start)
	if got := n.metric(t, "switchboard_connections"); got != conns {
		t.Fatalf("switchboard_connections = %v, want %d", got, conns)
	}
	after := n.metric(t, "go_goroutines")
	rssAfter := n.metric(t, "process_resident_memory_bytes")
	t.Logf("goroutines before=%v after=%v with %d connections; RSS %+.0f bytes/conn; connected in %v",
		before, after, conns, (rssAfter-rssBefore)/conns, connectTime)
	if after-before > 32 {
		t.Fatalf("goroutines grew from %v to %v with %d idle connections", before, after, conns)
	}

	// One broadcast reaches every one of them.
	resp, err := http.Post("http://"+n.admin+"/v1/publish", "application/json",
		strings.NewReader(`{"project":"p1","roles":["any"],"data":{"events":["e"],"channels":["files"],"timestamp":"t","payload":{"k":"broadcast"}}}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for i, c := range clients {
		if err := c.readUntil([]byte(`{"k":"broadcast"}`)); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}

	// SIGTERM: every client is told 1001 and the process exits 0.
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// FIN+close opcode, payload length, status 1001 (0x03e9), then the reason.
	goingAway := append([]byte{0x88, byte(2 + len("server shutting down")), 0x03, 0xe9}, "server shutting down"...)
	for i, c := range clients {
		if err := c.readUntil(goingAway); err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
	}
	select {
	case err := <-n.exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, n.stderr)
		}
		n.exited <- nil
	case <-time.After(15 * time.Second):
		t.Fatal("node did not exit after SIGTERM")
	}
}

func TestServeFlagsAndEnvironment(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"serve", "--help"}, func(string) string { return "" }, &out, &out); code != 0 {
		t.Fatalf("serve --help exit %d", code)
	}
	for _, want := range []string{"--listen", "SWITCHBOARD_LISTEN", ":9505", "--admin-listen", "127.0.0.1:9506", "SWITCHBOARD_MAX_MESSAGE_SIZE",
		"--idle-timeout", "SWITCHBOARD_IDLE_TIMEOUT", "--tcp-keepalive", "SWITCHBOARD_TCP_KEEPALIVE", "2m0s"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("serve --help lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	env := func(k string) string {
		if k == "SWITCHBOARD_MAX_MESSAGE_SIZE" {
			return "not-a-number"
		}
		return ""
	}
	if code := run([]string{"serve"}, env, &out, &out); code != 2 || !strings.Contains(out.String(), "SWITCHBOARD_MAX_MESSAGE_SIZE") {
		t.Fatalf("bad env value: exit %d, %s", code, out.String())
	}
	if code := run([]string{"bogus"}, env, &out, &out); code != 2 {
		t.Fatalf("unknown command exit %d", code)
	}
}

func TestPublishCommandReachesClient(t *testing.T) {
	n := startNode(t, "--api-key", "k1")
	c, err := rawDial(n.addr, "project=p1&channels[]=files")
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	payload := filepath.Join(t.TempDir(), "payload.json")
	if err := os.WriteFile(payload, []byte(`{"$id":"from-file"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	args := []string{"publish", "--admin", "http://" + n.admin, "--project", "p1", "--channels", "files", "--events", "files.create", "--payload", "@" + payload}
	if code := run(args, func(k string) string {
		if k == "SWITCHBOARD_API_KEY" {
			return "k1"
		}
		return ""
	}, &out, &errOut); code != 0 {
		t.Fatalf("publish exit %d: %s", code, errOut.String())
	}
	if !strings.Contains(out.String(), `"payload":{"$id":"from-file"}`) {
		t.Fatalf("publish printed %s", out.String())
	}
	if err := c.readUntil([]byte(`"payload":{"$id":"from-file"}`)); err != nil {
		t.Fatal(err)
	}
	// Without the key the node refuses, and the command says so.
	errOut.Reset()
	if code := run(args, func(string) string { return "" }, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "401") {
		t.Fatalf("publish without key: exit %d, %s", code, errOut.String())
	}
}

// A message far larger than the per-connection read buffer still arrives
// whole: netpoll grows the buffer while it comes in.
func TestLargeMessageThroughSmallReadBuffer(t *testing.T) {
	n := startNode(t, "--read-buffer", "256")
	c, err := rawDial(n.addr, "project=p1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	payload := []byte(`{"type":"ping","pad":"` + strings.Repeat("x", 60<<10) + `"}`)
	frame := []byte{0x81, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4} // text, masked, 64-bit length
	binary.BigEndian.PutUint64(frame[2:10], uint64(len(payload)))
	mask := [4]byte{1, 2, 3, 4}
	for i := range payload {
		payload[i] ^= mask[i%4]
	}
	// Send it in pieces, as a slow network would.
	msg := append(frame, payload...)
	for len(msg) > 0 {
		k := min(len(msg), 7000)
		if _, err := c.conn.Write(msg[:k]); err != nil {
			t.Fatal(err)
		}
		msg = msg[k:]
		time.Sleep(time.Millisecond)
	}
	if err := c.readUntil([]byte(`{"type":"pong"}`)); err != nil {
		t.Fatal(err)
	}
}

func TestNodesShareRedisAndPublishGoesStraightToRedis(t *testing.T) {
	rs := redistest.Start(t)
	a := startNode(t, "--redis-url", rs.URL())
	b := startNode(t, "--redis-url", rs.URL())
	for _, n := range []*node{a, b} {
		redistest.Eventually(t, 10*time.Second, "node ready", func() bool {
			resp, err := http.Get("http://" + n.admin + "/readyz")
			if err != nil {
				return false
			}
			resp.Body.Close()
			return resp.StatusCode == 200
		})
	}
	ca, err := rawDial(a.addr, "project=p1&channels[]=files")
	if err != nil {
		t.Fatal(err)
	}
	defer ca.conn.Close()
	cb, err := rawDial(b.addr, "project=p1&channels[]=files")
	if err != nil {
		t.Fatal(err)
	}
	defer cb.conn.Close()
	var out, errOut bytes.Buffer
	args := []string{"publish", "--redis-url", rs.URL(), "--project", "p1", "--channels", "files", "--payload", `{"via":"redis"}`}
	if code := run(args, func(string) string { return "" }, &out, &errOut); code != 0 {
		t.Fatalf("publish --redis-url: exit %d: %s", code, errOut.String())
	}
	for _, c := range []*rawClient{ca, cb} {
		if err := c.readUntil([]byte(`"payload":{"via":"redis"}`)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestReusePortSharesTheListenAddress runs two nodes on one address with
// --reuse-port: the kernel spreads connections over both, and an event
// published through Redis reaches clients of both.
func TestReusePortSharesTheListenAddress(t *testing.T) {
	rs := redistest.Start(t)
	var a, b *node
	for attempt := 1; a == nil; attempt++ {
		var err error
		a, err = tryStartNode(t, freePort(t), "--redis-url", rs.URL(), "--reuse-port")
		if err != nil && (!errors.Is(err, errPortTaken) || attempt == 5) {
			t.Fatal(err)
		}
	}
	addr := a.addr
	// b may still find its admin port taken: try it on others.
	for attempt := 1; b == nil; attempt++ {
		var err error
		b, err = tryStartNode(t, addr, "--redis-url", rs.URL(), "--reuse-port")
		if err != nil && (!errors.Is(err, errPortTaken) || attempt == 5) {
			t.Fatal(err)
		}
	}
	waitReady(t, a, b)
	var conns []*wsConn
	for range 64 {
		c := wsConnected(t, addr)
		conns = append(conns, c)
	}
	na, nb := a.metric(t, "switchboard_connections"), b.metric(t, "switchboard_connections")
	if na == 0 || nb == 0 || na+nb != 64 {
		t.Fatalf("connections spread %v + %v, want both nodes used and 64 in all", na, nb)
	}
	if !publishSeq(a, 7) {
		t.Fatal("publish refused")
	}
	for _, c := range conns {
		typ, data, _, err := c.next(5 * time.Second)
		if err != nil || typ != "event" {
			t.Fatalf("%s %v", typ, err)
		}
		if seq, _ := eventSeq(data); seq != 7 {
			t.Fatalf("seq %d", seq)
		}
	}
	t.Logf("64 connections spread %v / %v over two processes on %s", na, nb, addr)
}

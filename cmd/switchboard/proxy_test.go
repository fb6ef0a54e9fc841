package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// Two nodes behind a real HAProxy (PROXY protocol v2) and a real nginx
// (X-Forwarded-For), each run by the test from the configuration shipped
// in deploy/ with only addresses and paths replaced, and clients from
// several loopback source addresses (127.0.0.2, 127.0.0.3, ...; Linux
// routes all of 127/8 to lo).

// needBinary finds a tool the test runs (a proxy, promtool), or skips the
// test: CI installs them (.ci/run) and fails without them.
func needBinary(t *testing.T, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := "/usr/sbin/" + name; fileExists(p) { // not on a non-root PATH
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is required in CI (.ci/run installs it)", name)
	}
	t.Skipf("%s is not installed (.ci/run names its package); this test needs it", name)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// syncBuffer is a process's output that the test reads while it runs.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// loggedNode is a node whose JSON log, at debug level, the test reads
// while it runs.
type loggedNode struct {
	*node
	log *syncBuffer
}

func startLoggedNode(t *testing.T, args ...string) *loggedNode {
	t.Helper()
	n := startNode(t, append([]string{"--log-level", "debug", "--log-format", "json"}, args...)...)
	return &loggedNode{node: n, log: n.stderr}
}

// logged returns the "client" field of the node's log lines with message
// msg, in order.
func (n *loggedNode) logged(t *testing.T, msg string) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(strings.NewReader(n.log.String()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line struct {
			Msg    string `json:"msg"`
			Client string `json:"client"`
			Peer   string `json:"peer"`
		}
		if json.Unmarshal(sc.Bytes(), &line) != nil || line.Msg != msg {
			continue
		}
		out = append(out, line.Client)
	}
	return out
}

// runProxy starts a proxy in its own process group, so that the test can
// stop it and every process it forked, and stops it when the test ends.
func runProxy(t *testing.T, out *syncBuffer, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// SIGTERM first: nginx's master then stops its workers itself.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
}

// wsDialFrom opens a WebSocket to addr from the local IP, sending header.
func wsDialFrom(addr, local string, header http.Header) (*wsConn, error) {
	d := ws.Dialer{Timeout: 5 * time.Second, NetDial: func(ctx context.Context, network, a string) (net.Conn, error) {
		nd := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(local)}}
		return nd.DialContext(ctx, network, a)
	}}
	if header != nil {
		d.Header = ws.HandshakeHeaderHTTP(header)
	}
	conn, br, _, err := d.Dial(context.Background(), "ws://"+addr+"/v1/realtime?project=p1&channels[]=files")
	if err != nil {
		return nil, err
	}
	var r io.Reader = conn
	if br != nil {
		r = io.MultiReader(br, conn)
	}
	return &wsConn{conn: conn, r: r}, nil
}

// connectOutcome is how a connect through a proxy ended.
type connectOutcome int

const (
	connected connectOutcome = iota
	limited                  // error 1013, then close 1013
	failed                   // anything else
)

// tryConnect connects from local and says how it ended; a connection that
// got `connected` stays open until the test ends.
func tryConnect(t *testing.T, addr, local string, header http.Header) (connectOutcome, string) {
	t.Helper()
	c, err := wsDialFrom(addr, local, header)
	if err != nil {
		return failed, err.Error()
	}
	t.Cleanup(func() { c.conn.Close() })
	typ, data, _, err := c.next(5 * time.Second)
	switch {
	case err != nil:
		return failed, err.Error()
	case typ == "connected":
		return connected, ""
	case typ == "error" && strings.Contains(string(data), `"code":1013`):
		if typ, _, code, err := c.next(5 * time.Second); err != nil || typ != "close" || code != 1013 {
			return failed, fmt.Sprintf("error 1013 then %s %d %v, want close 1013", typ, code, err)
		}
		return limited, ""
	}
	return failed, fmt.Sprintf("%s %s", typ, data)
}

func mustConnectThrough(t *testing.T, addr, local string, header http.Header) {
	t.Helper()
	if got, why := tryConnect(t, addr, local, header); got != connected {
		t.Fatalf("client %s through %s: %d %s, want connected", local, addr, got, why)
	}
}

// forgedHeaders are what a client sends to pass for someone else.
func forgedHeaders(string) http.Header {
	return http.Header{"X-Forwarded-For": {"203.0.113.9"}, "X-Real-Ip": {"203.0.113.9"}}
}

const proxyLimit = 3 // --connects-per-ip on the nodes behind a proxy

// checkPerClientLimit connects clients 127.0.0.2-5 through the proxy at
// front, proxyLimit times each, with extra headers (nil for none). It
// proves the nodes count each client, not the proxy: the proxy makes
// 4 x proxyLimit connects from one address to two nodes, so at least one
// node sees twice its limit from it; and that a client beyond its own
// limit, and only it, gets 1013: with 2 x proxyLimit + 1 connects over two
// nodes, one node sees it once too often, whatever the balancing.
func checkPerClientLimit(t *testing.T, front string, header func(local string) http.Header, nodes ...*loggedNode) {
	t.Helper()
	for i := 0; i < proxyLimit; i++ {
		for c := 2; c <= 5; c++ {
			local := fmt.Sprintf("127.0.0.%d", c)
			mustConnectThrough(t, front, local, header(local))
		}
	}
	got := map[connectOutcome]int{}
	for i := 0; i < proxyLimit+1; i++ {
		o, why := tryConnect(t, front, "127.0.0.2", header("127.0.0.2"))
		if o == failed {
			t.Fatalf("127.0.0.2 beyond its limit: %s", why)
		}
		got[o]++
	}
	if got[limited] == 0 {
		t.Fatalf("127.0.0.2 made %d connects over two nodes with a limit of %d each and was never refused (%v)", 2*proxyLimit+1, proxyLimit, got)
	}
	// Others still connect.
	mustConnectThrough(t, front, "127.0.0.6", header("127.0.0.6"))
	mustConnectThrough(t, front, "127.0.0.7", header("127.0.0.7"))

	// The nodes logged the clients, never the proxy, and both took some.
	// A node writes a connection's line before its `connected`, but the
	// line reaches the test through a pipe: wait for the lines expected.
	want2 := proxyLimit + proxyLimit + 1 - got[limited] // 127.0.0.2's connections
	var problem string
	deadline := time.Now().Add(10 * time.Second)
	for {
		problem = ""
		seen := map[string]int{}
		var limitedFor []string
		for i, n := range nodes {
			opened := n.logged(t, "connection opened")
			if len(opened) == 0 {
				problem = fmt.Sprintf("node %d took no connection", i+1)
			}
			for _, a := range opened {
				seen[a]++
			}
			limitedFor = append(limitedFor, n.logged(t, "connect limit reached")...)
		}
		for c := 2; c <= 7; c++ {
			if a := fmt.Sprintf("127.0.0.%d", c); seen[a] == 0 {
				problem = fmt.Sprintf("no node logged a connection from %s (logged %v)", a, seen)
			}
		}
		if seen["127.0.0.2"] != want2 {
			problem = fmt.Sprintf("%d connections logged from 127.0.0.2, want %d", seen["127.0.0.2"], want2)
		}
		if strings.Join(limitedFor, " ") != strings.TrimSpace(strings.Repeat("127.0.0.2 ", got[limited])) {
			problem = fmt.Sprintf("limit logged for %v, want 127.0.0.2 %d times", limitedFor, got[limited])
		}
		if seen["127.0.0.1"] > 0 {
			t.Fatalf("a node counted the proxy as a client: %v", seen)
		}
		if problem == "" || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if problem != "" {
		t.Fatal(problem)
	}
	for i, n := range nodes {
		if strings.Contains(n.log.String(), "203.0.113.9") {
			t.Errorf("node %d took a client's forged address", i+1)
		}
	}
}

// checkLateClientsOnNode2 connects late clients, from addresses used for
// nothing else, through front once node 1 is out, and checks that node 2
// took them all: once node 2 has logged them all, node 1 had none.
func checkLateClientsOnNode2(t *testing.T, front string, n1, n2 *loggedNode) {
	t.Helper()
	const late = 10
	for i := 0; i < late; i++ {
		mustConnectThrough(t, front, fmt.Sprintf("127.0.1.%d", i+1), nil)
	}
	count := func(n *loggedNode) int {
		k := 0
		for _, a := range n.logged(t, "connection opened") {
			if strings.HasPrefix(a, "127.0.1.") {
				k++
			}
		}
		return k
	}
	redistest.Eventually(t, 10*time.Second, fmt.Sprintf("a node logging the %d clients that came after node 1 stopped", late), func() bool {
		return count(n1)+count(n2) >= late
	})
	if got1, got2 := count(n1), count(n2); got1 != 0 || got2 != late {
		t.Fatalf("after node 1 stopped: %d new clients on node 1, %d on node 2; want 0 and %d", got1, got2, late)
	}
}

// renderConfig reads a deploy/ file and applies the replacements, failing
// if one of them is not there (the shipped file changed under the test).
func renderConfig(t *testing.T, name string, repl ...string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", name))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i < len(repl); i += 2 {
		if !strings.Contains(s, repl[i]) {
			t.Fatalf("deploy/%s has no %q", name, repl[i])
		}
		s = strings.Replace(s, repl[i], repl[i+1], 1)
	}
	return s
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

func TestThroughHAProxy(t *testing.T) {
	haproxy := needBinary(t, "haproxy")
	args := []string{"--proxy-protocol", "--trusted-proxies", "127.0.0.1", "--connects-per-ip", fmt.Sprint(proxyLimit),
		// A stopped node drains for long enough that only the health
		// check can keep new clients off it (see below).
		"--drain-time", "60s", "--shutdown-timeout", "120s"}
	n1, n2 := startLoggedNode(t, args...), startLoggedNode(t, args...)
	front := freePort(t)
	cfg := renderConfig(t, "haproxy.cfg",
		"bind :80", "bind "+front,
		"server node1 10.0.0.11:9505 send-proxy-v2 check port 9506", "server node1 "+n1.addr+" send-proxy-v2 check port "+port(n1.admin),
		"server node2 10.0.0.12:9505 send-proxy-v2 check port 9506", "server node2 "+n2.addr+" send-proxy-v2 check port "+port(n2.admin))
	path := filepath.Join(t.TempDir(), "haproxy.cfg")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	out := new(syncBuffer)
	runProxy(t, out, haproxy, "-db", "-f", path)
	redistest.Eventually(t, 10*time.Second, "HAProxy forwarding", func() bool {
		o, _ := tryConnect(t, front, "127.0.0.20", nil)
		return o == connected
	})

	// Every client also claims another address in X-Forwarded-For, which
	// HAProxy passes on untouched in TCP mode; the nodes do not trust the
	// clients, so it changes nothing.
	checkPerClientLimit(t, front, forgedHeaders, n1, n2)
	t.Logf("per-client limit through HAProxy: node 1 took %d, node 2 %d", len(n1.logged(t, "connection opened")), len(n2.logged(t, "connection opened")))

	// A forged PROXY header from a client reaches the node after
	// HAProxy's own, as data: it is not HTTP, and the upgrade is refused.
	forged := "PROXY TCP4 203.0.113.9 127.0.0.1 1 2\r\n"
	conn, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.8")}}).Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := io.WriteString(conn, forged+"GET /v1/realtime?project=p1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if resp, _ := io.ReadAll(conn); !bytes.HasPrefix(resp, []byte("HTTP/1.1 400 ")) {
		t.Fatalf("forged PROXY header behind HAProxy's: %q, want HTTP 400", resp)
	}

	// Stop node 1. It drains: /readyz answers 503 and so do upgrades, but
	// it still accepts TCP, so only the /readyz check can take it out.
	if err := n1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 15*time.Second, "HAProxy's check takes node 1 out", func() bool {
		return strings.Contains(out.String(), "node1 is DOWN")
	})
	if s := out.String(); !strings.Contains(s, "Layer7 wrong status, code: 503") {
		t.Fatalf("node 1 went down for another reason than /readyz's 503:\n%s", s)
	}
	t.Logf("HAProxy:\n%s", out.String())
	checkLateClientsOnNode2(t, front, n1, n2)
}

// nginxTempPaths are the http-block directives that put what the Debian
// build keeps under /var (logs, temporary files) in the test's dir.
func nginxTempPaths(dir string) string {
	return "    access_log " + filepath.Join(dir, "access.log") + ";\n" +
		"    client_body_temp_path " + filepath.Join(dir, "body") + ";\n    proxy_temp_path " + filepath.Join(dir, "proxy") + ";\n" +
		"    fastcgi_temp_path " + filepath.Join(dir, "fastcgi") + ";\n    uwsgi_temp_path " + filepath.Join(dir, "uwsgi") + ";\n" +
		"    scgi_temp_path " + filepath.Join(dir, "scgi") + ";\n"
}

// runNginx writes cfg to dir/nginx.conf and runs nginx (bin) on it, in the
// foreground, until the test ends; its error log is returned.
func runNginx(t *testing.T, bin, dir, cfg string) *syncBuffer {
	t.Helper()
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	global := "daemon off; pid " + filepath.Join(dir, "nginx.pid") + ";"
	if os.Geteuid() == 0 {
		global += " user root;" // the workers must reach the test's 0700 directory
	}
	out := new(syncBuffer)
	runProxy(t, out, bin, "-e", "stderr", "-p", dir, "-c", path, "-g", global)
	return out
}

func TestThroughNginx(t *testing.T) {
	nginx := needBinary(t, "nginx")
	args := []string{"--trusted-proxies", "127.0.0.1", "--connects-per-ip", fmt.Sprint(proxyLimit), "--drain-time", "60s", "--shutdown-timeout", "120s"}
	n1, n2 := startLoggedNode(t, args...), startLoggedNode(t, args...)
	front := freePort(t)
	dir := t.TempDir()
	cfg := renderConfig(t, "nginx.conf",
		"listen 80;", "listen "+front+";",
		"server 10.0.0.11:9505", "server "+n1.addr,
		"server 10.0.0.12:9505", "server "+n2.addr,
		"http {", "http {\n"+nginxTempPaths(dir),
		// Two workers are plenty here, and cost less memory than auto.
		"worker_processes auto;", "worker_processes 2;")
	runNginx(t, nginx, dir, cfg)
	redistest.Eventually(t, 10*time.Second, "nginx forwarding", func() bool {
		o, _ := tryConnect(t, front, "127.0.0.20", nil)
		return o == connected
	})

	// Every client claims to be someone else; nginx appends the address
	// it really came from (and overwrites X-Real-IP), and the node takes
	// that one.
	checkPerClientLimit(t, front, forgedHeaders, n1, n2)
	t.Logf("per-client limit through nginx: node 1 took %d, node 2 %d", len(n1.logged(t, "connection opened")), len(n2.logged(t, "connection opened")))

	// Stop node 1: it drains and answers upgrades with 503, which nginx
	// retries on node 2 (proxy_next_upstream); nginx has no active check.
	if err := n1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	redistest.Eventually(t, 10*time.Second, "node 1 draining", func() bool { return readyz(n1.node) == http.StatusServiceUnavailable })
	checkLateClientsOnNode2(t, front, n1, n2)
}

func TestProxyFlags(t *testing.T) {
	var out bytes.Buffer
	if code := run([]string{"serve", "--help"}, func(string) string { return "" }, &out, &out); code != 0 {
		t.Fatalf("serve --help exit %d", code)
	}
	for _, want := range []string{"--proxy-protocol", "SWITCHBOARD_PROXY_PROTOCOL", "--trusted-proxies", "SWITCHBOARD_TRUSTED_PROXIES",
		"--connects-ipv6-prefix", "SWITCHBOARD_CONNECTS_IPV6_PREFIX", "(default 64;"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("serve --help lacks %q", want)
		}
	}
	got, err := parsePrefixes([]string{"10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"})
	if err != nil || fmt.Sprint(got) != "[10.0.0.0/8 192.0.2.7/32 2001:db8::/32 ::1/128]" {
		t.Fatalf("parsePrefixes = %v, %v", got, err)
	}
	for _, bad := range []string{"SWITCHBOARD_TRUSTED_PROXIES=10.0.0.0/33", "SWITCHBOARD_TRUSTED_PROXIES=example.com", "SWITCHBOARD_CONNECTS_IPV6_PREFIX=129"} {
		k, v, _ := strings.Cut(bad, "=")
		out.Reset()
		env := func(name string) string {
			if name == k {
				return v
			}
			return ""
		}
		if code := run([]string{"serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"}, env, &out, &out); code != 2 {
			t.Errorf("%s: exit %d, want 2 (%s)", bad, code, out.String())
		}
	}
}

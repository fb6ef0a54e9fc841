// Package redistest runs real redis-server processes for tests: on free
// loopback ports, without persistence, stopped when the test ends.
package redistest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Binary finds a Redis executable. Outside CI a missing binary skips
// the test; in CI (CI=true) it fails it, so the Redis tests can never
// silently stop running there.
func Binary(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := filepath.Join("/usr/bin", name); isExecutable(p) {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not found in PATH or /usr/bin, and CI=true: the Redis tests must run in CI (apt-get install redis-server)", name)
	}
	t.Skipf("%s not found in PATH or /usr/bin: skipping this Redis test (install redis-server to run it; in CI it is required)", name)
	return ""
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && !st.IsDir() && st.Mode()&0o111 != 0
}

// FreePorts returns n distinct free loopback ports. The listeners stay open
// until all are chosen, so the kernel cannot hand out one port twice.
//
// A port is only free when chosen: the kernel picks it from the ephemeral
// range, so until a process binds it, any connect on the host (this test's
// own included) may take it as its source port. Start and
// (*Server).Start retry when that happened.
func FreePorts(t testing.TB, n int) []int {
	t.Helper()
	ports := make([]int, n)
	lns := make([]net.Listener, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("reserve a loopback port: %v", err)
		}
		lns[i] = ln
		ports[i] = ln.Addr().(*net.TCPAddr).Port
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// RefusedAddr returns a loopback address where every connect is refused
// for the rest of the test. A socket bound to the port without listening
// holds it: no other bind can take it, nor can a connect use it as its
// source port, which a port merely chosen free and closed does not ensure.
func RefusedAddr(t testing.TB) string {
	t.Helper()
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("socket: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if err := syscall.Bind(fd, &syscall.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatalf("bind a loopback port: %v", err)
	}
	sa, err := syscall.Getsockname(fd)
	if err != nil {
		t.Fatalf("getsockname: %v", err)
	}
	return "127.0.0.1:" + strconv.Itoa(sa.(*syscall.SockaddrInet4).Port)
}

// Server is one redis-server process on a fixed loopback port; it can
// be killed and started again on the same port.
type Server struct {
	t     testing.TB
	bin   string
	Port  int
	dir   string
	extra []string
	cmd   *exec.Cmd
	// exited receives cmd.Wait's result once the process ends.
	exited chan error
	logf   string
}

// New prepares (without starting) a server on port.
func New(t testing.TB, port int, extra ...string) *Server {
	t.Helper()
	s := &Server{
		t:     t,
		bin:   Binary(t, "redis-server"),
		Port:  port,
		dir:   t.TempDir(),
		extra: extra,
	}
	s.logf = filepath.Join(s.dir, "redis.log")
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			if b, err := os.ReadFile(s.logf); err == nil {
				t.Logf("redis-server :%d log:\n%s", s.Port, b)
			}
		}
	})
	return s
}

// portAttempts is how many free ports Start tries: each is taken between
// its choice and the bind only rarely, so five in a row means something else
// is wrong.
const portAttempts = 5

// Start starts a server on a free port, on another one if the port was
// taken meanwhile.
func Start(t testing.TB, extra ...string) *Server {
	t.Helper()
	for attempt := 1; ; attempt++ {
		s := New(t, FreePorts(t, 1)[0], extra...)
		err := s.launch()
		if err == nil {
			return s
		}
		if !errors.Is(err, errPortTaken) || attempt == portAttempts {
			t.Fatal(err)
		}
		t.Logf("%v; trying another port", err)
	}
}

// Addr is the server's loopback address.
func (s *Server) Addr() string { return "127.0.0.1:" + strconv.Itoa(s.Port) }

// URL is the server's redis:// URL.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// errPortTaken reports that redis-server could not bind its port.
var errPortTaken = errors.New("port taken")

// Start launches the process and waits until it answers on its port. A
// port freed by Kill (or chosen by FreePorts) may have been taken meanwhile
// as the source port of a connection, which ends soon (the clients of this
// very server retry theirs): Start retries on the same port for up to 10 s.
func (s *Server) Start() {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := s.launch()
		if err == nil {
			return
		}
		if !errors.Is(err, errPortTaken) || time.Now().After(deadline) {
			s.t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // retry pace, not a wait for anything
	}
}

// launch starts the process and waits until it answers on its port. It
// returns errPortTaken (wrapped) when the process exited because the port
// was in use.
func (s *Server) launch() error {
	if s.cmd != nil {
		return fmt.Errorf("redis-server :%d already running", s.Port)
	}
	args := append([]string{
		"--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", s.dir,
	}, s.extra...)
	logf, err := os.OpenFile(s.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open redis log: %w", err)
	}
	defer logf.Close()
	logStart, _ := logf.Seek(0, io.SeekEnd) // the log of earlier runs stays
	cmd := exec.Command(s.bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start redis-server on :%d: %w", s.Port, err)
	}
	s.cmd = cmd
	s.exited = make(chan error, 1)
	go func() { s.exited <- cmd.Wait() }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if answers(s.Addr()) {
			return nil
		}
		select {
		case err := <-s.exited:
			b, _ := os.ReadFile(s.logf)
			b = b[min(int(logStart), len(b)):]
			s.cmd = nil
			if strings.Contains(string(b), "Address already in use") {
				return fmt.Errorf("%w: redis-server on :%d: %v", errPortTaken, s.Port, err)
			}
			return fmt.Errorf("redis-server on :%d exited at start: %v\n%s", s.Port, err, b)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on :%d did not answer within 10 s", s.Port)
		}
	}
}

// answers tells whether something speaking RESP replies to PING at addr
// (an authentication error is an answer too).
func answers(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(500 * time.Millisecond))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return err == nil && (strings.HasPrefix(line, "+") || strings.HasPrefix(line, "-"))
}

// Kill ends the server with SIGKILL, as a crash would: no goodbye to the
// clients beyond the kernel's resets.
func (s *Server) Kill() {
	s.t.Helper()
	if s.cmd == nil {
		s.t.Fatalf("redis-server :%d is not running", s.Port)
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.exited
	s.cmd = nil
}

// Pause stops the server's process (SIGSTOP), as a host that froze would:
// its sockets stay open and nothing answers. Resume continues it; Stop
// does too, so a paused server never outlives its test.
func (s *Server) Pause() {
	s.t.Helper()
	if s.cmd == nil {
		s.t.Fatalf("redis-server :%d is not running", s.Port)
	}
	_ = s.cmd.Process.Signal(syscall.SIGSTOP)
}

// Resume continues a paused server.
func (s *Server) Resume() {
	if s.cmd != nil {
		_ = s.cmd.Process.Signal(syscall.SIGCONT)
	}
}

// Stop ends the server if it runs.
func (s *Server) Stop() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Process.Signal(syscall.SIGCONT) // a paused process dies only once continued
	<-s.exited
	s.cmd = nil
}

// Eventually polls cond every 10 ms until it holds or the timeout passes.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting until %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Cluster is a three-master Redis Cluster on loopback ports.
type Cluster struct {
	Nodes []*Server
}

// URL is a go-redis cluster URL naming every node.
func (c *Cluster) URL() string {
	u := c.Nodes[0].URL()
	for i, n := range c.Nodes[1:] {
		if i == 0 {
			u += "?addr=" + n.Addr()
		} else {
			u += "&addr=" + n.Addr()
		}
	}
	return u
}

// StartCluster starts three cluster-enabled servers (each with its own bus
// port, so no port+10000 arithmetic can collide), joins them with
// redis-cli --cluster create, and waits for cluster_state:ok on all.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	cli := Binary(t, "redis-cli")
	dir := t.TempDir()
	c := &Cluster{}
	var addrs []string
	for range 3 {
		for attempt := 1; ; attempt++ {
			ports := FreePorts(t, 2)
			port, bus := ports[0], ports[1]
			s := New(t, port,
				"--cluster-enabled", "yes",
				"--cluster-port", strconv.Itoa(bus),
				"--cluster-config-file", filepath.Join(dir, fmt.Sprintf("nodes-%d.conf", port)),
				"--cluster-node-timeout", "5000")
			err := s.launch()
			if err == nil {
				c.Nodes = append(c.Nodes, s)
				addrs = append(addrs, s.Addr())
				break
			}
			if !errors.Is(err, errPortTaken) || attempt == portAttempts {
				t.Fatal(err)
			}
			t.Logf("%v; trying other ports", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	args := append([]string{"--cluster", "create"}, addrs...)
	args = append(args, "--cluster-replicas", "0", "--cluster-yes")
	if out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput(); err != nil {
		t.Fatalf("redis-cli --cluster create: %v\n%s", err, out)
	}
	for _, addr := range addrs {
		cl := redis.NewClient(&redis.Options{Addr: addr})
		Eventually(t, 20*time.Second, addr+" reports cluster_state:ok", func() bool {
			info, err := cl.ClusterInfo(ctx).Result()
			return err == nil && strings.Contains(info, "cluster_state:ok")
		})
		cl.Close()
	}
	return c
}

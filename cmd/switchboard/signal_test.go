package main

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// TestServeDrainsWhenSignalledDuringStart sends SIGTERM to `switchboard
// serve` right after starting it, 200 times, at moments spread over its
// start-up (about 6 ms on an idle 2-core box, longer on a busy one): 0 to
// 18 ms after exec, denser early. A node that has begun (it logged
// "starting") must drain and exit 0; only a process signalled before serve
// ran at all may die of the signal, and with nothing to tell anyone. Every
// one must be gone within --shutdown-timeout plus a second of the signal.
func TestServeDrainsWhenSignalledDuringStart(t *testing.T) {
	const (
		runs            = 200
		shutdownTimeout = 2 * time.Second
	)
	var (
		exits          []time.Duration
		drained, early int
	)
	for i := range runs {
		delay := time.Duration((i%20)*(i%20)) * 50 * time.Microsecond // 0 to 18 ms, denser early
		stderr := new(syncBuffer)
		cmd := exec.Command(switchboardBin, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
			"--log-format", "json", "--shutdown-timeout", shutdownTimeout.String())
		cmd.Stderr = stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		time.Sleep(delay)
		signalled := time.Now()
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatalf("run %d: %v", i, err)
		}
		var err error
		select {
		case err = <-exited:
		case <-time.After(shutdownTimeout + 5*time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Fatalf("run %d: SIGTERM %v after start: still running %v later\n%s", i, delay, shutdownTimeout+5*time.Second, stderr)
		}
		took := time.Since(signalled)
		exits = append(exits, took)
		log := stderr.String()
		var ee *exec.ExitError
		switch {
		case err == nil:
			drained++
			if !strings.Contains(log, `"msg":"stopped"`) {
				t.Errorf("run %d: exit 0 without the stop logged:\n%s", i, log)
			}
		case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGTERM:
			early++
			if strings.Contains(log, `"msg":"starting"`) {
				t.Errorf("run %d: SIGTERM %v after start killed a node that had begun to start:\n%s", i, delay, log)
			}
		default:
			t.Errorf("run %d: SIGTERM %v after start: %v\n%s", i, delay, err, log)
		}
		if took > shutdownTimeout+time.Second {
			t.Errorf("run %d: exited %v after SIGTERM, past --shutdown-timeout %v plus a second", i, took, shutdownTimeout)
		}
	}
	slices.Sort(exits)
	t.Logf("%d runs: %d drained and exited 0, %d signalled before serve ran; exit after the signal: median %v, p99 %v, longest %v",
		runs, drained, early, exits[len(exits)/2], exits[len(exits)*99/100], exits[len(exits)-1])
}

// TestServeExitsNonZeroWhenShutdownOverruns: a node whose Redis froze
// (SIGSTOP: the sockets stay open and nothing answers) cannot delete its
// clients' presences there on shutdown. It must not wait for Redis: it
// exits with status 1 within --shutdown-timeout (plus the half second the
// command allows itself to close), and its log names what did not stop.
func TestServeExitsNonZeroWhenShutdownOverruns(t *testing.T) {
	rs := redistest.Start(t)
	const shutdownTimeout = time.Second
	n := startNode(t, "--redis-url", rs.URL(), "--auth", "jwt", "--jwt-secret", "fleet-secret",
		"--shutdown-timeout", shutdownTimeout.String(), "--drain-time", "-1s", "--log-level", "info")
	waitReady(t, n)
	upsertPresence(t, presenceClient(t, n, "u1"), "online")
	rs.Pause()
	t.Cleanup(rs.Resume)

	signalled := time.Now()
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-n.exited:
		n.exited <- err // for the cleanup
	case <-time.After(shutdownTimeout + 10*time.Second):
		t.Fatalf("node still running %v after SIGTERM\n%s", shutdownTimeout+10*time.Second, n.stderr)
	}
	took := time.Since(signalled)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit after an overrun shutdown: %v, want status 1\n%s", err, n.stderr)
	}
	if took > shutdownTimeout+time.Second {
		t.Errorf("exited %v after SIGTERM, past --shutdown-timeout %v plus a second", took, shutdownTimeout)
	}
	log := n.stderr.String()
	i := strings.Index(log, "did not stop")
	if i < 0 {
		t.Fatalf("the log does not say what did not stop:\n%s", log)
	}
	line := log[strings.LastIndex(log[:i], "\n")+1:]
	line = line[:strings.IndexByte(line, '\n')+1]
	t.Logf("exited with status 1 %v after SIGTERM; it logged %s", took, line)
}

package main

import (
	"errors"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeDrainsWhenSignalledDuringStart sends SIGTERM to `switchboard
// serve` right after starting it, 200 times, at moments spread over its
// start-up (about 6 ms here: 0 to 7.6 ms after exec). A node that has begun
// (it logged "starting") must drain and exit 0; only a process signalled
// before serve ran at all may die of the signal, and with nothing to tell
// anyone. Every one must be gone within --shutdown-timeout plus a second of
// the signal.
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
		delay := time.Duration(i%20) * 400 * time.Microsecond
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

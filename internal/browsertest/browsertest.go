// Package browsertest runs Node scripts that drive a headless Chromium
// (Debian's chromium package) through npm playwright-core, for tests that
// need a real browser: a page's scripts, EventSource, WebSocket, the
// Appwrite Web SDK in a browser.
//
// It owns finding the three pieces (the chromium binary, node, and
// test/browser/node_modules/playwright-core, pinned in
// test/browser/package-lock.json and installed by `make test`) and running a
// script with them. When one is missing the test is skipped with the
// reason, as the Appwrite SDK test is; with CI=true it fails instead, since
// .ci/run installs all three. It never downloads a browser.
package browsertest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// Env is what a browser script needs, found on this machine.
type Env struct {
	// Chromium is the browser binary (/usr/bin/chromium or chromium on
	// PATH); scripts pass it to chromium.launch({executablePath}).
	Chromium string
	// Node is the node binary.
	Node string
	// Dir is test/browser, the directory whose node_modules holds
	// playwright-core; scripts run with it as their working directory, so
	// `import { chromium } from "playwright-core"` resolves.
	Dir string
}

// Find locates chromium, node and playwright-core, or skips t (fails it
// under CI=true) naming what is absent.
func Find(t testing.TB) *Env {
	t.Helper()
	env, err := find()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("browser test: %v (.ci/run installs it)", err)
		}
		t.Skipf("browser test skipped: %v", err)
	}
	return env
}

func find() (*Env, error) {
	var e Env
	var err error
	if e.Chromium, err = lookChromium(); err != nil {
		return nil, err
	}
	if e.Node, err = exec.LookPath("node"); err != nil {
		return nil, errors.New("node is not installed")
	}
	if e.Dir, err = browserDir(); err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(e.Dir, "node_modules", "playwright-core", "package.json")); err != nil {
		return nil, fmt.Errorf("playwright-core is not installed in %s (npm ci --prefix test/browser; make test does it)", e.Dir)
	}
	return &e, nil
}

// lookChromium prefers Debian's path, then PATH (other distributions call
// it chromium too).
func lookChromium() (string, error) {
	const debian = "/usr/bin/chromium"
	if fi, err := os.Stat(debian); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return debian, nil
	}
	if p, err := exec.LookPath("chromium"); err == nil {
		return p, nil
	}
	return "", errors.New("chromium is not installed (apt-get install chromium)")
}

// browserDir is the repository's test/browser, found from this source
// file's location so that a test of any package can use it.
func browserDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the repository: no caller information")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..", "test", "browser")
	if _, err := os.Stat(dir); err != nil {
		return "", fmt.Errorf("test/browser not found: %w", err)
	}
	return filepath.Clean(dir), nil
}

// Script is one run of a Node script.
type Script struct {
	// Path is the script file, absolute or relative to Env.Dir.
	Path string
	// Args follow the script's path on node's command line.
	Args []string
	// Env is added to the test process's environment, as KEY=VALUE.
	// CHROMIUM (the browser's path) and ARTIFACTS (a directory for
	// screenshots, t.ArtifactDir()) are always set.
	Env []string
	// Timeout bounds the run; default one minute.
	Timeout time.Duration
}

// Run runs s with node and returns its standard output. A script that
// exits non-zero or outlives its timeout fails t, with its stderr; stderr
// is logged either way, so what a script prints there (progress,
// screenshot paths) shows with -v.
func (e *Env) Run(t testing.TB, s Script) []byte {
	t.Helper()
	stdout, stderr, err := e.run(s, t.ArtifactDir())
	if len(stderr) > 0 {
		t.Logf("node %s stderr:\n%s", s.Path, stderr)
	}
	if err != nil {
		t.Fatalf("%v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
	}
	return stdout
}

// run is Run without the test: the script's output and why it failed.
func (e *Env) run(s Script, artifacts string) (stdout, stderr []byte, err error) {
	timeout := s.Timeout
	if timeout == 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, e.Node, append([]string{s.Path}, s.Args...)...)
	cmd.Dir = e.Dir
	cmd.Env = append(os.Environ(), "CHROMIUM="+e.Chromium, "ARTIFACTS="+artifacts)
	cmd.Env = append(cmd.Env, s.Env...)
	// The browser is the script's child: a killed script must not leave it
	// holding the pipes open.
	cmd.WaitDelay = 5 * time.Second
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err = cmd.Run()
	switch {
	case ctx.Err() != nil:
		err = fmt.Errorf("node %s: timed out after %v", s.Path, timeout)
	case err != nil:
		err = fmt.Errorf("node %s: %w", s.Path, err)
	}
	return out.Bytes(), errOut.Bytes(), err
}

// Session is a script that runs beside the test and answers it, for
// tests that act on the world (stop a server, cut a socket) between two
// looks at the browser: each line the test writes to the script's stdin
// is a request, each line the script prints on stdout an answer, in
// order. What it prints on stderr is logged when the session ends.
type Session struct {
	path   string
	cmd    *exec.Cmd
	cancel context.CancelFunc
	stdin  io.WriteCloser
	lines  chan []byte
	stderr *lockedBuffer
	done   chan struct{} // closed when the script has exited
	err    error         // why it exited, once done is closed
}

// Start runs s with node and returns at once; the script ends when the
// test does (its stdin closed, then killed after five seconds), or at
// s.Timeout (default one minute).
func (e *Env) Start(t testing.TB, s Script) *Session {
	t.Helper()
	timeout := s.Timeout
	if timeout == 0 {
		timeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	cmd := exec.CommandContext(ctx, e.Node, append([]string{s.Path}, s.Args...)...)
	cmd.Dir = e.Dir
	cmd.Env = append(os.Environ(), "CHROMIUM="+e.Chromium, "ARTIFACTS="+t.ArtifactDir())
	cmd.Env = append(cmd.Env, s.Env...)
	cmd.WaitDelay = 5 * time.Second
	ss := &Session{path: s.Path, cmd: cmd, cancel: cancel, lines: make(chan []byte, 64), stderr: new(lockedBuffer), done: make(chan struct{})}
	cmd.Stderr = ss.stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	if ss.stdin, err = cmd.StdinPipe(); err != nil {
		cancel()
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("node %s: %v", s.Path, err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 64<<20)
		for sc.Scan() {
			ss.lines <- append([]byte(nil), sc.Bytes()...)
		}
		close(ss.lines)
	}()
	go func() {
		err := cmd.Wait()
		if ctx.Err() != nil {
			err = fmt.Errorf("node %s: timed out after %v", s.Path, timeout)
		} else if err != nil {
			err = fmt.Errorf("node %s: %w", s.Path, err)
		}
		ss.err = err
		close(ss.done)
	}()
	t.Cleanup(func() {
		ss.stdin.Close()
		select {
		case <-ss.done:
		case <-time.After(5 * time.Second):
			cancel()
			<-ss.done
		}
		cancel()
		if b := ss.stderr.Bytes(); len(b) > 0 {
			t.Logf("node %s stderr:\n%s", s.Path, b)
		}
	})
	return ss
}

// Ask writes req as one line and returns the script's next line. A script
// that exits or stays silent for timeout fails t, with its stderr.
func (s *Session) Ask(t testing.TB, req string, timeout time.Duration) []byte {
	t.Helper()
	if _, err := io.WriteString(s.stdin, req+"\n"); err != nil {
		s.fail(t, fmt.Sprintf("writing %q: %v", req, err))
	}
	return s.Next(t, timeout)
}

// Next returns the script's next line, waiting up to timeout.
func (s *Session) Next(t testing.TB, timeout time.Duration) []byte {
	t.Helper()
	select {
	case line, ok := <-s.lines:
		if !ok {
			<-s.done
			s.fail(t, fmt.Sprintf("exited (%v)", s.err))
		}
		return line
	case <-time.After(timeout):
		s.fail(t, fmt.Sprintf("no answer within %v", timeout))
	}
	return nil
}

func (s *Session) fail(t testing.TB, why string) {
	t.Helper()
	t.Fatalf("node %s: %s\nstderr:\n%s", s.path, why, s.stderr.Bytes())
}

// lockedBuffer is a script's stderr, read while the script writes it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b.Bytes()...)
}

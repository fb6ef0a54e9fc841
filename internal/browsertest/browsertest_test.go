package browsertest

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestRunDrivesChromium serves a page whose script computes a value and
// has the browser report it: it passes only when Chromium really ran the
// page's JavaScript and the script's stdout came back.
func TestRunDrivesChromium(t *testing.T) {
	env := Find(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte(`<!doctype html><p id="out"></p>
<script>document.getElementById("out").textContent = "sum=" + [1, 2, 3].reduce((a, b) => a + b) + " ua=" + navigator.userAgent;</script>`))
	}))
	defer srv.Close()
	out := string(env.Run(t, Script{Path: "selftest.mjs", Args: []string{srv.URL}}))
	if !strings.Contains(out, "sum=6") || !strings.Contains(out, "HeadlessChrome") {
		t.Fatalf("the page's script did not run in headless Chromium: %q", out)
	}
}

// TestRunReportsFailures checks that a script that throws, or hangs, comes
// back as an error carrying its stderr, never as empty success.
func TestRunReportsFailures(t *testing.T) {
	env := Find(t)
	_, stderr, err := env.run(Script{Path: "-e", Args: []string{`console.error("boom-marker"); process.exit(3)`}}, t.TempDir())
	if err == nil || !strings.Contains(string(stderr), "boom-marker") {
		t.Fatalf("failing script: err %v, stderr %q", err, stderr)
	}
	_, _, err = env.run(Script{Path: "-e", Args: []string{`setTimeout(() => {}, 60000)`}, Timeout: 300 * time.Millisecond}, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("hanging script: err %v", err)
	}
}

// TestSessionAnswers: a script started beside the test answers each line
// in order, and one that exits fails the test's next question rather than
// hanging it (checked through the exit it reports).
func TestSessionAnswers(t *testing.T) {
	env := Find(t)
	s := env.Start(t, Script{Path: "-e", Args: []string{
		`require("readline").createInterface({ input: process.stdin }).on("line", (l) => { if (l === "bye") process.exit(0); console.log(l.toUpperCase()); })`}})
	for _, q := range []string{"one", "two"} {
		if got := string(s.Ask(t, q, 10*time.Second)); got != strings.ToUpper(q) {
			t.Fatalf("asked %q, got %q", q, got)
		}
	}
	_, _ = s.stdin.Write([]byte("bye\n"))
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the script did not exit")
	}
	if _, ok := <-s.lines; ok {
		t.Fatal("a line after the script exited")
	}
}

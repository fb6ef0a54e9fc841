package main

import (
	"bytes"
	"strings"
	"testing"
)

func run(t *testing.T, stream string) (string, bool) {
	t.Helper()
	var out bytes.Buffer
	r := &report{out: &out, output: map[key][]string{}, elapsed: map[key]float64{}, open: map[string]bool{}}
	if err := r.read(strings.NewReader(stream)); err != nil {
		t.Fatal(err)
	}
	ok := r.finish(5)
	return out.String(), ok
}

func TestGreenRunPrintsResultsAndSlowest(t *testing.T) {
	out, ok := run(t, `{"Action":"start","Package":"m/a"}
{"Action":"run","Package":"m/a","Test":"TestFast"}
{"Action":"output","Package":"m/a","Test":"TestFast","Output":"=== RUN   TestFast\n"}
{"Action":"output","Package":"m/a","Test":"TestFast","Output":"noise of a passing test\n"}
{"Action":"pass","Package":"m/a","Test":"TestFast","Elapsed":0.01}
{"Action":"pass","Package":"m/a","Test":"TestSlow","Elapsed":2.5}
{"Action":"output","Package":"m/a","Test":"TestNoRedis","Output":"    r_test.go:5: redis-server not found\n"}
{"Action":"output","Package":"m/a","Test":"TestNoRedis","Output":"--- SKIP: TestNoRedis (0.00s)\n"}
{"Action":"skip","Package":"m/a","Test":"TestNoRedis","Elapsed":0}
{"Action":"output","Package":"m/a","Output":"PASS\n"}
{"Action":"output","Package":"m/a","Output":"ok  \tm/a\t2.6s\n"}
{"Action":"pass","Package":"m/a","Elapsed":2.6}
`)
	if !ok {
		t.Error("a green run reported as failed")
	}
	for _, want := range []string{"ok  \tm/a\t2.6s\n", "2.5s  m/a TestSlow", "tests: 2 passed, 0 failed, 1 skipped\n", "m/a TestNoRedis: r_test.go:5: redis-server not found\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "noise") || strings.Contains(out, "PASS\n") {
		t.Errorf("a passing test's output was printed:\n%s", out)
	}
}

func TestFailedTestIsPrintedWhole(t *testing.T) {
	out, ok := run(t, `{"Action":"start","Package":"m/a"}
{"Action":"output","Package":"m/a","Test":"TestBad","Output":"=== RUN   TestBad\n"}
{"Action":"output","Package":"m/a","Test":"TestBad","Output":"    a_test.go:9: want 1, got 2\n"}
{"Action":"output","Package":"m/a","Test":"TestBad","Output":"--- FAIL: TestBad (0.00s)\n"}
{"Action":"fail","Package":"m/a","Test":"TestBad","Elapsed":0}
{"Action":"output","Package":"m/a","Output":"FAIL\tm/a\t0.1s\n"}
{"Action":"fail","Package":"m/a","Elapsed":0.1}
`)
	if ok {
		t.Error("a failed test reported as green")
	}
	for _, want := range []string{"a_test.go:9: want 1, got 2\n", "--- FAIL: TestBad", "FAIL\tm/a\t0.1s\n", "tests: 0 passed, 1 failed"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// A timeout's panic ends the binary: the hung test never reports, and
// its output, the goroutine dump, is all there is to read.
func TestTimeoutDumpIsPrinted(t *testing.T) {
	out, ok := run(t, `{"Action":"start","Package":"m/a"}
{"Action":"output","Package":"m/a","Test":"TestHangs","Output":"=== RUN   TestHangs\n"}
{"Action":"output","Package":"m/a","Test":"TestHangs","Output":"panic: test timed out after 5m0s\n"}
{"Action":"output","Package":"m/a","Test":"TestHangs","Output":"goroutine 7 [chan receive]:\n"}
{"Action":"output","Package":"m/a","Output":"FAIL\tm/a\t300.0s\n"}
{"Action":"fail","Package":"m/a","Elapsed":300}
`)
	if ok {
		t.Error("a timed-out package reported as green")
	}
	for _, want := range []string{"panic: test timed out after 5m0s\n", "goroutine 7 [chan receive]:\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestStreamCutShortIsAFailure(t *testing.T) {
	out, ok := run(t, `{"Action":"start","Package":"m/a"}
{"Action":"pass","Package":"m/a","Test":"TestOne","Elapsed":0.1}
not json: the go command's own error
`)
	if ok {
		t.Error("a package without a result reported as green")
	}
	for _, want := range []string{"not json: the go command's own error\n", "m/a: no result"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

// Command testreport reads `go test -json` on standard input and prints
// what a person needs of it: each package's result line as go test prints
// it, the whole output of every test that failed (a hang's goroutine dump
// included), the slowest tests, and a closing count. It exits 1 when a
// test or package failed or the stream ended without a package's result.
//
//	go test -json ./... | go run ./internal/testreport -slowest 15
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// event is one line of test2json's output (go doc test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Elapsed float64
	Output  string
}

// key names a test within the whole run.
type key struct{ pkg, test string }

type report struct {
	out     io.Writer
	output  map[key][]string // output of tests still running
	elapsed map[key]float64
	// started packages without a result yet: a stream cut short (the
	// runner killed) must not read as green.
	open                    map[string]bool
	passed, failed, skipped int
	failedPkgs              []string
	skips                   []string // skipped tests with the line that says why
}

func main() {
	slowest := flag.Int("slowest", 15, "how many of the slowest tests to list")
	flag.Parse()
	r := &report{out: os.Stdout, output: map[key][]string{}, elapsed: map[key]float64{}, open: map[string]bool{}}
	if err := r.read(os.Stdin); err != nil {
		fmt.Fprintln(os.Stderr, "testreport:", err)
		os.Exit(2)
	}
	if !r.finish(*slowest) {
		os.Exit(1)
	}
}

// read consumes the stream; lines that are not JSON (the go command's own
// errors, say) are printed as they are.
func (r *report) read(in io.Reader) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil || e.Action == "" {
			fmt.Fprintln(r.out, sc.Text())
			continue
		}
		r.add(e)
	}
	return sc.Err()
}

func (r *report) add(e event) {
	k := key{e.Package, e.Test}
	if e.Test == "" {
		r.addPackage(e)
		return
	}
	switch e.Action {
	case "output":
		r.output[k] = append(r.output[k], e.Output)
	case "pass":
		r.passed++
		r.elapsed[k] = e.Elapsed
		delete(r.output, k)
	case "skip":
		r.skipped++
		r.skips = append(r.skips, short(e.Package)+" "+e.Test+skipReason(r.output[k]))
		delete(r.output, k)
	case "fail":
		r.failed++
		r.elapsed[k] = e.Elapsed
		for _, l := range r.output[k] {
			fmt.Fprint(r.out, l)
		}
		delete(r.output, k)
	}
}

func (r *report) addPackage(e event) {
	switch e.Action {
	case "start":
		r.open[e.Package] = true
	case "output":
		// The package's own lines: its result ("ok", "FAIL", "?") and
		// whatever a test binary printed outside any test (a panic in
		// TestMain, a timeout's dump once the test is done).
		l := e.Output
		if l == "PASS\n" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- PASS") || strings.HasPrefix(l, "--- SKIP") {
			return
		}
		fmt.Fprint(r.out, l)
	case "pass", "skip":
		delete(r.open, e.Package)
	case "fail":
		delete(r.open, e.Package)
		r.failedPkgs = append(r.failedPkgs, e.Package)
		// Tests cut off by a panic or a timeout never report: their
		// output is all there is to read.
		for k, lines := range r.output {
			if k.pkg == e.Package {
				for _, l := range lines {
					fmt.Fprint(r.out, l)
				}
				delete(r.output, k)
			}
		}
	}
}

// finish prints the slowest tests and the counts; it reports whether the
// run was green.
func (r *report) finish(slowest int) bool {
	type timed struct {
		k key
		d float64
	}
	var all []timed
	for k, d := range r.elapsed {
		// A subtest's time is inside its parent's: list top-level tests.
		if !strings.Contains(k.test, "/") {
			all = append(all, timed{k, d})
		}
	}
	sort.Slice(all, func(i, j int) bool { return all[i].d > all[j].d })
	if len(all) > slowest {
		all = all[:slowest]
	}
	if len(all) > 0 {
		fmt.Fprintf(r.out, "\nslowest tests:\n")
		for _, t := range all {
			fmt.Fprintf(r.out, "  %8v  %s %s\n", time.Duration(t.d*float64(time.Second)).Round(10*time.Millisecond), short(t.k.pkg), t.k.test)
		}
	}
	if len(r.skips) > 0 {
		sort.Strings(r.skips)
		fmt.Fprintf(r.out, "\nskipped:\n")
		for _, s := range r.skips {
			fmt.Fprintf(r.out, "  %s\n", s)
		}
	}
	for p := range r.open {
		fmt.Fprintf(r.out, "FAIL\t%s: no result (the run was cut short)\n", p)
		r.failedPkgs = append(r.failedPkgs, p)
	}
	fmt.Fprintf(r.out, "\ntests: %d passed, %d failed, %d skipped\n", r.passed, r.failed, r.skipped)
	return r.failed == 0 && len(r.failedPkgs) == 0
}

// skipReason is the last line a skipped test logged (t.Skip's message),
// for the list of skips.
func skipReason(lines []string) string {
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l != "" && !strings.HasPrefix(l, "--- SKIP") && !strings.HasPrefix(l, "=== ") {
			return ": " + l
		}
	}
	return ""
}

// short drops the module path from a package's import path.
func short(pkg string) string {
	if i := strings.Index(pkg, "/switchboard/"); i >= 0 {
		return pkg[i+len("/switchboard/"):]
	}
	return pkg
}

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/switchboard-rt/switchboard/pkg/loadgen"
)

// TestBenchCommandAgainstANode runs the real binary's `bench` against a
// `serve` subprocess, split into two worker processes (the hidden worker
// mode of the same binary), configured partly through the environment.
func TestBenchCommandAgainstANode(t *testing.T) {
	n := startNode(t, "--api-key", "k1", "--connects-per-ip", "-1")
	const conns, events = 300, 10
	cmd := exec.Command(switchboardBin, "bench",
		"--url", fmt.Sprintf("ws://%s/v1/realtime?project=p1&channels[]=files", n.addr),
		"--conns", fmt.Sprint(conns), "--rate", "0", "--hold", "0s", "--workers", "2",
		"--events", fmt.Sprint(events), "--publish-rate", "100",
		"--server-pid", fmt.Sprint(n.cmd.Process.Pid))
	cmd.Env = append(os.Environ(), "SWITCHBOARD_PUBLISH_URL=http://"+n.admin+"/v1/publish", "SWITCHBOARD_API_KEY=k1")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench: %v\n%s", err, stderr.String())
	}
	var sum loadgen.Summary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil || strings.Count(stdout.String(), "\n") != 1 {
		t.Fatalf("stdout is not one JSON line (%v): %q", err, stdout.String())
	}
	if sum.Workers != 2 || sum.OpenAtFull != conns {
		t.Fatalf("workers %d, open at full %d; want 2 and %d\n%s", sum.Workers, sum.OpenAtFull, conns, stderr.String())
	}
	if ev := sum.Events; ev == nil || ev.Completeness != 1 || ev.Received != conns*events || ev.PublishErrors != 0 {
		t.Fatalf("events %+v", sum.Events)
	}
	if len(sum.Servers) != 1 || sum.Servers[0].PID != n.cmd.Process.Pid || sum.Servers[0].RSSAfter <= 0 || sum.Servers[0].PerConn <= 0 {
		t.Errorf("servers %+v", sum.Servers)
	}
	if sum.Generator.RSSAfter <= 0 || sum.KernelAfter.TCPInUse == 0 {
		t.Errorf("generator %+v kernel %+v", sum.Generator, sum.KernelAfter)
	}
}

func TestBenchFlagErrors(t *testing.T) {
	var out, errOut bytes.Buffer
	env := func(string) string { return "" }
	if code := run([]string{"bench", "--conns", "many"}, env, &out, &errOut); code != 2 {
		t.Errorf("bad --conns: exit %d", code)
	}
	if code := run([]string{"bench", "--server-pid", "1,x"}, env, &out, &errOut); code != 2 {
		t.Errorf("bad --server-pid: exit %d", code)
	}
	errOut.Reset()
	if code := run([]string{"bench", "--url", "wss://127.0.0.1:1/v1/realtime", "--conns", "1"}, env, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "scheme") {
		t.Errorf("wss URL: exit %d, %s", code, errOut.String())
	}
	if out.Len() != 0 {
		t.Errorf("failed runs printed a summary: %q", out.String())
	}
}

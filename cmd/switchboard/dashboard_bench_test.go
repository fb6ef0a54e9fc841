package main

import (
	"context"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/loadgen"
)

// BenchmarkDashboardCost is the node's CPU per delivery under one steady
// load (2,000 connections, 50 events/s: 100,000 deliveries/s), with no
// dashboard open and with one page's event stream open and read, in
// alternating 8 s windows of the same load on the same node, so that
// what else runs on the machine weighs on both alike. The node samples
// its registry every second either way (the cluster view needs it); an
// open page adds the JSON of each tick and its write. CPU is the node's
// utime+stime from /proc/PID/stat (10 ms ticks). One iteration is about
// 40 s of load: run it with -benchtime 1x (make bench-dashboard).
func BenchmarkDashboardCost(b *testing.B) {
	const (
		conns   = 2000
		rate    = 50
		window  = 8 * time.Second
		windows = 4 // closed, open, closed, open
	)
	n := startNode(b, "--connects-per-ip", "-1")
	pid := n.cmd.Process.Pid
	var cpu [2]time.Duration // [closed, open]
	var deliveries [2]float64
	for b.Loop() {
		events := rate * int(window/time.Second) * (windows + 1) // a window's worth to spare
		load := exec.Command(switchboardBin, "bench", "--url", "ws://"+n.addr+"/v1/realtime?project=cost&channels[]=files",
			"--conns", strconv.Itoa(conns), "--rate", "0", "--hold", "1s",
			"--publish-url", "http://"+n.admin+"/v1/publish", "--publish-rate", strconv.Itoa(rate), "--events", strconv.Itoa(events), "--drain", "2s")
		if err := load.Start(); err != nil {
			b.Fatal(err)
		}
		for n.metric(b, "switchboard_connections") < conns {
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(2 * time.Second) // publishing is under way
		for w := range windows {
			open := w % 2
			var closePage func()
			if open == 1 {
				closePage = openDashboard(b, n)
			}
			cpu0, d0 := procCPU(b, pid), n.metric(b, "switchboard_deliveries_total")
			time.Sleep(window)
			cpu[open] += procCPU(b, pid) - cpu0
			deliveries[open] += n.metric(b, "switchboard_deliveries_total") - d0
			if closePage != nil {
				closePage()
			}
		}
		if err := load.Wait(); err != nil {
			b.Fatalf("switchboard bench: %v", err)
		}
	}
	b.ReportMetric(float64(cpu[0].Nanoseconds())/deliveries[0], "closed-cpu-ns/delivery")
	b.ReportMetric(float64(cpu[1].Nanoseconds())/deliveries[1], "open-cpu-ns/delivery")
	b.ReportMetric((deliveries[0]+deliveries[1])/(float64(b.N)*windows*window.Seconds()), "deliveries/s")
}

// openDashboard reads the node's dashboard stream as a page does, until
// the returned function closes it.
func openDashboard(b *testing.B, n *node) func() {
	b.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.admin+"/dashboard/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); _, _ = io.Copy(io.Discard, resp.Body) }()
	return func() { cancel(); resp.Body.Close(); <-done }
}

func procCPU(b *testing.B, pid int) time.Duration {
	b.Helper()
	d, err := loadgen.ProcessCPU(pid)
	if err != nil {
		b.Fatal(err)
	}
	return d
}

package main

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/switchboard-rt/switchboard/internal/browsertest"
	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// TestDashboardInBrowser opens a node's dashboard in headless Chromium,
// then puts the node under load (2,000 connections, events at 50/s, from
// `switchboard bench`) and reads from the page, without a reload, that
// the connections reach 2,000 and deliveries/s rise above 0 within 5 s;
// then it kills a second node on the same Redis and reads that the page
// marks it gone within 5 s. Screenshots go to the test's artifact
// directory (go test -artifacts keeps them).
func TestDashboardInBrowser(t *testing.T) {
	env := browsertest.Find(t)
	rs := redistest.Start(t)
	const key, conns = "dash-key", 2000
	a := startNode(t, "--redis-url", rs.URL(), "--api-key", key, "--connects-per-ip", "-1")
	b := startNode(t, "--redis-url", rs.URL())
	load, _ := json.Marshal([]string{switchboardBin, "bench",
		"--url", "ws://" + a.addr + "/v1/realtime?project=dash&channels[]=files",
		"--conns", strconv.Itoa(conns), "--rate", "0", "--hold", "20s",
		"--publish-url", "http://" + a.admin + "/v1/publish", "--api-key", key,
		"--publish-rate", "50", "--events", "1000", "--drain", "1s"})
	out := env.Run(t, browsertest.Script{
		Path: "dashboard.test.mjs",
		Env: []string{"DASHBOARD_URL=http://" + a.admin + "/", "DASHBOARD_KEY=" + key, "LOAD_CMD=" + string(load),
			"LOAD_CONNS=" + strconv.Itoa(conns), "KILL_PID=" + strconv.Itoa(b.cmd.Process.Pid)},
	})
	var r struct {
		ConnsBefore, Conns, DeliveriesPerSecond   float64
		ConnsAfterSeconds, DeliveriesAfterSeconds float64
		GoneAfterSeconds                          float64
		Latency, TopProject, ClusterSummary       string
		CloseReasons                              []string
		TopUsage                                  []string
		Reloads                                   int
		PageErrors                                []string
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("script output %q: %v", out, err)
	}
	t.Logf("page: %+v", r)
	if r.ConnsBefore != 0 || r.Conns < conns || r.DeliveriesPerSecond <= 0 {
		t.Errorf("connections %v before the load, %v under it; deliveries/s %v", r.ConnsBefore, r.Conns, r.DeliveriesPerSecond)
	}
	if r.ConnsAfterSeconds > 5 || r.DeliveriesAfterSeconds > 5 {
		t.Errorf("the page showed %d connections after %.1f s and deliveries after %.1f s of load, want within 5 s", conns, r.ConnsAfterSeconds, r.DeliveriesAfterSeconds)
	}
	if r.GoneAfterSeconds > 5 || !strings.Contains(r.ClusterSummary, "1 gone") {
		t.Errorf("the killed node was marked gone after %.1f s (%q), want within 5 s", r.GoneAfterSeconds, r.ClusterSummary)
	}
	// Every reason the node counts has its series, zero or not.
	for _, reason := range []string{"client_close", "reset", "slow_consumer", "shutdown", "handshake_timeout", "policy"} {
		if !slices.Contains(r.CloseReasons, reason) {
			t.Errorf("closes chart series %q, want one for %s", r.CloseReasons, reason)
		}
	}
	if r.TopProject != "dash" {
		t.Errorf("top project %q, want dash", r.TopProject)
	}
	// One project: it tops every usage metric, with 2,000 connections
	// opened (the page shows the last minute and this one).
	if len(r.TopUsage) != 4 || r.TopUsage[0] != "dash: 2,000" {
		t.Errorf("top projects by usage %q, want dash first in all four, with 2,000 connections", r.TopUsage)
	} else {
		for _, cell := range r.TopUsage {
			if !strings.HasPrefix(cell, "dash: ") {
				t.Errorf("top projects by usage %q, want dash first in all four", r.TopUsage)
			}
		}
	}
	if r.Reloads != 0 || len(r.PageErrors) != 0 {
		t.Errorf("the page reloaded %d times; errors: %q", r.Reloads, r.PageErrors)
	}
}

// TestDashboardOutlivesItsNode: a page open while its node is killed and
// a new one starts on the same ports (what make bench does between runs)
// goes live again by itself, showing the new node, without a reload.
func TestDashboardOutlivesItsNode(t *testing.T) {
	env := browsertest.Find(t)
	n := startNode(t)
	replacement, _ := json.Marshal([]string{switchboardBin, "serve", "--listen", n.addr, "--admin-listen", n.admin, "--log-level", "warn"})
	out := env.Run(t, browsertest.Script{
		Path: "dashboard-restart.test.mjs",
		Env:  []string{"DASHBOARD_URL=http://" + n.admin + "/", "KILL_PID=" + strconv.Itoa(n.cmd.Process.Pid), "NODE_CMD=" + string(replacement)},
	})
	var r struct {
		Before, After         string
		LiveAgainAfterSeconds float64
		Reloads               int
		PageErrors            []string
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("script output %q: %v", out, err)
	}
	t.Logf("page: %+v", r)
	if r.Before == r.After || r.Reloads != 0 || len(r.PageErrors) != 0 {
		t.Errorf("page showed %q, then %q after %d reloads; errors %q", r.Before, r.After, r.Reloads, r.PageErrors)
	}
	if r.LiveAgainAfterSeconds > 5 {
		t.Errorf("the page was live again %.1f s after the new node started, want within 5 s", r.LiveAgainAfterSeconds)
	}
}

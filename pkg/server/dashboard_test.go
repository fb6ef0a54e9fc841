package server

import (
	"bufio"
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/dashboard"
)

// TestDashboardNeedsTheKey: with an API key the page, its files and its
// stream refuse a request without it and ask the browser for basic auth;
// the key as basic auth's password or as a bearer token lets it in.
func TestDashboardNeedsTheKey(t *testing.T) {
	s := testNode(t, func(c *Config) { c.APIKey = "sekret" })
	base := "http://" + s.AdminAddr().String()
	for _, path := range []string{"/", "/dashboard/app.js", "/dashboard/events"} {
		for _, c := range []struct {
			name string
			set  func(*http.Request)
			want int
		}{
			{"no key", func(*http.Request) {}, http.StatusUnauthorized},
			{"wrong password", func(r *http.Request) { r.SetBasicAuth("admin", "nope") }, http.StatusUnauthorized},
			{"basic auth", func(r *http.Request) { r.SetBasicAuth("anyone", "sekret") }, http.StatusOK},
			{"bearer", func(r *http.Request) { r.Header.Set("Authorization", "Bearer sekret") }, http.StatusOK},
		} {
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+path, nil)
			c.set(req)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != c.want {
				t.Errorf("%s %s: %d, want %d", path, c.name, resp.StatusCode, c.want)
			}
			if c.want == http.StatusUnauthorized && !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic ") {
				t.Errorf("%s %s: no basic-auth challenge for the browser", path, c.name)
			}
			cancel()
			resp.Body.Close()
		}
	}
}

// dashboardStream opens s's dashboard stream over a real socket and
// returns await, which reads ticks until one satisfies ok, for up to 5 s.
func dashboardStream(t *testing.T, s *Server) (await func(what string, ok func(dashboard.Sample) bool)) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.AdminAddr().String()+"/dashboard/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	ticks := bufio.NewScanner(resp.Body)
	ticks.Buffer(nil, 1<<20)
	return func(what string, ok func(dashboard.Sample) bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for ticks.Scan() {
			line, found := strings.CutPrefix(ticks.Text(), "data: ")
			var tk struct{ Self dashboard.Sample }
			if !found || json.Unmarshal([]byte(line), &tk) != nil {
				continue
			}
			if ok(tk.Self) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("dashboard never showed %s: last %+v", what, tk.Self)
			}
		}
		t.Fatalf("stream ended before %s: %v", what, ticks.Err())
	}
}

// TestDashboardFollowsConnections connects WebSocket clients of two
// projects and reads the node's own dashboard stream until it shows them,
// with the projects ranked; then they leave and it shows that too.
func TestDashboardFollowsConnections(t *testing.T) {
	s := testNode(t, nil)
	await := dashboardStream(t, s)
	var clients []*client
	for _, p := range []string{"alpha", "alpha", "alpha", "beta"} {
		clients = append(clients, dial(t, s, "project="+p+"&channels[]=files", nil))
	}
	await("4 connections, alpha then beta", func(smp dashboard.Sample) bool {
		return smp.Conns == 4 && len(smp.Top) == 2 && smp.Top[0] == dashboard.ProjectCount{Project: "alpha", Conns: 3} &&
			smp.Top[1] == dashboard.ProjectCount{Project: "beta", Conns: 1} && smp.BrokerUp
	})
	for _, c := range clients {
		c.conn.Close()
	}
	await("the clients gone", func(smp dashboard.Sample) bool { return smp.Conns == 0 && len(smp.Top) == 0 })
}

// TestDashboardShowsRedisDown: a node on a real redis-server shows its
// broker up, then down with the reason when Redis dies, then up again
// when it is back, without the page reopening its stream.
func TestDashboardShowsRedisDown(t *testing.T) {
	rs := redistest.Start(t)
	s := redisNode(t, rs.URL(), nil)
	await := dashboardStream(t, s)
	await("the broker up", func(smp dashboard.Sample) bool { return smp.BrokerUp })
	rs.Kill()
	await("the broker down", func(smp dashboard.Sample) bool { return !smp.BrokerUp && smp.BrokerErr != "" })
	rs.Start()
	await("the broker up again", func(smp dashboard.Sample) bool { return smp.BrokerUp })
}

// TestShutdownEndsDashboardStreams: an open page must not hold the admin
// server's shutdown until its deadline.
func TestShutdownEndsDashboardStreams(t *testing.T) {
	s := testNode(t, nil)
	resp, err := http.Get("http://" + s.AdminAddr().String() + "/dashboard/events")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown with a dashboard open: %v", err)
	}
}

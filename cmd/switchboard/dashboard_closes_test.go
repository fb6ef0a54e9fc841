package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/internal/browsertest"
)

// TestDashboardClosesAndUsageMatchTheNode: a mixed run against a real node
// (three projects with traffic; connections ending by client close, reset,
// idle timeout, a message too big, a protocol error, invalid UTF-8 and a
// policy error), then the dashboard in headless Chromium. After the run
// has stopped and a sample has passed, the page's closes table equals the
// node's switchboard_connection_closes_total{reason}, reason by reason,
// the closes chart has a series for each, and every figure of the usage
// table equals GET /v1/usage's for the same project, metric and minutes;
// no console or page error. Screenshots of the chart, both tables and the
// page go to the test's artifact directory.
func TestDashboardClosesAndUsageMatchTheNode(t *testing.T) {
	env := browsertest.Find(t)
	n := startNode(t, "--idle-timeout", "2s", "--max-message-size", "1024", "--projects", "alpha,beta,gamma",
		"--connects-per-ip", "-1")
	wantReasons := mixedRun(t, n)

	closesBefore := closesByReason(t, n)
	var total float64
	for _, v := range closesBefore {
		total += v
	}
	for _, r := range wantReasons {
		if closesBefore[r] < 1 {
			t.Fatalf("the run ended no connection as %s: /metrics says %v", r, closesBefore)
		}
	}
	out := env.Run(t, browsertest.Script{
		Path: "dashboard-closes.test.mjs",
		Env:  []string{"DASHBOARD_URL=http://" + n.admin + "/", "WANT_CLOSES=" + strconv.FormatFloat(total, 'f', -1, 64)},
	})
	var r struct {
		Closes       map[string]float64
		ClosesShown  []string
		ChartReasons []string
		Usage        []struct {
			Col     int
			Project string
			Value   int64
		}
		UsageSince int64
		PageErrors []string
	}
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("script output %q: %v", out, err)
	}
	t.Logf("page: %+v", r)
	// Nothing moved while the page was read: the node's figures now are
	// the ones it showed.
	closesAfter := closesByReason(t, n)
	if fmt.Sprint(closesAfter) != fmt.Sprint(closesBefore) {
		t.Fatalf("closes changed while the page was read: %v, then %v", closesBefore, closesAfter)
	}
	if fmt.Sprint(r.Closes) != fmt.Sprint(closesAfter) {
		t.Errorf("closes table %v, /metrics %v", r.Closes, closesAfter)
	}
	for reason := range closesAfter {
		if !slices.Contains(r.ChartReasons, reason) {
			t.Errorf("closes chart series %q: none for %s", r.ChartReasons, reason)
		}
	}
	// The usage table: four columns, each project's figure equal to the
	// usage API's over the page's two minutes.
	metrics := []string{"realtime.connections", "realtime.messages.sent", "realtime.inbound", "realtime.outbound"}
	seen := map[string]bool{}
	for _, cell := range r.Usage {
		api := usageOf(t, n, cell.Project, r.UsageSince)
		if cell.Col < 0 || cell.Col >= len(metrics) || api[metrics[cell.Col]] != cell.Value {
			t.Errorf("usage table: %s's %s is %d, GET /v1/usage says %d", cell.Project, metrics[min(max(cell.Col, 0), 3)], cell.Value, api[metrics[min(max(cell.Col, 0), 3)]])
		}
		seen[cell.Project] = true
	}
	if len(seen) != 3 || len(r.Usage) != 12 {
		t.Errorf("usage table lists %v in %d cells, want alpha, beta and gamma in all four columns", seen, len(r.Usage))
	}
	if api := usageOf(t, n, "alpha", r.UsageSince); api["realtime.connections"] != 3 {
		t.Errorf("alpha opened %d connections by the usage API, want 3", api["realtime.connections"])
	}
	if len(r.PageErrors) != 0 {
		t.Errorf("page errors: %q", r.PageErrors)
	}
}

// mixedRun drives connections of three projects on n and ends each a
// different way; it returns the reasons they must be counted under. It
// returns once every connection has ended and a dashboard sample (once a
// second) has passed.
func mixedRun(t *testing.T, n *node) []string {
	t.Helper()
	type client struct {
		c       *wsConn
		project string
	}
	var clients []client
	for _, p := range []struct {
		project string
		conns   int
	}{{"alpha", 3}, {"beta", 2}, {"gamma", 1}} {
		for range p.conns {
			c, err := wsDial(n.addr, "project="+p.project+"&channels[]=files")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.conn.Close() })
			if typ, _, _, err := c.next(5 * time.Second); err != nil || typ != "connected" {
				t.Fatalf("%s: connect: %s %v", p.project, typ, err)
			}
			clients = append(clients, client{c, p.project})
		}
	}
	// Traffic: a ping from each client, and an event a project, which
	// every client of it receives.
	for _, cl := range clients {
		send(t, cl.c, []byte(`{"type":"ping"}`))
		if typ, _, _, err := cl.c.next(5 * time.Second); err != nil || typ != "pong" {
			t.Fatalf("%s: ping: %s %v", cl.project, typ, err)
		}
	}
	for i, p := range []string{"alpha", "beta", "gamma"} {
		body := fmt.Sprintf(`{"project":%q,"roles":["any"],"data":{"events":["e"],"channels":["files"],"payload":{"n":%d,"pad":%q}}}`,
			p, i, strings.Repeat("x", 100*(i+1)))
		resp, err := http.Post("http://"+n.admin+"/v1/publish", "application/json", strings.NewReader(body))
		if err != nil || resp.StatusCode != http.StatusAccepted {
			t.Fatalf("publish: %v %v", resp, err)
		}
		resp.Body.Close()
	}
	for _, cl := range clients {
		if typ, _, _, err := cl.c.next(5 * time.Second); err != nil || typ != "event" {
			t.Fatalf("%s: event: %s %v", cl.project, typ, err)
		}
	}
	// Endings, one a way.
	closed := func(cl client, want ws.StatusCode) {
		t.Helper()
		for {
			typ, _, code, err := cl.c.next(10 * time.Second)
			if err != nil {
				t.Fatalf("%s: waiting for close %d: %v", cl.project, want, err)
			}
			if typ == "close" {
				if code != want {
					t.Fatalf("%s: closed with %d, want %d", cl.project, code, want)
				}
				return
			}
		}
	}
	// client_close: the client's close frame, echoed.
	if err := ws.WriteFrame(clients[0].c.conn, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))); err != nil {
		t.Fatal(err)
	}
	closed(clients[0], ws.StatusNormalClosure)
	// reset: gone without a close frame (RST).
	_ = clients[1].c.conn.(*net.TCPConn).SetLinger(0)
	clients[1].c.conn.Close()
	// too_big: over --max-message-size.
	send(t, clients[2].c, []byte(`{"type":"ping","pad":"`+strings.Repeat("x", 2000)+`"}`))
	closed(clients[2], ws.StatusMessageTooBig)
	// protocol_error: a reserved bit set, with no extension agreed.
	f := ws.NewTextFrame([]byte(`{"type":"ping"}`))
	f.Header.Rsv = ws.Rsv(false, true, false)
	if err := ws.WriteFrame(clients[3].c.conn, ws.MaskFrame(f)); err != nil {
		t.Fatal(err)
	}
	closed(clients[3], ws.StatusProtocolError)
	// invalid_payload: text that is not UTF-8.
	send(t, clients[5].c, []byte("\xff\xfe"))
	closed(clients[5], ws.StatusInvalidFramePayloadData)
	// policy: a project the node does not serve.
	c, err := wsDial(n.addr, "project=unknown&channels[]=files")
	if err != nil {
		t.Fatal(err)
	}
	closed(client{c, "unknown"}, ws.StatusPolicyViolation)
	c.conn.Close()
	// idle: silent past --idle-timeout.
	closed(clients[4], ws.StatusGoingAway)
	time.Sleep(1500 * time.Millisecond) // a dashboard sample after the last close
	return []string{"client_close", "reset", "too_big", "protocol_error", "invalid_payload", "policy", "idle"}
}

// send writes one masked text frame.
func send(t *testing.T, c *wsConn, p []byte) {
	t.Helper()
	if err := ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewTextFrame(p))); err != nil {
		t.Fatal(err)
	}
}

// closesByReason reads switchboard_connection_closes_total by reason.
func closesByReason(t *testing.T, n *node) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, s := range n.scrape(t) {
		if r, ok := strings.CutPrefix(s.series, `switchboard_connection_closes_total{reason="`); ok {
			out[strings.TrimSuffix(r, `"}`)] = s.value
		}
	}
	return out
}

// usageOf asks GET /v1/usage for project's metrics over the two minutes
// from since (Unix milliseconds), the span the dashboard's table covers.
func usageOf(t *testing.T, n *node, project string, since int64) map[string]int64 {
	t.Helper()
	from := since / 1000
	resp, err := http.Get(fmt.Sprintf("http://%s/v1/usage?project=%s&from=%d&to=%d", n.admin, project, from, from+119))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rep struct {
		Metrics    map[string]int64
		Incomplete bool
	}
	if err := json.NewDecoder(resp.Body).Decode(&rep); err != nil || resp.StatusCode != http.StatusOK || rep.Incomplete {
		t.Fatalf("usage of %s: %d %+v %v", project, resp.StatusCode, rep, err)
	}
	return rep.Metrics
}

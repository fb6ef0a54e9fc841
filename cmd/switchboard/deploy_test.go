package main

import (
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws/wsutil"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// Paths of the Prometheus and Grafana files that deploy/ ships.
const (
	grafanaDashboard = "../../deploy/grafana/switchboard.json"
	alertRules       = "../../deploy/prometheus/alerts.yml"
	alertRulesTests  = "../../deploy/prometheus/alerts_test.yml"
)

// metricName finds the node's series names in PromQL and prose: the node's
// own, the broker's and the Go client's process and runtime series.
var metricName = regexp.MustCompile(`\b(?:switchboard|broker|process|go)_[a-zA-Z0-9_:]*[a-zA-Z0-9]`)

// exportedSeries scrapes a node's /metrics and returns every sample name
// (histograms as their _bucket, _sum and _count series).
func exportedSeries(t *testing.T, n *node) map[string]bool {
	t.Helper()
	names := make(map[string]bool)
	for _, s := range n.scrape(t) {
		name, _, _ := strings.Cut(s.series, "{")
		names[name] = true
	}
	return names
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Title  string `json:"title"`
	UID    string `json:"uid"`
	Panels []struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

// The dashboard and the alert rules are tested artifacts: the dashboard is
// valid JSON whose every panel queries something, and both name only
// series that a real node (with the Redis broker, so that the broker_*
// series exist) exports on /metrics.
func TestDashboardAndAlertsNameOnlyExportedSeries(t *testing.T) {
	rs := redistest.Start(t)
	n := startNode(t, "--redis-url", rs.URL())
	// A labelled series appears with its first sample: a client message
	// that is not JSON (messages in, a protocol error) and a publish that
	// is not an event make the node export them.
	c := wsConnected(t, n.addr)
	if err := wsutil.WriteClientText(c.conn, []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if typ, _, _, err := c.next(5 * time.Second); err != nil || typ != "error" {
		t.Fatalf("after an invalid message: %s %v, want an error message", typ, err)
	}
	resp, err := http.Post("http://"+n.admin+"/v1/publish", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("publish {}: %s, want 400", resp.Status)
	}
	exported := exportedSeries(t, n)
	for _, name := range []string{"switchboard_delivery_latency_seconds_bucket", "switchboard_send_queue_oldest_seconds", "switchboard_router_backlog", "broker_connected"} {
		if !exported[name] {
			t.Fatalf("the node does not export %s", name)
		}
	}

	raw, err := os.ReadFile(grafanaDashboard)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s is not valid JSON: %v", grafanaDashboard, err)
	}
	if d.Title == "" || d.UID == "" || len(d.Panels) == 0 {
		t.Fatalf("%s: no title, uid or panels", grafanaDashboard)
	}
	var used []string
	ids := make(map[int]bool)
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d used twice", p.ID)
		}
		ids[p.ID] = true
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: %d queries, datasource %q; want queries on ${datasource}", p.Title, len(p.Targets), p.Datasource.UID)
		}
		for _, q := range p.Targets {
			names := metricName.FindAllString(q.Expr, -1)
			if len(names) == 0 {
				t.Errorf("panel %q: query %q names no series", p.Title, q.Expr)
			}
			used = append(used, names...)
		}
	}
	rules, err := os.ReadFile(alertRules)
	if err != nil {
		t.Fatal(err)
	}
	used = append(used, metricName.FindAllString(string(rules), -1)...)
	slices.Sort(used)
	for _, name := range slices.Compact(used) {
		if !exported[name] {
			t.Errorf("the dashboard or the alert rules read %s, which the node does not export", name)
		}
	}
}

// TestAlertRules checks deploy/prometheus/alerts.yml with promtool, and
// runs its unit tests (each alert firing, and its neighbours not). Where
// promtool is not installed (Debian package prometheus) it is skipped,
// but CI installs it.
func TestAlertRules(t *testing.T) {
	promtool := needBinary(t, "promtool")
	for _, args := range [][]string{{"check", "rules", alertRules}, {"test", "rules", alertRulesTests}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = filepath.Dir(alertRules)
		cmd.Args[len(cmd.Args)-1] = filepath.Base(args[len(args)-1])
		out, err := cmd.CombinedOutput()
		t.Logf("promtool %s:\n%s", strings.Join(args[:2], " "), out)
		if err != nil {
			t.Fatalf("promtool %s: %v", strings.Join(args, " "), err)
		}
	}
}

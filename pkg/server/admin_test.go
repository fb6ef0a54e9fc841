package server

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// counterValue sums a metric family's samples in the node's registry.
func counterValue(t *testing.T, s *Server, name string) float64 {
	t.Helper()
	v, err := metricSum(s, name)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// metricSum is counterValue for goroutines other than the test's.
func metricSum(s *Server, name string) (float64, error) {
	mfs, err := s.cfg.Registry.Gather()
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			switch {
			case m.Counter != nil:
				sum += m.Counter.GetValue()
			case m.Gauge != nil:
				sum += m.Gauge.GetValue()
			}
		}
	}
	return sum, nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestPublishValidation(t *testing.T) {
	s := testNode(t, func(c *Config) { c.APIKey = "sekret" })
	valid := event("p1", []string{"any"}, []string{"files"}, `{}`)
	cases := []struct {
		name, body, key string
		want            int
	}{
		{"no key", valid, "", http.StatusUnauthorized},
		{"wrong key", valid, "nope", http.StatusUnauthorized},
		{"not json", `{oops`, "sekret", http.StatusBadRequest},
		{"no project", event("", []string{"any"}, []string{"files"}, `{}`), "sekret", http.StatusBadRequest},
		{"no roles", event("p1", []string{}, []string{"files"}, `{}`), "sekret", http.StatusBadRequest},
		{"no channels", event("p1", []string{"any"}, nil, `{}`), "sekret", http.StatusBadRequest},
		{"too large", `{"x":"` + strings.Repeat("a", 2<<20) + `"}`, "sekret", http.StatusRequestEntityTooLarge},
		{"valid", valid, "sekret", http.StatusAccepted},
	}
	for _, tc := range cases {
		code, body := post(t, s, tc.body, tc.key)
		if code != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, code, body, tc.want)
		}
		if !strings.Contains(body, "{") {
			t.Errorf("%s: body %q is not JSON", tc.name, body)
		}
	}
	if got := counterValue(t, s, "switchboard_publish_errors_total"); got != 7 {
		t.Errorf("publish errors = %v, want 7", got)
	}
}

func TestHealthReadyMetrics(t *testing.T) {
	s := testNode(t, nil)
	base := "http://" + s.AdminAddr().String()
	if code, body := get(t, base+"/healthz"); code != 200 {
		t.Fatalf("healthz %d %s", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 {
		t.Fatalf("readyz %d %s", code, body)
	}
	c := dial(t, s, "project=p1&channels[]=files", nil)
	c.expect("connected")
	code, body := get(t, base+"/metrics")
	if code != 200 || !strings.Contains(body, "switchboard_connections 1") || !strings.Contains(body, `switchboard_upgrades_total{result="ok"} 1`) {
		t.Fatalf("metrics %d:\n%s", code, body)
	}
	if code, _ := get(t, base+"/debug/pprof/"); code != 200 {
		t.Fatalf("pprof %d", code)
	}
}

func TestInvalidBackboneMessagesAreCountedNotFatal(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1&channels[]=files", nil)
	c.expect("connected")
	ctx := t.Context()
	for _, garbage := range []string{"", "nope", `{"project":"p1"}`, `{"project":"p1","roles":["any"],"data":{"channels":[]}}`, `[1,2,3]`} {
		if err := s.cfg.Broker.Publish(ctx, []byte(garbage)); err != nil {
			t.Fatal(err)
		}
	}
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"after":"garbage"}`))
	c.expectPayload(`{"after":"garbage"}`)
	if got := counterValue(t, s, "broker_invalid_messages_total"); got != 5 {
		t.Fatalf("invalid events = %v, want 5", got)
	}
}

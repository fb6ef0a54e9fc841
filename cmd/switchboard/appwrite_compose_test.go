package main

import (
	"bytes"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/switchboard-rt/switchboard/internal/appwritetest"
	"github.com/switchboard-rt/switchboard/internal/redistest"
)

const appwriteOverride = "../../deploy/appwrite/docker-compose.override.yml"

// composeService is the part of a compose service the test reads.
type composeService struct {
	Image       string   `yaml:"image"`
	Entrypoint  []string `yaml:"entrypoint"`
	Labels      []string `yaml:"labels"`
	Networks    []string `yaml:"networks"`
	DependsOn   []string `yaml:"depends_on"`
	Environment []string `yaml:"environment"`
}

// composeVar finds ${NAME}, ${NAME:-default} and ${NAME:?message}.
var composeVar = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::[-?][^}]*)?\}`)

// composeExpand interpolates s as compose does from the variables in env:
// ${V}, ${V:-default} (default when V is unset or empty) and ${V:?msg}
// (an error when V is unset or empty).
func composeExpand(s string, env map[string]string) (string, error) {
	var err error
	out := os.Expand(s, func(inner string) string {
		name, def, hasDef := strings.Cut(inner, ":-")
		if !hasDef {
			var msg string
			var required bool
			name, msg, required = strings.Cut(inner, ":?")
			if required && env[name] == "" {
				err = fmt.Errorf("%s: %s", name, msg)
			}
		}
		if v := env[name]; v != "" {
			return v
		}
		return def
	})
	return out, err
}

// TestAppwriteComposeOverride checks deploy/appwrite's compose override
// against the flags and against Appwrite's own compose file
// (docker-compose.yml of appwrite/appwrite 1.5 to 1.8: service
// appwrite-realtime on network appwrite, its Traefik labels routing
// PathPrefix(`/v1/realtime`) on appwrite_web and appwrite_websecure to
// port 80, and _APP_REDIS_HOST, _APP_REDIS_PORT, _APP_REDIS_USER and
// _APP_REDIS_PASS for Redis). Then it runs a node with the override's
// environment, interpolated from an Appwrite .env pointing at a local
// Redis with a password and at the Appwrite stand-in: a signed-in client
// gets an event published to Redis channel `realtime` in the shape
// Appwrite publishes it. With docker-compose installed (CI installs it),
// `docker-compose config` must also accept the override merged with a
// base file shaped like Appwrite's.
func TestAppwriteComposeOverride(t *testing.T) {
	raw, err := os.ReadFile(appwriteOverride)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		Services map[string]composeService `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &file); err != nil {
		t.Fatal(err)
	}
	svc, ok := file.Services["appwrite-realtime"]
	if !ok || len(file.Services) != 1 {
		t.Fatalf("services %v: want appwrite-realtime alone, Appwrite's name for its realtime worker", slices.Collect(maps.Keys(file.Services)))
	}
	if !slices.Equal(svc.Entrypoint, []string{"switchboard", "serve"}) || !slices.Contains(svc.Networks, "appwrite") || !slices.Contains(svc.DependsOn, "redis") {
		t.Errorf("entrypoint %v, networks %v, depends_on %v", svc.Entrypoint, svc.Networks, svc.DependsOn)
	}

	// Every SWITCHBOARD_* variable is one that serve reads.
	var help bytes.Buffer
	if code := run([]string{"serve", "--help"}, func(string) string { return "" }, &help, &help); code != 0 {
		t.Fatalf("serve --help: exit %d", code)
	}
	flagVars := map[string]bool{}
	for _, v := range regexp.MustCompile(`SWITCHBOARD_[A-Z0-9_]+`).FindAllString(help.String(), -1) {
		flagVars[v] = true
	}
	env := map[string]string{}
	for _, kv := range svc.Environment {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || !strings.HasPrefix(k, "SWITCHBOARD_") {
			t.Errorf("environment %q: want SWITCHBOARD_<FLAG>=value", kv)
			continue
		}
		if !flagVars[k] {
			t.Errorf("%s is not a serve flag's variable", k)
		}
		env[k] = v
		for _, m := range composeVar.FindAllStringSubmatch(v, -1) {
			if name := m[1]; !strings.HasPrefix(name, "_APP_REDIS_") && !strings.HasPrefix(name, "SWITCHBOARD_") {
				t.Errorf("%s reads ${%s}: only Appwrite's _APP_REDIS_* and the operator's SWITCHBOARD_* belong here", k, name)
			}
		}
	}
	for k, want := range map[string]string{"SWITCHBOARD_AUTH": "appwrite", "SWITCHBOARD_REDIS_CHANNEL": "realtime", "SWITCHBOARD_LISTEN": ":80"} {
		if env[k] != want {
			t.Errorf("%s=%q, want %q", k, env[k], want)
		}
	}
	for _, v := range []string{"${_APP_REDIS_HOST", "${_APP_REDIS_PORT", "${_APP_REDIS_USER", "${_APP_REDIS_PASS"} {
		if !strings.Contains(env["SWITCHBOARD_REDIS_URL"], v) {
			t.Errorf("SWITCHBOARD_REDIS_URL=%q does not read %s}", env["SWITCHBOARD_REDIS_URL"], v)
		}
	}

	// Appwrite's Traefik labels: both routers send /v1/realtime to the
	// service whose port is the one Switchboard listens on.
	labels := map[string]string{}
	for _, l := range svc.Labels {
		k, v, _ := strings.Cut(l, "=")
		labels[k] = v
	}
	for _, r := range []string{"appwrite_realtime_ws", "appwrite_realtime_wss"} {
		if got := labels["traefik.http.routers."+r+".rule"]; got != "PathPrefix(`/v1/realtime`)" {
			t.Errorf("router %s rule %q", r, got)
		}
		if got := labels["traefik.http.routers."+r+".service"]; got != "appwrite_realtime" {
			t.Errorf("router %s service %q", r, got)
		}
	}
	if labels["traefik.http.routers.appwrite_realtime_ws.entrypoints"] != "appwrite_web" || labels["traefik.http.routers.appwrite_realtime_wss.entrypoints"] != "appwrite_websecure" ||
		labels["traefik.enable"] != "true" || labels["traefik.constraint-label-stack"] != "appwrite" {
		t.Errorf("labels %v: not Appwrite's entry points and stack constraint", labels)
	}
	if p := labels["traefik.http.services.appwrite_realtime.loadbalancer.server.port"]; ":"+p != env["SWITCHBOARD_LISTEN"] {
		t.Errorf("Traefik sends to port %s, Switchboard listens on %s", p, env["SWITCHBOARD_LISTEN"])
	}
	if t.Failed() {
		return
	}

	// The environment as compose gives it, from an Appwrite .env.
	rd := redistest.Start(t, "--requirepass", "s3cret")
	aw := appwritetest.NewExample()
	t.Cleanup(aw.Close)
	dotenv := map[string]string{
		"_APP_REDIS_HOST": "127.0.0.1", "_APP_REDIS_PORT": fmt.Sprint(rd.Port), "_APP_REDIS_USER": "", "_APP_REDIS_PASS": "s3cret",
		"SWITCHBOARD_API_KEY": "operator-key", "SWITCHBOARD_APPWRITE_ENDPOINT": aw.Endpoint(), "SWITCHBOARD_APPWRITE_API_KEY": "k1",
	}
	if _, err := composeExpand(env["SWITCHBOARD_API_KEY"], map[string]string{}); err == nil {
		t.Errorf("SWITCHBOARD_API_KEY=%s: compose accepts it unset, leaving publish open", env["SWITCHBOARD_API_KEY"])
	}
	for k, v := range env {
		got, err := composeExpand(v, dotenv)
		if err != nil {
			t.Fatal(err)
		}
		t.Setenv(k, got) // startNode's --listen and admin address win over these
	}
	n := startNode(t)
	c, err := wsDialFrom(n.addr, "127.0.0.1", http.Header{"X-Appwrite-Session": {aw.Session("p1", "ann")}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.conn.Close()
	if typ, data, _, err := c.next(5 * time.Second); err != nil || typ != "connected" || !strings.Contains(string(data), `"$id":"ann"`) {
		t.Fatalf("connect: %s %s %v; want connected as ann", typ, data, err)
	}
	// What Appwrite's API publishes (Realtime::send): to Redis, channel
	// realtime, the project, the roles and the event.
	msg := `{"project":"p1","roles":["team:t1/admin"],"permissionsChanged":false,"userId":null,` +
		`"data":{"events":["buckets.b.files.f.create"],"channels":["files"],"timestamp":"2026-01-01T00:00:00.000+00:00","payload":{"$id":"f"}}}`
	cli := redistest.Binary(t, "redis-cli")
	redistest.Eventually(t, 10*time.Second, "the event published to Redis reaching the client", func() bool {
		if out, err := exec.Command(cli, "-p", fmt.Sprint(rd.Port), "-a", "s3cret", "--no-auth-warning", "PUBLISH", "realtime", msg).CombinedOutput(); err != nil {
			t.Fatalf("redis-cli: %v %s", err, out)
		}
		typ, data, _, err := c.next(200 * time.Millisecond)
		return err == nil && typ == "event" && strings.Contains(string(data), `"$id":"f"`)
	})

	composeConfig(t, dotenv)
}

// composeConfig runs `docker-compose config` on a base file shaped like
// Appwrite's (appwrite-realtime as Appwrite's compose declares it, redis,
// appwrite, the network) with the override on top, from an .env holding
// dotenv, and checks the merged service runs Switchboard with the
// interpolated Redis URL. Skipped without docker-compose outside CI.
func composeConfig(t *testing.T, dotenv map[string]string) {
	tool := needBinary(t, "docker-compose")
	dir := t.TempDir()
	base := "services:\n" +
		"  appwrite:\n    image: appwrite/appwrite:1.8.0\n    networks: [appwrite]\n" +
		"  redis:\n    image: redis:7.2.4-alpine\n    networks: [appwrite]\n" +
		"  appwrite-realtime:\n    image: appwrite/appwrite:1.8.0\n    entrypoint: realtime\n    container_name: appwrite-realtime\n" +
		"    restart: unless-stopped\n    networks: [appwrite]\n    depends_on: [mariadb, redis]\n" +
		"    labels:\n      - \"traefik.http.routers.appwrite_realtime_ws.rule=PathPrefix(`/v1/realtime`)\"\n" +
		"    environment:\n      - _APP_REDIS_HOST\n      - _APP_REDIS_PORT\n      - _APP_REDIS_USER\n      - _APP_REDIS_PASS\n" +
		"  mariadb:\n    image: mariadb:10.11\n    networks: [appwrite]\n" +
		"networks:\n  appwrite:\n"
	var dot strings.Builder
	for k, v := range dotenv {
		fmt.Fprintf(&dot, "%s=%s\n", k, v)
	}
	override, err := os.ReadFile(appwriteOverride)
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"docker-compose.yml": base, ".env": dot.String(), "docker-compose.override.yml": string(override)} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(tool, "config")
	cmd.Dir = dir
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docker-compose config: %v\n%s", err, out)
	}
	var merged struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Entrypoint  []string          `yaml:"entrypoint"`
			Environment map[string]string `yaml:"environment"`
			Labels      map[string]string `yaml:"labels"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(out, &merged); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	rt := merged.Services["appwrite-realtime"]
	wantURL := fmt.Sprintf("redis://:s3cret@127.0.0.1:%s/0", dotenv["_APP_REDIS_PORT"])
	if !slices.Equal(rt.Entrypoint, []string{"switchboard", "serve"}) || rt.Image != "switchboard:latest" ||
		rt.Environment["SWITCHBOARD_REDIS_URL"] != wantURL || rt.Labels["traefik.http.routers.appwrite_realtime_wss.rule"] != "PathPrefix(`/v1/realtime`)" {
		t.Fatalf("docker-compose config merged appwrite-realtime into %+v; want Switchboard with %s\n%s", rt, wantURL, out)
	}
	t.Logf("docker-compose config accepts the override on an Appwrite-shaped base")
}

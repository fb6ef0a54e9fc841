package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/internal/appwritetest"
	"github.com/switchboard-rt/switchboard/internal/browsertest"
	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// TestAppwriteSDKsInChromium runs the unchanged Appwrite Web SDKs 28.0.0
// and 16.1.0 (test/browser/package-lock.json) in headless Chromium
// against a node with --auth appwrite, behind one origin: a real nginx
// routes /v1/realtime to the node and the rest of /v1 to the Appwrite
// stand-in, as Traefik routes them in Appwrite's docker-compose.yml, and
// serves the page and the SDKs' browser bundles.
//
// The stand-in is internal/appwritetest, not Appwrite: Appwrite cannot run
// here (no container runtime, no PHP packages). It answers
// createEmailPasswordSession with Appwrite's cookies (a host-only
// a_session_<P>_legacy and a SameSite=None a_session_<P>, which Chromium
// drops over http for lack of Secure, as it drops Appwrite's) and
// X-Fallback-Cookies, which Appwrite also sends to an origin that is an IP
// address.
//
// test/browser/appwrite-sdk.test.mjs signs users in and subscribes, then
// publishes events for team:t1/admin, label:vip and users/verified, and
// membership changes announced with permissionsChanged; it checks each
// page got exactly its own events over its one socket. Skipped without
// chromium, node, playwright-core or nginx (required in CI).
func TestAppwriteSDKsInChromium(t *testing.T) {
	env := browsertest.Find(t)
	nginx := needBinary(t, "nginx")
	aw := appwritetest.NewExample()
	t.Cleanup(aw.Close)
	n := startNode(t, "--auth", "appwrite", "--appwrite-endpoint", aw.Endpoint(), "--appwrite-api-key", "k1",
		"--trusted-proxies", "127.0.0.1", "--connects-per-ip", "-1")

	// The script changes memberships at the stand-in through this, as an
	// app's backend would through Appwrite's Teams API.
	control := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/confirm-bob":
			aw.AddMembership("p1", appwritetest.Membership{ID: "m2", TeamID: "t1", UserID: "bob", Roles: []string{"admin"}, Confirm: true})
		case "/remove-ann":
			aw.RemoveMembership("p1", "m1")
		default:
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(control.Close)

	dir := t.TempDir()
	www := filepath.Join(dir, "www")
	if err := os.Mkdir(www, 0o755); err != nil {
		t.Fatal(err)
	}
	for file, pkg := range map[string]string{"sdk28": "appwrite", "sdk16": "appwrite16"} {
		sdk, err := os.ReadFile(filepath.Join(env.Dir, "node_modules", pkg, "dist", "iife", "sdk.js"))
		if err != nil {
			t.Fatal(err) // npm ci --prefix test/browser installs both
		}
		// An empty icon: Chromium's request for /favicon.ico would 404
		// and count as a page error.
		page := `<!doctype html><meta charset="utf-8"><link rel="icon" href="data:,"><title>` + file + `</title><script src="/` + file + `.js"></script><pre id="log">waiting</pre>`
		if err := os.WriteFile(filepath.Join(www, file+".js"), sdk, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(www, file+".html"), []byte(page), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	front := freePort(t)
	standIn := strings.TrimPrefix(aw.URL, "http://")
	// Traefik's rules in Appwrite's compose: PathPrefix(`/v1/realtime`) to
	// appwrite-realtime, everything else to appwrite.
	cfg := `worker_processes 1;
events { worker_connections 1024; }
http {
` + nginxTempPaths(dir) + `
    types { text/html html; text/javascript js; }
    map $http_upgrade $connection_upgrade { default upgrade; '' close; }
    server {
        listen ` + front + `;
        root ` + www + `;
        location /v1/realtime {
            proxy_pass http://` + n.addr + `;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 1h;
        }
        location /v1/ {
            proxy_pass http://` + standIn + `;
            proxy_set_header Host $http_host;
        }
    }
}
`
	runNginx(t, nginx, dir, cfg)
	origin := "http://" + front
	redistest.Eventually(t, 10*time.Second, "nginx serving the page", func() bool {
		resp, err := http.Get(origin + "/sdk16.html")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	out := env.Run(t, browsertest.Script{
		Path:    "appwrite-sdk.test.mjs",
		Env:     []string{"ORIGIN=" + origin, "ADMIN=" + n.admin, "CONTROL=" + control.URL},
		Timeout: 2 * time.Minute,
	})
	pages := 0
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var p struct {
			SDK, User string
			Cookies   []string
		}
		if json.Unmarshal(sc.Bytes(), &p) != nil {
			continue
		}
		pages++
		t.Logf("%s", sc.Bytes())
		// Chromium keeps the _legacy cookie only: the node found the user
		// through it, from the upgrade that went through nginx.
		if strings.Join(p.Cookies, ",") != "a_session_p1_legacy" {
			t.Errorf("SDK %s %s: cookies %v", p.SDK, p.User, p.Cookies)
		}
	}
	if pages != 6 {
		t.Fatalf("%d pages reported, want 6 (2 SDKs x 3 users):\n%s", pages, out)
	}
	// Everything reached the stand-in through the origin, and the two
	// permission changes were re-resolved with the key.
	if got := aw.Calls("POST /v1/account/sessions/email"); got != 6 {
		t.Errorf("%d sign-ins reached the stand-in, want 6", got)
	}
	if got := aw.Calls("GET /v1/users/{id}"); got != 2 {
		t.Errorf("%d GET /users/{id} (permissionsChanged re-resolutions), want 2", got)
	}
}

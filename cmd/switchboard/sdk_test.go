package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestAppwriteWebSDK runs the official Appwrite Web SDK (npm `appwrite`,
// six versions in three protocol generations: 16.1, 21.5 and 22.0 with
// channels[] in the URL, 24.2 with URL slots, 25.0 and 28 with subscribe
// messages; pinned in test/sdk/package-lock.json) from
// Node against a node started here, and appwrite@28's presence
// (realtime.upsertPresence). `make test` installs the packages
// with npm ci; CI must have Node, elsewhere its absence skips the test.
func TestAppwriteWebSDK(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("node is required in CI")
		}
		t.Skip("node is not installed; the Appwrite SDK test needs it")
	}
	dir, err := filepath.Abs("../../test/sdk")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "appwrite")); err != nil {
		t.Fatalf("test/sdk has no node_modules: run `npm ci --prefix test/sdk` (make test does): %v", err)
	}
	n := startNode(t, "--auth", "jwt", "--jwt-secret", "sdk-secret", "--connects-per-ip", "-1")
	sign := func(uid string, roles ...string) string {
		token, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": uid, "roles": roles, "exp": time.Now().Add(time.Hour).Unix()}).
			SignedString([]byte("sdk-secret"))
		if err != nil {
			t.Fatal(err)
		}
		return token
	}
	token := sign("u1")
	// The presence check's users: two in team t1, one outside it.
	jwts, _ := json.Marshal(map[string]string{"u1t1": sign("u1", "team:t1"), "u2t1": sign("u2", "team:t1"), "u3": sign("u3")})
	cmd := exec.Command(node, "sdk.test.mjs")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "SWITCHBOARD_ADDR="+n.addr, "SWITCHBOARD_ADMIN="+n.admin, "SWITCHBOARD_JWT="+token, "SWITCHBOARD_JWTS="+string(jwts))
	out, err := cmd.CombinedOutput()
	t.Logf("node sdk.test.mjs:\n%s", out)
	if err != nil {
		t.Fatalf("SDK test failed: %v", err)
	}
	if !strings.Contains(string(out), "7 passed, 0 failed") {
		t.Fatal("SDK test did not report its checks")
	}
}

package auth

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/switchboard-rt/switchboard/internal/appwritetest"
)

// These tests run the resolver against internal/appwritetest, a stand-in
// for Appwrite's REST API (shapes from Appwrite 1.8.0's OpenAPI spec):
// Appwrite itself cannot run here (no container runtime, no PHP packages).

// standIn starts internal/appwritetest's example users (see NewExample).
func standIn(t *testing.T) *appwritetest.Server {
	t.Helper()
	s := appwritetest.NewExample()
	t.Cleanup(s.Close)
	return s
}

func newAppwrite(t *testing.T, s *appwritetest.Server, key string, reg prometheus.Registerer) *Appwrite {
	t.Helper()
	a, err := NewAppwrite(AppwriteOptions{Endpoint: s.Endpoint(), APIKey: key, Timeout: 2 * time.Second, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// wantRoles are getRoles' answers for the stand-in's users.
var wantRoles = map[string][]string{
	"ann": {"user:ann", "users", "user:ann/verified", "users/verified", "team:t1", "member:m1", "team:t1/owner", "team:t1/admin", "label:vip"},
	"bob": {"user:bob", "users", "user:bob/unverified", "users/unverified", "team:t2", "member:m3"},
	"cat": {"user:cat", "users", "user:cat/verified", "users/verified"},
}

// TestAppwriteRolesAreGetRoles: every credential form, with and without an
// API key, gives User::getRoles' roles (verified/unverified, team roles,
// labels, unconfirmed memberships left out) and the Account model as user.
func TestAppwriteRolesAreGetRoles(t *testing.T) {
	s := standIn(t)
	ctx := context.Background()
	for _, key := range []string{"k1", ""} {
		a := newAppwrite(t, s, key, nil)
		for uid, want := range wantRoles {
			for _, c := range []Credentials{
				{Project: "p1", Session: s.Session("p1", uid)},
				{Project: "p1", JWT: s.JWT("p1", uid)},
			} {
				id, err := a.Resolve(ctx, c)
				if err != nil {
					t.Fatalf("key %q, %s: %v", key, uid, err)
				}
				if id.UserID != uid || !reflect.DeepEqual(id.Roles, want) {
					t.Errorf("key %q, %s: %q %v, want %v", key, uid, id.UserID, id.Roles, want)
				}
				var acct map[string]any
				if err := json.Unmarshal(id.User, &acct); err != nil || acct["$id"] != uid || acct["registration"] == nil {
					t.Errorf("key %q, %s: user %s is not the Account model", key, uid, id.User)
				}
				for _, secret := range []string{"password", "hash", "hashOptions"} {
					if _, ok := acct[secret]; ok {
						t.Errorf("key %q, %s: the account shows %q", key, uid, secret)
					}
				}
			}
		}
	}
}

// TestAppwriteAccountIsVerbatim: the user sent to the client is the body
// of GET /account, byte for byte once compacted.
func TestAppwriteAccountIsVerbatim(t *testing.T) {
	s := standIn(t)
	a := newAppwrite(t, s, "k1", nil)
	sess := s.Session("p1", "ann")
	id, err := a.Resolve(context.Background(), Credentials{Project: "p1", Session: sess})
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, s.Endpoint()+"/account", nil)
	req.Header.Set("X-Appwrite-Project", "p1")
	req.AddCookie(&http.Cookie{Name: "a_session_p1", Value: sess})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var direct, got any
	_ = json.NewDecoder(resp.Body).Decode(&direct)
	_ = json.Unmarshal(id.User, &got)
	if !reflect.DeepEqual(direct, got) {
		t.Fatalf("user %s differs from GET /account %v", id.User, direct)
	}
}

func TestAppwriteGuestsAndRefusals(t *testing.T) {
	s := standIn(t)
	a := newAppwrite(t, s, "k1", nil)
	ctx := context.Background()
	if id, err := a.Resolve(ctx, Credentials{Project: "p1"}); err != nil || !reflect.DeepEqual(id, Guest()) {
		t.Fatalf("no credential: %+v %v", id, err)
	}
	for name, c := range map[string]Credentials{
		"forged session":            {Project: "p1", Session: "bm90LWEtc2Vzc2lvbg=="},
		"forged jwt":                {Project: "p1", JWT: "jwt.ann.0"},
		"another project's session": {Project: "p1", Session: s.Session("p2", "dan")},
		"another project's jwt":     {Project: "p1", JWT: s.JWT("p2", "dan")},
		"header injection":          {Project: "p1", Session: "x\r\nX-Appwrite-Key: k1"},
	} {
		id, err := a.Resolve(ctx, c)
		if !errors.Is(err, ErrUnauthorized) || len(id.Roles) != 0 {
			t.Errorf("%s: %+v %v; want ErrUnauthorized and nothing granted", name, id, err)
		}
	}
	for _, c := range []Credentials{{Project: "nope"}, {Project: "nope", Session: s.Session("p1", "ann")}} {
		if id, err := a.Resolve(ctx, c); !errors.Is(err, ErrUnknownProject) || len(id.Roles) != 0 {
			t.Errorf("unknown project %+v: %+v %v", c, id, err)
		}
	}
	s.AddUser("p1", appwritetest.User{ID: "eve", Email: "eve@example.com", Blocked: true})
	if _, err := a.Resolve(ctx, Credentials{Project: "p1", Session: s.Session("p1", "eve")}); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("blocked user: %v", err)
	}
	if _, err := a.ResolveUser(ctx, "p1", "eve"); !errors.Is(err, ErrUnauthorized) {
		t.Errorf("blocked user re-resolved: %v", err)
	}
}

// TestAppwriteResolveUser: with a key, a membership added or removed at
// Appwrite shows in ResolveUser and in the next Resolve of the user's
// session (its cached answer is dropped); without a key ResolveUser is
// unsupported.
func TestAppwriteResolveUser(t *testing.T) {
	s := standIn(t)
	a := newAppwrite(t, s, "k1", nil)
	ctx := context.Background()
	sess := s.Session("p1", "cat")
	if _, err := a.Resolve(ctx, Credentials{Project: "p1", Session: sess}); err != nil {
		t.Fatal(err)
	}
	s.AddMembership("p1", appwritetest.Membership{ID: "m9", TeamID: "t1", UserID: "cat", Roles: []string{"admin"}, Confirm: true})
	want := append(append([]string(nil), wantRoles["cat"]...), "team:t1", "member:m9", "team:t1/admin")
	id, err := a.ResolveUser(ctx, "p1", "cat")
	if err != nil || !reflect.DeepEqual(id.Roles, want) {
		t.Fatalf("ResolveUser after a membership was added: %v %v, want %v", id.Roles, err, want)
	}
	if id, _ := a.Resolve(ctx, Credentials{Project: "p1", Session: sess}); !reflect.DeepEqual(id.Roles, want) {
		t.Fatalf("session after the change: %v", id.Roles)
	}
	s.RemoveMembership("p1", "m9")
	if id, err := a.ResolveUser(ctx, "p1", "cat"); err != nil || !reflect.DeepEqual(id.Roles, wantRoles["cat"]) {
		t.Fatalf("ResolveUser after the membership was removed: %v %v", id.Roles, err)
	}
	if _, err := a.ResolveUser(ctx, "p1", "ghost"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("a user Appwrite does not know: %v", err)
	}
	if _, err := a.ResolveUser(ctx, "p1", "team:t1"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("a user id that is not an id: %v", err)
	}
	if _, err := a.ResolveUser(ctx, "p2", "dan"); err == nil || errors.Is(err, ErrUnauthorized) {
		t.Fatalf("p1's key used for p2 must fail as an operator error: %v", err)
	}
	noKey := newAppwrite(t, s, "", nil)
	if _, err := noKey.ResolveUser(ctx, "p1", "cat"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("without a key: %v", err)
	}
}

// TestAppwriteFailingGrantsNothing: refused connections, 5xx, slow
// answers, bodies that are too long or not JSON, or JSON of the wrong
// shape: each is an error that is not ErrUnauthorized and grants nothing.
func TestAppwriteFailingGrantsNothing(t *testing.T) {
	s := standIn(t)
	sess := s.Session("p1", "ann")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := "http://" + ln.Addr().String() + "/v1"
	ln.Close()
	faults := appwritetest.Failures()
	for name, f := range map[string]appwritetest.Fault{
		"wrong shape": func(w http.ResponseWriter, r *http.Request) bool {
			w.Write([]byte(`{"$id":"ann","labels":"vip","emailVerification":true}`))
			return true
		},
		"memberships fail": func(w http.ResponseWriter, r *http.Request) bool {
			if strings.HasSuffix(r.URL.Path, "/memberships") {
				http.Error(w, "boom", 503)
				return true
			}
			return false
		},
		"forged role": func(w http.ResponseWriter, r *http.Request) bool {
			if strings.HasSuffix(r.URL.Path, "/memberships") {
				w.Write([]byte(`{"total":1,"memberships":[{"$id":"m1","userId":"ann","teamId":"t1","confirm":true,"roles":["x","../any"]}]}`))
				return true
			}
			return false
		},
	} {
		faults[name] = f
	}
	for name, f := range faults {
		t.Run(name, func(t *testing.T) {
			s.SetFault(f)
			defer s.SetFault(nil)
			a, _ := NewAppwrite(AppwriteOptions{Endpoint: s.Endpoint(), APIKey: "k1", Timeout: 300 * time.Millisecond})
			start := time.Now()
			id, err := a.Resolve(context.Background(), Credentials{Project: "p1", Session: sess})
			if err == nil || errors.Is(err, ErrUnauthorized) || len(id.Roles) != 0 || id.UserID != "" {
				t.Fatalf("%+v %v; want an error that grants nothing", id, err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("took %v with a 300ms timeout", d)
			}
		})
	}
	a, _ := NewAppwrite(AppwriteOptions{Endpoint: refused, Timeout: time.Second})
	if id, err := a.Resolve(context.Background(), Credentials{Project: "p1", Session: sess}); err == nil || errors.Is(err, ErrUnauthorized) || len(id.Roles) != 0 {
		t.Fatalf("refused: %+v %v", id, err)
	}
}

// TestAppwriteStormSharesLookups: 50 users x 100 concurrent lookups make
// one GET /account per credential; the answers are cached for the TTL;
// the metrics count calls, shared lookups and cache hits.
func TestAppwriteStormSharesLookups(t *testing.T) {
	s := standIn(t)
	gate := make(chan struct{})
	s.SetFault(func(w http.ResponseWriter, r *http.Request) bool { <-gate; return false })
	var sessions []string
	for i := range 50 {
		uid := "u" + string(rune('a'+i/26)) + string(rune('a'+i%26))
		s.AddUser("p1", appwritetest.User{ID: uid, Email: uid + "@example.com"})
		sessions = append(sessions, s.Session("p1", uid))
	}
	reg := prometheus.NewRegistry()
	a, err := NewAppwrite(AppwriteOptions{Endpoint: s.Endpoint(), APIKey: "k1", Timeout: 10 * time.Second, MaxInFlight: 8, Registry: reg})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 5000)
	for i := range 5000 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := a.Resolve(context.Background(), Credentials{Project: "p1", Session: sessions[i%50]})
			errs <- err
		}()
	}
	time.Sleep(200 * time.Millisecond) // let the lookups pile up behind the gate
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	most, creds := s.MaxAccountCallsPerCredential()
	if most != 1 || creds != 50 {
		t.Fatalf("GET /account: at most %d per credential over %d credentials; want 1 over 50", most, creds)
	}
	for _, sess := range sessions {
		if _, err := a.Resolve(context.Background(), Credentials{Project: "p1", Session: sess}); err != nil {
			t.Fatal(err)
		}
	}
	if most, _ := s.MaxAccountCallsPerCredential(); most != 1 {
		t.Fatalf("cached answers asked again: %d", most)
	}
	calls := counterValue(t, a.metrics.calls.WithLabelValues(callAccount))
	shared := counterValue(t, a.metrics.shared)
	hits := counterValue(t, a.metrics.cacheHits)
	if calls != 50 || shared+hits != 5000-50+50 {
		t.Fatalf("metrics: %v account calls, %v shared, %v cache hits", calls, shared, hits)
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, f := range families {
		found = found || f.GetName() == "switchboard_appwrite_request_seconds"
	}
	if !found {
		t.Fatal("latency histogram not registered")
	}
}

func counterValue(t *testing.T, c prometheus.Metric) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// TestAppwriteInFlightIsBounded: with MaxInFlight 3, Appwrite never sees
// more than 3 requests at once, however many distinct credentials wait.
func TestAppwriteInFlightIsBounded(t *testing.T) {
	s := standIn(t)
	var mu sync.Mutex
	cur, peak := 0, 0
	s.SetFault(func(w http.ResponseWriter, r *http.Request) bool {
		mu.Lock()
		cur++
		peak = max(peak, cur)
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		mu.Lock()
		cur--
		mu.Unlock()
		return false
	})
	a, _ := NewAppwrite(AppwriteOptions{Endpoint: s.Endpoint(), APIKey: "k1", Timeout: 10 * time.Second, MaxInFlight: 3})
	var wg sync.WaitGroup
	for range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := a.Resolve(context.Background(), Credentials{Project: "p1", Session: s.Session("p1", "ann")}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if peak > 3 {
		t.Fatalf("%d requests in flight, bound 3", peak)
	}
}

func TestAppwriteOptions(t *testing.T) {
	for _, o := range []AppwriteOptions{
		{}, {Endpoint: "appwrite:80/v1"}, {Endpoint: "ftp://x/v1"},
		{Endpoint: "http://x/v1", Timeout: -1}, {Endpoint: "http://x/v1", MaxInFlight: -1},
		{Endpoint: "http://x/v1", MaxBody: -1}, {Endpoint: "http://x/v1", CacheSize: -1},
	} {
		if _, err := NewAppwrite(o); err == nil {
			t.Errorf("NewAppwrite(%+v) accepted", o)
		}
	}
	a, err := NewAppwrite(AppwriteOptions{Endpoint: "http://x/v1/"})
	if err != nil || a.opts.MaxInFlight != DefaultAppwriteMaxInFlight || a.opts.MaxBody != DefaultAppwriteMaxBody || a.endpoint != "http://x/v1" {
		t.Fatalf("defaults: %+v %v", a.opts, err)
	}
}

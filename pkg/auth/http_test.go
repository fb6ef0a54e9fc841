package auth

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeBackend answers like an Appwrite-style API: sessions "s-<uid>" are
// valid, "expired" is refused, "slow" never answers in time.
type roleTable struct {
	mu sync.Mutex
	m  map[string][]string
}

func (rt *roleTable) get(uid string) ([]string, bool) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	r, ok := rt.m[uid]
	return r, ok
}

func (rt *roleTable) set(uid string, roles []string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if roles == nil {
		delete(rt.m, uid)
		return
	}
	rt.m[uid] = roles
}

func fakeBackend(t *testing.T, roles *roleTable) (*httptest.Server, *atomic.Int32) {
	t.Helper()
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		var req map[string]string
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req["project"] != "p1" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		uid := req["userId"]
		switch s := req["session"]; {
		case s == "slow":
			time.Sleep(2 * time.Second)
		case s == "expired":
			http.Error(w, "nope", http.StatusUnauthorized)
			return
		case s == "broken":
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		case s == "anon":
			_ = json.NewEncoder(w).Encode(map[string]any{"userId": ""})
			return
		case len(s) > 2:
			uid = s[2:]
		}
		r2, ok := roles.get(uid)
		if !ok {
			_ = json.NewEncoder(w).Encode(map[string]any{"userId": nil})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"userId": uid, "roles": r2, "user": map[string]string{"$id": uid, "name": "N"}})
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func TestHTTPResolver(t *testing.T) {
	roles := &roleTable{m: map[string][]string{"u1": {"team:t1", "team:t1/owner", "any"}}}
	srv, calls := fakeBackend(t, roles)
	r, err := NewHTTP(HTTPOptions{URL: srv.URL, Timeout: 300 * time.Millisecond, CacheTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	id, err := r.Resolve(ctx, Credentials{Project: "p1", Session: "s-u1"})
	if err != nil {
		t.Fatal(err)
	}
	if id.UserID != "u1" || !reflect.DeepEqual(id.Roles, []string{"users", "user:u1", "team:t1", "team:t1/owner"}) ||
		string(id.User) != `{"$id":"u1","name":"N"}` {
		t.Fatalf("identity %+v %s", id, id.User)
	}
	// Cached: the backend is asked once.
	if _, err := r.Resolve(ctx, Credentials{Project: "p1", Session: "s-u1"}); err != nil || calls.Load() != 1 {
		t.Fatalf("second resolve: %v, %d backend calls", err, calls.Load())
	}

	if id, err := r.Resolve(ctx, Credentials{Project: "p1", Session: "anon"}); err != nil || !reflect.DeepEqual(id, Guest()) {
		t.Fatalf("anonymous session: %+v %v", id, err)
	}
	if _, err := r.Resolve(ctx, Credentials{Project: "p1", Session: "expired"}); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("401: %v", err)
	}
	for _, s := range []string{"broken", "slow"} {
		start := time.Now()
		id, err := r.Resolve(ctx, Credentials{Project: "p1", Session: s})
		if err == nil || errors.Is(err, ErrUnauthorized) || len(id.Roles) != 0 {
			t.Fatalf("%s: %+v %v; want an error that grants nothing", s, id, err)
		}
		if time.Since(start) > 2*time.Second {
			t.Fatalf("%s: took %v, the timeout is 300ms", s, time.Since(start))
		}
	}

	// A permission change: the backend now says u1 left the team.
	roles.set("u1", []string{})
	id, err = r.ResolveUser(ctx, "p1", "u1")
	if err != nil || !reflect.DeepEqual(id.Roles, []string{"users", "user:u1"}) {
		t.Fatalf("ResolveUser: %+v %v", id, err)
	}
	// ...and the cached session answer was dropped with it.
	if id, _ := r.Resolve(ctx, Credentials{Project: "p1", Session: "s-u1"}); !reflect.DeepEqual(id.Roles, []string{"users", "user:u1"}) {
		t.Fatalf("session after permission change: %v", id.Roles)
	}
	roles.set("u1", nil)
	if _, err := r.ResolveUser(ctx, "p1", "u1"); !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("deleted user: %v", err)
	}
}

func TestHTTPResolverBackendDown(t *testing.T) {
	srv, _ := fakeBackend(t, &roleTable{})
	url := srv.URL
	srv.Close()
	r, _ := NewHTTP(HTTPOptions{URL: url, Timeout: time.Second})
	id, err := r.Resolve(context.Background(), Credentials{Project: "p1", Session: "s-u1"})
	if err == nil || errors.Is(err, ErrUnauthorized) || len(id.Roles) != 0 {
		t.Fatalf("backend down: %+v %v", id, err)
	}
}

func TestHTTPCacheIsBounded(t *testing.T) {
	roles := &roleTable{m: map[string][]string{}}
	for i := 0; i < 50; i++ {
		roles.set(string(rune('a'+i)), []string{})
	}
	srv, _ := fakeBackend(t, roles)
	r, _ := NewHTTP(HTTPOptions{URL: srv.URL, CacheSize: 10})
	for uid := range roles.m {
		if _, err := r.Resolve(context.Background(), Credentials{Project: "p1", Session: "s-" + uid}); err != nil {
			t.Fatal(err)
		}
	}
	if n := r.cache.len(); n > 10 {
		t.Fatalf("cache holds %d answers, limit 10", n)
	}
}

// Zero takes the default; a negative CacheTTL turns the cache off (as
// --auth-cache-ttl -1s); no other option can be switched off, so a negative
// one is refused.
func TestHTTPOptionsZeroIsTheDefaultNegativeTTLNeverCaches(t *testing.T) {
	roles := &roleTable{m: map[string][]string{"u1": {"team:t1"}}}
	srv, calls := fakeBackend(t, roles)
	creds := Credentials{Project: "p1", Session: "s-u1"}
	for _, tc := range []struct {
		name      string
		ttl       time.Duration
		wantCalls int32
	}{{"default", 0, 1}, {"-1ns", -1, 2}, {"-1s", -time.Second, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			r, err := NewHTTP(HTTPOptions{URL: srv.URL, CacheTTL: tc.ttl})
			if err != nil {
				t.Fatal(err)
			}
			if tc.ttl == 0 && (r.opts.CacheTTL != DefaultCacheTTL || r.opts.Timeout != DefaultHTTPTimeout || r.opts.CacheSize != DefaultCacheSize) {
				t.Fatalf("zero options became %+v", r.opts)
			}
			calls.Store(0)
			for range 2 {
				if _, err := r.Resolve(context.Background(), creds); err != nil {
					t.Fatal(err)
				}
			}
			if got := calls.Load(); got != tc.wantCalls {
				t.Fatalf("two lookups made %d backend calls, want %d", got, tc.wantCalls)
			}
		})
	}
	for _, o := range []HTTPOptions{{URL: srv.URL, Timeout: -time.Second}, {URL: srv.URL, CacheSize: -1}} {
		if _, err := NewHTTP(o); err == nil {
			t.Errorf("NewHTTP(%+v) accepted a negative option", o)
		}
	}
}

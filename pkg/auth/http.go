package auth

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"
)

// Defaults of HTTPOptions; a zero field takes its default.
const (
	DefaultHTTPTimeout = 3 * time.Second
	DefaultCacheTTL    = 30 * time.Second
	DefaultCacheSize   = 100_000
)

// HTTPOptions configures an HTTP resolver. A zero field takes its default;
// a negative CacheTTL turns the cache off, and NewHTTP refuses any other
// negative value.
type HTTPOptions struct {
	URL     string        // the backend endpoint that answers POSTs
	Timeout time.Duration // bound on one backend call; default DefaultHTTPTimeout
	// CacheTTL is how long an answer is reused; default DefaultCacheTTL.
	// A negative value (-1s) turns the cache off: every lookup asks the
	// backend.
	CacheTTL   time.Duration
	CacheSize  int          // most answers kept; default DefaultCacheSize
	Client     *http.Client // default a client with Timeout
	BearerAuth string       // optional "Authorization: Bearer" sent to the backend
}

// HTTP resolves credentials by asking a backend:
//
//	POST URL  {"project":P,"session":S} | {"project":P,"jwt":J} | {"project":P,"userId":U}
//	200       {"userId":U,"roles":[...],"user":{...}}   ("userId" empty or absent: a guest)
//	401/403   the credentials are not valid
//
// Any other answer, a timeout or a refused connection is an error that is
// not ErrUnauthorized: the caller must not grant anything on it. Answers
// are cached per credential for CacheTTL so that a reconnect storm does not
// become a storm on the backend; a lookup by user id (a permission change)
// always asks the backend and drops that user's cached answers.
type HTTP struct {
	opts   HTTPOptions
	client *http.Client
	cache  *answerCache
}

// NewHTTP returns an HTTP resolver.
func NewHTTP(opts HTTPOptions) (*HTTP, error) {
	if opts.URL == "" {
		return nil, errors.New("auth: http resolver needs a URL")
	}
	if opts.Timeout < 0 || opts.CacheSize < 0 {
		return nil, fmt.Errorf("auth: http resolver timeout %v or cache size %d is negative", opts.Timeout, opts.CacheSize)
	}
	opts.Timeout = cmp.Or(opts.Timeout, DefaultHTTPTimeout)
	opts.CacheTTL = cmp.Or(opts.CacheTTL, DefaultCacheTTL)
	opts.CacheSize = cmp.Or(opts.CacheSize, DefaultCacheSize)
	client := opts.Client
	if client == nil {
		client = &http.Client{Timeout: opts.Timeout}
	}
	return &HTTP{opts: opts, client: client, cache: newAnswerCache(opts.CacheTTL, opts.CacheSize)}, nil
}

// Resolve implements Resolver.
func (h *HTTP) Resolve(ctx context.Context, c Credentials) (Identity, error) {
	switch {
	case c.JWT != "":
		return h.cached(ctx, cacheKey{c.Project, "jwt", c.JWT})
	case c.Session != "":
		return h.cached(ctx, cacheKey{c.Project, "session", c.Session})
	default:
		return Guest(), nil
	}
}

// ResolveUser implements UserResolver: it asks the backend for the current
// roles of uid, bypassing and refreshing the cache.
func (h *HTTP) ResolveUser(ctx context.Context, project, uid string) (Identity, error) {
	id, err := h.ask(ctx, cacheKey{project, "userId", uid})
	h.cache.dropUser(project, uid)
	return id, err
}

func (h *HTTP) cached(ctx context.Context, k cacheKey) (Identity, error) {
	now := time.Now()
	if id, ok := h.cache.get(k, now); ok {
		return id, nil
	}
	id, err := h.ask(ctx, k)
	if err != nil {
		return id, err
	}
	h.cache.put(k, id, now)
	return id, nil
}

type backendAnswer struct {
	UserID string          `json:"userId"`
	Roles  []string        `json:"roles"`
	User   json.RawMessage `json:"user"`
}

// ask makes one backend call.
func (h *HTTP) ask(ctx context.Context, k cacheKey) (Identity, error) {
	body, _ := json.Marshal(map[string]string{"project": k.project, k.kind: k.value})
	ctx, cancel := context.WithTimeout(ctx, h.opts.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.opts.URL, bytes.NewReader(body))
	if err != nil {
		return Identity{}, fmt.Errorf("auth backend: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if h.opts.BearerAuth != "" {
		req.Header.Set("Authorization", "Bearer "+h.opts.BearerAuth)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return Identity{}, fmt.Errorf("auth backend unavailable: %w", err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return Identity{}, fmt.Errorf("%w: backend answered %s", ErrUnauthorized, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return Identity{}, fmt.Errorf("auth backend answered %s", resp.Status)
	}
	var a backendAnswer
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&a); err != nil {
		return Identity{}, fmt.Errorf("auth backend answer: %w", err)
	}
	if a.UserID == "" {
		if k.kind == "userId" {
			// Asked about a user, told about nobody: the user is gone.
			return Identity{}, fmt.Errorf("%w: backend knows no user %q", ErrUnauthorized, k.value)
		}
		return Guest(), nil
	}
	if k.kind == "userId" && a.UserID != k.value {
		return Identity{}, fmt.Errorf("auth backend answered for user %q when asked about %q", a.UserID, k.value)
	}
	id := Identity{UserID: a.UserID, Roles: UserRoles(a.UserID, a.Roles), User: a.User}
	if len(id.User) == 0 || string(id.User) == "null" {
		id.User, _ = json.Marshal(map[string]string{"$id": a.UserID})
	}
	return id, nil
}

// UserResolver is implemented by resolvers that can re-resolve a user by id
// alone, which is what a permission change needs. A resolver without it
// (JWT) cannot: its connections drop to guest and must re-authenticate.
type UserResolver interface {
	ResolveUser(ctx context.Context, project, uid string) (Identity, error)
}

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
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Defaults of AppwriteOptions; a zero field takes its default.
const (
	// DefaultAppwriteMaxInFlight bounds the requests one node has in
	// flight to Appwrite. A storm of distinct credentials queues behind it
	// (each lookup still bounded by Timeout) rather than opening thousands
	// of connections to Appwrite's PHP workers.
	DefaultAppwriteMaxInFlight = 64
	// DefaultAppwriteMaxBody bounds one answer's body. An Account is about
	// 1 KB and a page of 100 memberships about 50 KB; 1 MiB is ample, and
	// a longer body is read no further and grants nothing.
	DefaultAppwriteMaxBody = 1 << 20
)

// membershipPage is the page size asked of Appwrite's membership lists
// (its own maximum is 5000, its default 25), and maxMemberships the most
// memberships read per user: Appwrite's own getRoles sees at most
// APP_LIMIT_SUBQUERY (1,000) memberships, so more could never grant more.
const (
	membershipPage = 100
	maxMemberships = 1000
	maxTeams       = 1000
)

// ErrUnknownProject means Appwrite answered 404 project_not_found: the
// connection's project does not exist there. Callers refuse the connection
// as Appwrite's own realtime worker does.
var ErrUnknownProject = errors.New("auth: unknown project")

// AppwriteOptions configures an Appwrite resolver. A zero field takes its
// default; a negative CacheTTL turns the cache off, and NewAppwrite refuses
// any other negative value.
type AppwriteOptions struct {
	// Endpoint is Appwrite's API root, as the SDKs' setEndpoint takes it
	// (https://appwrite.example.com/v1).
	Endpoint string
	// APIKey is an Appwrite API key with the users.read scope. With it,
	// memberships come from GET /users/{id}/memberships and a permission
	// change re-resolves the user; without it, from the user's own
	// session (GET /teams, then each team's memberships), and a permission
	// change drops the user's connections to guest.
	APIKey      string
	Timeout     time.Duration // bound on one lookup (all its requests); default DefaultHTTPTimeout
	CacheTTL    time.Duration // how long an answer is reused; default DefaultCacheTTL; negative: never
	CacheSize   int           // most answers kept; default DefaultCacheSize
	MaxInFlight int           // requests in flight to Appwrite; default DefaultAppwriteMaxInFlight
	MaxBody     int64         // largest answer body read; default DefaultAppwriteMaxBody
	Client      *http.Client  // default a client with Timeout
	// Registry receives the resolver's metrics; nil registers none.
	Registry prometheus.Registerer
}

// Appwrite resolves credentials through Appwrite's public REST API
// (Appwrite 1.5 or later: the X-Appwrite-Session header and JSON queries).
//
//	GET {endpoint}/account                  X-Appwrite-Session or X-Appwrite-JWT: the Account
//	GET {endpoint}/users/{U}                X-Appwrite-Key: the user (permission changes)
//	GET {endpoint}/users/{U}/memberships    X-Appwrite-Key: the memberships
//	GET {endpoint}/teams, /teams/{T}/memberships   the user's own credential, without a key
//
// every request with X-Appwrite-Project. Roles are Appwrite's
// User::getRoles: user:U, users, user:U/verified and users/verified (or the
// /unverified forms), then per confirmed membership team:T, member:M and
// team:T/<role>, then label:L; no credential is a guest. `any` is not a
// connection role here: the index matches events for `any` against every
// connection.
//
// Nothing is granted on anything but a complete, well-formed answer: a
// refused connection, a timeout, a 5xx, a body that is not JSON or is
// longer than MaxBody is an error that is not ErrUnauthorized. Answers are
// cached per credential for CacheTTL, concurrent lookups of one credential
// share one lookup, and requests in flight are bounded by MaxInFlight.
type Appwrite struct {
	opts     AppwriteOptions
	endpoint string
	client   *http.Client
	cache    *answerCache
	flight   flight
	slots    chan struct{} // a token per request in flight
	metrics  appwriteMetrics
}

// NewAppwrite returns an Appwrite resolver.
func NewAppwrite(opts AppwriteOptions) (*Appwrite, error) {
	u, err := url.Parse(opts.Endpoint)
	if opts.Endpoint == "" || err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("auth: appwrite resolver needs an http(s) endpoint, got %q", opts.Endpoint)
	}
	if opts.Timeout < 0 || opts.CacheSize < 0 || opts.MaxInFlight < 0 || opts.MaxBody < 0 {
		return nil, fmt.Errorf("auth: appwrite resolver: timeout %v, cache size %d, max in flight %d or max body %d is negative",
			opts.Timeout, opts.CacheSize, opts.MaxInFlight, opts.MaxBody)
	}
	opts.Timeout = cmp.Or(opts.Timeout, DefaultHTTPTimeout)
	opts.CacheTTL = cmp.Or(opts.CacheTTL, DefaultCacheTTL)
	opts.CacheSize = cmp.Or(opts.CacheSize, DefaultCacheSize)
	opts.MaxInFlight = cmp.Or(opts.MaxInFlight, DefaultAppwriteMaxInFlight)
	opts.MaxBody = cmp.Or(opts.MaxBody, DefaultAppwriteMaxBody)
	client := opts.Client
	if client == nil {
		client = &http.Client{Timeout: opts.Timeout}
	}
	a := &Appwrite{
		opts:     opts,
		endpoint: strings.TrimRight(opts.Endpoint, "/"),
		client:   client,
		cache:    newAnswerCache(opts.CacheTTL, opts.CacheSize),
		slots:    make(chan struct{}, opts.MaxInFlight),
		metrics:  newAppwriteMetrics(),
	}
	if opts.Registry != nil {
		if err := a.metrics.register(opts.Registry); err != nil {
			return nil, fmt.Errorf("auth: appwrite resolver metrics: %w", err)
		}
	}
	return a, nil
}

// Resolve implements Resolver. No credential still asks Appwrite once per
// project and TTL (GET /account without one: 401 for a project that
// exists, 404 project_not_found for one that does not), so a guest of an
// unknown project is refused as Appwrite's worker refuses it.
func (a *Appwrite) Resolve(ctx context.Context, c Credentials) (Identity, error) {
	var k cacheKey
	switch {
	case c.JWT != "":
		k = cacheKey{c.Project, "jwt", c.JWT}
	case c.Session != "":
		k = cacheKey{c.Project, "session", c.Session}
	default:
		k = cacheKey{c.Project, "guest", ""}
	}
	if c.Project == "" {
		return Identity{}, fmt.Errorf("%w: no project", ErrUnknownProject)
	}
	if !headerSafe(k.value) {
		// Never forwarded: a value Go's client would refuse, or one that
		// could split a header. No Appwrite credential looks like this.
		return Identity{}, fmt.Errorf("%w: credential has characters no Appwrite credential has", ErrUnauthorized)
	}
	return a.lookup(ctx, k, func(ctx context.Context) (Identity, error) { return a.resolveCredential(ctx, k) })
}

// ResolveUser implements UserResolver: with an API key it asks Appwrite for
// the user and its memberships, bypassing the cache, and drops the user's
// cached answers. Without a key it answers errors.ErrUnsupported (the
// server then drops the user's connections to guest and asks them to
// authenticate again): a session-only resolver has no credential of the
// user's to ask with.
func (a *Appwrite) ResolveUser(ctx context.Context, project, uid string) (Identity, error) {
	if a.opts.APIKey == "" {
		return Identity{}, fmt.Errorf("auth: appwrite resolver without an API key cannot re-resolve user %q: %w", uid, errors.ErrUnsupported)
	}
	if !validID(uid) {
		return Identity{}, fmt.Errorf("%w: %q is not an Appwrite user id", ErrUnauthorized, uid)
	}
	k := cacheKey{project, "userId", uid}
	id, err, _ := a.flight.do(ctx, k, func() (Identity, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.Timeout)
		defer cancel()
		return a.resolveUserByKey(ctx, project, uid)
	})
	a.cache.dropUser(project, uid)
	return id, err
}

// lookup answers k from the cache, or shares one call of fn among all the
// callers asking for k at once. fn runs under its own timeout, detached
// from the first caller's context, so one caller giving up does not fail
// the others; each caller still waits no longer than its own context.
func (a *Appwrite) lookup(ctx context.Context, k cacheKey, fn func(context.Context) (Identity, error)) (Identity, error) {
	now := time.Now()
	if id, ok := a.cache.get(k, now); ok {
		a.metrics.cacheHits.Inc()
		return id, nil
	}
	id, err, shared := a.flight.do(ctx, k, func() (Identity, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.opts.Timeout)
		defer cancel()
		id, err := fn(ctx)
		if err == nil {
			a.cache.put(k, id, now)
		}
		return id, err
	})
	if shared {
		a.metrics.shared.Inc()
	}
	return id, err
}

// resolveCredential makes the calls one credential needs.
func (a *Appwrite) resolveCredential(ctx context.Context, k cacheKey) (Identity, error) {
	cred := credential{kind: k.kind, value: k.value}
	body, err := a.get(ctx, callAccount, k.project, "/account", nil, cred)
	if k.kind == "guest" {
		// Without a credential Appwrite answers 401 for a project it has.
		if errors.Is(err, ErrUnauthorized) {
			return Guest(), nil
		}
		if err == nil {
			return Identity{}, errors.New("appwrite answered GET /account without a credential with an account")
		}
		return Identity{}, err
	}
	if err != nil {
		return Identity{}, err
	}
	u, account, err := decodeAccount(body)
	if err != nil {
		return Identity{}, fmt.Errorf("appwrite GET /account: %w", err)
	}
	var ms []appwriteMembership
	if a.opts.APIKey != "" {
		ms, err = a.membershipsByKey(ctx, k.project, u.ID)
	} else {
		ms, err = a.membershipsBySession(ctx, k.project, u.ID, cred)
	}
	if err != nil {
		return Identity{}, err
	}
	return Identity{UserID: u.ID, Roles: appwriteRoles(u, ms), User: account}, nil
}

// resolveUserByKey reads a user and its memberships with the API key.
func (a *Appwrite) resolveUserByKey(ctx context.Context, project, uid string) (Identity, error) {
	body, err := a.get(ctx, callUser, project, "/users/"+url.PathEscape(uid), nil, credential{kind: "key"})
	if err != nil {
		return Identity{}, err
	}
	u, account, err := decodeAccount(body)
	if err != nil {
		return Identity{}, fmt.Errorf("appwrite GET /users/%s: %w", uid, err)
	}
	if u.ID != uid {
		return Identity{}, fmt.Errorf("appwrite answered for user %q when asked about %q", u.ID, uid)
	}
	if u.Status != nil && !*u.Status {
		// A blocked user: Appwrite's GET /account refuses its sessions
		// (401 user_blocked), so its connections hold nothing either.
		return Identity{}, fmt.Errorf("%w: user %q is blocked", ErrUnauthorized, uid)
	}
	ms, err := a.membershipsByKey(ctx, project, uid)
	if err != nil {
		return Identity{}, err
	}
	return Identity{UserID: uid, Roles: appwriteRoles(u, ms), User: account}, nil
}

// membershipsByKey pages through GET /users/{U}/memberships.
func (a *Appwrite) membershipsByKey(ctx context.Context, project, uid string) ([]appwriteMembership, error) {
	return a.pages(ctx, callMemberships, project, "/users/"+url.PathEscape(uid)+"/memberships", nil, uid, credential{kind: "key"})
}

// membershipsBySession finds the user's memberships with the user's own
// credential: GET /teams lists the teams the user can read (those it is a
// confirmed member of: a team is readable by team:T), then each team's
// memberships filtered to the user. It costs 1 + teams requests per lookup
// where the key costs one.
func (a *Appwrite) membershipsBySession(ctx context.Context, project, uid string, cred credential) ([]appwriteMembership, error) {
	var teams []string
	for offset := 0; offset < maxTeams; {
		q := pageQueries(offset, nil)
		body, err := a.get(ctx, callTeams, project, "/teams", q, cred)
		if err != nil {
			return nil, err
		}
		ids, err := decodeTeams(body)
		if err != nil {
			return nil, fmt.Errorf("appwrite GET /teams: %w", err)
		}
		teams = append(teams, ids...)
		offset += len(ids)
		if len(ids) < membershipPage {
			break
		}
	}
	var all []appwriteMembership
	for _, t := range teams {
		filter := `{"method":"equal","attribute":"userId","values":[` + strconv.Quote(uid) + `]}`
		ms, err := a.pages(ctx, callTeamMemberships, project, "/teams/"+url.PathEscape(t)+"/memberships", []string{filter}, uid, cred)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			if m.TeamID == t { // a team's list names no other team's membership
				all = append(all, m)
			}
		}
	}
	return all, nil
}

// pages reads a membership list page by page, up to maxMemberships.
func (a *Appwrite) pages(ctx context.Context, call, project, path string, filters []string, uid string, cred credential) ([]appwriteMembership, error) {
	var all []appwriteMembership
	for offset := 0; offset < maxMemberships; {
		body, err := a.get(ctx, call, project, path, pageQueries(offset, filters), cred)
		if err != nil {
			return nil, err
		}
		ms, n, err := decodeMemberships(body, uid)
		if err != nil {
			return nil, fmt.Errorf("appwrite GET %s: %w", path, err)
		}
		all = append(all, ms...)
		offset += n
		if n < membershipPage {
			break
		}
	}
	return all, nil
}

// pageQueries are Appwrite's JSON queries (1.5+) for one page.
func pageQueries(offset int, filters []string) []string {
	q := append([]string(nil), filters...)
	q = append(q, `{"method":"limit","values":[`+strconv.Itoa(membershipPage)+`]}`)
	if offset > 0 {
		q = append(q, `{"method":"offset","values":[`+strconv.Itoa(offset)+`]}`)
	}
	return q
}

// credential is how one request authenticates: a session, a JWT, the API
// key, or nothing ("guest").
type credential struct{ kind, value string }

// Calls, as the metrics label them.
const (
	callAccount         = "account"
	callUser            = "user"
	callMemberships     = "memberships"
	callTeams           = "teams"
	callTeamMemberships = "team_memberships"
)

// appwriteError is Appwrite's error body (the `error` model, fields
// message, code, type, version).
type appwriteError struct {
	Message string `json:"message"`
	Code    int    `json:"code"`
	Type    string `json:"type"`
}

// get makes one request, holding one of the in-flight slots while it runs,
// and returns the body of a 200. 401 and 403 are ErrUnauthorized, 404
// project_not_found is ErrUnknownProject; anything else is an error that
// grants nothing.
func (a *Appwrite) get(ctx context.Context, call, project, path string, queries []string, cred credential) ([]byte, error) {
	select {
	case a.slots <- struct{}{}:
	case <-ctx.Done():
		a.metrics.errors.WithLabelValues(call, "queued").Inc()
		return nil, fmt.Errorf("appwrite GET %s: waiting for a free request slot: %w", path, ctx.Err())
	}
	defer func() { <-a.slots }()

	u := a.endpoint + path
	if len(queries) > 0 {
		v := url.Values{"queries[]": queries}
		u += "?" + v.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, fmt.Errorf("appwrite GET %s: %w", path, err)
	}
	req.Header.Set("X-Appwrite-Project", project)
	req.Header.Set("Accept", "application/json")
	switch cred.kind {
	case "session":
		req.Header.Set("X-Appwrite-Session", cred.value)
	case "jwt":
		req.Header.Set("X-Appwrite-JWT", cred.value)
	case "key":
		req.Header.Set("X-Appwrite-Key", a.opts.APIKey)
	}
	a.metrics.calls.WithLabelValues(call).Inc()
	start := time.Now()
	resp, err := a.client.Do(req)
	if err != nil {
		a.metrics.latency.WithLabelValues(call).Observe(time.Since(start).Seconds())
		reason := "unreachable"
		if ctx.Err() != nil {
			reason = "timeout"
		}
		a.metrics.errors.WithLabelValues(call, reason).Inc()
		return nil, fmt.Errorf("appwrite unavailable: GET %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, a.opts.MaxBody+1))
	a.metrics.latency.WithLabelValues(call).Observe(time.Since(start).Seconds())
	switch {
	case err != nil:
		a.metrics.errors.WithLabelValues(call, "read").Inc()
		return nil, fmt.Errorf("appwrite GET %s: reading the answer: %w", path, err)
	case int64(len(body)) > a.opts.MaxBody:
		a.metrics.errors.WithLabelValues(call, "too_large").Inc()
		return nil, fmt.Errorf("appwrite GET %s: answer longer than %d bytes", path, a.opts.MaxBody)
	case resp.StatusCode == http.StatusOK:
		return body, nil
	}
	var ae appwriteError
	_ = json.Unmarshal(body, &ae) // best effort: the status decides
	switch {
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		if cred.kind == "key" {
			// The key is refused: the operator's fault, not the user's,
			// and not a reason to call the user unknown.
			a.metrics.errors.WithLabelValues(call, "key_refused").Inc()
			return nil, fmt.Errorf("appwrite refused the API key: GET %s: %s %s", path, resp.Status, ae.Type)
		}
		return nil, fmt.Errorf("%w: appwrite GET %s: %s %s", ErrUnauthorized, path, resp.Status, ae.Type)
	case resp.StatusCode == http.StatusNotFound && ae.Type == "project_not_found":
		a.metrics.errors.WithLabelValues(call, "project_not_found").Inc()
		return nil, fmt.Errorf("%w: appwrite has no project %q", ErrUnknownProject, project)
	case resp.StatusCode == http.StatusNotFound && ae.Type == "user_not_found" && call == callUser:
		return nil, fmt.Errorf("%w: appwrite has no user (GET %s)", ErrUnauthorized, path)
	default:
		a.metrics.errors.WithLabelValues(call, "status").Inc()
		return nil, fmt.Errorf("appwrite GET %s answered %s %s", path, resp.Status, ae.Type)
	}
}

// appwriteUser is what the roles need of Appwrite's user (or account)
// model.
type appwriteUser struct {
	ID                string   `json:"$id"`
	Status            *bool    `json:"status"`
	EmailVerification bool     `json:"emailVerification"`
	PhoneVerification bool     `json:"phoneVerification"`
	Labels            []string `json:"labels"`
}

// appwriteMembership is what the roles need of Appwrite's membership model.
type appwriteMembership struct {
	ID      string   `json:"$id"`
	UserID  string   `json:"userId"`
	TeamID  string   `json:"teamId"`
	Confirm bool     `json:"confirm"`
	Roles   []string `json:"roles"`
}

// accountOnly are the user model's fields Appwrite's Account model leaves
// out (Response::MODEL_ACCOUNT): GET /users/{U} with a key returns them,
// and no client may see them.
var accountOnly = []string{"password", "hash", "hashOptions"}

// decodeAccount reads a user or account body. It returns the fields the
// roles need and the account as the client sees it: the body compacted,
// without the fields the Account model leaves out. Anything but an object
// with a valid $id, valid labels and boolean verifications is an error.
func decodeAccount(body []byte) (appwriteUser, json.RawMessage, error) {
	var u appwriteUser
	if err := json.Unmarshal(body, &u); err != nil {
		return appwriteUser{}, nil, fmt.Errorf("the user is not valid JSON: %w", err)
	}
	if !validID(u.ID) {
		return appwriteUser{}, nil, fmt.Errorf("the user's $id %q is not an Appwrite id", u.ID)
	}
	for _, l := range u.Labels {
		if !validID(l) {
			return appwriteUser{}, nil, fmt.Errorf("user %q has label %q, not an Appwrite label", u.ID, l)
		}
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(body, &fields); err != nil {
		return appwriteUser{}, nil, fmt.Errorf("the user is not a JSON object: %w", err)
	}
	var account json.RawMessage
	if hasAny(fields, accountOnly) {
		for _, f := range accountOnly {
			delete(fields, f)
		}
		account, _ = json.Marshal(fields) // re-encoding decoded JSON cannot fail
	} else {
		var buf bytes.Buffer
		_ = json.Compact(&buf, body) // valid: it was just decoded
		account = buf.Bytes()
	}
	return u, account, nil
}

func hasAny(m map[string]json.RawMessage, keys []string) bool {
	for _, k := range keys {
		if _, ok := m[k]; ok {
			return true
		}
	}
	return false
}

// decodeMemberships reads one page of a membershipList. It returns the
// page's memberships of user uid and how many entries the page had; a
// membership of another user is left out (it is not this user's), and one
// with an id or role that is not valid fails the whole page.
func decodeMemberships(body []byte, uid string) ([]appwriteMembership, int, error) {
	var list struct {
		Total       *int64               `json:"total"`
		Memberships []appwriteMembership `json:"memberships"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, 0, fmt.Errorf("the membership list is not valid JSON: %w", err)
	}
	if list.Total == nil || list.Memberships == nil {
		return nil, 0, errors.New("the membership list lacks total or memberships")
	}
	var mine []appwriteMembership
	for _, m := range list.Memberships {
		if !validID(m.ID) || !validID(m.TeamID) || !validID(m.UserID) {
			return nil, 0, fmt.Errorf("membership %q of team %q names ids that are not Appwrite ids", m.ID, m.TeamID)
		}
		for _, r := range m.Roles {
			if !validID(r) {
				return nil, 0, fmt.Errorf("membership %q has role %q, not an Appwrite team role", m.ID, r)
			}
		}
		if m.UserID == uid {
			mine = append(mine, m)
		}
	}
	return mine, len(list.Memberships), nil
}

// decodeTeams reads one page of a teamList: the teams' ids.
func decodeTeams(body []byte) ([]string, error) {
	var list struct {
		Total *int64 `json:"total"`
		Teams []struct {
			ID string `json:"$id"`
		} `json:"teams"`
	}
	if err := json.Unmarshal(body, &list); err != nil {
		return nil, fmt.Errorf("the team list is not valid JSON: %w", err)
	}
	if list.Total == nil || list.Teams == nil {
		return nil, errors.New("the team list lacks total or teams")
	}
	ids := make([]string, 0, len(list.Teams))
	for _, t := range list.Teams {
		if !validID(t.ID) {
			return nil, fmt.Errorf("team id %q is not an Appwrite id", t.ID)
		}
		ids = append(ids, t.ID)
	}
	return ids, nil
}

// appwriteRoles is Appwrite's User::getRoles for a signed-in user, in its
// order (src/Appwrite/Utopia/Database/Documents/User.php): user:U, users,
// the verified or unverified pair, then per confirmed membership team:T,
// member:M and team:T/<role>, then label:L. Duplicates are dropped.
func appwriteRoles(u appwriteUser, ms []appwriteMembership) []string {
	roles := make([]string, 0, 4+3*len(ms)+len(u.Labels))
	add := func(r string) {
		if !contains(roles, r) {
			roles = append(roles, r)
		}
	}
	add(UserRole(u.ID))
	add(RoleUsers)
	if u.EmailVerification || u.PhoneVerification {
		add(UserRole(u.ID) + "/verified")
		add(RoleUsers + "/verified")
	} else {
		add(UserRole(u.ID) + "/unverified")
		add(RoleUsers + "/unverified")
	}
	for _, m := range ms {
		if !m.Confirm || m.UserID != u.ID {
			continue
		}
		add("team:" + m.TeamID)
		add("member:" + m.ID)
		for _, r := range m.Roles {
			add("team:" + m.TeamID + "/" + r)
		}
	}
	for _, l := range u.Labels {
		add("label:" + l)
	}
	return roles
}

// validID reports whether s could be an Appwrite id, label or team role:
// 1 to 128 bytes of [A-Za-z0-9._-] (Appwrite's UID and Key validators allow
// 36 of these; the margin costs nothing). It keeps anything that could
// forge another role (a ':' or '/') out of the roles built from Appwrite's
// answers.
func validID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// headerSafe reports whether s may be sent as a header value: printable
// ASCII only, at most 8 KiB.
func headerSafe(s string) bool {
	if len(s) > 8<<10 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

// appwriteMetrics are the resolver's Prometheus series.
type appwriteMetrics struct {
	calls     *prometheus.CounterVec
	errors    *prometheus.CounterVec
	latency   *prometheus.HistogramVec
	shared    prometheus.Counter
	cacheHits prometheus.Counter
}

func newAppwriteMetrics() appwriteMetrics {
	return appwriteMetrics{
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_appwrite_requests_total",
			Help: "Requests made to Appwrite's API, by call (account, user, memberships, teams, team_memberships).",
		}, []string{"call"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_appwrite_errors_total",
			Help: "Appwrite requests that granted nothing for a fault other than invalid credentials, by call and reason (unreachable, timeout, queued, status, too_large, read, key_refused, project_not_found).",
		}, []string{"call", "reason"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "switchboard_appwrite_request_seconds",
			Help:    "Time Appwrite took to answer one request, by call.",
			Buckets: prometheus.ExponentialBuckets(0.002, 2, 12),
		}, []string{"call"}),
		shared: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_appwrite_shared_lookups_total",
			Help: "Lookups that joined one already in flight for the same credential instead of asking Appwrite again.",
		}),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_appwrite_cache_hits_total",
			Help: "Lookups answered from the per-credential cache.",
		}),
	}
}

func (m appwriteMetrics) register(r prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.calls, m.errors, m.latency, m.shared, m.cacheHits} {
		if err := r.Register(c); err != nil {
			return err
		}
	}
	return nil
}

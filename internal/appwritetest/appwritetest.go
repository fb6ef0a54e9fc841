// Package appwritetest is a stand-in for the part of Appwrite's REST API
// that Switchboard's Appwrite resolver calls, and for the sign-in calls a
// test needs to get credentials the way an SDK gets them. Appwrite itself
// cannot run where these tests run (no container runtime, no PHP packages),
// so the stand-in copies what a client of the API can observe: paths,
// headers, status codes, cookies and the JSON shapes.
//
// Shapes follow Appwrite's OpenAPI spec, app/config/specs/open-api3-1.8.x-client.json
// (and -server.json for /users) in appwrite/appwrite, Appwrite 1.8.0:
// components.schemas user, session, jwt, team, teamList, membership and
// membershipList; errors are the `error` model (message, code, type,
// version) with the types of app/config/errors.php. Credentials are read
// as app/init/resources.php reads them: the cookie a_session_<P>, then
// a_session_<P>_legacy, then the X-Appwrite-Session header, then the
// X-Fallback-Cookies header (JSON), and X-Appwrite-JWT; the project from
// X-Appwrite-Project; an API key from X-Appwrite-Key. A session value is
// Auth::encodeSession: base64 of {"id":U,"secret":S}.
//
// It never checks passwords' strength, rate limits, scopes beyond
// "a key may read users" or permissions beyond "a member may read its
// team": only what the resolver's behaviour depends on.
package appwritetest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Version is the Appwrite version whose spec the stand-in follows; it is
// the `version` of every error body.
const Version = "1.8.0"

// User is one account of a project.
type User struct {
	ID                string
	Name              string
	Email             string
	Password          string
	Phone             string
	EmailVerification bool
	PhoneVerification bool
	Labels            []string
	Blocked           bool // status false
}

// Membership is one user's membership of one team.
type Membership struct {
	ID      string
	TeamID  string
	UserID  string
	Roles   []string
	Confirm bool
}

type project struct {
	key         string
	users       map[string]*User
	teams       map[string]string // id -> name
	memberships map[string]*Membership
	sessions    map[string]string // secret -> user id
	jwts        map[string]string // token -> user id
}

// Server is the stand-in. SetFault makes it misbehave.
type Server struct {
	*httptest.Server

	mu       sync.Mutex
	projects map[string]*project
	calls    map[string]int // "GET /v1/account" and so on
	byCred   map[string]int // GET /v1/account per credential value
	seq      atomic.Int64
	fault    atomic.Pointer[Fault]
}

// Fault sees every request before the stand-in does; returning true means
// it answered and the stand-in does nothing more.
type Fault func(w http.ResponseWriter, r *http.Request) bool

// SetFault installs f (nil: none).
func (s *Server) SetFault(f Fault) {
	if f == nil {
		s.fault.Store(nil)
		return
	}
	s.fault.Store(&f)
}

// New starts a stand-in; Close stops it.
func New() *Server {
	s := &Server{projects: map[string]*project{}, calls: map[string]int{}, byCred: map[string]int{}}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// Endpoint is the API root an SDK's setEndpoint takes.
func (s *Server) Endpoint() string { return s.URL + "/v1" }

// AddProject creates a project whose API key is key ("" for none).
func (s *Server) AddProject(id, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.projects[id] = &project{key: key, users: map[string]*User{}, teams: map[string]string{},
		memberships: map[string]*Membership{}, sessions: map[string]string{}, jwts: map[string]string{}}
}

// AddUser adds (or replaces) a user of a project.
func (s *Server) AddUser(pid string, u User) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := u
	s.projects[pid].users[u.ID] = &cp
}

// AddTeam adds a team.
func (s *Server) AddTeam(pid, id, name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.projects[pid].teams[id] = name
}

// AddMembership adds (or replaces) a membership.
func (s *Server) AddMembership(pid string, m Membership) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cp := m
	s.projects[pid].memberships[m.ID] = &cp
}

// RemoveMembership deletes a membership.
func (s *Server) RemoveMembership(pid, id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.projects[pid].memberships, id)
}

// Session creates a session for a user directly (as the server SDK's
// users.createSession does) and returns the cookie value.
func (s *Server) Session(pid, uid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.newSessionLocked(s.projects[pid], uid)
}

// JWT creates a JWT for a user directly.
func (s *Server) JWT(pid, uid string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	tok := fmt.Sprintf("jwt.%s.%d", uid, s.seq.Add(1))
	s.projects[pid].jwts[tok] = uid
	return tok
}

func (s *Server) newSessionLocked(p *project, uid string) string {
	secret := fmt.Sprintf("secret%016x", s.seq.Add(1))
	p.sessions[secret] = uid
	b, _ := json.Marshal(map[string]string{"id": uid, "secret": secret})
	return base64.StdEncoding.EncodeToString(b)
}

// Calls returns how many requests reached "METHOD /v1/path" (the path
// pattern, with ids as {id}).
func (s *Server) Calls(route string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.calls[route]
}

// AccountCalls returns how many GET /v1/account requests presented the
// credential value (session cookie value or JWT).
func (s *Server) AccountCalls(cred string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byCred[cred]
}

// MaxAccountCallsPerCredential is the largest AccountCalls over every
// credential seen, and how many credentials were seen.
func (s *Server) MaxAccountCallsPerCredential() (most, creds int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.byCred {
		most = max(most, n)
	}
	return most, len(s.byCred)
}

// ResetCalls forgets the counts.
func (s *Server) ResetCalls() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls, s.byCred = map[string]int{}, map[string]int{}
}

// writeError writes Appwrite's error model.
func writeError(w http.ResponseWriter, code int, typ, message string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"message": message, "code": code, "type": typ, "version": Version})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

const stamp = "2025-01-01T00:00:00.000+00:00"

// Error messages of app/config/errors.php.
const (
	msgProjectNotFound = "The requested project could not be found. Please check the value of the X-Appwrite-Project header to ensure the correct project ID is being used."
	msgJWTInvalid      = "The JWT token is invalid. Please check the value of the X-Appwrite-JWT header to ensure the correct token is being used."
	msgUserBlocked     = "The current user has been blocked. You can unblock the user by making a request to the User API's \"Update User Status\" endpoint or in the Appwrite Console's Auth section."
	msgUserNotFound    = "User with the requested ID could not be found."
	msgTeamNotFound    = "Team with the requested ID could not be found."
	msgInvalidCreds    = "Invalid credentials. Please check the email and password."
)

// accountJSON is the Account model (components.schemas.user without
// password, hash and hashOptions, as Response::MODEL_ACCOUNT outputs it).
// withSecrets adds them, as GET /users/{id} does for a key.
func accountJSON(u *User, withSecrets bool) map[string]any {
	labels := u.Labels
	if labels == nil {
		labels = []string{}
	}
	m := map[string]any{
		"$id": u.ID, "$createdAt": stamp, "$updatedAt": stamp, "name": u.Name,
		"registration": stamp, "status": !u.Blocked, "labels": labels, "passwordUpdate": stamp,
		"email": u.Email, "phone": u.Phone, "emailVerification": u.EmailVerification,
		"phoneVerification": u.PhoneVerification, "mfa": false,
		"prefs": map[string]any{}, "targets": []any{}, "accessedAt": stamp,
	}
	if withSecrets {
		m["password"] = "$argon2id$v=19$m=2048,t=4,p=3$c3RhbmQtaW4$c3RhbmQtaW4"
		m["hash"] = "argon2"
		m["hashOptions"] = map[string]any{"type": "argon2", "memoryCost": 2048, "timeCost": 4, "threads": 3}
	}
	return m
}

func (s *Server) membershipJSON(p *project, m *Membership) map[string]any {
	u := p.users[m.UserID]
	name, email := "", ""
	if u != nil {
		name, email = u.Name, u.Email
	}
	roles := m.Roles
	if roles == nil {
		roles = []string{}
	}
	joined := ""
	if m.Confirm {
		joined = stamp
	}
	return map[string]any{
		"$id": m.ID, "$createdAt": stamp, "$updatedAt": stamp, "userId": m.UserID, "userName": name,
		"userEmail": email, "teamId": m.TeamID, "teamName": p.teams[m.TeamID], "invited": stamp,
		"joined": joined, "confirm": m.Confirm, "mfa": false, "roles": roles,
	}
}

// route names a request's path pattern for the counts.
func route(r *http.Request) (string, []string) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	pattern := make([]string, len(parts))
	var ids []string
	for i, p := range parts {
		switch {
		case i == 2 && (parts[1] == "users" || parts[1] == "teams"):
			pattern[i] = "{id}"
			ids = append(ids, p)
		default:
			pattern[i] = p
		}
	}
	return r.Method + " /" + strings.Join(pattern, "/"), ids
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	rt, ids := route(r)
	s.mu.Lock()
	s.calls[rt]++
	s.mu.Unlock()
	if f := s.fault.Load(); f != nil && (*f)(w, r) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	pid := r.Header.Get("X-Appwrite-Project")
	p := s.projects[pid]
	if p == nil {
		writeError(w, http.StatusNotFound, "project_not_found", msgProjectNotFound)
		return
	}
	switch rt {
	case "GET /v1/account":
		s.getAccount(w, r, pid, p)
	case "POST /v1/account/sessions/email":
		s.createEmailPasswordSession(w, r, pid, p)
	case "POST /v1/account/jwts":
		u := s.userLocked(w, r, pid, p)
		if u == nil {
			return
		}
		tok := fmt.Sprintf("jwt.%s.%d", u.ID, s.seq.Add(1))
		p.jwts[tok] = u.ID
		writeJSON(w, http.StatusCreated, map[string]string{"jwt": tok})
	case "GET /v1/users/{id}":
		if !s.keyOK(w, r, p) {
			return
		}
		u := p.users[ids[0]]
		if u == nil {
			writeError(w, http.StatusNotFound, "user_not_found", msgUserNotFound)
			return
		}
		writeJSON(w, http.StatusOK, accountJSON(u, true))
	case "GET /v1/users/{id}/memberships":
		if !s.keyOK(w, r, p) {
			return
		}
		if p.users[ids[0]] == nil {
			writeError(w, http.StatusNotFound, "user_not_found", msgUserNotFound)
			return
		}
		s.listMemberships(w, r, p, func(m *Membership) bool { return m.UserID == ids[0] })
	case "GET /v1/teams":
		u := s.userLocked(w, r, pid, p)
		if u == nil {
			return
		}
		var teams []map[string]any
		for _, tid := range sortedKeys(p.teams) {
			if s.confirmedLocked(p, u.ID, tid) {
				teams = append(teams, map[string]any{"$id": tid, "$createdAt": stamp, "$updatedAt": stamp,
					"name": p.teams[tid], "total": s.countLocked(p, tid), "prefs": map[string]any{}})
			}
		}
		limit, offset, _ := pageOf(r)
		total := len(teams)
		teams = window(teams, offset, limit)
		writeJSON(w, http.StatusOK, map[string]any{"total": total, "teams": teams})
	case "GET /v1/teams/{id}/memberships":
		u := s.userLocked(w, r, pid, p)
		if u == nil {
			return
		}
		tid := ids[0]
		if _, ok := p.teams[tid]; !ok || !s.confirmedLocked(p, u.ID, tid) {
			// A team is readable by team:T only (a confirmed member).
			writeError(w, http.StatusNotFound, "team_not_found", msgTeamNotFound)
			return
		}
		_, _, userFilter := pageOf(r)
		s.listMemberships(w, r, p, func(m *Membership) bool {
			return m.TeamID == tid && (userFilter == "" || m.UserID == userFilter)
		})
	default:
		writeError(w, http.StatusNotFound, "general_route_not_found", "The requested route was not found. Please refer to the API docs and try again.")
	}
}

func (s *Server) keyOK(w http.ResponseWriter, r *http.Request, p *project) bool {
	if k := r.Header.Get("X-Appwrite-Key"); k == "" || k != p.key {
		writeError(w, http.StatusUnauthorized, "general_unauthorized_scope", `User (role: guests) missing scopes (["users.read"])`)
		return false
	}
	return true
}

func (s *Server) confirmedLocked(p *project, uid, tid string) bool {
	for _, m := range p.memberships {
		if m.UserID == uid && m.TeamID == tid && m.Confirm {
			return true
		}
	}
	return false
}

func (s *Server) countLocked(p *project, tid string) int {
	n := 0
	for _, m := range p.memberships {
		if m.TeamID == tid && m.Confirm {
			n++
		}
	}
	return n
}

func (s *Server) listMemberships(w http.ResponseWriter, r *http.Request, p *project, keep func(*Membership) bool) {
	var out []map[string]any
	for _, id := range sortedKeys(p.memberships) {
		if m := p.memberships[id]; keep(m) {
			out = append(out, s.membershipJSON(p, m))
		}
	}
	limit, offset, _ := pageOf(r)
	total := len(out)
	out = window(out, offset, limit)
	writeJSON(w, http.StatusOK, map[string]any{"total": total, "memberships": out})
}

// pageOf reads the JSON queries (Appwrite 1.5+) limit, offset and
// equal("userId", [U]); Appwrite's default limit is 25.
func pageOf(r *http.Request) (limit, offset int, userID string) {
	limit = 25
	for _, q := range r.URL.Query()["queries[]"] {
		var v struct {
			Method    string `json:"method"`
			Attribute string `json:"attribute"`
			Values    []any  `json:"values"`
		}
		if json.Unmarshal([]byte(q), &v) != nil || len(v.Values) == 0 {
			continue
		}
		switch v.Method {
		case "limit":
			if f, ok := v.Values[0].(float64); ok {
				limit = int(f)
			}
		case "offset":
			if f, ok := v.Values[0].(float64); ok {
				offset = int(f)
			}
		case "equal":
			if v.Attribute == "userId" {
				userID, _ = v.Values[0].(string)
			}
		}
	}
	return limit, offset, userID
}

func window[T any](list []T, offset, limit int) []T {
	if list == nil {
		list = []T{}
	}
	if offset > len(list) {
		offset = len(list)
	}
	list = list[offset:]
	if limit < len(list) {
		list = list[:limit]
	}
	return list
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// credentialOf finds a request's credential in Appwrite's order and
// returns the session value or JWT and which it is.
func credentialOf(r *http.Request, pid string) (value string, jwt bool) {
	name := "a_session_" + pid
	for _, n := range []string{name, name + "_legacy"} {
		if c, err := r.Cookie(n); err == nil && c.Value != "" {
			return c.Value, false
		}
	}
	if v := r.Header.Get("X-Appwrite-Session"); v != "" {
		return v, false
	}
	if fb := r.Header.Get("X-Fallback-Cookies"); fb != "" {
		var m map[string]string
		if json.Unmarshal([]byte(fb), &m) == nil && m[name] != "" {
			return m[name], false
		}
	}
	if v := r.Header.Get("X-Appwrite-JWT"); v != "" {
		return v, true
	}
	return "", false
}

// userLocked authenticates a request as Appwrite does for a route with
// scope "account": a valid session or JWT of this project, a user not
// blocked; otherwise the error Appwrite answers.
func (s *Server) userLocked(w http.ResponseWriter, r *http.Request, pid string, p *project) *User {
	cred, isJWT := credentialOf(r, pid)
	var uid string
	switch {
	case isJWT:
		uid = p.jwts[cred]
		if uid == "" {
			writeError(w, http.StatusUnauthorized, "user_jwt_invalid", msgJWTInvalid)
			return nil
		}
	case cred != "":
		raw, err := base64.StdEncoding.DecodeString(cred)
		var sess struct{ ID, Secret string }
		if err == nil && json.Unmarshal(raw, &sess) == nil && p.sessions[sess.Secret] == sess.ID {
			uid = sess.ID
		}
	}
	u := p.users[uid]
	if u == nil {
		// What Appwrite answers a guest on an account route.
		writeError(w, http.StatusUnauthorized, "general_unauthorized_scope", `User (role: guests) missing scopes (["account"])`)
		return nil
	}
	if u.Blocked {
		writeError(w, http.StatusUnauthorized, "user_blocked", msgUserBlocked)
		return nil
	}
	return u
}

func (s *Server) getAccount(w http.ResponseWriter, r *http.Request, pid string, p *project) {
	if cred, _ := credentialOf(r, pid); cred != "" {
		s.byCred[cred]++
	}
	u := s.userLocked(w, r, pid, p)
	if u == nil {
		return
	}
	writeJSON(w, http.StatusOK, accountJSON(u, false))
}

// createEmailPasswordSession is POST /v1/account/sessions/email: 201 with
// the session model, the cookies a_session_<P>_legacy and a_session_<P>
// (HttpOnly; SameSite=None on the second), and X-Fallback-Cookies with the
// same value, as app/controllers/api/account.php sets them.
func (s *Server) createEmailPasswordSession(w http.ResponseWriter, r *http.Request, pid string, p *project) {
	var in struct{ Email, Password string }
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil {
		writeError(w, http.StatusBadRequest, "general_argument_invalid", "Invalid `email` param: Value must be a valid email address")
		return
	}
	var u *User
	for _, c := range p.users {
		if strings.EqualFold(c.Email, in.Email) && c.Password == in.Password {
			u = c
		}
	}
	if u == nil {
		writeError(w, http.StatusUnauthorized, "user_invalid_credentials", msgInvalidCreds)
		return
	}
	if u.Blocked {
		writeError(w, http.StatusUnauthorized, "user_blocked", msgUserBlocked)
		return
	}
	value := s.newSessionLocked(p, u.ID)
	expire := time.Now().Add(365 * 24 * time.Hour)
	name := "a_session_" + pid
	http.SetCookie(w, &http.Cookie{Name: name + "_legacy", Value: value, Path: "/", Expires: expire, HttpOnly: true})
	http.SetCookie(w, &http.Cookie{Name: name, Value: value, Path: "/", Expires: expire, HttpOnly: true, SameSite: http.SameSiteNoneMode})
	fb, _ := json.Marshal(map[string]string{name: value})
	w.Header().Set("X-Fallback-Cookies", string(fb))
	writeJSON(w, http.StatusCreated, map[string]any{
		"$id": "session" + strconv.FormatInt(s.seq.Add(1), 10), "$createdAt": stamp, "$updatedAt": stamp,
		"userId": u.ID, "expire": expire.UTC().Format("2006-01-02T15:04:05.000+00:00"), "provider": "email",
		"providerUid": u.Email, "providerAccessToken": "", "providerAccessTokenExpiry": "", "providerRefreshToken": "",
		"ip": "127.0.0.1", "osCode": "", "osName": "", "osVersion": "", "clientType": "", "clientCode": "",
		"clientName": "", "clientVersion": "", "clientEngine": "", "clientEngineVersion": "", "deviceName": "",
		"deviceBrand": "", "deviceModel": "", "countryCode": "--", "countryName": "Unknown", "current": true,
		"factors": []string{"password"}, "secret": "", "mfaUpdatedAt": "",
	})
}

// NewExample starts a stand-in holding the users the tests share: project
// p1 (API key k1) with ann (email verified, label vip, owner and admin of
// team t1), bob (unverified; invited to t1 as admin, not yet confirmed;
// member of t2) and cat (phone verified, no team), and project p2 (key k2)
// with dan. Each password is "password-" and the user's id.
func NewExample() *Server {
	s := New()
	s.AddProject("p1", "k1")
	s.AddProject("p2", "k2")
	s.AddUser("p1", User{ID: "ann", Name: "Ann", Email: "ann@example.com", Password: "password-ann", EmailVerification: true, Labels: []string{"vip"}})
	s.AddUser("p1", User{ID: "bob", Name: "Bob", Email: "bob@example.com", Password: "password-bob"})
	s.AddUser("p1", User{ID: "cat", Name: "Cat", Email: "cat@example.com", Password: "password-cat", Phone: "+4930901820", PhoneVerification: true})
	s.AddUser("p2", User{ID: "dan", Name: "Dan", Email: "dan@example.com", Password: "password-dan", EmailVerification: true})
	s.AddTeam("p1", "t1", "Admins")
	s.AddTeam("p1", "t2", "Readers")
	s.AddMembership("p1", Membership{ID: "m1", TeamID: "t1", UserID: "ann", Roles: []string{"owner", "admin"}, Confirm: true})
	s.AddMembership("p1", Membership{ID: "m2", TeamID: "t1", UserID: "bob", Roles: []string{"admin"}, Confirm: false})
	s.AddMembership("p1", Membership{ID: "m3", TeamID: "t2", UserID: "bob", Confirm: true})
	return s
}

// Failures are the ways an Appwrite can fail that a resolver must survive
// by granting nothing: a 500 with Appwrite's error body, an answer after
// 10 s, a 100 MB body, and a body that is not JSON (a proxy's error page).
func Failures() map[string]Fault {
	return map[string]Fault{
		"500": func(w http.ResponseWriter, r *http.Request) bool {
			writeError(w, http.StatusInternalServerError, "general_unknown", "Server Error")
			return true
		},
		"10s": func(w http.ResponseWriter, r *http.Request) bool {
			select {
			case <-time.After(10 * time.Second):
			case <-r.Context().Done():
			}
			return true
		},
		"100MB": func(w http.ResponseWriter, r *http.Request) bool {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"$id":"ann","name":"`))
			chunk := []byte(strings.Repeat("a", 1<<20))
			for range 100 {
				if _, err := w.Write(chunk); err != nil {
					break
				}
			}
			return true
		},
		"not JSON": func(w http.ResponseWriter, r *http.Request) bool {
			_, _ = w.Write([]byte("<html>502 Bad Gateway</html>"))
			return true
		},
	}
}

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// teamResolver is the property test's auth backend: session "s-<uid>" is
// user uid, whose roles are users, user:uid and team:T for every team the
// world currently puts them in.
type teamResolver struct {
	mu    sync.Mutex
	teams map[string]map[string]bool // uid -> team -> member
	// gate, when set, holds ResolveUser until it is closed: the world
	// routes events while a permission change is being resolved.
	gate chan struct{}
}

func (r *teamResolver) roles(uid string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var extra []string
	for t, in := range r.teams[uid] {
		if in {
			extra = append(extra, "team:"+t)
		}
	}
	sort.Strings(extra)
	return auth.UserRoles(uid, extra)
}

func (r *teamResolver) Resolve(_ context.Context, c auth.Credentials) (auth.Identity, error) {
	uid, ok := strings.CutPrefix(c.Session, "s-")
	if !ok {
		return auth.Identity{}, auth.ErrUnauthorized
	}
	return auth.Identity{UserID: uid, Roles: r.roles(uid), User: json.RawMessage(`{"$id":"` + uid + `"}`)}, nil
}

func (r *teamResolver) ResolveUser(_ context.Context, _ string, uid string) (auth.Identity, error) {
	r.mu.Lock()
	gate := r.gate
	r.mu.Unlock()
	if gate != nil {
		<-gate
	}
	return auth.Identity{UserID: uid, Roles: r.roles(uid)}, nil
}

// modelConn is what the model believes about one connection.
type modelConn struct {
	c       *conn
	project string
	roles   []string
	subs    map[string]modelSub // subscription id -> what it selects
}

// modelSub is the model of one subscription: its channels and, decided
// without pkg/query, which payloads its queries let through.
type modelSub struct {
	channels []string
	pass     func(p modelPayload) bool
}

// modelPayload is the part of an event payload the world's queries look at.
// A presence document has neither v nor k, and a status.
type modelPayload struct {
	V      int
	HasV   bool
	K      string // "" with HasK: null
	HasK   bool
	Status string // presence documents only
}

func (p modelPayload) json(n int) string {
	k := ""
	if p.HasK {
		k = `,"k":null`
		if p.K != "" {
			k = `,"k":"` + p.K + `"`
		}
	}
	return fmt.Sprintf(`{"n":%d,"v":%d%s}`, n, p.V, k)
}

// worldQueries are the query lists subscriptions pick from, each with the
// model's own reading of it.
var worldQueries = []struct {
	queries []string
	pass    func(p modelPayload) bool
}{
	{[]string{}, func(modelPayload) bool { return true }}, // [], as the SDK sends it: Appwrite refuses null
	{[]string{`{"method":"select","values":["*"]}`}, func(modelPayload) bool { return true }},
	{[]string{`{"method":"equal","attribute":"k","values":["a"]}`}, func(p modelPayload) bool { return p.HasK && p.K == "a" }},
	{[]string{`{"method":"notEqual","attribute":"k","values":["a"]}`}, func(p modelPayload) bool { return p.HasK && p.K != "a" }},
	{[]string{`{"method":"isNull","attribute":"k","values":[]}`}, func(p modelPayload) bool { return p.HasK && p.K == "" }},
	{[]string{`{"method":"greaterThan","attribute":"v","values":[4]}`, `{"method":"equal","attribute":"k","values":["a","b"]}`},
		func(p modelPayload) bool { return p.HasV && p.V > 4 && p.HasK && (p.K == "a" || p.K == "b") }},
	{[]string{`{"method":"or","values":[{"method":"lessThanEqual","attribute":"v","values":[2]},{"method":"equal","attribute":"k","values":["b"]}]}`},
		func(p modelPayload) bool { return (p.HasV && p.V <= 2) || (p.HasK && p.K == "b") }},
	{[]string{`{"method":"equal","attribute":"status","values":["online"]}`}, func(p modelPayload) bool { return p.Status == "online" }},
}

func randomPayload(rng *rand.Rand) modelPayload {
	p := modelPayload{V: rng.IntN(10), HasV: true}
	switch rng.IntN(4) {
	case 0:
	case 1:
		p.HasK = true
	default:
		p.HasK, p.K = true, []string{"a", "b"}[rng.IntN(2)]
	}
	return p
}

// TestNoLeakProperty builds thousands of random worlds — projects, users,
// teams, channels, query filters, connections that subscribe, unsubscribe, authenticate
// and leave, membership changes announced with permissionsChanged — and
// checks after every event that each connection received exactly the
// events it is entitled to, each once, naming exactly the subscriptions
// that matched. The code under test is the node's own: handshake
// (post-upgrade), client messages, close callback, router and index.
func TestNoLeakProperty(t *testing.T) {
	worlds := 2000
	if testing.Short() {
		worlds = 200
	}
	for w := 0; w < worlds; w++ {
		runWorld(t, uint64(w))
		if t.Failed() {
			return
		}
	}
}

// world is one random world of the property tests: a node with no
// sockets (replies go to /dev/null, events stay queued), its auth backend,
// and the model of every live connection.
type world struct {
	t    *testing.T
	rng  *rand.Rand
	s    *Server
	res  *teamResolver
	bus  *captureBroker
	null *os.File
	live []*modelConn
}

var (
	worldProjects = []string{"p1", "p2"}
	worldUsers    = []string{"u1", "u2", "u3"}
	worldTeams    = []string{"t1", "t2"}
	worldChannels = []string{"c1", "c2", "c3", "presences"}
	worldRoles    = []string{"any", "guests", "users", "user:u1", "user:u2", "user:u3", "team:t1", "team:t2"}
)

// newWorld builds seed's world: random team memberships, and a node whose
// config mod may change. The caller closes w.null.
func newWorld(t *testing.T, seed uint64, mod func(*Config)) *world {
	w := &world{t: t, rng: rand.New(rand.NewPCG(seed, 0x5b)), bus: &captureBroker{}}
	w.res = &teamResolver{teams: map[string]map[string]bool{}}
	for _, u := range worldUsers {
		w.res.teams[u] = map[string]bool{}
		for _, tm := range worldTeams {
			w.res.teams[u][tm] = w.rng.IntN(2) == 0
		}
	}
	cfg := Config{Broker: w.bus, Resolver: w.res, IndexShards: 1 << w.rng.IntN(4), ConnectsPerIP: Off, MessagesPerMinute: Off}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	w.s = s
	if w.null, err = os.OpenFile(os.DevNull, os.O_WRONLY, 0); err != nil {
		t.Fatal(err)
	}
	s.pool = &writePool{ch: make(chan *conn, 1<<16)}
	return w
}

func (w *world) pick(list []string) string { return list[w.rng.IntN(len(list))] }

// subset is a random subset of list with at least min members.
func (w *world) subset(list []string, min int) []string {
	var out []string
	for _, s := range list {
		if w.rng.IntN(3) == 0 {
			out = append(out, s)
		}
	}
	for len(out) < min {
		out = appendUnique(out, w.pick(list))
	}
	return out
}

// modelRoles is the model's roles of user uid ("" a guest).
func (w *world) modelRoles(uid string) []string {
	if uid == "" {
		return []string{auth.RoleGuests}
	}
	return w.res.roles(uid)
}

// connect opens a connection with random channels, slot queries and
// session, and models it.
func (w *world) connect() *modelConn {
	s, rng := w.s, w.rng
	// Replies to the client's own messages are written at once (to
	// /dev/null); events stay queued for checkEvent, as no write pool
	// runs.
	c := &conn{Context: context.Background(), srv: s, nc: &fakeNC{}, fd: int(w.null.Fd())}
	c.id = s.idx.Insert(c)
	m := &modelConn{c: c, project: w.pick(worldProjects), subs: map[string]modelSub{}}
	q := "project=" + m.project
	chans := w.subset(worldChannels, 0)
	for _, ch := range chans {
		q += "&channels[]=" + ch
	}
	// Slot 0's queries, as a 1.9.0-1.9.4 SDK puts them in the URL.
	wq := worldQueries[rng.IntN(len(worldQueries))]
	for _, text := range wq.queries {
		if len(chans) > 0 {
			q += "&" + chans[0] + "[0][]=" + url.QueryEscape(text)
		}
	}
	h := handshake{uri: "/v1/realtime?" + q}
	uid := ""
	if rng.IntN(2) == 0 {
		uid = w.pick(worldUsers)
		h.session = "s-" + uid
	}
	c.upgraded = true
	c.mu.Lock()
	c.setStateLocked(stateLive) // as upgrade does
	c.mu.Unlock()
	c.open(&h)
	m.roles = w.modelRoles(uid)
	if len(chans) > 0 {
		m.subs[c.subs[0].id] = modelSub{channels: chans, pass: wq.pass}
	}
	w.live = append(w.live, m)
	return m
}

// subscribe sends a subscribe message on m, sometimes replacing an id.
func (w *world) subscribe(m *modelConn) {
	id := fmt.Sprintf("s%d", w.rng.IntN(3))
	chans := w.subset(worldChannels, 1)
	wq := worldQueries[w.rng.IntN(len(worldQueries))]
	b, _ := json.Marshal(map[string]any{"type": "subscribe", "data": []map[string]any{{"subscriptionId": id, "channels": chans, "queries": wq.queries}}})
	m.c.handleMessage(b)
	m.subs[id] = modelSub{channels: chans, pass: wq.pass}
}

// unsubscribe removes one of m's subscriptions.
func (w *world) unsubscribe(m *modelConn) {
	for id := range m.subs {
		m.c.handleMessage([]byte(`{"type":"unsubscribe","data":[{"subscriptionId":"` + id + `"}]}`))
		delete(m.subs, id)
		break
	}
}

// uidOf is m's user id now.
func uidOf(m *modelConn) string {
	m.c.mu.Lock()
	defer m.c.mu.Unlock()
	return m.c.userID
}

// randomEvent is an event with random roles, channels and payload,
// numbered n.
func (w *world) randomEvent(n int) (*protocol.Event, modelPayload) {
	roles := w.subset(worldRoles, 1)
	p := randomPayload(w.rng)
	return &protocol.Event{Project: w.pick(worldProjects), Roles: roles, Channels: w.subset(worldChannels, 1), Payload: json.RawMessage(p.json(n))}, p
}

func runWorld(t *testing.T, seed uint64) {
	wr := newWorld(t, seed, nil)
	defer wr.null.Close()
	rng, s, res, bus := wr.rng, wr.s, wr.res, wr.bus
	r := s.router
	pick, subset := wr.pick, wr.subset
	teams := worldTeams
	channels := worldChannels
	users := worldUsers
	connect := func() { wr.connect() }
	modelRoles := wr.modelRoles

	nEvent := 0
	randomEvent := func() (*protocol.Event, modelPayload) { return wr.randomEvent(nEvent) }
	// The model of presences: per project and user, the connections that
	// hold the record, its id once known, and its read roles.
	type modelPresence struct {
		holders map[*modelConn]bool
		id      string
		roles   []string
		status  string
	}
	records := map[userKey]*modelPresence{}
	var wantPresence []presenceExpect
	// dropHolder is the model of a connection leaving user k's record.
	dropHolder := func(m *modelConn, k userKey) {
		rec := records[k]
		if rec == nil || !rec.holders[m] {
			return
		}
		delete(rec.holders, m)
		if len(rec.holders) == 0 {
			delete(records, k)
			if len(rec.roles) == 0 {
				return // no read role: no event
			}
			wantPresence = append(wantPresence, presenceExpect{"delete", k.project, k.uid, rec.id, rec.roles, rec.status})
		}
	}
	// checkPresenceEvents compares what the node published with the
	// model's expectations, learns ids the server chose, and routes each
	// event, checking its delivery like any other.
	checkPresenceEvents := func(step int) {
		s.presences.flush()
		got := bus.take()
		if len(got) != len(wantPresence) {
			t.Fatalf("seed %d step %d: %d presence events published, want %d (%+v)", seed, step, len(got), len(wantPresence), wantPresence)
		}
		for i, msg := range got {
			w := wantPresence[i]
			ev, err := protocol.ParseEvent(msg)
			if err != nil {
				t.Fatal(err)
			}
			info, err := protocol.ParsePresenceInfo(ev.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if w.id == "" {
				w.id = info.ID
				if rec := records[userKey{w.project, w.uid}]; rec != nil && rec.id == "" {
					rec.id = info.ID
				}
			}
			if ev.Project != w.project || info.UserID != w.uid || info.ID != w.id || !slices.Equal(ev.Roles, w.roles) || ev.Events[0] != "presences."+w.id+"."+w.action {
				t.Fatalf("seed %d step %d: published %s, want %+v", seed, step, msg, w)
			}
			checkEvent(t, seed, step, r, wr.live, ev, modelPayload{Status: w.status}, 0, nil)
		}
		wantPresence = wantPresence[:0]
	}
	for step := 0; step < 40; step++ {
		switch op := rng.IntN(12); {
		case op < 2 || len(wr.live) == 0:
			connect()
		case op == 2: // subscribe by message, sometimes replacing an id
			wr.subscribe(wr.live[rng.IntN(len(wr.live))])
		case op == 3: // unsubscribe
			wr.unsubscribe(wr.live[rng.IntN(len(wr.live))])
		case op == 4: // authenticate as someone (possibly again)
			m := wr.live[rng.IntN(len(wr.live))]
			uid := pick(users)
			old := userKey{m.project, uidOf(m)}
			m.c.handleMessage([]byte(`{"type":"authentication","data":{"session":"s-` + uid + `"}}`))
			m.roles = modelRoles(uid)
			if old.uid != uid { // signed in as someone else: the old presence is not held here any more
				dropHolder(m, old)
			}
			checkPresenceEvents(step)
		case op == 5: // leave
			i := rng.IntN(len(wr.live))
			m := wr.live[i]
			k := userKey{m.project, uidOf(m)}
			_ = m.c.onClosed(nil)
			wr.live = slices.Delete(wr.live, i, i+1)
			dropHolder(m, k)
			checkPresenceEvents(step)
		case op >= 10: // upsert a presence
			m := wr.live[rng.IntN(len(wr.live))]
			uid := uidOf(m)
			perms := [][]string{nil, {`read("any")`}, {`read("users")`}, {`read("team:t1")`, `write("users")`}, {`read("guests")`}, {}, {`update("any")`}}[rng.IntN(7)]
			status := pick([]string{"online", "away"})
			data := map[string]any{"status": status}
			if perms != nil {
				data["permissions"] = perms
			}
			if rng.IntN(2) == 0 {
				data["presenceId"] = "id-" + uid
			}
			b, _ := json.Marshal(map[string]any{"type": "presence", "data": data})
			drainQueue(m.c)
			m.c.handleMessage(b)
			k := userKey{m.project, uid}
			allowed := uid != "" && protocol.CheckPresenceRoles(perms, m.roles) == nil
			if allowed {
				rec := records[k]
				if rec == nil {
					rec = &modelPresence{holders: map[*modelConn]bool{}}
					if id, ok := data["presenceId"].(string); ok {
						rec.id = id
					}
					records[k] = rec
				}
				rec.holders[m] = true
				rec.roles = protocol.ReadRoles(protocol.ExpandPermissions(perms, uid))
				rec.status = status
				if len(rec.roles) > 0 {
					wantPresence = append(wantPresence, presenceExpect{"upsert", k.project, k.uid, rec.id, rec.roles, status})
				}
			}
			checkPresenceEvents(step)
		case op == 6: // membership change, announced to the user's own team
			uid, tm := pick(users), pick(teams)
			gate := make(chan struct{})
			res.mu.Lock()
			res.teams[uid][tm] = !res.teams[uid][tm]
			res.gate = gate
			res.mu.Unlock()
			ev := &protocol.Event{Project: pick(worldProjects), Roles: []string{"team:" + tm, "user:" + uid}, Channels: subset(channels, 1),
				PermissionsChanged: true, UserID: uid}
			p := randomPayload(rng)
			ev.Payload = json.RawMessage(p.json(nEvent))
			held := map[*modelConn]bool{}
			for _, m := range wr.live {
				if m.project == ev.Project && uidOf(m) == uid {
					held[m] = true
				}
			}
			// The announcing event, and events while the backend
			// answers, reach everyone else under their roles and nobody
			// of uid's connections yet...
			type kept struct {
				ev *protocol.Event
				p  modelPayload
				n  int
			}
			checkEvent(t, seed, step, r, wr.live, ev, p, nEvent, held)
			during := []kept{{ev, p, nEvent}}
			nEvent++
			for range rng.IntN(4) {
				ev, p := randomEvent()
				checkEvent(t, seed, step, r, wr.live, ev, p, nEvent, held)
				during = append(during, kept{ev, p, nEvent})
				nEvent++
			}
			// ...then every connection of uid in that project has the new
			// roles, and receives those events that the new roles admit,
			// in order.
			close(gate)
			waitHolds(t, s)
			for m := range held {
				m.roles = modelRoles(uid)
				var want, got []int
				for _, k := range during {
					if len(wantIDs(m, k.ev, k.p)) > 0 {
						want = append(want, k.n)
					}
				}
				for _, fr := range eventFrames(t, m.c) {
					got = append(got, fr.Data.Payload.N)
				}
				if !slices.Equal(got, want) {
					t.Fatalf("seed %d step %d: held conn (project %s roles %v subs %v) got events %v after the hold, want %v",
						seed, step, m.project, m.roles, m.subs, got, want)
				}
			}
		default: // an ordinary event
			ev, p := randomEvent()
			checkEvent(t, seed, step, r, wr.live, ev, p, nEvent, nil)
			nEvent++
		}
		if t.Failed() {
			return
		}
	}
}

// presenceExpect is a presence event the model expects.
type presenceExpect struct {
	action, project, uid string
	id                   string // "" until the server has chosen it
	roles                []string
	status               string
}

// captureBroker keeps what the node publishes (presence events) for the
// property test to check and route itself.
type captureBroker struct {
	mu   sync.Mutex
	msgs [][]byte
}

func (b *captureBroker) Publish(_ context.Context, msg []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.msgs = append(b.msgs, append([]byte(nil), msg...))
	return nil
}

func (b *captureBroker) Run(ctx context.Context, _ broker.Handler) error {
	<-ctx.Done()
	return ctx.Err()
}

func (b *captureBroker) Ready() error { return nil }

func (b *captureBroker) take() [][]byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := b.msgs
	b.msgs = nil
	return out
}

// waitHolds waits until no permission change is being resolved.
func waitHolds(t *testing.T, s *Server) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.holds.active.Load() > 0 {
		if time.Now().After(deadline) {
			t.Fatal("permission hold never ended")
		}
		runtime.Gosched()
	}
	// The hold's last deliveries run under the router's lock.
	s.router.mu.Lock()
	s.router.mu.Unlock() //nolint:staticcheck // an empty critical section: waiting for the holder
}

// wantIDs is the model's answer: the ids of m's subscriptions that ev
// reaches, sorted; none when m may not read it.
func wantIDs(m *modelConn, ev *protocol.Event, p modelPayload) []string {
	var want []string
	if m.project == ev.Project && (slices.Contains(ev.Roles, "any") || slices.ContainsFunc(m.roles, func(x string) bool { return slices.Contains(ev.Roles, x) })) {
		for id, sub := range m.subs {
			if sub.pass(p) && slices.ContainsFunc(sub.channels, func(x string) bool { return slices.Contains(ev.Channels, x) }) {
				want = append(want, id)
			}
		}
	}
	sort.Strings(want)
	return want
}

// eventFrame is the part of an event frame the property test reads.
type eventFrame struct {
	Type string `json:"type"`
	Data struct {
		Payload       struct{ N int } `json:"payload"`
		Subscriptions []string        `json:"subscriptions"`
	} `json:"data"`
}

// eventFrames drains c's queue and returns the event frames in it.
func eventFrames(t *testing.T, c *conn) []eventFrame {
	t.Helper()
	var out []eventFrame
	for _, f := range drainQueue(c) {
		var fr eventFrame
		_, hn, _ := parseFrameHeader(f)
		if err := json.Unmarshal(f[hn:], &fr); err != nil {
			t.Fatalf("bad frame %q", f)
		}
		if fr.Type == "event" {
			out = append(out, fr)
		}
	}
	return out
}

// checkEvent routes ev and compares every connection's queue with the
// model. Connections in held (their user's roles are being re-resolved)
// must receive nothing yet.
func checkEvent(t *testing.T, seed uint64, step int, r *router, live []*modelConn, ev *protocol.Event, p modelPayload, n int, held map[*modelConn]bool) {
	t.Helper()
	msg, err := protocol.MarshalEvent(ev)
	if err != nil {
		t.Fatal(err)
	}
	// Earlier frames (connected, responses, errors) are not under test here.
	for _, m := range live {
		drainQueue(m.c)
	}
	r.route(msg)
	for len(r.srv.pool.ch) > 0 {
		<-r.srv.pool.ch
	}
	for i, m := range live {
		if held[m] {
			for _, fr := range eventFrames(t, m.c) {
				t.Fatalf("seed %d step %d: conn %d got event %d while its roles were being re-resolved", seed, step, i, fr.Data.Payload.N)
			}
			continue
		}
		want := wantIDs(m, ev, p)
		var got [][]string
		for _, fr := range eventFrames(t, m.c) {
			if fr.Data.Payload.N != n {
				t.Fatalf("seed %d step %d: conn %d got event %d while checking %d", seed, step, i, fr.Data.Payload.N, n)
			}
			ids := fr.Data.Subscriptions
			sort.Strings(ids)
			got = append(got, ids)
		}
		switch {
		case len(want) == 0 && len(got) != 0:
			t.Fatalf("seed %d step %d: LEAK: conn %d (project %s roles %v subs %v) got event %v roles %v channels %v",
				seed, step, i, m.project, m.roles, m.subs, ev.Project, ev.Roles, ev.Channels)
		case len(want) != 0 && len(got) != 1:
			t.Fatalf("seed %d step %d: conn %d (project %s roles %v subs %v) got %d copies of event %s %v %v, want 1",
				seed, step, i, m.project, m.roles, m.subs, len(got), ev.Project, ev.Roles, ev.Channels)
		case len(want) != 0 && !slices.Equal(got[0], want):
			t.Fatalf("seed %d step %d: conn %d event names subscriptions %v, want %v", seed, step, i, got[0], want)
		}
	}
}

// drainQueue removes and returns the connection's queued frames, joined.
func drainQueue(c *conn) [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out [][]byte
	for _, f := range c.q.frames {
		out = append(out, slices.Concat(f.head, f.body, f.tail))
	}
	c.q = sendQueue{}
	return out
}

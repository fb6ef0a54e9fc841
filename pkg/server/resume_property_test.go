package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"
	"github.com/golang-jwt/jwt/v5"
	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// resumePropertySeeds run on every `go test`; SWITCHBOARD_RESUME_SEEDS=n
// adds n more, drawn from the clock (each logs its seed), and
// SWITCHBOARD_RESUME_SEED=s runs seed s alone.
var resumePropertySeeds = []uint64{1, 2, 3, 4}

// The duplicate bound of a dropped connection: what a node cannot know
// its client received (resumeMargin, the socket being acknowledged) plus
// slack for the time between the publish and the history's append.
const (
	propDropBound = resumeMargin + 300*time.Millisecond
	// propRouterLag is how long after its PUBLISH an event may still be
	// on its way to a node's router: a drain's close frame can overtake
	// it, and then it is replayed after the client comes back.
	propRouterLag = time.Second
	propDrainTime = 150 * time.Millisecond
	propWindow    = time.Minute
)

// TestResumeProperty drives two nodes on one real redis-server and six
// real WebSocket clients through random interleavings of publish, drop
// (the client closes its socket), reconnect to either node with the same
// subscription id (optionally under other channels, optionally with
// another role set in a new token: a role change), and drain (Shutdown
// with a drain time: close 1001, then a fresh node in its place), with
// events published while clients are away and while a node drains. Each
// client's stream is checked against a model (issue 24, RESUME.md):
//
//   - no leak ever: every event a connection received matches that
//     connection's roles and its subscription's channels, whether live
//     or replayed; and it is one the model lets reach that connection;
//   - no loss: an event published while the subscription existed reaches
//     it, live under the roles and channels of the connection of the
//     time, or, missed while away, replayed under those of the new
//     connection ("as they are at replay time");
//   - duplicates only within the bound: none across a drain; across a
//     drop only of events published within resumeMargin (+300 ms of
//     slack) before it; and within one connection events arrive in
//     publish order, each once.
//
// Every resume must succeed (the window is a minute, the history
// complete): a subscribe answered `live` fails the run, and the loss
// check skips what that subscription missed. SWITCHBOARD_RESUME_ALLOW_LIVE=1
// only logs such answers, to look past a known cause for other failures.
//
// A crash is left out: a node in this process cannot die without a word
// (its sockets close with it). kill -9 is TestResumeInChromium's, in
// cmd/switchboard.
//
// The TestResumeProperty* tests after it are failures it found, cut down
// to a fixed sequence through the same world and checks.
func TestResumeProperty(t *testing.T) {
	seeds := resumePropertySeeds
	if s := os.Getenv("SWITCHBOARD_RESUME_SEED"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		seeds = []uint64{n}
	} else if s := os.Getenv("SWITCHBOARD_RESUME_SEEDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			seeds = append(seeds, uint64(time.Now().UnixNano())+uint64(i))
		}
	}
	for _, seed := range seeds {
		t.Run("seed="+strconv.FormatUint(seed, 10), func(t *testing.T) {
			t.Logf("seed %d (SWITCHBOARD_RESUME_SEED=%d to run it alone)", seed, seed)
			runResumeWorld(t, seed, 120)
		})
	}
}

// A rolling deploy, the sequence TestResumeProperty's seeds 2 and 3 once
// failed on: both nodes are drained in turn, each replaced by a fresh
// node as soon as it has gone, while the project is quiet. After both
// drains only fresh nodes are left, and none heard history's last event:
// the new leader used to record a gap, and the drained client, anchored
// before it, could not resume (live_incomplete, after seamTimeout). Now
// the draining leader hands the lease over with a mark (history.Feed's
// hand-over) that the node started after the first drain heard, and that
// node continues history right after it. It must: every event once.
func TestResumePropertyRollingDeploy(t *testing.T) {
	w := newResumeWorld(t, 0, 0)
	pc := w.addClient("u1", true, 0, []string{"files"})
	anyone := func() *propEvent { return &propEvent{roles: []string{"any"}, channels: []string{"files"}} }
	w.publish(anyone())
	w.drain(1)
	w.drain(0)
	w.publish(anyone())
	w.reconnectTo(pc, 1)
	w.finish()
}

// A subscription made on a node whose router has routed fewer than four
// events of the project (a fresh node: its anchor is partial) comes back
// on a node that has routed more: TestResumeProperty's seed 4. The
// resuming node's own anchor (its last four events, taken when the
// resume begins) reaches back before the first event of the span read
// from the subscription's anchor, so the seam never finds it, and after
// seamTimeout (5 s) the subscription starts live.
func TestResumePropertyPartialAnchor(t *testing.T) {
	w := newResumeWorld(t, 0, 0)
	w.drain(1) // a fresh node in place 1; node 0 keeps the appender's lease
	anyone := func() *propEvent { return &propEvent{roles: []string{"any"}, channels: []string{"files"}} }
	w.publish(anyone())
	w.publish(anyone())
	pc := w.addClient("", false, 1, []string{"files"})
	time.Sleep(100 * time.Millisecond) // its record written
	w.drop(pc)
	time.Sleep(100 * time.Millisecond) // its end written
	w.reconnectTo(pc, 0)
	w.finish()
}

// A drain while events flow, then quiet: the drained node held the
// history's appender lease (node 0 takes it first), and Appwrite keeps
// publishing, without a pause, until the node has gone; then nothing is
// published for a while. Each drained client comes back on the other node
// and must resume, every event exactly once (issue 24: "a drain loses
// nothing and duplicates nothing").
//
// No node takes the drained one's place (TestResumePropertyRollingDeploy
// is that case): the survivor takes the lease with every event in its
// ring. One event published a lease tick after the drain (1.5 s) makes
// it pass.
func TestResumePropertyDrainThenQuiet(t *testing.T) {
	w := newResumeWorld(t, 0, 0)
	w.noFresh, w.burst = true, true
	var pcs []*propClient
	for i := 0; i < 6; i++ {
		pcs = append(pcs, w.addClient("", false, 0, []string{"files", "documents"}))
	}
	for i := 0; i < 20; i++ {
		w.publish(&propEvent{roles: []string{"any"}, channels: []string{"files"}})
	}
	w.drain(0)
	for _, pc := range pcs {
		w.connect(pc, 1, pc.conns[0].channels)
	}
	w.finish()
}

// A drain of a node that does not append the history, while events with
// 8 KiB payloads flow: the connections' writes are often under way, or
// their sockets full, when the drain reaches them. Each client comes back
// on the other node and must get every event exactly once.
//
// It failed now and then (3 runs of about 40, -race): a drained
// connection whose queue had not reached the socket when its close frame
// was queued got no drain record; its end was recorded as a drop's, and
// the resume replayed ~60 events of 8 KiB the client mostly had, or
// refused them as too big (live_size). The drain's record is now kept
// until the rest of the queue has reached the socket (conn.goAway).
func TestResumePropertyDrainWhileWriting(t *testing.T) {
	w := newResumeWorld(t, 0, 0, func(w *resumeWorld) { w.noFresh, w.pad = true, 8<<10 })
	var pcs []*propClient
	for i := 0; i < 6; i++ {
		pcs = append(pcs, w.addClient("", false, 1, []string{"files", "documents"}))
	}
	// 40: the drain may reach a connection before its router has routed
	// most of them, and a replay of more than half of max-queue-bytes
	// (64 events of 8 KiB) starts live by design (live_size).
	for i := 0; i < 40; i++ {
		w.publish(&propEvent{roles: []string{"any"}, channels: []string{"files"}})
	}
	w.drain(1)
	for _, pc := range pcs {
		w.connect(pc, 0, pc.conns[0].channels)
	}
	w.finish()
}

// propEvent is one published event.
type propEvent struct {
	n          int
	roles      []string
	channels   []string
	pub, acked time.Time // before the PUBLISH, after its answer
}

// How a connection ended.
type propEnd int

const (
	endNone  propEnd = iota // still open
	endDrop                 // the client closed its socket
	endDrain                // the node drained it: close 1001
)

func (e propEnd) String() string { return [...]string{"open", "drop", "drain"}[e] }

// propRecv is one event as a connection received it.
type propRecv struct {
	n    int
	subs []string
	at   time.Time
}

// propConn is one connection of a client: an epoch of its subscription.
type propConn struct {
	k        int // its place among the client's connections
	node     string
	roles    []string // as the resolver gives them for its token
	channels []string
	c        *client

	responses chan message // non-event messages, in order
	done      chan struct{}

	mu         sync.Mutex
	got        []propRecv
	status     string // the subscribe response's resume status
	sub, live  time.Time
	end        propEnd
	endStart   time.Time // the drop, or the start of the drain
	endDone    time.Time // the drop, or the close frame read
	closeCode  ws.StatusCode
	readErr    error
	closeFrame bool
}

// propClient is one SDK: a user (or a guest) with one subscription id.
type propClient struct {
	i     int
	uid   string // "" for a guest
	team  bool   // its next token carries team:t1
	id    string
	conns []*propConn
	// cur is the open connection, nil while away; pending is closed when
	// a reconnect in flight has its subscribe answered.
	cur     *propConn
	pending chan struct{}
}

func (pc *propClient) String() string {
	who := pc.uid
	if who == "" {
		who = "guest"
	}
	return fmt.Sprintf("client %d (%s, %s)", pc.i, who, pc.id)
}

// resumeWorld is one run: the nodes, the clients, the events and the log
// of what was done, for the report.
type resumeWorld struct {
	t     *testing.T
	seed  uint64
	rng   *rand.Rand
	url   string
	rdb   *redis.Client
	nodes [2]*Server
	names [2]string

	start   time.Time
	pad     int  // bytes of padding in every payload
	noFresh bool // a drained node is not replaced
	// burst: a drain's publisher publishes every millisecond, no pause
	// worth the name. Not faster: with no pause at all a drain under
	// -race published ~2,500 events, and a replay of all of them is over
	// half of max-queue-bytes, which starts live (live_size) by design.
	burst   bool
	mu      sync.Mutex
	events  []*propEvent
	clients []*propClient
	log     []string
	errs    []string
}

func (w *resumeWorld) logf(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.log = append(w.log, fmt.Sprintf("%6s after event %d: ", w.at(time.Now()), len(w.events))+fmt.Sprintf(format, args...))
}

func (w *resumeWorld) errorf(format string, args ...any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.errs = append(w.errs, fmt.Sprintf(format, args...))
}

func runResumeWorld(t *testing.T, seed uint64, ops int) {
	w := newResumeWorld(t, seed, 6)
	for op := 0; op < ops && !t.Failed(); op++ {
		switch r := w.rng.IntN(100); {
		case r < 55:
			w.publish(randomPropEvent(w.rng))
		case r < 67:
			if pc := w.pick(func(pc *propClient) bool { return pc.cur != nil || pc.pending != nil }); pc != nil {
				w.drop(pc)
			}
		case r < 85:
			if pc := w.pick(func(pc *propClient) bool { return pc.cur == nil && pc.pending == nil }); pc != nil {
				w.reconnect(pc)
			}
		case r < 88:
			w.drain(w.rng.IntN(2))
		default:
			time.Sleep(time.Duration(w.rng.IntN(300)) * time.Millisecond)
		}
		time.Sleep(time.Duration(w.rng.IntN(40)) * time.Millisecond)
	}
	w.finish()
}

// newResumeWorld starts a redis-server, two nodes on it, and n clients
// (the first four users u1..u4, the rest guests), each subscribed once.
func newResumeWorld(t *testing.T, seed uint64, n int, opts ...func(*resumeWorld)) *resumeWorld {
	rd := redistest.Start(t)
	w := &resumeWorld{t: t, seed: seed, rng: rand.New(rand.NewPCG(seed, 0x5eed)), url: rd.URL(), start: time.Now()}
	ropts, err := redis.ParseURL(w.url)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range opts {
		o(w)
	}
	w.rdb = redis.NewClient(ropts)
	t.Cleanup(func() { w.rdb.Close() })
	for i := range w.nodes {
		w.startNode(i)
	}
	w.warmUp()

	for i := 0; i < n; i++ {
		uid := ""
		if i < 4 {
			uid = "u" + strconv.Itoa(i+1)
		}
		w.addClient(uid, w.rng.IntN(2) == 0, w.rng.IntN(2), w.randomChannels())
	}
	return w
}

// addClient connects a client of user uid ("" a guest) to node i and
// subscribes it on channels.
func (w *resumeWorld) addClient(uid string, team bool, i int, channels []string) *propClient {
	k := len(w.clients)
	pc := &propClient{i: k, uid: uid, team: team, id: fmt.Sprintf("s%d-%x-%d", w.seed%1000, w.rng.Uint32()&0xfffffff, k)}
	w.clients = append(w.clients, pc)
	w.connect(pc, i, channels)
	w.waitPending(pc)
	return pc
}

// finish brings every client back, waits for a marker event on every
// connection, and checks the streams.
func (w *resumeWorld) finish() {
	// Everyone comes back, then a marker for all: once each has it, every
	// earlier delivery has been made.
	for _, pc := range w.clients {
		w.waitPending(pc)
		if pc.cur == nil {
			w.reconnect(pc)
		}
	}
	for _, pc := range w.clients {
		w.waitPending(pc)
	}
	marker := w.publish(&propEvent{roles: []string{"any"}, channels: []string{"files", "documents"}})
	for _, pc := range w.clients {
		if pc.cur == nil {
			continue
		}
		pcn := pc.cur
		deadline := time.Now().Add(15 * time.Second)
		for !pcn.has(marker.n) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if !pcn.has(marker.n) {
			w.errorf("%v: the marker %d never arrived on connection %d", pc, marker.n, pcn.k)
		}
	}
	for _, pc := range w.clients {
		for _, pcn := range pc.conns {
			pcn.c.conn.Close()
			<-pcn.done
		}
	}
	w.check()
}

// warmUp publishes events nobody may read until the history holds the
// last five of them. A partition's first append records a gap (history before
// it is unknown), and none is made before a node holds the lease: a
// subscription made earlier could not resume, which is right, and not
// what this test is about.
func (w *resumeWorld) warmUp() {
	key := "switchboard:history:{0}:s:p1"
	deadline := time.Now().Add(15 * time.Second)
	for i := 0; ; i++ {
		msg := event("p1", []string{"user:nobody"}, []string{"files"}, `{"warm":`+strconv.Itoa(i)+`}`)
		if err := w.rdb.Publish(context.Background(), broker.DefaultChannel, msg).Err(); err != nil {
			w.t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
		// Five held: an anchor (the last four events routed) taken from
		// now on lies wholly inside the history.
		last, err := w.rdb.XRevRangeN(context.Background(), key, "+", "-", 5).Result()
		if err == nil && len(last) == 5 && last[0].Values["d"] == msg {
			return
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("the history of p1 (%s) does not hold the warm-up event after 15 s: %v %v", key, last, err)
		}
	}
}

// historyState tells, for a failure's log, who holds p1's appender lease,
// the partition's gaps and the numbers of the stream's last events.
func (w *resumeWorld) historyState() string {
	ctx := context.Background()
	lease, _ := w.rdb.Get(ctx, "switchboard:history:{0}:lease").Result()
	gaps, _ := w.rdb.ZRange(ctx, "switchboard:history:{0}:gaps", 0, -1).Result()
	last, _ := w.rdb.XRevRangeN(ctx, "switchboard:history:{0}:s:p1", "+", "-", 12).Result()
	var ns []string
	for i := len(last) - 1; i >= 0; i-- {
		var m struct {
			Data struct{ Payload struct{ N *int } } `json:"data"`
		}
		d, _ := last[i].Values["d"].(string)
		_ = json.Unmarshal([]byte(d), &m)
		if m.Data.Payload.N == nil {
			ns = append(ns, last[i].ID+":warm-up")
		} else {
			ns = append(ns, last[i].ID+":"+strconv.Itoa(*m.Data.Payload.N))
		}
	}
	return fmt.Sprintf("lease %q gaps %v stream ... %v", lease, gaps, ns)
}

// startNode starts a node in place i.
func (w *resumeWorld) startNode(i int) {
	w.nodes[i] = resumeRedisNode(w.t, w.url, propWindow, propDrainTime, func(c *Config) { c.Resolver = mustJWT(w.t) })
	w.names[i] = fmt.Sprintf("%s(%d)", w.nodes[i].node, i)
}

// pick picks a client at random among those that qualify.
func (w *resumeWorld) pick(ok func(*propClient) bool) *propClient {
	var in []*propClient
	for _, pc := range w.clients {
		if ok(pc) {
			in = append(in, pc)
		}
	}
	if len(in) == 0 {
		return nil
	}
	return in[w.rng.IntN(len(in))]
}

func (w *resumeWorld) randomChannels() []string {
	return [][]string{{"files"}, {"documents"}, {"files", "documents"}}[w.rng.IntN(3)]
}

func randomPropEvent(rng *rand.Rand) *propEvent {
	var roles []string
	switch rng.IntN(4) {
	case 0:
		roles = []string{"any"}
	case 1:
		roles = []string{"team:t1"}
	case 2:
		roles = []string{"user:u" + strconv.Itoa(1+rng.IntN(4))}
	default:
		roles = []string{"team:t1", "user:u" + strconv.Itoa(1+rng.IntN(4))}
	}
	channels := [][]string{{"files"}, {"documents"}, {"files"}, {"documents"}, {"files", "documents"}}[rng.IntN(5)]
	return &propEvent{roles: roles, channels: channels}
}

// publish numbers ev and publishes it straight to Redis: one connection,
// one PUBLISH at a time, so the backbone's order is the numbers' order.
func (w *resumeWorld) publish(ev *propEvent) *propEvent {
	w.mu.Lock()
	ev.n = len(w.events) + 1
	w.events = append(w.events, ev)
	w.mu.Unlock()
	pad := ""
	if w.pad > 0 {
		pad = `,"pad":"` + strings.Repeat("x", w.pad) + `"`
	}
	msg := event("p1", ev.roles, ev.channels, `{"n":`+strconv.Itoa(ev.n)+pad+`}`)
	ev.pub = time.Now()
	err := w.rdb.Publish(context.Background(), broker.DefaultChannel, msg).Err()
	w.mu.Lock()
	ev.acked = time.Now()
	w.mu.Unlock()
	if err != nil {
		w.errorf("publish %d: %v", ev.n, err)
	}
	return ev
}

// token is pc's credentials for its next connection, and the roles the
// JWT resolver will give it.
func (w *resumeWorld) token(pc *propClient) (string, []string) {
	if pc.uid == "" {
		return "project=p1", auth.Guest().Roles
	}
	var extra []string
	if pc.team {
		extra = []string{"team:t1"}
	}
	tok := jwtFor(w.t, "k", jwt.MapClaims{"userId": pc.uid, "projectId": "p1", "roles": extra})
	return "project=p1&jwt=" + tok, auth.UserRoles(pc.uid, extra)
}

// connect dials node i for pc and subscribes its id on channels, in the
// background: pc.pending closes when the subscribe is answered.
func (w *resumeWorld) connect(pc *propClient, i int, channels []string) {
	query, roles := w.token(pc)
	pcn := &propConn{k: len(pc.conns), node: w.names[i], roles: roles, channels: channels,
		responses: make(chan message, 16), done: make(chan struct{})}
	c, err := tryDial(w.nodes[i], query, nil)
	if err != nil {
		w.t.Fatalf("%v: dial %s: %v", pc, pcn.node, err)
	}
	c.t = w.t
	pcn.c = c
	pc.conns = append(pc.conns, pcn)
	pc.pending = make(chan struct{})
	go pcn.read(w)
	w.logf("%v: connection %d to %s, roles %v, channels %v", pc, pcn.k, pcn.node, roles, channels)
	go func() {
		defer close(pc.pending)
		if m, ok := pcn.response(); !ok || m.Type != "connected" {
			w.errorf("%v: connection %d: %s %s instead of connected", pc, pcn.k, m.Type, m.Data)
			return
		}
		ch, _ := json.Marshal(channels)
		pcn.mu.Lock()
		pcn.sub = time.Now()
		pcn.mu.Unlock()
		if err := wsutil.WriteClientText(c.conn, []byte(`{"type":"subscribe","data":[{"subscriptionId":"`+pc.id+`","channels":`+string(ch)+`,"queries":[]}]}`)); err != nil {
			w.errorf("%v: connection %d: subscribe: %v", pc, pcn.k, err)
			return
		}
		m, ok := pcn.response()
		st, err := resumeStatus(m, pc.id)
		if !ok || err != nil {
			w.errorf("%v: connection %d: subscribe answered %s %s (%v)", pc, pcn.k, m.Type, m.Data, err)
			return
		}
		pcn.mu.Lock()
		pcn.live, pcn.status = time.Now(), st
		pcn.mu.Unlock()
		w.logf("%v: connection %d subscribed: %s", pc, pcn.k, st)
		if strings.HasPrefix(st, "live") {
			w.logf("  history then: %s", w.historyState())
		}
	}()
}

// waitPending waits until pc's reconnect in flight, if any, is answered;
// pc is then live on its last connection (or that connection failed).
func (w *resumeWorld) waitPending(pc *propClient) {
	if pc.pending == nil {
		return
	}
	select {
	case <-pc.pending:
	case <-time.After(20 * time.Second):
		w.t.Fatalf("%v: subscribe not answered in 20 s", pc)
	}
	pc.pending = nil
	pc.cur = pc.conns[len(pc.conns)-1]
}

// reconnect brings an away client back on a random node under the same
// id; a third of the time on other channels, a third of the time (users)
// with team:t1 given or taken away.
func (w *resumeWorld) reconnect(pc *propClient) {
	channels := pc.conns[len(pc.conns)-1].channels
	if w.rng.IntN(3) == 0 {
		channels = w.randomChannels()
	}
	if pc.uid != "" && w.rng.IntN(3) == 0 {
		pc.team = !pc.team
	}
	w.connect(pc, w.rng.IntN(2), channels)
}

// reconnectTo brings pc back on node i, on the channels it had, and waits
// for its subscribe to be answered.
func (w *resumeWorld) reconnectTo(pc *propClient, i int) {
	w.connect(pc, i, pc.conns[len(pc.conns)-1].channels)
	w.waitPending(pc)
}

// drop closes pc's socket: the node reads EOF.
func (w *resumeWorld) drop(pc *propClient) {
	w.waitPending(pc)
	pcn := pc.cur
	pc.cur = nil
	pcn.mu.Lock()
	pcn.end, pcn.endStart = endDrop, time.Now()
	pcn.mu.Unlock()
	pcn.c.conn.Close()
	pcn.mu.Lock()
	pcn.endDone = time.Now()
	pcn.mu.Unlock()
	<-pcn.done
	w.logf("%v: dropped connection %d", pc, pcn.k)
}

// drain shuts node i down with a drain time while events are published,
// waits for its clients to read their close frames, and starts a fresh
// node in its place.
func (w *resumeWorld) drain(i int) {
	for _, pc := range w.clients {
		w.waitPending(pc)
	}
	var on []*propConn
	var whose []*propClient
	start := time.Now()
	for _, pc := range w.clients {
		if pc.cur != nil && pc.cur.node == w.names[i] {
			on = append(on, pc.cur)
			whose = append(whose, pc)
			pc.cur.mu.Lock()
			pc.cur.end, pc.cur.endStart = endDrain, start
			pc.cur.mu.Unlock()
			pc.cur = nil
		}
	}
	w.logf("drain %s: %d clients", w.names[i], len(on))
	stop, published := make(chan struct{}), make(chan struct{})
	// The publisher runs beside the driver, so it draws from its own
	// source.
	rng := rand.New(rand.NewPCG(w.seed, uint64(len(w.log))))
	go func() {
		defer close(published)
		for {
			every := time.Duration(2+rng.IntN(8)) * time.Millisecond
			if w.burst {
				every = time.Millisecond
			}
			select {
			case <-stop:
				return
			case <-time.After(every):
			}
			w.publish(randomPropEvent(rng))
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := w.nodes[i].Shutdown(ctx)
	cancel()
	if err != nil {
		w.errorf("drain %s: %v", w.names[i], err)
	}
	for k, pcn := range on {
		select {
		case <-pcn.done:
		case <-time.After(10 * time.Second):
			w.t.Fatalf("%v: no close frame from the drained node", whose[k])
		}
	}
	close(stop)
	<-published
	if w.noFresh {
		w.logf("drained %s", w.names[i])
		return
	}
	old := w.names[i]
	w.startNode(i)
	w.logf("drained %s; %s in its place", old, w.names[i])
}

// read collects what pcn's socket brings until it ends: events with the
// time they arrived, everything else to responses.
func (pcn *propConn) read(w *resumeWorld) {
	defer close(pcn.done)
	defer close(pcn.responses)
	for {
		m, err := pcn.c.tryRead(time.Minute)
		if err != nil {
			var closed wsutil.ClosedError
			pcn.mu.Lock()
			if errors.As(err, &closed) {
				pcn.closeFrame, pcn.closeCode = true, closed.Code
				if pcn.end == endDrain {
					pcn.endDone = time.Now()
				}
			} else {
				pcn.readErr = err
			}
			pcn.mu.Unlock()
			if pcn.closeFrame {
				pcn.c.conn.Close()
			}
			return
		}
		if m.Type != "event" {
			pcn.responses <- m
			continue
		}
		var d struct {
			Subscriptions []string `json:"subscriptions"`
			Payload       struct{ N int }
		}
		if err := json.Unmarshal(m.Data, &d); err != nil {
			w.errorf("connection to %s: event %s: %v", pcn.node, m.Data, err)
			continue
		}
		pcn.mu.Lock()
		pcn.got = append(pcn.got, propRecv{n: d.Payload.N, subs: d.Subscriptions, at: time.Now()})
		pcn.mu.Unlock()
	}
}

func (pcn *propConn) response() (message, bool) {
	select {
	case m, ok := <-pcn.responses:
		return m, ok
	case <-time.After(15 * time.Second):
		return message{Type: "(nothing in 15 s)"}, false
	}
}

func (pcn *propConn) has(n int) bool {
	pcn.mu.Lock()
	defer pcn.mu.Unlock()
	return slices.ContainsFunc(pcn.got, func(r propRecv) bool { return r.n == n })
}

// resumeStatus reads the resume status of subscription id from a
// subscribe response: "resumed", "new", or "live_<reason>".
func resumeStatus(m message, id string) (string, error) {
	st, err := parseResumeStatus(m, id)
	if err == nil && st == "" {
		err = fmt.Errorf("no resume status for %s", id)
	}
	return st, err
}

// matches tells whether ev is deliverable to pcn: one of its roles (or
// any) and one of its subscription's channels.
func (pcn *propConn) matches(ev *propEvent) bool {
	return admits(pcn.roles, ev.roles) && anyIn(pcn.channels, ev.channels)
}

// placesFor is where the model lets ev reach pc: the indexes of the
// connections that may deliver it, and whether it must arrive.
//
// An event published while connection j was up, or while the client was
// away before j (j's subscribe replays it), belongs to j. Near j's end it
// may instead be replayed on j+1: for a drop, when published within the
// duplicate bound before it (the node cannot know the client read it);
// for a drain, when published during it or within propRouterLag before
// (exactly one of them delivers it). It must arrive when every connection that may deliver it matches
// it. An event published before the first subscribe may arrive (the
// Redis feed runs behind the PUBLISH), never must.
// replayAgain tells whether ev may come again after connection pcn: it
// resumed with ev in its replay (published before it went live) and was
// dropped within propDropBound of that, before its client could be known
// to have it; the node then keeps the record of where it stood before the
// replay (resume.go, endRecordsLocked).
func replayAgain(pcn *propConn, ev *propEvent) bool {
	return pcn.end == endDrop && pcn.status == "resumed" && ev.pub.Before(pcn.live) &&
		pcn.endStart.Sub(pcn.live) < propDropBound
}

func placesFor(pc *propClient, ev *propEvent) (places []int, must bool) {
	first := pc.conns[0]
	if ev.pub.Before(first.sub) {
		if ev.acked.After(first.sub.Add(-time.Second)) {
			return []int{0}, false
		}
		return nil, false
	}
	j := 0
	for k := 1; k < len(pc.conns); k++ {
		if !ev.pub.Before(pc.conns[k-1].endDone) {
			j = k
		}
	}
	places = []int{j}
	for k := j; k+1 < len(pc.conns); k++ {
		pcn := pc.conns[k]
		bound := propRouterLag
		if pcn.end == endDrop {
			bound = propDropBound
		}
		if !ev.acked.After(pcn.endStart.Add(-bound)) && !replayAgain(pcn, ev) {
			break
		}
		places = append(places, k+1)
	}
	must = true
	for _, k := range places {
		pcn := pc.conns[k]
		if !pcn.matches(ev) {
			must = false
		}
		// A subscription that did not resume owes nothing of what was
		// published before it (counted and failed on its own).
		if k > 0 && pcn.status != "resumed" && ev.pub.Before(pcn.live) {
			must = false
		}
	}
	return places, must
}

// check compares each client's streams with the model and fails the run
// with the log when they differ.
func (w *resumeWorld) check() {
	t := w.t
	w.mu.Lock()
	defer w.mu.Unlock()
	var bad []string
	bad = append(bad, w.errs...)
	notResumed := 0
	received, replays := 0, 0
	for _, pc := range w.clients {
		seen := make(map[int][]int) // event -> connections that delivered it
		for _, pcn := range pc.conns {
			want := "resumed"
			if pcn.k == 0 {
				want = "new"
			}
			if pcn.status != want {
				notResumed++
				msg := fmt.Sprintf("%v: connection %d (%s) subscribed with resume status %q, want %q", pc, pcn.k, pcn.node, pcn.status, want)
				if os.Getenv("SWITCHBOARD_RESUME_ALLOW_LIVE") != "" {
					t.Log(msg)
				} else {
					bad = append(bad, msg)
				}
			}
			if pcn.end == endDrain && (!pcn.closeFrame || pcn.closeCode != ws.StatusGoingAway) {
				bad = append(bad, fmt.Sprintf("%v: connection %d drained without a close 1001 (%v %d, %v)", pc, pcn.k, pcn.closeFrame, pcn.closeCode, pcn.readErr))
			}
			last := 0
			for _, r := range pcn.got {
				received++
				if r.n < 1 || r.n > len(w.events) {
					bad = append(bad, fmt.Sprintf("%v: connection %d: event %d never published", pc, pcn.k, r.n))
					continue
				}
				ev := w.events[r.n-1]
				// 1. No leak, ever.
				if !pcn.matches(ev) {
					bad = append(bad, fmt.Sprintf("LEAK %v: connection %d (roles %v, channels %v) received event %d (roles %v, channels %v)", pc, pcn.k, pcn.roles, pcn.channels, r.n, ev.roles, ev.channels))
				}
				if !slices.Equal(r.subs, []string{pc.id}) {
					bad = append(bad, fmt.Sprintf("%v: connection %d: event %d names subscriptions %v", pc, pcn.k, r.n, r.subs))
				}
				// 3. In order, once, on one connection.
				if r.n <= last {
					bad = append(bad, fmt.Sprintf("%v: connection %d received event %d after %d", pc, pcn.k, r.n, last))
				}
				last = max(last, r.n)
				places, _ := placesFor(pc, ev)
				if !slices.Contains(places, pcn.k) {
					bad = append(bad, fmt.Sprintf("%v: connection %d received event %d (published %v after connection %d's subscribe), the model puts it on %v", pc, pcn.k, r.n, ev.pub.Sub(pcn.sub).Round(time.Millisecond), pcn.k, places))
				}
				if prev := seen[r.n]; len(prev) > 0 {
					replays++
					before := pc.conns[pcn.k-1]
					if before.end == endDrain {
						bad = append(bad, fmt.Sprintf("%v: event %d received on connections %v and %d across a drain", pc, r.n, prev, pcn.k))
					} else if ago := before.endStart.Sub(ev.pub); ago > propDropBound && !replayAgain(before, ev) {
						bad = append(bad, fmt.Sprintf("%v: event %d received on connections %v and %d, published %v before the drop (bound %v)", pc, r.n, prev, pcn.k, ago.Round(time.Millisecond), propDropBound))
					}
				}
				seen[r.n] = append(seen[r.n], pcn.k)
			}
		}
		// 2. No loss.
		for _, ev := range w.events {
			if _, must := placesFor(pc, ev); must && len(seen[ev.n]) == 0 {
				places, _ := placesFor(pc, ev)
				bad = append(bad, fmt.Sprintf("LOSS %v: event %d (roles %v, channels %v) never arrived; the model puts it on connection(s) %v", pc, ev.n, ev.roles, ev.channels, places))
			}
		}
	}
	t.Logf("seed %d: %d events published, %d received, %d duplicates across drops, %d subscribes not resumed", w.seed, len(w.events), received, replays, notResumed)
	if len(bad) == 0 {
		return
	}
	var b strings.Builder
	for _, pc := range w.clients {
		for _, pcn := range pc.conns {
			fmt.Fprintf(&b, "  %v connection %d on %s roles %v channels %v status %s sub %s live %s end %v %s..%s got %v\n",
				pc, pcn.k, pcn.node, pcn.roles, pcn.channels, pcn.status, w.at(pcn.sub), w.at(pcn.live), pcn.end, w.at(pcn.endStart), w.at(pcn.endDone), pcn.nums())
		}
	}
	for _, ev := range w.events {
		fmt.Fprintf(&b, "  event %d roles %v channels %v published %s..%s\n", ev.n, ev.roles, ev.channels, w.at(ev.pub), w.at(ev.acked))
	}
	if len(bad) > 40 {
		bad = append(bad[:40], fmt.Sprintf("... and %d more", len(bad)-40))
	}
	t.Errorf("seed %d:\n%s\nops:\n  %s\nstreams:\n%s", w.seed, strings.Join(bad, "\n"), strings.Join(w.log, "\n  "), b.String())
}

// at is a time as milliseconds since the run began.
func (w *resumeWorld) at(tm time.Time) string {
	if tm.IsZero() {
		return "-"
	}
	return strconv.FormatInt(tm.Sub(w.start).Milliseconds(), 10) + "ms"
}

func (pcn *propConn) nums() []int {
	var ns []int
	for _, r := range pcn.got {
		ns = append(ns, r.n)
	}
	return ns
}

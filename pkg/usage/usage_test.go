package usage

import (
	"context"
	"errors"
	"net/url"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// testStore checks the contract both stores keep: adds into one minute
// sum, a query returns only the minutes asked for with usage, in order,
// and projects never mix.
func testStore(t *testing.T, s Store, now time.Time) {
	ctx := context.Background()
	m0 := now.Unix()/60 - 5
	a := func() *Tally {
		a := NewTally()
		a.Add("p", Counts{Connections: 1, Messages: 2, Inbound: 3, Outbound: 4})
		a.Add("q", Counts{Messages: 100})
		return a
	}
	for range 2 { // a second node (or fold) adds into the same minute
		if err := s.Add(ctx, m0, a()); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range []int64{m0 + 2, m0 + 4} {
		b := NewTally()
		b.Add("p", Counts{Outbound: 7})
		if err := s.Add(ctx, m, b); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.Query(ctx, "p", m0-3, m0+3)
	want := []Minute{{Minute: m0, Counts: Counts{2, 4, 6, 8}}, {Minute: m0 + 2, Counts: Counts{Outbound: 7}}}
	if err != nil || !equalMinutes(got, want) {
		t.Fatalf("p %d..%d: %+v %v, want %+v", m0-3, m0+3, got, err, want)
	}
	got, err = s.Query(ctx, "q", m0, m0+10)
	if want := []Minute{{Minute: m0, Counts: Counts{Messages: 200}}}; err != nil || !equalMinutes(got, want) {
		t.Fatalf("q: %+v %v, want %+v", got, err, want)
	}
	if got, err := s.Query(ctx, "r", m0-100, m0+100); err != nil || len(got) != 0 {
		t.Fatalf("r: %+v %v", got, err)
	}
	// Past the retention, nothing.
	old := now.Add(-s.Retention()-2*time.Minute).Unix() / 60
	if err := s.Add(ctx, old, a()); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Query(ctx, "q", old-1, old+1); err != nil || len(got) != 0 {
		t.Fatalf("past retention: %+v %v", got, err)
	}
}

// testStoreUnattributed checks that a store keeps a minute's
// Unattributed counts and that a query of any project returns them with
// that minute, marked incomplete, whether or not the project counted in
// it.
func testStoreUnattributed(t *testing.T, s Store, now time.Time) {
	ctx := context.Background()
	m := now.Unix()/60 - 20 // none of testStore's minutes
	tl := NewTally()
	tl.Add("p", Counts{Messages: 3})
	tl.Add(Unattributed, Counts{Connections: 1, Messages: 5})
	if err := s.Add(ctx, m, tl); err != nil {
		t.Fatal(err)
	}
	spill := Counts{Connections: 1, Messages: 5}
	for project, want := range map[string][]Minute{
		"p":       {{Minute: m, Counts: Counts{Messages: 3}, Unattributed: spill}},
		"elsewho": {{Minute: m, Unattributed: spill}},
	} {
		got, err := s.Query(ctx, project, m-2, m+1)
		if err != nil || !equalMinutes(got, want) || !got[0].Incomplete() {
			t.Fatalf("%s: %+v %v, want %+v, incomplete", project, got, err, want)
		}
	}
}

func equalMinutes(a, b []Minute) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestMemoryStore(t *testing.T) {
	now := time.Now()
	testStore(t, newMemory(time.Hour, DefaultMemoryMaxEntries, func() time.Time { return now }), now)
	testStoreUnattributed(t, newMemory(time.Hour, DefaultMemoryMaxEntries, func() time.Time { return now }), now)
}

// TestTallyBound: a full tally credits a project new to it to
// Unattributed, counted in Spilled; a project it holds still counts under
// its name, and Merge keeps the same bound.
func TestTallyBound(t *testing.T) {
	tl := newTally(3)
	for i := range 5 {
		tl.Add("p"+strconv.Itoa(i), Counts{Messages: int64(i + 1)})
	}
	tl.Add("p0", Counts{Messages: 10})
	if tl.Len() != 4 || tl.Get("p0").Messages != 11 || tl.Get("p2").Messages != 3 || tl.Get("p3") != (Counts{}) ||
		tl.Get(Unattributed).Messages != 4+5 || tl.Spilled() != 2 {
		t.Fatalf("%d projects, p0 %v, p2 %v, p3 %v, unattributed %v, spilled %d", tl.Len(), tl.Get("p0"), tl.Get("p2"),
			tl.Get("p3"), tl.Get(Unattributed), tl.Spilled())
	}
	into := newTally(2)
	into.Add("p2", Counts{Messages: 100})
	into.Merge(tl)
	var sum Counts
	into.All(func(_ string, c Counts) { sum.Add(c) })
	if into.Len() != 3 || into.Get("p2").Messages != 103 || sum.Messages != 100+11+2+3+9 || into.Spilled() != 1 {
		t.Fatalf("merged: %d projects, p2 %v, sum %v, spilled %d", into.Len(), into.Get("p2"), sum, into.Spilled())
	}
	tl.Reset()
	if tl.Spilled() != 0 || tl.Len() != 0 {
		t.Fatalf("after Reset: spilled %d, %d projects", tl.Spilled(), tl.Len())
	}
}

// TestMemoryStoreBound: a store of 4 project-minutes drops its oldest
// minute whole for a new entry, and a query says that minute is lost;
// when the minute being added to is the only one left, a new project's
// counts go to Unattributed and that minute says it is incomplete. Both
// are counted.
func TestMemoryStoreBound(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	s := newMemory(time.Hour, 4, func() time.Time { return now })
	m0 := now.Unix()/60 - 10
	add := func(minute int64, projects ...string) {
		tl := NewTally()
		for _, p := range projects {
			tl.Add(p, Counts{Messages: 1})
		}
		if err := s.Add(ctx, minute, tl); err != nil {
			t.Fatal(err)
		}
	}
	add(m0, "a", "b")
	add(m0+1, "a", "b")
	add(m0+2, "a") // full: m0 goes
	if got, _ := s.Query(ctx, "a", m0, m0+2); !equalMinutes(got, []Minute{{Minute: m0, Lost: true},
		{Minute: m0 + 1, Counts: Counts{Messages: 1}}, {Minute: m0 + 2, Counts: Counts{Messages: 1}}}) {
		t.Fatalf("a after m0 was dropped: %+v", got)
	}
	if st := s.Stats(); st.StoreLostMinutes != 1 || st.StoreSpilled != 0 || s.entries != 3 {
		t.Fatalf("stats %+v, %d entries", st, s.entries)
	}
	add(m0+3, "a", "b", "c", "d") // m0+1 and m0+2 go
	add(m0+3, "e")                // m0+3 alone is full: e spills
	got, _ := s.Query(ctx, "z", m0-5, m0+5)
	want := []Minute{{Minute: m0, Lost: true}, {Minute: m0 + 1, Lost: true}, {Minute: m0 + 2, Lost: true},
		{Minute: m0 + 3, Unattributed: Counts{Messages: 1}}}
	if !equalMinutes(got, want) {
		t.Fatalf("z: %+v, want %+v", got, want)
	}
	if st := s.Stats(); st.StoreLostMinutes != 3 || st.StoreSpilled != 1 {
		t.Fatalf("stats %+v", st)
	}
	// A late fold of a lost minute stores nothing: it stays lost.
	add(m0+1, "a")
	if got, _ := s.Query(ctx, "a", m0+1, m0+1); !equalMinutes(got, []Minute{{Minute: m0 + 1, Lost: true}}) {
		t.Fatalf("late fold of a lost minute: %+v", got)
	}
	// Report: the range is incomplete, and says which minutes.
	rep, err := Query(ctx, s, Range{"a", m0, m0 + 3})
	if err != nil || !rep.Incomplete || len(rep.Minutes) != 4 || !rep.Minutes[0].Lost || !rep.Minutes[3].Incomplete ||
		rep.Minutes[3].Unattributed == nil || *rep.Minutes[3].Unattributed != (Counts{Messages: 1}) || rep.Total.Messages != 1 {
		t.Fatalf("report %+v %v", rep, err)
	}
}

// A minute that settled (into its sorted slice) can still be added to and
// read, and a minute drops out when the retention passes it.
func TestMemoryStoreSettlesAndExpires(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	s := newMemory(10*time.Minute, DefaultMemoryMaxEntries, func() time.Time { return now })
	m0 := now.Unix() / 60
	one := NewTally()
	for i := range 50 {
		one.Add("p"+strconv.Itoa(i), Counts{Messages: int64(i)})
	}
	for k := range int64(5) {
		if err := s.Add(ctx, m0+k, one); err != nil {
			t.Fatal(err)
		}
	}
	if len(s.settled) != 3 || len(s.open) != 2 {
		t.Fatalf("settled %d, open %d; want 3 and 2", len(s.settled), len(s.open))
	}
	if err := s.Add(ctx, m0, one); err != nil { // late: reopens minute m0
		t.Fatal(err)
	}
	got, _ := s.Query(ctx, "p7", m0, m0+4)
	want := []Minute{{Minute: m0, Counts: Counts{Messages: 14}}, {Minute: m0 + 1, Counts: Counts{Messages: 7}}, {Minute: m0 + 2, Counts: Counts{Messages: 7}},
		{Minute: m0 + 3, Counts: Counts{Messages: 7}}, {Minute: m0 + 4, Counts: Counts{Messages: 7}}}
	if !equalMinutes(got, want) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
	now = now.Add(12 * time.Minute) // m0 and m0+1 are past the 10 minutes
	got, _ = s.Query(ctx, "p7", m0, m0+4)
	if !equalMinutes(got, want[2:]) {
		t.Fatalf("after the retention: %+v, want %+v", got, want[2:])
	}
	if len(s.settled)+len(s.open) != 3 {
		t.Fatalf("%d minutes kept, want 3", len(s.settled)+len(s.open))
	}
}

func TestRedisStore(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	s, err := NewRedis(RedisOptions{Client: c, Prefix: "test:usage", Retention: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	testStore(t, s, time.Now())
	// What was stored is taken out of the tally (a retry adds the rest).
	m := time.Now().Unix() / 60
	big := NewTally()
	for i := range redisBatch + 10 {
		big.Add("b"+strconv.Itoa(i), Counts{Messages: 1})
	}
	if err := s.Add(context.Background(), m, big); err != nil || big.Len() != 0 {
		t.Fatalf("add: %v, %d projects left in the tally", err, big.Len())
	}
	_ = c.FlushDB(context.Background()) // the keys below are testStore's
	testStore(t, s, time.Now())
	keys, _ := c.Keys(context.Background(), "test:usage:*").Result()
	testStoreUnattributed(t, s, time.Now())
	if more, _ := c.Keys(context.Background(), "test:usage:*").Result(); len(more) != len(keys)+2 {
		t.Fatalf("keys %q after testStoreUnattributed, want 2 more than %q", more, keys)
	}
	_ = c.Del(context.Background(), s.key("p", time.Now().Unix()/60-20), s.key(Unattributed, time.Now().Unix()/60-20))
	// Every key expires at its minute's end plus the retention.
	keys, err = c.Keys(context.Background(), "test:usage:*").Result()
	if err != nil || len(keys) != 4 {
		t.Fatalf("keys %q %v", keys, err)
	}
	for _, k := range keys {
		ttl, err := c.TTL(context.Background(), k).Result()
		if err != nil || ttl <= 0 || ttl > time.Hour+time.Minute {
			t.Fatalf("%s: TTL %v %v", k, ttl, err)
		}
	}
}

// fakeStore records what a collector stores, and fails on demand.
type fakeStore struct {
	mu   sync.Mutex
	fail bool
	got  map[int64]Counts // by minute, all projects summed
	per  map[string]Counts
}

func (f *fakeStore) Add(_ context.Context, minute int64, t *Tally) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("down")
	}
	t.All(func(p string, c Counts) {
		x := f.got[minute]
		x.Add(c)
		f.got[minute] = x
		y := f.per[p]
		y.Add(c)
		f.per[p] = y
	})
	return nil
}

func (f *fakeStore) Query(context.Context, string, int64, int64) ([]Minute, error) { return nil, nil }
func (f *fakeStore) Retention() time.Duration                                      { return time.Hour }

// The collector folds its sources and meter into the minute it runs in,
// keeps what a failing store refused for the next fold, and ranks the
// node's recent top projects per metric.
func TestCollectorFolds(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	store := &fakeStore{got: map[int64]Counts{}, per: map[string]Counts{}}
	router := NewTally()
	swaps := 0
	c, err := NewCollector(CollectorOptions{Store: store, Now: func() time.Time { return now }, Sources: []Swapper{
		func(empty *Tally) *Tally {
			if empty.Len() != 0 {
				t.Fatal("swapped in a tally that is not empty")
			}
			swaps++
			full := router
			router = empty
			return full
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	router.Add("a", Counts{Messages: 10, Outbound: 1000})
	c.Add("a", Counts{Connections: 1, Inbound: 300})
	c.Add("b", Counts{Connections: 2, Inbound: 50, Messages: 1, Outbound: 20})
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	m0 := now.Unix() / 60
	if got := store.got[m0]; got != (Counts{3, 11, 350, 1020}) {
		t.Fatalf("minute 0: %+v", got)
	}
	store.fail = true
	router.Add("b", Counts{Messages: 5})
	now = now.Add(time.Minute)
	if err := c.Flush(ctx); err == nil {
		t.Fatal("a failing store's fold reported no error")
	}
	router.Add("b", Counts{Messages: 7})
	now = now.Add(time.Minute)
	store.fail = false
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if store.got[m0+1].Messages != 5 || store.got[m0+2].Messages != 7 {
		t.Fatalf("kept minutes: %+v", store.got)
	}
	if swaps != 3 {
		t.Fatalf("%d swaps", swaps)
	}
	top, from := c.Top(1)
	if from != m0+1 {
		t.Fatalf("top from minute %d, want %d", from, m0+1)
	}
	if got := top[Messages]; len(got) != 1 || got[0] != (Ranked{"b", 12}) {
		t.Fatalf("top messages over the last two minutes: %+v", got)
	}
	if got := top[Connections]; len(got) != 0 {
		t.Fatalf("top connections: %+v (minute 0 is out of the window)", got)
	}
}

// TestCollectorBounds: a second of MaxProjects+1 projects stores
// MaxProjects of them and the last under Unattributed, counted; while the
// store fails, pending minutes over MaxProjects projects in all have
// their oldest collapsed into Unattributed, counted, and stored so when
// the store is back: the totals are all there, some without a project.
func TestCollectorBounds(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	store := &fakeStore{got: map[int64]Counts{}, per: map[string]Counts{}}
	c, err := NewCollector(CollectorOptions{Store: store, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	m0 := now.Unix() / 60
	for i := range MaxProjects + 1 {
		c.Add("p"+strconv.Itoa(i), Counts{Messages: 1})
	}
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if st := c.Stats(); st.Spilled != 1 || len(store.per) != MaxProjects+1 || store.per[Unattributed].Messages != 1 ||
		store.got[m0].Messages != MaxProjects+1 {
		t.Fatalf("stats %+v; %d projects stored, unattributed %v, minute total %v", st, len(store.per), store.per[Unattributed], store.got[m0])
	}
	clear(store.per)
	store.fail = true
	const half = MaxProjects/2 + 1 // two minutes of it are over MaxProjects
	for k := range int64(2) {
		now = now.Add(time.Minute)
		for i := range half {
			c.Add("q"+strconv.Itoa(int(k)*half+i), Counts{Connections: 1})
		}
		if err := c.Flush(ctx); err == nil {
			t.Fatal("a failing store's fold reported no error")
		}
	}
	if st := c.Stats(); st.PendingCollapsed != 1 || st.PendingDropped != 0 || len(c.pending) != 2 || c.pending[0].t.Len() != 1 {
		t.Fatalf("stats %+v, %d pending minutes", st, len(c.pending))
	}
	store.fail = false
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if store.got[m0+1].Connections != half || store.got[m0+2].Connections != half || store.per[Unattributed].Connections != half ||
		len(store.per) != half+1 {
		t.Fatalf("stored after the outage: minutes %v %v, %d projects, unattributed %v", store.got[m0+1], store.got[m0+2], len(store.per), store.per[Unattributed])
	}
}

func TestParseRange(t *testing.T) {
	now := time.Date(2026, 6, 1, 12, 30, 45, 0, time.UTC)
	nowM := now.Unix() / 60
	for _, tc := range []struct {
		q        string
		from, to int64
		err      string
	}{
		{q: "project=p", from: nowM - 59, to: nowM},
		{q: "project=p&from=2026-06-01T12:00:00Z", from: nowM - 30, to: nowM},
		{q: "project=p&from=2026-06-01T12:00:59.9Z&to=2026-06-01T12:10:00Z", from: nowM - 30, to: nowM - 20},
		{q: "project=p&from=1780310400&to=1780310460", from: 29671840, to: 29671841},
		{q: "project=p&to=2026-06-01T13:30:00%2B01:00", from: nowM - 59, to: nowM},
		{q: "project=p&from=-61&to=0", from: -2, to: 0},
		{q: "", err: "project is required"},
		{q: "project=", err: "project is required"},
		{q: "project=p&from=yesterday", err: `from: "yesterday" is neither RFC 3339 nor Unix seconds`},
		{q: "project=p&to=2026-06-01", err: `to: "2026-06-01" is neither RFC 3339 nor Unix seconds`},
		{q: "project=p&from=99999999999999", err: `from: "99999999999999" is out of range`},
		{q: "project=p&from=2026-06-01T13:00:00Z", err: "from is after to"},
	} {
		q, err := url.ParseQuery(tc.q)
		if err != nil {
			t.Fatal(err)
		}
		r, err := ParseRange(q, now)
		if tc.err != "" {
			if err == nil || err.Error() != tc.err {
				t.Errorf("%s: error %v, want %q", tc.q, err, tc.err)
			}
			continue
		}
		if err != nil || r.Project != "p" || r.From != tc.from || r.To != tc.to {
			t.Errorf("%s: %+v %v, want %d..%d", tc.q, r, err, tc.from, tc.to)
		}
	}
}

// The report sums its minutes and names the metrics as Appwrite does.
func TestQueryReport(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := newMemory(time.Hour, DefaultMemoryMaxEntries, func() time.Time { return now })
	m := now.Unix() / 60
	tl := NewTally()
	tl.Add("p", Counts{1, 2, 3, 4})
	_ = s.Add(context.Background(), m-1, tl)
	_ = s.Add(context.Background(), m, tl)
	rep, err := Query(context.Background(), s, Range{"p", m - 10, m})
	if err != nil || rep.Total != (Counts{2, 4, 6, 8}) || len(rep.Minutes) != 2 || rep.Metrics["realtime.messages.sent"] != 4 ||
		rep.Metrics["realtime.outbound"] != 8 || !rep.To.Equal(time.Unix((m+1)*60, 0)) {
		t.Fatalf("%+v %v", rep, err)
	}
}

// nopStore stores nothing: the node's side of a cluster, where Redis
// keeps the minutes.
type nopStore struct{}

func (nopStore) Add(_ context.Context, _ int64, t *Tally) error { t.Reset(); return nil }
func (nopStore) Query(context.Context, string, int64, int64) ([]Minute, error) {
	return nil, nil
}
func (nopStore) Retention() time.Duration { return time.Hour }

// BenchmarkMemoryAt100kProjects reports what usage costs a node when
// every one of 100,000 or 1,000,000 projects is busy every second: each
// sends an event (the router's tally) and opens a connection (the meter)
// in every second of 10 minutes, folded once a second.
//   - MiB-node: the heap of the collector and its sources at the peak of a
//     second (the router's tally and the meter full, the dashboard's two
//     minutes), with a store that keeps nothing (Redis);
//   - MiB-store: the embedded store's heap after the 10 minutes (its bound
//     is reached by then at both sizes);
//   - B/project-minute-in-store: its cost per project-minute kept.
func BenchmarkMemoryAt100kProjects(b *testing.B) {
	for _, projects := range []int{100_000, 1_000_000} {
		b.Run(strconv.Itoa(projects), func(b *testing.B) {
			names := make([]string, projects)
			for i := range names {
				names[i] = "project-" + strconv.Itoa(10_000_000_000 + i)[1:] // 18 bytes, like an Appwrite id's 20
			}
			heap := func() uint64 {
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				return ms.HeapAlloc
			}
			for range b.N {
				for _, embedded := range []bool{false, true} {
					now := time.Unix(1_800_000_000, 0)
					var store Store = nopStore{}
					var mem *Memory
					if embedded {
						mem = newMemory(time.Hour, DefaultMemoryMaxEntries, func() time.Time { return now })
						store = mem
					}
					router := NewTally()
					before := heap()
					c, _ := NewCollector(CollectorOptions{Store: store, Now: func() time.Time { return now },
						Sources: []Swapper{func(empty *Tally) *Tally { full := router; router = empty; return full }}})
					peak := uint64(0)
					for range 10 {
						for _, p := range names {
							router.Add(p, Counts{Messages: 1, Outbound: 100})
							c.Add(p, Counts{Connections: 1, Inbound: 300})
						}
						if !embedded {
							peak = max(peak, heap()-before)
						}
						_ = c.Flush(context.Background())
						now = now.Add(time.Minute)
					}
					if embedded {
						store := heap() - before
						b.ReportMetric(float64(store)/(1<<20), "MiB-store")
						b.ReportMetric(float64(store)/float64(mem.entries), "B/project-minute-in-store")
						b.ReportMetric(float64(mem.Stats().StoreLostMinutes), "minutes-lost")
					} else {
						b.ReportMetric(float64(peak)/(1<<20), "MiB-node")
						b.ReportMetric(float64(c.Stats().Spilled)/10, "spilled/fold")
					}
					runtime.KeepAlive(c)
				}
			}
		})
	}
}

package presence

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

func upsert(project, uid, id, status string, hold bool, now time.Time) Upsert {
	d := &protocol.PresenceDoc{UpdatedAt: now, Permissions: []string{`read("any")`}, UserID: uid, Status: status,
		Source: protocol.PresenceSourceRealtime, ExpiresAt: now.Add(protocol.PresenceLifetime)}
	return Upsert{Project: project, UserID: uid, ID: id, CreatedAt: protocol.FormatTime(now), ExpiresAt: d.ExpiresAt,
		Tail: protocol.AppendPresenceTail(nil, d), Hold: hold}
}

func status(t *testing.T, doc []byte) string {
	t.Helper()
	var d struct {
		ID        string `json:"$id"`
		CreatedAt string `json:"$createdAt"`
		Status    string `json:"status"`
	}
	if err := json.Unmarshal(doc, &d); err != nil {
		t.Fatalf("document %s: %v", doc, err)
	}
	return d.ID + "/" + d.Status + "/" + d.CreatedAt
}

// testStore checks the contract both stores keep.
func testStore(t *testing.T, s Store) {
	ctx := context.Background()
	t0 := time.Date(2026, 5, 25, 12, 0, 0, 0, time.UTC)
	c0 := protocol.FormatTime(t0)
	r, err := s.Upsert(ctx, upsert("p", "u1", "a", "online", true, t0))
	if err != nil || r.ID != "a" || !r.Created || status(t, r.Doc) != "a/online/"+c0 {
		t.Fatalf("first upsert: %+v %s %v", r, r.Doc, err)
	}
	// One record per user and project: another id reuses the first, and
	// its creation time.
	r, err = s.Upsert(ctx, upsert("p", "u1", "b", "away", true, t0.Add(time.Minute)))
	if err != nil || r.ID != "a" || r.Created || status(t, r.Doc) != "a/away/"+c0 {
		t.Fatalf("second upsert: %+v %s %v", r, r.Doc, err)
	}
	// Another user cannot take the id; another project is another world.
	if _, err := s.Upsert(ctx, upsert("p", "u2", "a", "online", true, t0)); !errors.Is(err, ErrIDTaken) {
		t.Fatalf("taken id: %v", err)
	}
	if r, err := s.Upsert(ctx, upsert("q", "u2", "a", "online", true, t0)); err != nil || r.ID != "a" || !r.Created {
		t.Fatalf("other project: %+v %v", r, err)
	}
	docs, err := s.List(ctx, "p")
	if err != nil || len(docs) != 1 || status(t, docs[0]) != "a/away/"+c0 {
		t.Fatalf("list: %q %v", docs, err)
	}
	doc, err := s.Release(ctx, "p", "a")
	if err != nil || doc == nil || status(t, doc) != "a/away/"+c0 {
		t.Fatalf("release: %s %v", doc, err)
	}
	if doc, err := s.Release(ctx, "p", "a"); doc != nil || err != nil {
		t.Fatalf("second release: %s %v", doc, err)
	}
	if doc, err := s.Delete(ctx, "q", "a"); doc == nil || err != nil {
		t.Fatalf("delete: %s %v", doc, err)
	}
	if docs, _ := s.List(ctx, "q"); len(docs) != 0 {
		t.Fatalf("left %q", docs)
	}
	// The user may have a new record with a new id after the old went.
	if r, err := s.Upsert(ctx, upsert("p", "u1", "c", "online", false, t0)); err != nil || r.ID != "c" || !r.Created {
		t.Fatalf("after release: %+v %v", r, err)
	}
	// Expiry: nothing before expiresAt, the record at it.
	res, err := s.Tick(ctx, time.Second, t0.Add(protocol.PresenceLifetime-time.Second))
	if err != nil || len(res.Removed) != 0 || res.Lost {
		t.Fatalf("tick before expiry: %+v %v", res, err)
	}
	res, err = s.Tick(ctx, time.Second, t0.Add(protocol.PresenceLifetime))
	if err != nil || len(res.Removed) != 1 || res.Removed[0].Project != "p" || status(t, res.Removed[0].Doc) != "c/online/"+c0 {
		t.Fatalf("tick at expiry: %+v %v", res, err)
	}
	if docs, _ := s.List(ctx, "p"); len(docs) != 0 {
		t.Fatalf("expired record listed: %q", docs)
	}
}

func TestMemoryStore(t *testing.T) { testStore(t, NewMemory()) }

func newRedisStore(t *testing.T, url string) *Redis {
	t.Helper()
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	s, err := NewRedis(RedisOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestRedisStore(t *testing.T) {
	rs := redistest.Start(t)
	testStore(t, newRedisStore(t, rs.URL()))
}

// TestRedisStoreReapsADeadNode: two nodes hold one user's record, a third
// node's user has one of its own. When a node stops ticking, the first
// survivor tick after its heartbeat ran out deletes exactly the records
// only it held, once: the other survivor gets nothing.
func TestRedisStoreReapsADeadNode(t *testing.T) {
	rs := redistest.Start(t)
	a, b, c := newRedisStore(t, rs.URL()), newRedisStore(t, rs.URL()), newRedisStore(t, rs.URL())
	ctx := context.Background()
	now := time.Now()
	// a's heartbeat lives 200 ms; the survivors' long enough that a slow
	// machine cannot make them look dead too.
	ttl, survivorTTL := 200*time.Millisecond, time.Minute
	for _, s := range []*Redis{a, b, c} {
		d := survivorTTL
		if s == a {
			d = ttl
		}
		if _, err := s.Tick(ctx, d, now); err != nil {
			t.Fatal(err)
		}
	}
	mustUpsert := func(s *Redis, uid, id string) {
		if _, err := s.Upsert(ctx, upsert("p", uid, id, "online", true, now)); err != nil {
			t.Fatal(err)
		}
	}
	mustUpsert(a, "u1", "shared")
	mustUpsert(b, "u1", "shared")
	for i := range 1200 { // more than two reap batches
		mustUpsert(a, "a"+strconv.Itoa(i), "only-a-"+strconv.Itoa(i))
	}
	mustUpsert(c, "u3", "only-c")
	// a dies: b and c keep ticking until a's heartbeat is gone.
	var got []Removed
	redistest.Eventually(t, 10*time.Second, "a reaped", func() bool {
		for _, s := range []*Redis{b, c} {
			res, err := s.Tick(ctx, survivorTTL, time.Now())
			if err != nil || res.Lost {
				t.Fatalf("tick: %+v %v", res, err)
			}
			got = append(got, res.Removed...)
		}
		return len(got) >= 1200
	})
	for _, s := range []*Redis{b, c} { // nothing more, for anyone
		res, _ := s.Tick(ctx, survivorTTL, time.Now())
		got = append(got, res.Removed...)
	}
	var ids []string
	for _, r := range got {
		info, err := protocol.ParsePresenceInfo(r.Doc)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, info.ID)
	}
	sort.Strings(ids)
	if len(ids) != 1200 || ids[0] != "only-a-0" || ids[len(ids)-1] != "only-a-999" {
		t.Fatalf("reaped %d records (%v ... %v), want only-a-0..1199 once each", len(ids), ids[:min(3, len(ids))], ids[max(0, len(ids)-3):])
	}
	docs, _ := b.List(ctx, "p")
	if len(docs) != 2 {
		t.Fatalf("left %d records, want shared and only-c", len(docs))
	}
	// a comes back: its next tick says it was lost, and it goes on under a
	// new id that holds nothing yet.
	old := a.Node()
	res, err := a.Tick(ctx, ttl, time.Now())
	if err != nil || !res.Lost || a.Node() == old {
		t.Fatalf("returning node: %+v %v (node %s -> %s)", res, err, old, a.Node())
	}
	// b releases the shared record: the dead a no longer holds it, so it goes.
	if doc, err := b.Release(ctx, "p", "shared"); err != nil || doc == nil {
		t.Fatalf("release of the shared record: %s %v", doc, err)
	}
}

package history

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// redisRecordsHarness makes a record store under a fresh prefix; its
// clock is Redis's, this machine's.
func redisRecordsHarness(client redis.UniversalClient, partitions int) newRecords {
	var n int
	return func(t *testing.T, window time.Duration) recordsHarness {
		n++
		rs, err := NewRedisRecords(RedisRecordsOptions{Client: client, Prefix: fmt.Sprintf("r%d-%s", n, t.Name()), Partitions: partitions, Window: window})
		if err != nil {
			t.Fatal(err)
		}
		return recordsHarness{rs: rs, advance: time.Sleep, now: time.Now}
	}
}

func TestRedisRecords(t *testing.T) {
	testRecords(t, redisRecordsHarness(newRedisClient(t), 0))
}

// TestRedisRecordsMalformed: a record is outside input when read back;
// whatever its fields, Get answers an error, never a panic or a guess.
func TestRedisRecordsMalformed(t *testing.T) {
	c := newRedisClient(t)
	rs, err := NewRedisRecords(RedisRecordsOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	good := map[string]string{"p": "p", "u": "u", "n": "n1", "o": "1", "a": anchorOf([]byte("x")).String(), "f": "12"}
	for field, bad := range map[string]string{
		"o": "yes", "a": "0123", "f": "-1",
	} {
		h := map[string]any{}
		for k, v := range good {
			h[k] = v
		}
		h[field] = bad
		c.Del(ctx, rs.RecordKey("p", "x"))
		c.HSet(ctx, rs.RecordKey("p", "x"), h)
		if _, _, err := rs.Get(ctx, "p", "x"); err == nil {
			t.Fatalf("%s = %q: no error", field, bad)
		}
	}
	for _, missing := range []string{"a", "f", "o"} {
		c.HDel(ctx, rs.RecordKey("p", "x"), missing)
		if _, _, err := rs.Get(ctx, "p", "x"); err == nil {
			t.Fatalf("without %s: no error", missing)
		}
	}
	// A record that is not a hash.
	c.Del(ctx, rs.RecordKey("p", "x"))
	c.Set(ctx, rs.RecordKey("p", "x"), "x", 0)
	if _, _, err := rs.Get(ctx, "p", "x"); err == nil {
		t.Fatal("a string record: no error")
	}
	// A checkpoint that putScript did not write.
	c.HSet(ctx, rs.CheckpointKey("n1"), "ms", "soon", "q", "1")
	if _, _, err := rs.LastCheckpoint(ctx, "n1"); err == nil {
		t.Fatal("a malformed checkpoint: no error")
	}
}

// TestRedisScriptsReloaded: after SCRIPT FLUSH (a restarted Redis), every
// call loads its script again instead of failing.
func TestRedisScriptsReloaded(t *testing.T) {
	c := newRedisClient(t)
	h := redisHarness(c, 0)(t, Config{})
	rs, err := NewRedisRecords(RedisRecordsOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	e := event("p", 1, 100)
	mustAppend(t, h.s, "p", e)
	c.ScriptFlush(ctx)
	if _, span := readFrom(t, h.s.(Reader), "p", anchorOf(e), 0); !span.Complete {
		t.Fatal("incomplete after SCRIPT FLUSH")
	}
	for _, f := range []func() error{
		func() error { return rs.Put(ctx, time.Second, Record{Project: "p", ID: "1"}) },
		func() error { return rs.Checkpoint(ctx, "n1", 0) },
		func() error { _, _, err := rs.LastCheckpoint(ctx, "n1"); return err },
	} {
		c.ScriptFlush(ctx)
		if err := f(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRedisReadFromLease: while no node holds the partition's lease,
// events are being published that nobody records: incomplete.
func TestRedisReadFromLease(t *testing.T) {
	c := newRedisClient(t)
	h := redisHarness(c, 0)(t, Config{})
	r := h.s.(*Redis)
	e := events("p", 1, 4, 100)
	appendAll(t, h, "p", 0, e...)
	ctx := context.Background()
	ttl := c.PTTL(ctx, r.LeaseKey(0)).Val()
	c.Del(ctx, r.LeaseKey(0))
	for _, rd := range []Reader{r, h.reopen()} {
		if _, span := readFrom(t, rd, "p", anchorOf(e...), 0); span.Complete {
			t.Fatal("complete with no lease")
		}
		if _, span := readFrom(t, rd, "p", Anchor{}, nowMS(time.Now())-1000); span.Complete {
			t.Fatal("zero anchor complete with no lease")
		}
	}
	c.Set(ctx, r.LeaseKey(0), "n1", ttl)
	if _, span := readFrom(t, r, "p", anchorOf(e...), 0); !span.Complete {
		t.Fatal("incomplete with the lease back")
	}
}

// TestRedisReadFromCoalesced: readers of one project that come together
// share refreshes: far fewer than one each, and every one of them gets
// the whole answer.
func TestRedisReadFromCoalesced(t *testing.T) {
	c := newRedisClient(t)
	h := redisHarness(c, 0)(t, Config{})
	r := h.s.(*Redis)
	e := events("p", 1, 300, 200)
	appendAll(t, h, "p", 0, e...)
	const readers = 200
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, readers)
	for i := range readers {
		wg.Go(func() {
			<-start
			k := 100 + i%196
			span, err := r.ReadFrom(context.Background(), "p", anchorOf(e[k-3:k+1]...), 0)
			if err == nil && (!span.Complete || len(span.Events)-span.Start != 299-k) {
				err = fmt.Errorf("from %d: %v, %d events", k, span.Complete, len(span.Events)-span.Start)
			}
			errs <- err
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	tl := r.tails.get("p")
	if n := tl.started.Load(); n > readers/4 {
		t.Fatalf("%d refreshes for %d readers", n, readers)
	}
	t.Logf("%d refreshes for %d readers", tl.started.Load(), readers)
}

// TestRedisTailCacheBounded: the caches of many projects stay under their
// cap, the least recently read leaving first, and what leaves is read
// again from Redis, the same.
func TestRedisTailCacheBounded(t *testing.T) {
	c := newRedisClient(t)
	h := redisHarness(c, 0)(t, Config{})
	const capBytes = 3 * (tailFixed + 50*(500+tailOverhead))
	r, err := NewRedis(RedisOptions{Client: c, Prefix: h.s.(*Redis).prefix, Node: "n1", TailCacheBytes: capBytes})
	if err != nil {
		t.Fatal(err)
	}
	evs := map[string][][]byte{}
	for i := range 6 {
		p := fmt.Sprintf("p%d", i)
		evs[p] = events(p, 1, 50, 500)
		appendAll(t, h, p, 0, evs[p]...)
	}
	for round := range 3 {
		for i := range 6 {
			p := fmt.Sprintf("p%d", i)
			got, span := readFrom(t, r, p, anchorOf(evs[p][10:14]...), 0)
			if !span.Complete || !same(got, want(evs[p][14:]...)) {
				t.Fatalf("round %d, %s: %v %d", round, p, span.Complete, len(got))
			}
			if held := r.tails.held(); held > capBytes {
				t.Fatalf("cached %d B, cap %d", held, capBytes)
			}
		}
	}
	r.tails.mu.Lock()
	n := len(r.tails.byName)
	r.tails.mu.Unlock()
	if n > 3 || n == 0 {
		t.Fatalf("%d projects cached", n)
	}
	// Projects with nothing to hold are bounded too.
	for i := range 1000 {
		if _, span := readFrom(t, r, fmt.Sprintf("empty%d", i), Anchor{}, nowMS(time.Now())); !span.Complete {
			t.Fatal("an empty project reads as incomplete")
		}
	}
	r.tails.mu.Lock()
	n = len(r.tails.byName)
	r.tails.mu.Unlock()
	if held := r.tails.held(); n > capBytes/tailFixed || held > capBytes {
		t.Fatalf("%d projects cached, %d B", n, held)
	}
}

// TestRedisReadFromMalformedStream: an entry that the append script did
// not write is an error, not an event.
func TestRedisReadFromMalformedStream(t *testing.T) {
	c := newRedisClient(t)
	h := redisHarness(c, 0)(t, Config{})
	r := h.s.(*Redis)
	mustAppend(t, h.s, "p", []byte("a"))
	c.XAdd(context.Background(), &redis.XAddArgs{Stream: r.StreamKey("p"), Values: []string{"x", "y"}})
	_, err := r.ReadFrom(context.Background(), "p", anchorOf([]byte("a")), 0)
	if err == nil || !strings.Contains(err.Error(), "no field d") {
		t.Fatalf("err = %v", err)
	}
}

// TestRedisReadFromAgainstModel: random appends (some of the same bytes
// again), gaps, waits and reads, through one long-lived reader (its tail
// cache refreshed, cut by gaps and evictions) and fresh ones, against a
// model that keeps everything: every complete span is exactly the
// model's events after the anchor, and none is complete when an event
// after the anchor is missing from the stream or lost in a gap.
func TestRedisReadFromAgainstModel(t *testing.T) {
	c := newRedisClient(t)
	for seed := range uint64(3) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			cfg := Config{Window: 400 * time.Millisecond, MaxProjectBytes: 15 * (60 + redisOverhead), MaxBytes: 40 * (60 + redisOverhead)}
			h := redisHarness(c, 0)(t, cfg)
			redisReadFromAgainstModel(t, c, h, seed)
		})
	}
}

func redisReadFromAgainstModel(t *testing.T, c redis.UniversalClient, h harness, seed uint64) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(seed, 4))
	r := h.s.(*Redis)
	projects := []string{"a", "b", "c"}
	model := map[string][]modelEvent{}
	var lastGap Position
	completes, reads := 0, 0
	for step := range 1500 {
		switch k := rng.IntN(20); {
		case k < 10:
			p := projects[rng.IntN(len(projects))]
			d := modelPayload(rng, p, step)
			pos := mustAppend(t, r, p, d)
			model[p] = append(model[p], modelEvent{pos: pos, data: string(d)})
		case k < 11:
			time.Sleep(time.Duration(rng.IntN(40)) * time.Millisecond)
		case k < 12 && rng.IntN(10) == 0:
			// What the Appender does after its feed lost messages.
			p := projects[rng.IntN(len(projects))]
			d := modelPayload(rng, p, step)
			rep, err := r.append(ctx, p, d, "*", Digest(d))
			if err != nil {
				t.Fatal(err)
			}
			model[p] = append(model[p], modelEvent{pos: rep.pos, data: string(d)})
			lastGap = rep.pos
		default:
			p := projects[rng.IntN(len(projects))]
			evs := model[p]
			a := modelAnchor(rng, evs)
			var floorMS uint64
			if a.IsZero() || rng.IntN(2) == 0 {
				floorMS = nowMS(time.Now()) - uint64(rng.IntN(500))
			}
			var rd Reader = r
			if rng.IntN(10) == 0 {
				rd = h.reopen()
			}
			_, span := readFrom(t, rd, p, a, floorMS)
			reads++
			after, end := checkSpan(t, step, evs, a, floorMS, span)
			if !span.Complete {
				continue
			}
			completes++
			// Nothing appends between the read and this look at the
			// stream, so it holds what the read could see.
			held := map[string]bool{}
			for _, x := range c.XRange(ctx, r.StreamKey(p), "-", "+").Val() {
				held[x.ID] = true
			}
			from := Position{MS: floorMS, Seq: 1<<64 - 1}
			if end >= 0 {
				from = evs[end].pos
				for _, e := range evs[max(0, end-a.N+1) : end+1] {
					if !held[e.pos.String()] {
						t.Fatalf("step %d: complete from an anchor no longer held", step)
					}
				}
			}
			for _, e := range after {
				if !held[e.pos.String()] {
					t.Fatalf("step %d: complete, but %s is no longer held", step, e.pos)
				}
			}
			if from.Less(lastGap) {
				t.Fatalf("step %d: complete from %s across the gap at %s", step, from, lastGap)
			}
		}
	}
	t.Logf("%d complete reads of %d", completes, reads)
	if completes < reads/10 {
		t.Fatalf("only %d complete reads of %d", completes, reads)
	}
}

// TestRedisReadFromFailureShared: when Redis hangs, readers queued behind
// a refresh that failed get its error at once instead of each waiting
// for its own timeout, one after another.
func TestRedisReadFromFailureShared(t *testing.T) {
	srv := redistest.Start(t)
	c := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: 300 * time.Millisecond, MaxRetries: -1})
	defer c.Close()
	h := redisHarness(c, 0)(t, Config{})
	r := h.s.(*Redis)
	e := events("p", 1, 4, 100)
	appendAll(t, h, "p", 0, e...)
	srv.Pause()
	defer srv.Resume()
	const readers = 20
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := time.Now()
	for range readers {
		wg.Go(func() {
			if _, err := r.ReadFrom(context.Background(), "p", anchorOf(e...), 0); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if failed.Load() != readers {
		t.Fatalf("%d of %d readers failed", failed.Load(), readers)
	}
	// Each reader on its own: 20 x 600 ms (12 s); shared: 2 or 3 timeouts.
	t.Logf("%d readers failed in %v", readers, time.Since(start))
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("%d readers took %v: they waited each for its own timeout", readers, d)
	}
	srv.Resume()
	if _, span := readFrom(t, r, "p", anchorOf(e...), 0); !span.Complete {
		t.Fatal("incomplete after Redis came back")
	}
}

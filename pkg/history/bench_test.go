package history

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// eventSize is the size of a typical Appwrite document event.
const eventSize = 1024

func BenchmarkDigest(b *testing.B) {
	d := event("p", 1, eventSize)
	b.SetBytes(int64(len(d)))
	for b.Loop() {
		Digest(d)
	}
}

func BenchmarkMemoryAppend(b *testing.B) {
	m := NewMemory(Config{MaxBytes: 64 << 20}, nil)
	d := event("p", 1, eventSize)
	ctx := context.Background()
	projects := []string{"p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"}
	i := 0
	for b.Loop() {
		m.Append(ctx, projects[i&7], d)
		i++
	}
}

// benchSince reports the cost of one replayed event: reads of 1,000
// events after the first of a 3,000-event history.
func benchSince(b *testing.B, s Store, project string, first Position) {
	ctx := context.Background()
	n := 0
	for b.Loop() {
		evs, ok, err := s.Since(ctx, project, first, 1000)
		if err != nil || !ok || len(evs) != 1000 {
			b.Fatalf("since: %d %v %v", len(evs), ok, err)
		}
		n += len(evs)
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/event")
}

func BenchmarkMemorySince(b *testing.B) {
	m := NewMemory(Config{}, nil)
	d := event("p", 1, eventSize)
	first := mustAppend(&testing.T{}, m, "p", d)
	for range 2999 {
		m.Append(context.Background(), "p", d)
	}
	benchSince(b, m, "p", first)
}

// BenchmarkMemoryBytesPerEvent: the heap one held 1 KB event costs.
func BenchmarkMemoryBytesPerEvent(b *testing.B) {
	const n = 50000
	d := event("p", 1, eventSize)
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		m := NewMemory(Config{MaxBytes: 1 << 30, MaxProjectBytes: 1 << 30}, nil)
		for i := range n {
			m.Append(context.Background(), "p"+strconv.Itoa(i%100), d)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/event")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n-eventSize, "overhead-B/event")
		runtime.KeepAlive(m)
	}
}

func benchRedis(b *testing.B) (*redis.Client, *Redis) {
	c := newRedisClient(b)
	r, err := NewRedis(RedisOptions{Client: c, Node: "n1", Config: Config{MaxBytes: 1 << 30, MaxProjectBytes: 1 << 30}})
	if err != nil {
		b.Fatal(err)
	}
	if err := NewLease(r, time.Hour).Tick(context.Background()); err != nil {
		b.Fatal(err)
	}
	return c, r
}

// BenchmarkRedisAppend: one fenced, chained append (one round trip, on
// loopback) as the Appender makes it.
func BenchmarkRedisAppend(b *testing.B) {
	_, r := benchRedis(b)
	l := NewLease(r, time.Hour)
	if err := l.Tick(context.Background()); err != nil {
		b.Fatal(err)
	}
	a := NewAppender(r, l, 0)
	ctx := context.Background()
	i := 0
	for b.Loop() {
		if err := a.Offer(ctx, "p", event("p", i, eventSize)); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

func BenchmarkRedisSince(b *testing.B) {
	_, r := benchRedis(b)
	d := event("p", 1, eventSize)
	first := mustAppend(&testing.T{}, r, "p", d)
	for range 2999 {
		mustAppend(&testing.T{}, r, "p", d)
	}
	benchSince(b, r, "p", first)
}

// BenchmarkRedisBytesPerEvent: what one held 1 KB event costs Redis, by
// MEMORY USAGE of the stream and by used_memory.
func BenchmarkRedisBytesPerEvent(b *testing.B) {
	const n = 20000
	c, r := benchRedis(b)
	ctx := context.Background()
	used := func() float64 {
		info := c.Info(ctx, "memory").Val()
		for _, l := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(l, "used_memory:"); ok {
				f, _ := strconv.ParseFloat(v, 64)
				return f
			}
		}
		b.Fatal("no used_memory")
		return 0
	}
	for b.Loop() {
		c.FlushAll(ctx)
		NewLease(r, time.Hour).Tick(ctx)
		before := used()
		for i := range n {
			if _, err := r.Append(ctx, "p", event("p", i, eventSize)); err != nil {
				b.Fatal(err)
			}
		}
		after := used()
		mu, err := c.MemoryUsage(ctx, r.StreamKey("p"), 0).Result()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(mu)/n, "B/event(MEMORY-USAGE)")
		b.ReportMetric((after-before)/n, "B/event(used_memory)")
	}
}

// stormHistory appends the history of the storm project: 3,000
// events of 1 KB (2 min at 25 events/s), and returns their payloads.
func stormHistory(b *testing.B, s Store) [][]byte {
	evs := make([][]byte, 3000)
	for i := range evs {
		evs[i] = event("p", i, eventSize)
		if _, err := s.Append(context.Background(), "p", evs[i]); err != nil {
			b.Fatal(err)
		}
	}
	return evs
}

// stormAnchor is the anchor of a subscription that left somewhere in the
// last 200 events.
func stormAnchor(evs [][]byte, rng *rand.Rand) (Anchor, int) {
	k := len(evs) - 1 - rng.IntN(200)
	return anchorOf(evs[k-3 : k+1]...), len(evs) - 1 - k
}

func benchReadFrom(b *testing.B, r Reader, evs [][]byte) {
	ctx := context.Background()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(rand.Uint64(), 1))
		for pb.Next() {
			a, n := stormAnchor(evs, rng)
			span, err := r.ReadFrom(ctx, "p", a, 0)
			if err != nil || !span.Complete || len(span.Events)-span.Start != n {
				b.Fatalf("read: %v %v %d, want %d", err, span.Complete, len(span.Events)-span.Start, n)
			}
		}
	})
}

func BenchmarkMemoryReadFrom(b *testing.B) {
	m := NewMemory(Config{}, nil)
	benchReadFrom(b, m, stormHistory(b, m))
}

// BenchmarkRedisReadFromStorm: the resume storm, many subscriptions of one
// project at once (64 goroutines a core), each anchored among the last 200
// of 3,000 events; per call. They share the tail cache's refreshes.
func BenchmarkRedisReadFromStorm(b *testing.B) {
	_, r := benchRedis(b)
	evs := stormHistory(b, r)
	b.SetParallelism(64)
	b.ResetTimer()
	benchReadFrom(b, r, evs)
	b.StopTimer()
	b.ReportMetric(float64(r.tails.get("p").started.Load())/float64(b.N), "refreshes/op")
}

// BenchmarkRedisReadFromOneAtATime: readers one after another: every call
// refreshes the cache (one MULTI, nothing new to read).
func BenchmarkRedisReadFromOneAtATime(b *testing.B) {
	_, r := benchRedis(b)
	evs := stormHistory(b, r)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 1))
	for b.Loop() {
		a, _ := stormAnchor(evs, rng)
		if span, err := r.ReadFrom(ctx, "p", a, 0); err != nil || !span.Complete {
			b.Fatal(span.Complete, err)
		}
	}
}

// BenchmarkRedisReadFromCold: a reader with nothing cached (another node,
// or a project evicted from the cache): the last 1,000 events are read,
// what every call would cost without the cache.
func BenchmarkRedisReadFromCold(b *testing.B) {
	c, r := benchRedis(b)
	evs := stormHistory(b, r)
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(1, 1))
	for b.Loop() {
		b.StopTimer()
		cold, err := NewRedis(RedisOptions{Client: c, Prefix: r.prefix})
		if err != nil {
			b.Fatal(err)
		}
		a, _ := stormAnchor(evs, rng)
		b.StartTimer()
		if span, err := cold.ReadFrom(ctx, "p", a, 0); err != nil || !span.Complete {
			b.Fatal(span.Complete, err)
		}
	}
}

func benchRecords(b *testing.B) *RedisRecords {
	rs, err := NewRedisRecords(RedisRecordsOptions{Client: newRedisClient(b)})
	if err != nil {
		b.Fatal(err)
	}
	return rs
}

// BenchmarkRedisRecordsPut: a node's batch of 1,000 records, with a floor
// on Redis's clock; per record.
func BenchmarkRedisRecordsPut(b *testing.B) {
	rs := benchRecords(b)
	a := anchorOf(events("p", 1, 4, 100)...)
	batch := make([]Record, 1000)
	ctx := context.Background()
	n := 0
	for b.Loop() {
		for i := range batch {
			batch[i] = Record{Project: "p", ID: fmt.Sprintf("%015x", n), User: "6650f1e2a3b4c5d", Node: "n1", Anchor: a}
			n++
		}
		if err := rs.Put(ctx, time.Second, batch...); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/record")
}

func BenchmarkRedisRecordsGet(b *testing.B) {
	rs := benchRecords(b)
	ctx := context.Background()
	rec := Record{Project: "p", ID: "6650f1e2a3b4c5d", User: "u", Node: "n1", Anchor: anchorOf(events("p", 1, 4, 100)...)}
	if err := rs.Put(ctx, time.Second, rec); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, ok, err := rs.Get(ctx, "p", rec.ID); !ok || err != nil {
			b.Fatal(ok, err)
		}
	}
}

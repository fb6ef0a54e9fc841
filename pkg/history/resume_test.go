package history

import (
	"context"
	"strconv"
	"testing"
	"time"
)

// anchorOf is the anchor a router has after routing evs, in order.
func anchorOf(evs ...[]byte) Anchor {
	var a Anchor
	for _, e := range evs {
		a.Push(Digest(e))
	}
	return a
}

// readFrom reads from a and checks what every span must be: events in
// order with their digests, the anchor's run first, nothing when
// incomplete. It returns the events to replay (from Start).
func readFrom(t *testing.T, r Reader, project string, a Anchor, floorMS uint64) ([]string, Span) {
	t.Helper()
	span, err := r.ReadFrom(context.Background(), project, a, floorMS)
	if err != nil {
		t.Fatalf("read %s from %s: %v", project, a, err)
	}
	if !span.Complete {
		if len(span.Events) != 0 || span.Start != 0 {
			t.Fatalf("read %s from %s: incomplete with %d events, start %d", project, a, len(span.Events), span.Start)
		}
		return nil, span
	}
	for i, e := range span.Events {
		if e.Digest != Digest(e.Data) {
			t.Fatalf("read %s from %s: event %d's digest %x is not its data's", project, a, i, e.Digest)
		}
		if i > 0 && !span.Events[i-1].Pos.Less(e.Pos) {
			t.Fatalf("read %s from %s: %s after %s", project, a, e.Pos, span.Events[i-1].Pos)
		}
	}
	if span.Start < a.N || span.Start > len(span.Events) {
		t.Fatalf("read %s from %s: start %d of %d events", project, a, span.Start, len(span.Events))
	}
	for k := range a.N {
		if span.Events[k].Digest != a.D[k] {
			t.Fatalf("read %s from %s: the span does not begin with the anchor's run", project, a)
		}
	}
	if a.N > 0 {
		if end, ok := span.Find(a); !ok || end != a.N-1 {
			// A later copy of the run inside the span would mean the
			// store did not take the newest.
			t.Fatalf("read %s from %s: the run's newest copy is at %d", project, a, end)
		}
	}
	var got []string
	for _, e := range span.Events[span.Start:] {
		got = append(got, string(e.Data))
	}
	return got, span
}

// appendAll appends evs to project, waiting step between them (on the
// store's clock), and returns their positions.
func appendAll(t *testing.T, h harness, project string, step time.Duration, evs ...[]byte) []Position {
	t.Helper()
	var pos []Position
	for _, e := range evs {
		if step > 0 {
			h.advance(step)
		}
		pos = append(pos, mustAppend(t, h.s, project, e))
	}
	return pos
}

func events(project string, from, to, n int) [][]byte {
	var evs [][]byte
	for i := from; i <= to; i++ {
		evs = append(evs, event(project, i, n))
	}
	return evs
}

// testReadFrom runs the ReadFrom behaviours both stores share.
func testReadFrom(t *testing.T, mk newStore) {
	long := Config{Window: time.Minute, MaxProjectBytes: 1 << 20, MaxBytes: 1 << 22}

	t.Run("Anchor", func(t *testing.T) {
		h := mk(t, long)
		r := h.s.(Reader)
		e := events("rf", 1, 10, 100)
		appendAll(t, h, "rf", 0, e...)
		mustAppend(t, h.s, "other", event("other", 1, 100))
		if got, span := readFrom(t, r, "rf", anchorOf(e[2:6]...), 0); !span.Complete || !same(got, want(e[6:]...)) || len(span.Events) != 8 || span.Start != 4 {
			t.Fatalf("from the middle: %v %d %q", span.Complete, span.Start, got)
		}
		if got, span := readFrom(t, r, "rf", anchorOf(e[6:10]...), 0); !span.Complete || len(got) != 0 {
			t.Fatalf("from the newest: %v %q", span.Complete, got)
		}
		// A router that had routed two events of the project only.
		if got, span := readFrom(t, r, "rf", anchorOf(e[0:2]...), 0); !span.Complete || !same(got, want(e[2:]...)) {
			t.Fatalf("from a run of 2: %v %q", span.Complete, got)
		}
		if _, span := readFrom(t, r, "rf", anchorOf(event("rf", 99, 100)), 0); span.Complete {
			t.Fatal("an anchor never recorded reads as complete")
		}
		// The run must be consecutive.
		if _, span := readFrom(t, r, "rf", anchorOf(e[1], e[3]), 0); span.Complete {
			t.Fatal("a run with a hole reads as complete")
		}
		if _, span := readFrom(t, r, "other", anchorOf(e[2:6]...), 0); span.Complete {
			t.Fatal("another project's anchor reads as complete")
		}
		// The cache follows new appends.
		more := events("rf", 11, 13, 100)
		appendAll(t, h, "rf", 0, more...)
		if got, span := readFrom(t, r, "rf", anchorOf(e[6:10]...), 0); !span.Complete || !same(got, want(more...)) {
			t.Fatalf("after new appends: %v %q", span.Complete, got)
		}
		// Another node, nothing cached, reads the same.
		if got, span := readFrom(t, h.reopen(), "rf", anchorOf(e[2:6]...), 0); !span.Complete || !same(got, want(append(e[6:], more...)...)) {
			t.Fatalf("another reader: %v %q", span.Complete, got)
		}
	})

	t.Run("Duplicates", func(t *testing.T) {
		h := mk(t, long)
		r := h.s.(Reader)
		a, b, c, x, y, z := event("d", 1, 80), event("d", 2, 80), event("d", 3, 80), event("d", 4, 80), event("d", 5, 80), event("d", 6, 80)
		// Appwrite published a, x and y twice, byte for byte.
		appendAll(t, h, "d", 0, a, b, x, y, a, c, x, y, z)
		if got, span := readFrom(t, r, "d", anchorOf(a, b, x, y), 0); !span.Complete || !same(got, want(a, c, x, y, z)) {
			t.Fatalf("the first copy of x y: %v %q", span.Complete, got)
		}
		if got, span := readFrom(t, r, "d", anchorOf(a, c, x, y), 0); !span.Complete || !same(got, want(z)) {
			t.Fatalf("the second copy of x y: %v %q", span.Complete, got)
		}
		// One digest alone cannot tell: the newest copy is taken.
		if got, span := readFrom(t, r, "d", anchorOf(x, y), 0); !span.Complete || !same(got, want(z)) {
			t.Fatalf("x y alone: %v %q", span.Complete, got)
		}
	})

	t.Run("Floor", func(t *testing.T) {
		h := mk(t, long)
		r := h.s.(Reader)
		e := events("f", 1, 8, 100)
		// The first at the history's start, the others 3 ms apart.
		pos := append(appendAll(t, h, "f", 0, e[0]), appendAll(t, h, "f", 3*time.Millisecond, e[1:]...)...)
		// Events at or before floorMS are skipped, after the run.
		got, span := readFrom(t, r, "f", anchorOf(e[0:4]...), pos[5].MS)
		if !span.Complete || !same(got, want(e[6:]...)) || span.Start != 6 {
			t.Fatalf("anchor and floor: %v %d %q", span.Complete, span.Start, got)
		}
		// The zero anchor: what was appended after floorMS, after the
		// events before it as context (three here: all there are).
		got, span = readFrom(t, r, "f", Anchor{}, pos[2].MS)
		if !span.Complete || !same(got, want(e[3:]...)) || span.Start != 3 {
			t.Fatalf("zero anchor: %v %d %q", span.Complete, span.Start, got)
		}
		if got, span := readFrom(t, r, "f", Anchor{}, pos[7].MS); !span.Complete || len(got) != 0 {
			t.Fatalf("zero anchor at the newest: %v %q", span.Complete, got)
		}
		if got, span := readFrom(t, h.reopen(), "f", Anchor{}, pos[2].MS); !span.Complete || !same(got, want(e[3:]...)) {
			t.Fatalf("zero anchor, another reader: %v %q", span.Complete, got)
		}
		// Before the history began, nothing can be proved.
		if _, span := readFrom(t, r, "f", Anchor{}, pos[0].MS-1); span.Complete {
			t.Fatal("zero anchor before the history's start reads as complete")
		}
		if _, span := readFrom(t, r, "f", Anchor{}, pos[0].MS-2*uint64(time.Minute.Milliseconds())); span.Complete {
			t.Fatal("zero anchor outside the window reads as complete")
		}
		// A project with nothing held, from inside the history.
		if got, span := readFrom(t, r, "none", Anchor{}, pos[7].MS); !span.Complete || len(got) != 0 {
			t.Fatalf("zero anchor, empty project: %v %q", span.Complete, got)
		}
	})

	t.Run("Window", func(t *testing.T) {
		w := time.Second
		h := mk(t, Config{Window: w, MaxProjectBytes: 1 << 20, MaxBytes: 1 << 22})
		r := h.s.(Reader)
		e := events("w", 1, 4, 100)
		appendAll(t, h, "w", 0, e...)
		if _, span := readFrom(t, r, "w", anchorOf(e...), 0); !span.Complete {
			t.Fatal("inside the window: incomplete")
		}
		h.advance(w + 200*time.Millisecond)
		b := event("w", 5, 100)
		mustAppend(t, h.s, "w", b) // evicts e
		if _, span := readFrom(t, r, "w", anchorOf(e...), 0); span.Complete {
			t.Fatal("an anchor that left the window reads as complete")
		}
		if got, span := readFrom(t, r, "w", anchorOf(b), 0); !span.Complete || len(got) != 0 {
			t.Fatalf("the newest: %v %q", span.Complete, got)
		}
	})

	t.Run("ProjectCap", func(t *testing.T) {
		h := mk(t, long)
		h = mk(t, Config{Window: time.Minute, MaxProjectBytes: 6*(200+h.overhead) + 100, MaxBytes: 1 << 22})
		r := h.s.(Reader)
		e := events("c", 1, 12, 200)
		appendAll(t, h, "c", 0, e[:6]...)
		if got, span := readFrom(t, r, "c", anchorOf(e[0:4]...), 0); !span.Complete || !same(got, want(e[4:6]...)) {
			t.Fatalf("before the eviction: %v %q", span.Complete, got)
		}
		appendAll(t, h, "c", 0, e[6:]...) // holds e[6:12]
		if _, span := readFrom(t, r, "c", anchorOf(e[0:4]...), 0); span.Complete {
			t.Fatal("an evicted anchor reads as complete")
		}
		if _, span := readFrom(t, r, "c", anchorOf(e[4:8]...), 0); span.Complete {
			t.Fatal("a partly evicted anchor reads as complete")
		}
		if got, span := readFrom(t, r, "c", anchorOf(e[6:10]...), 0); !span.Complete || !same(got, want(e[10:]...)) {
			t.Fatalf("a held anchor: %v %q", span.Complete, got)
		}
	})

	t.Run("Gap", func(t *testing.T) {
		h := mk(t, long)
		r := h.s.(Reader)
		e := events("p", 1, 5, 100)
		appendAll(t, h, "p", 0, e...)
		if got, span := readFrom(t, r, "p", anchorOf(e[0:4]...), 0); !span.Complete || !same(got, want(e[4])) {
			t.Fatalf("before the gap: %v %q", span.Complete, got)
		}
		h.gap()
		f := events("p", 6, 9, 100)
		appendAll(t, h, "p", 0, f...)
		if _, span := readFrom(t, r, "p", anchorOf(e[0:4]...), 0); span.Complete {
			t.Fatal("across a gap: complete")
		}
		if _, span := readFrom(t, h.reopen(), "p", anchorOf(e[1:5]...), 0); span.Complete {
			t.Fatal("across a gap, another reader: complete")
		}
		if got, span := readFrom(t, r, "p", anchorOf(f[0:2]...), 0); !span.Complete || !same(got, want(f[2:]...)) {
			t.Fatalf("after the gap: %v %q", span.Complete, got)
		}
	})

	t.Run("Long", func(t *testing.T) {
		// More than pages of 1,000: an old anchor is found by reading
		// back through the history.
		h := mk(t, Config{Window: time.Minute, MaxProjectBytes: 8 << 20, MaxBytes: 8 << 20})
		e := events("l", 1, 2500, 60)
		appendAll(t, h, "l", 0, e...)
		for _, i := range []int{2490, 1200, 3} {
			r := h.reopen()
			got, span := readFrom(t, r, "l", anchorOf(e[i-3:i+1]...), 0)
			if !span.Complete || !same(got, want(e[i+1:]...)) {
				t.Fatalf("from %d: %v %d events", i, span.Complete, len(got))
			}
			// And again, from what the first read cached.
			got, span = readFrom(t, r, "l", anchorOf(e[5:9]...), 0)
			if !span.Complete || len(got) != 2500-9 {
				t.Fatalf("from 8 after %d: %v %d events", i, span.Complete, len(got))
			}
		}
	})
}

// recordsHarness is a record store under test with its clock.
type recordsHarness struct {
	rs      Records
	advance func(time.Duration)
	now     func() time.Time // the store's clock
	virtual bool
}

type newRecords func(t *testing.T, window time.Duration) recordsHarness

func newMemoryRecordsHarness(t *testing.T, window time.Duration) recordsHarness {
	c := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	return recordsHarness{rs: NewMemoryRecords(window, c.now), advance: c.advance, now: c.now, virtual: true}
}

func TestMemoryRecords(t *testing.T) { testRecords(t, newMemoryRecordsHarness) }

// testRecords runs the behaviours both record stores share.
func testRecords(t *testing.T, mk newRecords) {
	ctx := context.Background()
	full := anchorOf(events("p", 1, 5, 50)...)
	recs := []Record{
		{Project: "p", ID: "6650f1e2a3b4c5d", User: "u1", Node: "n1", Open: true, Anchor: full, FloorMS: 1767225600000},
		{Project: "p", ID: "6650f1e2a3b4c5e", User: "", Node: "n2", Anchor: anchorOf(event("p", 1, 50)), ReplayMS: 1767225601234},
		{Project: "q", ID: "6650f1e2a3b4c5d", User: "u2", Node: "n1", Open: true},
	}
	get := func(t *testing.T, rs Records, project, id string) (Record, bool) {
		t.Helper()
		r, ok, err := rs.Get(ctx, project, id)
		if err != nil {
			t.Fatalf("get %s %s: %v", project, id, err)
		}
		return r, ok
	}

	t.Run("RoundTrip", func(t *testing.T) {
		h := mk(t, time.Minute)
		if err := h.rs.Put(ctx, -1, recs...); err != nil {
			t.Fatal(err)
		}
		for _, want := range recs {
			if got, ok := get(t, h.rs, want.Project, want.ID); !ok || got != want {
				t.Fatalf("got %+v %v, want %+v", got, ok, want)
			}
		}
		if _, ok := get(t, h.rs, "p", "unknown"); ok {
			t.Fatal("an unknown id is found")
		}
		if _, ok := get(t, h.rs, "r", recs[0].ID); ok {
			t.Fatal("an id is found under another project")
		}
		// Overwritten by the node's next word.
		closed := recs[0]
		closed.Open, closed.Node, closed.Anchor = false, "n3", anchorOf(event("p", 9, 50))
		if err := h.rs.Put(ctx, -1, closed); err != nil {
			t.Fatal(err)
		}
		if got, ok := get(t, h.rs, "p", closed.ID); !ok || got != closed {
			t.Fatalf("overwritten: %+v %v", got, ok)
		}
	})

	t.Run("Batch", func(t *testing.T) {
		h := mk(t, time.Minute)
		var batch []Record
		for i := range 2000 {
			batch = append(batch, Record{Project: "p" + strconv.Itoa(i%37), ID: strconv.Itoa(i), User: "u", Node: "n1", Open: true, Anchor: full})
		}
		if err := h.rs.Put(ctx, -1, batch...); err != nil {
			t.Fatal(err)
		}
		for _, i := range []int{0, 1, 999, 1999} {
			if got, ok := get(t, h.rs, batch[i].Project, batch[i].ID); !ok || got != batch[i] {
				t.Fatalf("record %d: %+v %v", i, got, ok)
			}
		}
	})

	t.Run("FloorAge", func(t *testing.T) {
		h := mk(t, time.Minute)
		r := recs[1]
		if err := h.rs.Put(ctx, 10*time.Second, r); err != nil {
			t.Fatal(err)
		}
		got, _ := get(t, h.rs, r.Project, r.ID)
		want := nowMS(h.now().Add(-10 * time.Second))
		slack := uint64(0)
		if !h.virtual {
			slack = 3000 // Redis's clock is this machine's, read a little later
		}
		if got.FloorMS+slack < want || got.FloorMS > want+slack {
			t.Fatalf("floor %d, want %d (now - 10 s)", got.FloorMS, want)
		}
		// A later floor of the record's own stays.
		r.FloorMS = want + 60_000
		if err := h.rs.Put(ctx, 10*time.Second, r); err != nil {
			t.Fatal(err)
		}
		if got, _ := get(t, h.rs, r.Project, r.ID); got.FloorMS != r.FloorMS {
			t.Fatalf("floor %d, want the record's %d", got.FloorMS, r.FloorMS)
		}
		// An age before 1970 is no floor, not one in the far future.
		r.FloorMS = 0
		if err := h.rs.Put(ctx, 1<<62, r); err != nil {
			t.Fatal(err)
		}
		if got, _ := get(t, h.rs, r.Project, r.ID); got.FloorMS != 0 {
			t.Fatalf("floor %d for an age of 146 years", got.FloorMS)
		}
	})

	t.Run("TTL", func(t *testing.T) {
		w := 2 * time.Second
		h := mk(t, w)
		if err := h.rs.Put(ctx, -1, recs...); err != nil {
			t.Fatal(err)
		}
		put := time.Now()
		h.advance(w - 500*time.Millisecond)
		// Redis's clock is the wall clock: a late wake-up may have taken
		// the record past the window, which is no failure of the store.
		if _, ok := get(t, h.rs, recs[1].Project, recs[1].ID); !ok && (h.virtual || time.Since(put) < w-100*time.Millisecond) {
			t.Fatal("a closed record expired inside the window")
		}
		h.advance(700 * time.Millisecond)
		if _, ok := get(t, h.rs, recs[1].Project, recs[1].ID); ok {
			t.Fatal("a closed record outlived the window")
		}
		if _, ok := get(t, h.rs, recs[0].Project, recs[0].ID); !ok {
			t.Fatal("an open record expired with the window")
		}
	})

	t.Run("Checkpoint", func(t *testing.T) {
		h := mk(t, time.Minute)
		if _, ok, err := h.rs.LastCheckpoint(ctx, "n1"); ok || err != nil {
			t.Fatalf("a checkpoint never written: %v %v", ok, err)
		}
		before := nowMS(h.now())
		if err := h.rs.Checkpoint(ctx, "n1", 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		c, ok, err := h.rs.LastCheckpoint(ctx, "n1")
		if err != nil || !ok || c.Queued != 300*time.Millisecond || c.MS+5 < before || c.Age > 5*time.Second {
			t.Fatalf("checkpoint: %+v %v %v (before %d)", c, ok, err, before)
		}
		h.advance(400 * time.Millisecond)
		c2, ok, err := h.rs.LastCheckpoint(ctx, "n1")
		if err != nil || !ok || c2.MS != c.MS || c2.Age < c.Age+390*time.Millisecond {
			t.Fatalf("after 400 ms: %+v, then %+v %v %v", c, c2, ok, err)
		}
		if _, ok, _ := h.rs.LastCheckpoint(ctx, "n2"); ok {
			t.Fatal("another node's checkpoint")
		}
	})
}

// TestMemoryRecordsCheckpointExpires: a checkpoint is forgotten the window
// and a minute after it was written, as its Redis key expires.
func TestMemoryRecordsCheckpointExpires(t *testing.T) {
	h := newMemoryRecordsHarness(t, 2*time.Second)
	ctx := context.Background()
	if err := h.rs.Checkpoint(ctx, "n1", -time.Second); err != nil {
		t.Fatal(err)
	}
	c, ok, _ := h.rs.LastCheckpoint(ctx, "n1")
	if !ok || c.Queued != 0 {
		t.Fatalf("%+v %v: a negative age is none", c, ok)
	}
	h.advance(time.Minute + time.Second)
	if _, ok, _ := h.rs.LastCheckpoint(ctx, "n1"); !ok {
		t.Fatal("forgotten inside the window and a minute")
	}
	h.advance(time.Second)
	if _, ok, _ := h.rs.LastCheckpoint(ctx, "n1"); ok {
		t.Fatal("still there after the window and a minute")
	}
	// Put sweeps it away.
	if err := h.rs.Put(ctx, -1, Record{Project: "p", ID: "1"}); err != nil {
		t.Fatal(err)
	}
	if m := h.rs.(*MemoryRecords); len(m.checks) != 0 {
		t.Fatalf("%d checkpoints held", len(m.checks))
	}
}

package history

import (
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzParsePosition: positions come back from Redis and from stored
// records; whatever the input, ParsePosition either refuses it or returns
// the position that String writes back the same way.
func FuzzParsePosition(f *testing.F) {
	for _, s := range []string{"0-0", "1767225600000-3", "18446744073709551615-18446744073709551615",
		"", "-", "1-", "-1", "1-2-3", "+1-2", "1-+2", " 1-2", "01-02", "18446744073709551616-0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePosition(s)
		if err != nil {
			return
		}
		q, err := ParsePosition(p.String())
		if err != nil || q != p {
			t.Fatalf("%q -> %v -> %q -> %v, %v", s, p, p.String(), q, err)
		}
	})
}

// TestMemoryAgainstModel: random appends over a few projects, clock steps,
// gaps and reads, against a model that keeps every event forever. Whenever
// the store answers complete, it returns exactly the model's events after
// the position (never one lost, never one of another project); and it
// answers incomplete whenever one of those was evicted.
func TestMemoryAgainstModel(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) { memoryAgainstModel(t, seed) })
	}
}

func memoryAgainstModel(t *testing.T, seed uint64) {
	type ev struct {
		project string
		pos     Position
		data    string
		gone    bool // evicted, as the store says by its floor
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	c := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	cfg := Config{Window: 10 * time.Second, MaxProjectBytes: 8 * (60 + entryOverhead), MaxBytes: 20 * (60 + entryOverhead)}
	m := NewMemory(cfg, c.now)
	projects := []string{"a", "b", "c", "d", "e"}
	var model []ev
	var lastGap Position
	for step := range 5000 {
		switch r := rng.IntN(10); {
		case r < 5:
			p := projects[rng.IntN(len(projects))]
			d := event(p, step, 40+rng.IntN(40))
			pos := mustAppend(t, m, p, d)
			model = append(model, ev{project: p, pos: pos, data: string(d)})
		case r < 6:
			c.advance(time.Duration(rng.IntN(3000)) * time.Millisecond)
		case r < 7 && rng.IntN(20) == 0:
			m.Gap()
			lastGap = m.last
		default:
			if len(model) == 0 {
				continue
			}
			p := projects[rng.IntN(len(projects))]
			after := model[len(model)-1-rng.IntN(min(len(model), 60))].pos
			got, complete := since(t, m, p, after, 1000)
			var wantEvs []string
			missing := after.Less(lastGap)
			for _, e := range model {
				if e.project == p && after.Less(e.pos) {
					wantEvs = append(wantEvs, e.data)
				}
			}
			// What the store holds of p, by its own account.
			held := map[string]bool{}
			if pr := m.projects[p]; pr != nil {
				for _, e := range pr.held() {
					held[string(e.data)] = true
				}
			}
			for _, d := range wantEvs {
				if !held[d] {
					missing = true
				}
			}
			gapped := missing
			if nowMS(c.now()) > after.MS+uint64(cfg.Window.Milliseconds()) {
				missing = true
			}
			if complete && (missing || !same(got, wantEvs)) {
				t.Fatalf("step %d: %s since %s (now %d) complete with %d events, model %d (missing %v, gap %v)", step, p, after, nowMS(c.now()), len(got), len(wantEvs), missing, gapped)
			}
			if !complete && !missing && !after.Less(m.lostFloor) && m.projects[p] != nil && !after.Less(m.projects[p].floor) {
				t.Fatalf("step %d: %s since %s incomplete for no reason", step, p, after)
			}
		}
		if m.bytes > cfg.MaxBytes {
			t.Fatalf("step %d: %d bytes held, cap %d", step, m.bytes, cfg.MaxBytes)
		}
	}
}

// FuzzParseAnchor: anchors come back from stored records; whatever the
// input, ParseAnchor either refuses it or returns an anchor that String
// writes back and ParseAnchor reads again as the same.
func FuzzParseAnchor(f *testing.F) {
	a := anchorOf([]byte("a"), []byte("b"), []byte("c"), []byte("d"), []byte("e"))
	for _, s := range []string{"", a.String(), anchorOf([]byte("a")).String(), "0123456789abcdef",
		"0123456789ABCDEF", "0123456789abcdef.", ".0123456789abcdef", "0123456789abcdeg", "+123456789abcdef",
		"0x23456789abcdef", "0123456789abcdef.0123456789abcdef.0123456789abcdef.0123456789abcdef.0123456789abcdef",
		"-123456789abcdef", "1_23456789abcdef", " 123456789abcdef"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseAnchor(s)
		if err != nil {
			if !errors.Is(err, ErrBadAnchor) {
				t.Fatalf("%q: %v is not ErrBadAnchor", s, err)
			}
			return
		}
		if a.N < 0 || a.N > AnchorLen || a.N == 0 && s != "" {
			t.Fatalf("%q -> %+v", s, a)
		}
		b, err := ParseAnchor(a.String())
		if err != nil || b != a {
			t.Fatalf("%q -> %+v -> %q -> %+v, %v", s, a, a.String(), b, err)
		}
		if !strings.EqualFold(a.String(), s) {
			t.Fatalf("%q read as %q", s, a.String())
		}
	})
}

// modelEvent is one append as a model of the history keeps it: forever.
type modelEvent struct {
	pos  Position
	data string
}

// modelFrom returns the index of the last event of the newest run of a in
// evs (a project's whole sequence), or -1.
func modelFrom(evs []modelEvent, a Anchor) int {
	end, ok := findRun(len(evs), func(i int) uint64 { return Digest([]byte(evs[i].data)) }, a)
	if !ok {
		return -1
	}
	return end
}

// modelPayload is a message of project: now and then one Appwrite
// published before, byte for byte, so that digests repeat.
func modelPayload(rng *rand.Rand, project string, step int) []byte {
	if rng.IntN(3) == 0 {
		return event(project, -rng.IntN(3), 50)
	}
	return event(project, step, 40+rng.IntN(40))
}

// checkSpan checks a complete span against the model: after the anchor's
// newest run (or, for the zero anchor, after floorMS), exactly the
// model's events, and from Start exactly those after floorMS. It returns
// the model's events after the anchor, and the run's end (-1: none).
// modelAnchor picks where a reader stands in the model's events: most
// often among the newest dozen (a run ending there), else the zero Anchor.
func modelAnchor(rng *rand.Rand, evs []modelEvent) Anchor {
	var a Anchor
	if len(evs) > 0 && rng.IntN(5) > 0 {
		j := len(evs) - 1 - rng.IntN(min(len(evs), 12))
		for _, e := range evs[max(0, j-AnchorLen+1) : j+1] {
			a.Push(Digest([]byte(e.data)))
		}
	}
	return a
}

func checkSpan(t *testing.T, step int, evs []modelEvent, a Anchor, floorMS uint64, span Span) (after []modelEvent, end int) {
	t.Helper()
	end = -1
	if a.IsZero() {
		for i, e := range evs {
			if e.pos.MS > floorMS {
				after = evs[i:]
				break
			}
		}
	} else if end = modelFrom(evs, a); end >= 0 {
		after = evs[end+1:]
	}
	if !span.Complete {
		return after, end
	}
	if !a.IsZero() && end < 0 {
		t.Fatalf("step %d: complete from an anchor the project never had", step)
	}
	first := a.N
	if a.IsZero() {
		// The context before the floor: the model's events just before.
		first = span.Start
		before := evs[:len(evs)-len(after)]
		if first > AnchorLen || first > len(before) {
			t.Fatalf("step %d: %d events of context", step, first)
		}
		for i, e := range span.Events[:first] {
			if string(e.Data) != before[len(before)-first+i].data {
				t.Fatalf("step %d: context event %d differs from the model's", step, i)
			}
		}
	}
	rest := span.Events[first:]
	if len(rest) != len(after) {
		t.Fatalf("step %d: %d events after the anchor, the model %d", step, len(rest), len(after))
	}
	for i, e := range rest {
		if string(e.Data) != after[i].data {
			t.Fatalf("step %d: event %d after the anchor differs from the model's", step, i)
		}
		if skipped := first+i < span.Start; skipped != (e.Pos.MS <= floorMS) && !a.IsZero() {
			t.Fatalf("step %d: event at %d (floor %d) skipped %v", step, e.Pos.MS, floorMS, skipped)
		}
	}
	return after, end
}

// TestMemoryReadFromAgainstModel: random appends (some of the same bytes
// again), clock steps, gaps and reads from anchors taken from the true
// sequence, against a model that keeps everything: a complete span is
// exactly the model's events after the anchor; an incomplete one has a
// reason (an event evicted or lost, the window).
func TestMemoryReadFromAgainstModel(t *testing.T) {
	for seed := range uint64(8) {
		t.Run(strconv.FormatUint(seed, 10), func(t *testing.T) { memoryReadFromAgainstModel(t, seed) })
	}
}

func memoryReadFromAgainstModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 3))
	c := &fakeClock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	cfg := Config{Window: 10 * time.Second, MaxProjectBytes: 12 * (60 + entryOverhead), MaxBytes: 30 * (60 + entryOverhead)}
	m := NewMemory(cfg, c.now)
	projects := []string{"a", "b", "c"}
	model := map[string][]modelEvent{}
	var lastGap Position
	completes := 0
	for step := range 5000 {
		switch r := rng.IntN(10); {
		case r < 5:
			p := projects[rng.IntN(len(projects))]
			d := modelPayload(rng, p, step)
			pos := mustAppend(t, m, p, d)
			model[p] = append(model[p], modelEvent{pos: pos, data: string(d)})
		case r < 6:
			c.advance(time.Duration(rng.IntN(2000)) * time.Millisecond)
		case r < 7 && rng.IntN(20) == 0:
			m.Gap()
			lastGap = m.last
		default:
			p := projects[rng.IntN(len(projects))]
			evs := model[p]
			a := modelAnchor(rng, evs)
			var floorMS uint64
			if a.IsZero() || rng.IntN(2) == 0 {
				floorMS = nowMS(c.now()) - uint64(rng.IntN(12000))
			}
			_, span := readFrom(t, m, p, a, floorMS)
			after, end := checkSpan(t, step, evs, a, floorMS, span)
			// Why it could be incomplete, by the store's own account.
			held := map[Position]bool{}
			if pr := m.projects[p]; pr != nil {
				for _, e := range pr.held() {
					held[e.pos] = true
				}
			}
			from := Position{MS: floorMS, Seq: 1<<64 - 1}
			missing := false
			if !a.IsZero() {
				if end < 0 {
					missing = true
				} else {
					from = evs[end].pos
					for _, e := range evs[max(0, end-a.N+1) : end+1] {
						missing = missing || !held[e.pos]
					}
				}
			} else if floorMS+uint64(cfg.Window.Milliseconds()) < nowMS(c.now()) || from.Less(m.lostFloor) && m.projects[p] == nil {
				missing = true
			}
			for _, e := range after {
				missing = missing || !held[e.pos]
			}
			missing = missing || from.Less(lastGap)
			if span.Complete && missing {
				t.Fatalf("step %d: %s from %s (floor %d) complete, but an event is missing", step, p, a, floorMS)
			}
			if !span.Complete && !missing && (!a.IsZero() || m.projects[p] != nil && !from.Less(m.projects[p].floor)) {
				t.Fatalf("step %d: %s from %s (floor %d) incomplete for no reason", step, p, a, floorMS)
			}
			if span.Complete {
				completes++
			}
		}
	}
	t.Logf("%d complete reads", completes)
	if completes < 300 {
		t.Fatalf("only %d complete reads", completes)
	}
}

// FuzzParseRecord: a record's hash comes back from Redis, where anything
// may have written it; parseRecord refuses what putScript did not write
// with errBadRecord, and what it accepts is what its fields say.
func FuzzParseRecord(f *testing.F) {
	a := anchorOf([]byte("a"), []byte("b")).String()
	f.Add("1", a, "1767225600000", "1767225601234", true)
	f.Add("0", "", "0", "", false)
	f.Add("2", a, "1", "0", true)
	f.Add("0", "zz", "1", "0", true)
	f.Add("0", a, "-1", "+1", true)
	f.Add("1", a, "18446744073709551616", "1", true)
	f.Fuzz(func(t *testing.T, o, anchor, floor, replay string, withReplay bool) {
		h := map[string]string{"p": "p", "u": "u", "n": "n", "o": o, "a": anchor, "f": floor}
		if withReplay {
			h["r"] = replay
		}
		rec, err := parseRecord("p", "id", h)
		if err != nil {
			if !errors.Is(err, errBadRecord) {
				t.Fatalf("%v: %v is not errBadRecord", h, err)
			}
			return
		}
		v, err := strconv.ParseUint(floor, 10, 64)
		if rec.Open != (o == "1") || rec.Anchor.String() != strings.ToLower(anchor) || err != nil || v != rec.FloorMS {
			t.Fatalf("%v read as %+v", h, rec)
		}
		if withReplay {
			if v, err := strconv.ParseUint(replay, 10, 64); err != nil || v != rec.ReplayMS {
				t.Fatalf("replay %q read as %d", replay, rec.ReplayMS)
			}
		} else if rec.ReplayMS != 0 {
			t.Fatalf("no replay field read as %d", rec.ReplayMS)
		}
	})
}

package history

import (
	"math/rand/v2"
	"strconv"
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

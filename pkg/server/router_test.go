package server

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// TestQueuedFramesKeepTheirBytes routes several events to connections that
// each subscribed under ids of their own (one or two matching), leaving
// every frame queued, and then reads each queue back: every frame must
// still carry its own event and exactly its recipient's ids. The frames of
// all these events share the router's scratch and the blocks frameBuf
// carves heads and tails from, so a frame overwritten by a later one, or a
// key shared by two id lists, shows here.
func TestQueuedFramesKeepTheirBytes(t *testing.T) {
	const n, events = 300, 5
	s, conns := fanoutNode(t, Config{Broker: broker.NewMemory(1)}, n, false, nil, 0)
	want := make([][]string, n)
	for i, c := range conns {
		want[i] = []string{c.subs[0].id}
		switch i % 3 {
		case 1: // two matching subscriptions
			c.subs = append(c.subs, subscription{id: fmt.Sprintf("second-%d", i), channels: []string{"files"}})
			want[i] = append(want[i], c.subs[1].id)
		case 2: // ids whose joined form another list could imitate
			c.subs[0].id = fmt.Sprintf("sub-%d", i-1)
			c.subs = append(c.subs, subscription{id: "x", channels: []string{"files"}})
			want[i] = []string{c.subs[0].id, "x"}
		}
	}
	for e := range events {
		s.router.route([]byte(event("p1", []string{"any"}, []string{"files"}, fmt.Sprintf(`{"$id":"f%d"}`, e))))
	}
	for i, c := range conns {
		if len(c.q.frames) != events {
			t.Fatalf("conn %d: %d frames queued, want %d", i, len(c.q.frames), events)
		}
		for e, f := range c.q.frames {
			payload := slices.Concat(f.body, f.tail) // the frame without its header
			var got struct {
				Data struct {
					Payload struct {
						ID string `json:"$id"`
					} `json:"payload"`
					Subscriptions []string `json:"subscriptions"`
				} `json:"data"`
			}
			if err := json.Unmarshal(payload, &got); err != nil {
				t.Fatalf("conn %d frame %d: %v: %q", i, e, err, payload)
			}
			if got.Data.Payload.ID != fmt.Sprintf("f%d", e) || !slices.Equal(got.Data.Subscriptions, want[i]) {
				t.Fatalf("conn %d frame %d: event %q ids %q, want f%d %q", i, e, got.Data.Payload.ID, got.Data.Subscriptions, e, want[i])
			}
		}
	}
}

// TestFrameKeyTellsIDListsApart: two different lists of valid ids never
// share a frame, whatever their lengths.
func TestFrameKeyTellsIDListsApart(t *testing.T) {
	lists := [][]string{{"a"}, {"ab"}, {"a", "b"}, {"a", "b", "c"}, {"abc"}, {"b", "a"}, {"a", "bc"}}
	seen := map[string][]string{}
	var scratch []byte
	for _, ids := range lists {
		k, _ := frameKey(ids, &scratch)
		k = strings.Clone(k)
		if prev, ok := seen[k]; ok {
			t.Fatalf("%q and %q share the key %q", prev, ids, k)
		}
		seen[k] = ids
	}
}

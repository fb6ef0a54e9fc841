package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/gobwas/ws/wsutil"

	"github.com/switchboard-rt/switchboard/internal/redistest"
)

// TestShutdownSpreadsGoAwayOverDrainTime drains a node holding 30 clients
// with a drain time of 600 ms while events keep being published: readiness
// and upgrades turn 503 at once, every client gets 1001, the closes are
// spread rather than simultaneous, and clients not yet told keep receiving
// events.
func TestShutdownSpreadsGoAwayOverDrainTime(t *testing.T) {
	const n, drain = 30, 600 * time.Millisecond
	s := testNode(t, func(c *Config) { c.DrainTime = drain })
	clients := make([]*client, n)
	for i := range clients {
		clients[i] = dial(t, s, "project=p1&channels[]=files", nil)
		clients[i].expect("connected")
	}

	type result struct {
		code   ws.StatusCode
		at     time.Duration
		events int
		err    error
	}
	results := make([]result, n)
	start := time.Now()
	var wg sync.WaitGroup
	for i, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				m, err := c.tryRead(5 * time.Second)
				var closed wsutil.ClosedError
				switch {
				case errors.As(err, &closed):
					results[i] = result{code: closed.Code, at: time.Since(start), events: results[i].events}
					return
				case err != nil:
					results[i].err = err
					return
				case m.Type == "event":
					results[i].events++
				}
			}
		}()
	}

	stopPub := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; ; i++ {
			select {
			case <-stopPub:
				return
			case <-time.After(20 * time.Millisecond):
			}
			// The admin API keeps serving during the drain.
			_, _ = postNoFail(s, event("p1", []string{"any"}, []string{"files"}, fmt.Sprintf(`{"n":%d}`, i)))
		}
	}()

	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		shut <- s.Shutdown(ctx)
	}()
	// At once: not ready, and upgrades refused.
	redistest.Eventually(t, time.Second, "readyz 503 during the drain", func() bool {
		resp, err := http.Get("http://" + s.AdminAddr().String() + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusServiceUnavailable
	})
	if _, err := tryDial(s, "project=p1&channels[]=files", nil); err == nil {
		t.Error("an upgrade was accepted during the drain")
	}

	wg.Wait()
	close(stopPub)
	<-pubDone
	if err := <-shut; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	var times []time.Duration
	for i, r := range results {
		if r.err != nil || r.code != ws.StatusGoingAway {
			t.Fatalf("client %d: close %d, err %v", i, r.code, r.err)
		}
		times = append(times, r.at)
	}
	sort.Slice(times, func(i, j int) bool { return times[i] < times[j] })
	first, last := times[0], times[n-1]
	t.Logf("closes from %v to %v (median %v) over a %v drain", first, last, times[n/2], drain)
	if last-first < drain/2 {
		t.Errorf("closes not spread: first %v, last %v, drain %v", first, last, drain)
	}
	latest := 0
	for i := range results {
		if results[i].at == last {
			latest = results[i].events
		}
	}
	if latest == 0 {
		t.Error("the last client told received no event during the drain")
	}
}

// TestShutdownDrainFitsTheDeadline: a drain longer than the shutdown
// deadline is compressed, so every client still gets 1001.
func TestShutdownDrainFitsTheDeadline(t *testing.T) {
	s := testNode(t, func(c *Config) { c.DrainTime = time.Hour })
	c := dial(t, s, "project=p1&channels[]=files", nil)
	c.expect("connected")
	c2 := dial(t, s, "project=p1&channels[]=files", nil)
	c2.expect("connected")
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	go func() { _ = s.Shutdown(ctx) }()
	for _, cl := range []*client{c, c2} {
		if code, _ := cl.expectClose(); code != ws.StatusGoingAway {
			t.Fatalf("close %d", code)
		}
	}
}

func postNoFail(s *Server, body string) (int, error) {
	resp, err := http.Post("http://"+s.AdminAddr().String()+"/v1/publish", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

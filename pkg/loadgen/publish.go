package loadgen

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// publishReport is what the publisher did.
type publishReport struct {
	// Sent is how many sequences were sent (0 to Sent-1), Published
	// those the server took.
	Sent      int
	Published int
	Errors    int
	FirstErr  error
	First     time.Time // send time of the first event
	Last      time.Time // send time of the last event sent
	// At is each sequence's send time (unix ns), for a storm's figures.
	At []int64
}

// publisher POSTs the run's events to a node's admin API.
type publisher struct {
	cfg    *Config
	t      *target
	client *http.Client
	// sent is how many sequences have gone out so far.
	sent atomic.Int64
}

func newPublisher(cfg *Config, t *target) (*publisher, error) {
	if t.project == "" || len(t.channels) == 0 {
		return nil, errors.New("publishing needs project and channels[] in the URL: events go to those channels")
	}
	return &publisher{cfg: cfg, t: t, client: &http.Client{Timeout: 10 * time.Second}}, nil
}

// maxInFlight bounds concurrent publish requests.
const maxInFlight = 32

// run publishes cfg.Events events at cfg.PublishRate (fewer when stop is
// closed first; nil: never), each stamped with its sequence number and
// send time. It is open-loop: each request starts on
// its schedule whether or not the previous one was answered (a server that
// answers slowly must not lower the offered rate unnoticed), up to
// maxInFlight at once; beyond that it falls behind, which the achieved
// rate in the summary shows.
func (p *publisher) run(ctx context.Context, stop <-chan struct{}) publishReport {
	var (
		rep      publishReport
		mu       sync.Mutex
		wg       sync.WaitGroup
		inFlight = make(chan struct{}, maxInFlight)
	)
	if p.cfg.Resume {
		// Resuming connections check the order of what they receive
		// against the sequences: two publishes in flight could reach
		// the broker swapped.
		inFlight = make(chan struct{}, 1)
	}
	start := time.Now()
	interval := time.Duration(float64(time.Second) / p.cfg.PublishRate)
	for seq := range p.cfg.Events {
		if d := time.Until(start.Add(time.Duration(seq) * interval)); d > 0 {
			sleepUnless(ctx, stop, d)
		}
		select {
		case <-ctx.Done():
		case <-stop:
		case inFlight <- struct{}{}:
		}
		if ctx.Err() != nil || closed(stop) {
			break
		}
		rep.Sent++
		p.sent.Store(int64(rep.Sent))
		now := time.Now()
		msg, err := p.message(seq, now)
		if err != nil {
			rep.Errors++
			rep.FirstErr = cmp.Or(rep.FirstErr, err)
			<-inFlight
			continue
		}
		mu.Lock()
		if rep.First.IsZero() {
			rep.First = now
		}
		rep.Last = now
		rep.At = append(rep.At, now.UnixNano())
		mu.Unlock()
		wg.Go(func() {
			defer func() { <-inFlight }()
			err := p.post(ctx, msg)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				rep.Errors++
				rep.FirstErr = cmp.Or(rep.FirstErr, err)
				return
			}
			rep.Published++
		})
	}
	wg.Wait()
	return rep
}

// message is the backbone message of event seq sent at now.
func (p *publisher) message(seq int, now time.Time) ([]byte, error) {
	ts, _ := json.Marshal(now.UTC().Format("2006-01-02T15:04:05.000-07:00"))
	return protocol.MarshalEvent(&protocol.Event{
		Project: p.t.project, Roles: p.cfg.Roles, Channels: p.t.channels,
		Events: []string{"bench.event"}, Timestamp: ts, Payload: appendPayload(nil, seq, now.UnixNano(), p.cfg.PayloadBytes),
	})
}

// closed reports whether stop (nil: never) is closed.
func closed(stop <-chan struct{}) bool {
	select {
	case <-stop:
		return true
	default:
		return false
	}
}

// sleepUnless sleeps d, less when ctx ends or stop closes.
func sleepUnless(ctx context.Context, stop <-chan struct{}, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-stop:
	case <-t.C:
	}
}

func (p *publisher) post(ctx context.Context, msg []byte) error {
	if p.cfg.Publish != nil {
		if err := p.cfg.Publish(ctx, msg); err != nil {
			return fmt.Errorf("publish: %w", err)
		}
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.cfg.PublishURL, bytes.NewReader(msg))
	if err != nil {
		return fmt.Errorf("publish: building request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	if p.cfg.APIKey != "" {
		req.Header.Set("Authorization", "Bearer "+p.cfg.APIKey)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("publish: POST %s: %w", p.cfg.PublishURL, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("publish: POST %s: %s: %s", p.cfg.PublishURL, resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// publishReport is what the publisher did.
type publishReport struct {
	Published int
	Errors    int
	FirstErr  error
	First     time.Time // send time of the first event
	Last      time.Time // send time of the last event
}

// publisher POSTs the run's events to a node's admin API.
type publisher struct {
	cfg    *Config
	t      *target
	client *http.Client
}

func newPublisher(cfg *Config, t *target) (*publisher, error) {
	if t.project == "" || len(t.channels) == 0 {
		return nil, errors.New("publishing needs project and channels[] in the URL: events go to those channels")
	}
	return &publisher{cfg: cfg, t: t, client: &http.Client{Timeout: 10 * time.Second}}, nil
}

// run publishes cfg.Events events at cfg.PublishRate, each stamped with its
// sequence number and send time.
func (p *publisher) run(ctx context.Context) publishReport {
	var rep publishReport
	start := time.Now()
	interval := time.Duration(float64(time.Second) / p.cfg.PublishRate)
	payload := make([]byte, 0, 64)
	for seq := range p.cfg.Events {
		if d := time.Until(start.Add(time.Duration(seq) * interval)); d > 0 {
			select {
			case <-ctx.Done():
				return rep
			case <-time.After(d):
			}
		}
		now := time.Now()
		payload = appendPayload(payload[:0], seq, now.UnixNano())
		ts, _ := json.Marshal(now.UTC().Format("2006-01-02T15:04:05.000-07:00"))
		msg, err := protocol.MarshalEvent(&protocol.Event{
			Project: p.t.project, Roles: p.cfg.Roles, Channels: p.t.channels,
			Events: []string{"bench.event"}, Timestamp: ts, Payload: payload,
		})
		if err == nil {
			err = p.post(ctx, msg)
		}
		if err != nil {
			rep.Errors++
			if rep.FirstErr == nil {
				rep.FirstErr = err
			}
			continue
		}
		if rep.Published == 0 {
			rep.First = now
		}
		rep.Last = now
		rep.Published++
	}
	return rep
}

func (p *publisher) post(ctx context.Context, msg []byte) error {
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

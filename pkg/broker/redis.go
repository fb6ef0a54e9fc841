package broker

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// DefaultChannel is the Pub/Sub channel of the event backbone when none is
// configured, as in Appwrite.
const DefaultChannel = "realtime"

// DefaultBuffer is the number of messages a Redis broker holds between its
// Redis reader and the handler when none is configured: about a second of a
// busy backbone, enough to ride out a garbage-collection pause or a burst
// without dropping, small enough (its slots cost 32 bytes plus the
// messages) to keep a stalled node's memory bounded.
const DefaultBuffer = 4096

// RedisOptions configures NewRedis.
type RedisOptions struct {
	// URL locates the server, as parsed by redis.ParseURL:
	// redis://[user:password@]host:port[/db], or rediss:// for TLS.
	// Query parameters such as dial_timeout apply; the dial timeout
	// defaults to 2 s.
	URL string
	// Channel is the Pub/Sub channel; empty means DefaultChannel.
	Channel string
	// Buffer is how many messages may wait between the Redis reader and
	// the handler; when it is full, further messages are dropped and
	// counted. Zero or less means DefaultBuffer.
	Buffer int
	// Logger receives state changes (subscribed, lost, restored) and
	// rate-limited drop warnings; nil discards them.
	Logger *zap.Logger
	// Registerer receives the broker_* metrics; nil leaves them
	// unregistered.
	Registerer prometheus.Registerer
	// OnLoss, when set, is called whenever messages may have been lost:
	// one was dropped (the buffer was full), or a subscription came back
	// after an outage. The event history needs to know (it records a
	// gap). It is called from the broker's reader goroutines and must not
	// block.
	OnLoss func()
	// OnMark, when set, makes the broker carry marks (Mark) beside the
	// messages and hand each to OnMark in its place among them: after
	// every message of its partition published before the mark, before
	// every one published after it. The history's appender hands its
	// lease over with one (RESUME.md). It is called between the handler's
	// calls, on the same goroutine, and must not block.
	OnMark func(partition int, mark string)
}

// MarkSuffix names the channel of marks: <channel>.marks, on the
// sharded broker ShardChannel(<channel>.marks, partition), in the slot of
// the partition's own channel.
const MarkSuffix = ".marks"

// Redis is the multi-node broker: every node SUBSCRIBEs to one Redis Pub/Sub
// channel, and Publish PUBLISHes on it, so a message published anywhere
// reaches every node. Each node holds exactly one subscription, whatever its
// number of connections; messages are handed to the handler undecoded.
//
// The subscription survives outages by itself: Run retries with a capped,
// jittered backoff (100 ms to 5 s) and resubscribes after a restart or a
// dropped connection, while Ready reports why the node cannot receive. A
// node whose handler falls behind drops messages (counted) rather than
// stalling the Redis reader; Redis Pub/Sub is at-most-once anyway.
type Redis struct {
	client  *redis.Client
	channel string
	addr    string
	buffer  int
	log     *zap.Logger
	m       *metrics
	timing  timing
	drops   dropLog
	onLoss  func()
	onMark  func(int, string)

	state atomic.Pointer[errBox] // what Ready returns

	mu      sync.Mutex
	runDone chan struct{} // non-nil while Run runs; closed when it returns
	queue   chan delivery // Run's queue into the handler, while Run runs
	closed  chan struct{}
}

var (
	_ Broker     = (*Redis)(nil)
	_ Backlogged = (*Redis)(nil)
)

// NewRedis parses opts.URL and registers the metrics. It does not connect:
// Run does, and keeps retrying until Redis answers, so a node can start
// (and serve its connections) while Redis is still down.
func NewRedis(opts RedisOptions) (*Redis, error) {
	if opts.URL == "" {
		return nil, errors.New("redis broker: no URL")
	}
	ro, err := redis.ParseURL(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("redis broker: parse URL: %w", redactURLError(err))
	}
	if ro.DialTimeout == 0 {
		ro.DialTimeout = defaultDialTimeout
	}
	// go-redis retries a failed dial 5 times, 100 ms apart, inside one
	// attempt; Run has its own backoff, and a publisher should hear about
	// a refused connection at once, so dial once per attempt.
	ro.DialerRetries = 1
	// Without this go-redis ignores the caller's deadline on socket reads
	// and writes, and a Publish to a hung server could outlive its context.
	ro.ContextTimeoutEnabled = true

	r := &Redis{
		channel: opts.Channel,
		addr:    ro.Addr,
		buffer:  opts.Buffer,
		log:     opts.Logger,
		onLoss:  opts.OnLoss,
		onMark:  opts.OnMark,
		timing:  defaultTiming(),
		closed:  make(chan struct{}),
	}
	if r.channel == "" {
		r.channel = DefaultChannel
	}
	if r.buffer <= 0 {
		r.buffer = DefaultBuffer
	}
	if r.log == nil {
		r.log = zap.NewNop()
	}
	if r.m, err = newMetrics(opts.Registerer, false); err != nil {
		return nil, fmt.Errorf("redis broker: %w", err)
	}
	r.log = r.log.With(zap.String("broker", "redis"))
	r.state.Store(&errBox{r.notRunning()})
	r.client = redis.NewClient(ro)
	return r, nil
}

// redactURLError strips the URL from a url.Error, which quotes it whole,
// password included, and would carry it into logs.
func redactURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (r *Redis) notRunning() error {
	return fmt.Errorf("redis broker: not subscribed to %q on %s: not running", r.channel, r.addr)
}

// Publish implements Broker with a PUBLISH on the channel. It works whether
// or not Run is running (a publisher-only process never runs it), and gives
// up after 2 s or when ctx ends, whichever comes first, so a caller never
// hangs on an unreachable Redis.
func (r *Redis) Publish(ctx context.Context, msg []byte) error {
	if r.isClosed() {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, r.timing.publishTimeout)
	defer cancel()
	if err := r.client.Publish(ctx, r.channel, msg).Err(); err != nil {
		if r.isClosed() {
			return ErrClosed
		}
		return fmt.Errorf("redis broker: publish to %q on %s: %w", r.channel, r.addr, err)
	}
	return nil
}

// Mark publishes mark on the channel of marks, for every node's OnMark.
// partition must be 0: the single channel is one partition. Like Publish
// it gives up after 2 s or when ctx ends.
func (r *Redis) Mark(ctx context.Context, partition int, mark string) error {
	if partition != 0 {
		return fmt.Errorf("redis broker: mark of partition %d: the single channel has only partition 0", partition)
	}
	if r.isClosed() {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, r.timing.publishTimeout)
	defer cancel()
	ch := r.channel + MarkSuffix
	if err := r.client.Publish(ctx, ch, mark).Err(); err != nil {
		return fmt.Errorf("redis broker: publish mark to %q on %s: %w", ch, r.addr, err)
	}
	return nil
}

// Run implements Broker: it subscribes (retrying until Redis answers),
// calls h for each message in order, and keeps the subscription alive until
// ctx ends, when it returns ctx's error, or until Close, when it returns
// ErrClosed. Only one Run may be active at a time.
func (r *Redis) Run(ctx context.Context, h Handler) error {
	r.mu.Lock()
	switch {
	case r.isClosed():
		r.mu.Unlock()
		return ErrClosed
	case r.runDone != nil:
		r.mu.Unlock()
		return fmt.Errorf("redis broker: %w", errRunning)
	}
	runDone := make(chan struct{})
	queue := make(chan delivery, r.buffer)
	r.runDone, r.queue = runDone, queue
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.runDone, r.queue = nil, nil
		r.mu.Unlock()
		close(runDone)
	}()

	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-r.closed:
			cancel()
		case <-lctx.Done():
		}
	}()

	channels := []string{r.channel}
	markChannel := ""
	if r.onMark != nil {
		markChannel = r.channel + MarkSuffix
		channels = append(channels, markChannel)
	}
	l := &link{
		timing:  r.timing,
		kind:    "subscribe",
		channel: r.channel,
		where:   r.addr,
		open: func(ctx context.Context) (*redis.PubSub, error) {
			ps := r.client.Subscribe(ctx) // no channel yet: no I/O, no error swallowed
			if err := ps.Subscribe(ctx, channels...); err != nil {
				return ps, fmt.Errorf("subscribe: %w", err)
			}
			return ps, nil
		},
		markChannel: markChannel,
		out:         queue,
		report:      r.report,
		onLoss:      r.onLoss,
		m:           r.m,
		log:         r.log,
		drops:       &r.drops,
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l.run(lctx)
	}()

	dispatch(lctx, queue, h, r.onMark)
	cancel()
	<-done
	r.report(r.notRunning())
	if err := ctx.Err(); err != nil {
		return err
	}
	return ErrClosed
}

// Backlog implements Backlogged: messages received from Redis that wait
// for the handler.
func (r *Redis) Backlog() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.queue)
}

// report is the link's state callback.
func (r *Redis) report(err error) {
	if err == nil {
		r.m.connected.Set(1)
		r.state.Store(&errBox{})
		return
	}
	r.m.connected.Set(0)
	r.state.Store(&errBox{fmt.Errorf("redis broker: %w", err)})
}

// Ready implements Broker: nil while Run holds a confirmed subscription;
// otherwise why not (not running yet, connection refused, lost and
// retrying, ...).
func (r *Redis) Ready() error { return r.state.Load().err }

// Close stops Run (which returns ErrClosed), waits for it to return, and
// releases the connections; Publish returns ErrClosed afterwards. It must
// not be called from the handler, which Run is waiting for. Closing twice
// is harmless.
func (r *Redis) Close() error {
	r.mu.Lock()
	if r.isClosed() {
		r.mu.Unlock()
		return nil
	}
	close(r.closed)
	runDone := r.runDone
	r.mu.Unlock()
	if runDone != nil {
		// Closing the client under a live subscription would be logged as
		// an outage; let Run wind down first.
		<-runDone
	}
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("redis broker: close: %w", err)
	}
	return nil
}

func (r *Redis) isClosed() bool {
	select {
	case <-r.closed:
		return true
	default:
		return false
	}
}

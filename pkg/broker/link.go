package broker

// This file holds what the two Redis brokers share: a link keeps one go-redis
// PubSub subscribed to one channel across outages and feeds raw payloads into
// a bounded queue, which Run drains into the handler.
//
// go-redis offers PubSub.Channel() for this, but that helper hides the two
// things an operator needs to see: it reconnects silently (so nothing can
// report "not ready" or count reconnects) and, when the consumer stalls, it
// blocks its reader for up to a minute and then drops the message without a
// trace. A link instead reads with PubSub.Receive itself, hands each payload
// to the queue without ever blocking (a full queue drops the message and
// counts it), and treats every lost connection as a state change that it
// reports, logs once and repairs with a fresh PubSub.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// timing holds the intervals of a link. They are fields, not constants, so
// tests can shrink them; production always uses defaultTiming.
type timing struct {
	// health is how long a subscription may stay silent before the link
	// PINGs it, and how long the PONG may take: a connection that swallows
	// a PING (half-open after a network cut, no RST ever arrives) is
	// declared dead within two to three intervals.
	health time.Duration
	// subscribeTimeout bounds the wait for Redis to confirm a SUBSCRIBE.
	subscribeTimeout time.Duration
	// backoffMin and backoffMax bound the wait between failed attempts.
	backoffMin, backoffMax time.Duration
	// publishTimeout bounds one Publish on top of the caller's context, so
	// a publisher never hangs on a dead server.
	publishTimeout time.Duration
}

func defaultTiming() timing {
	return timing{
		health:           time.Second,
		subscribeTimeout: 5 * time.Second,
		backoffMin:       100 * time.Millisecond,
		backoffMax:       5 * time.Second,
		publishTimeout:   2 * time.Second,
	}
}

// defaultDialTimeout replaces go-redis's 5 s when the URL sets none: a node
// that cannot reach Redis within 2 s on a LAN will not reach it in 5 either,
// and the shorter value keeps Publish and reconnection attempts snappy.
const defaultDialTimeout = 2 * time.Second

// dropLogEvery rate-limits the "handler is behind" warning; the counter
// broker_dropped_messages_total carries the exact figure.
const dropLogEvery = 10 * time.Second

// errBox lets an error (including nil) live in an atomic.Pointer.
type errBox struct{ err error }

// metrics are the broker's Prometheus series. Both Redis brokers export the
// same names so dashboards do not care which one runs.
type metrics struct {
	connected  prometheus.Gauge
	reconnects prometheus.Counter
	messages   prometheus.Counter
	dropped    prometheus.Counter
	// partitions is only set for RedisSharded.
	partitions prometheus.Gauge
}

// newMetrics creates the series and registers them in reg when reg is not
// nil. A failed registration (typically a second broker on the same
// registry) unregisters what was registered and returns the error.
func newMetrics(reg prometheus.Registerer, sharded bool) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "broker_connected",
			Help: "1 while the broker is subscribed to the event backbone, else 0.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "broker_reconnects_total",
			Help: "Subscriptions restored after a lost connection to Redis.",
		}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "broker_messages_total",
			Help: "Messages received from Redis (including those later dropped).",
		}),
		dropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "broker_dropped_messages_total",
			Help: "Messages dropped because the handler was behind and the broker's buffer was full.",
		}),
	}
	cs := []prometheus.Collector{m.connected, m.reconnects, m.messages, m.dropped}
	if sharded {
		m.partitions = prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "broker_subscribed_partitions",
			Help: "Sharded Pub/Sub partitions this node is currently subscribed to.",
		})
		cs = append(cs, m.partitions)
	}
	if reg == nil {
		return m, nil
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			return nil, fmt.Errorf("register broker metrics: %w", err)
		}
	}
	return m, nil
}

// dropLog rate-limits the warning about dropped messages across all links of
// a broker.
type dropLog struct {
	mu      sync.Mutex
	last    time.Time
	pending uint64
}

func (d *dropLog) note(log *zap.Logger, channel string) {
	d.mu.Lock()
	d.pending++
	if !d.last.IsZero() && time.Since(d.last) < dropLogEvery {
		d.mu.Unlock()
		return
	}
	n := d.pending
	d.pending = 0
	d.last = time.Now()
	d.mu.Unlock()
	log.Warn("backbone handler is behind; dropping messages",
		zap.String("channel", channel), zap.Uint64("dropped", n),
		zap.Duration("logEvery", dropLogEvery))
}

// backoff is a capped exponential backoff with equal jitter: each wait is
// between half and all of the current step, so nodes that lost Redis at the
// same instant do not reconnect in lockstep.
type backoff struct {
	min, max, step time.Duration
}

func (b *backoff) next() time.Duration {
	switch {
	case b.step == 0:
		b.step = b.min
	case b.step*2 > b.max:
		b.step = b.max
	default:
		b.step *= 2
	}
	half := b.step / 2
	return half + rand.N(b.step-half+1)
}

func (b *backoff) reset() { b.step = 0 }

// link keeps one PubSub subscribed to one channel until its context ends.
// All fields are set before run and only run's goroutine touches the
// unexported state below them.
type link struct {
	timing
	// kind is the confirmation Redis sends for our subscription:
	// "subscribe" or "ssubscribe".
	kind    string
	channel string
	// where names the server(s) in logs and errors; never the password.
	where string
	// markChannel, when set, is subscribed on the same PubSub as channel
	// (open subscribes both in one command), so that a mark published on
	// it reaches the queue in its place among channel's messages: Redis
	// writes a connection's Pub/Sub messages in the order it ran the
	// publishes.
	markChannel string
	// partition is the partition whose marks markChannel carries.
	partition int
	// open returns a fresh PubSub that has sent its (S)SUBSCRIBE. It may
	// return a PubSub together with an error; the link closes it.
	open func(ctx context.Context) (*redis.PubSub, error)
	// out is the queue Run drains into the handler.
	out chan<- delivery
	// report is called on every state change: nil once subscribed, the
	// reason while not.
	report func(err error)
	// quiet logs a first subscription at debug level: a sharded node
	// subscribes whenever a project arrives, which is not news.
	quiet bool
	// onLoss, when set, hears of every moment messages may have been
	// lost (RedisOptions.OnLoss).
	onLoss func()
	m      *metrics
	log    *zap.Logger
	drops  *dropLog

	up         bool      // subscribed right now
	everUp     bool      // subscribed at least once in this run
	downLogged bool      // the current outage has been logged
	since      time.Time // start of the current up or down period
}

// run subscribes, delivers, and resubscribes after failures, waiting a
// capped, jittered backoff between attempts, until ctx ends.
func (l *link) run(ctx context.Context) {
	bo := backoff{min: l.backoffMin, max: l.backoffMax}
	l.since = time.Now()
	for {
		subscribed, err := l.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if subscribed {
			// The server was there: the next attempt should be quick.
			bo.reset()
		}
		l.markDown(err)
		t := time.NewTimer(bo.next())
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

func (l *link) markUp() {
	fields := []zap.Field{zap.String("channel", l.channel), zap.String("redis", l.where)}
	switch {
	case l.everUp:
		l.m.reconnects.Inc()
		l.lost()
		l.log.Info("backbone subscription restored", append(fields, zap.Duration("outage", time.Since(l.since)))...)
	case l.downLogged:
		l.log.Info("backbone subscription established after retrying", append(fields, zap.Duration("waited", time.Since(l.since)))...)
	case l.quiet:
		l.log.Debug("backbone subscription established", fields...)
	default:
		l.log.Info("backbone subscription established", fields...)
	}
	l.up, l.everUp, l.downLogged = true, true, false
	l.since = time.Now()
	l.report(nil)
}

// markDown records a failed attempt or a lost subscription. Only the first
// failure of an outage is logged; the retries that follow only refresh the
// reason Ready returns.
func (l *link) markDown(cause error) {
	err := fmt.Errorf("not subscribed to %q on %s (retrying): %w", l.channel, l.where, cause)
	switch {
	case l.up:
		l.log.Warn("backbone subscription lost; resubscribing", zap.String("channel", l.channel),
			zap.String("redis", l.where), zap.Duration("wasUp", time.Since(l.since)), zap.Error(cause))
		l.since = time.Now()
	case !l.downLogged:
		l.log.Warn("backbone unavailable; retrying in the background", zap.String("channel", l.channel),
			zap.String("redis", l.where), zap.Error(cause))
	}
	l.up, l.downLogged = false, true
	l.report(err)
}

// session runs one PubSub from SUBSCRIBE to failure. subscribed tells
// whether Redis confirmed the subscription before the failure.
func (l *link) session(ctx context.Context) (subscribed bool, err error) {
	ps, err := l.open(ctx)
	if ps != nil {
		defer ps.Close()
	}
	if err != nil {
		return false, err
	}
	// Receive does not watch its context while blocked in a read; closing
	// the PubSub is what unblocks it when Run stops.
	stop := context.AfterFunc(ctx, func() { _ = ps.Close() })
	defer stop()

	if err := l.awaitConfirmation(ctx, ps); err != nil {
		return false, err
	}
	l.markUp()

	// seen counts replies of any kind; the watchdog reads it to tell a
	// quiet channel from a dead connection without a clock read per
	// message.
	var seen atomic.Uint64
	var cause atomic.Pointer[errBox]
	wctx, wcancel := context.WithCancel(ctx)
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		l.watch(wctx, ps, &seen, &cause)
	}()
	defer func() {
		wcancel()
		<-wdone
	}()

	for {
		// Receive reads without a deadline (ctx has none): a quiet channel
		// is normal, and liveness is the watchdog's job.
		v, err := ps.Receive(ctx)
		if err != nil {
			if c := cause.Load(); c != nil {
				return true, c.err
			}
			return true, fmt.Errorf("receive: %w", err)
		}
		seen.Add(1)
		switch m := v.(type) {
		case *redis.Message:
			if m.Channel == l.markChannel {
				l.deliverMark(m.Payload)
				continue
			}
			l.deliver(m.Payload)
		case *redis.Subscription:
			// We never unsubscribe a live PubSub (we close it), so this
			// comes from the server: in a cluster, the channel's slot moved
			// to another node. Resubscribing finds the new owner.
			if m.Channel == l.channel && (m.Kind == "unsubscribe" || m.Kind == "sunsubscribe") {
				return true, fmt.Errorf("redis ended the subscription (%s)", m.Kind)
			}
		}
	}
}

// awaitConfirmation reads until Redis confirms the subscription: only then
// can the node promise delivery, so only then is it ready.
func (l *link) awaitConfirmation(ctx context.Context, ps *redis.PubSub) error {
	deadline := time.Now().Add(l.subscribeTimeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("no %s confirmation within %v", l.kind, l.subscribeTimeout)
		}
		v, err := ps.ReceiveTimeout(ctx, left)
		if err != nil {
			return fmt.Errorf("await %s confirmation: %w", l.kind, err)
		}
		if s, ok := v.(*redis.Subscription); ok && s.Kind == l.kind && s.Channel == l.channel {
			return nil
		}
	}
}

// deliver queues one payload for the handler without ever blocking: when the
// handler is so far behind that the queue is full, the message is dropped
// and counted. Blocking instead would stall the socket read, make Redis
// buffer for us until it disconnects the node as a slow client
// (client-output-buffer-limit pubsub), and lose far more.
func (l *link) deliver(payload string) {
	l.m.messages.Inc()
	select {
	case l.out <- delivery{payload: payload}:
	default:
		l.m.dropped.Inc()
		l.drops.note(l.log, l.channel)
		l.lost()
	}
}

// deliverMark queues a mark like a message. A full queue drops it
// uncounted: a mark is no event, and whoever waits for it gives up in time.
func (l *link) deliverMark(mark string) {
	select {
	case l.out <- delivery{payload: mark, mark: true, partition: l.partition}:
	default:
	}
}

func (l *link) lost() {
	if l.onLoss != nil {
		l.onLoss()
	}
}

// watch PINGs a PubSub that has been silent for a whole health interval and
// closes it when the PONG does not come back within the next one. A killed
// or restarted Redis is seen at once (the read fails on RST or EOF); this
// catches the connection that just goes quiet, which otherwise would look
// subscribed forever.
func (l *link) watch(ctx context.Context, ps *redis.PubSub, seen *atomic.Uint64, cause *atomic.Pointer[errBox]) {
	fail := func(err error) {
		cause.Store(&errBox{err})
		_ = ps.Close()
	}
	t := time.NewTicker(l.health)
	defer t.Stop()
	last := seen.Load()
	pinged := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if n := seen.Load(); n != last {
			last, pinged = n, false
			continue
		}
		if pinged {
			fail(fmt.Errorf("no reply to PING within %v; connection presumed dead", l.health))
			return
		}
		pctx, cancel := context.WithTimeout(ctx, l.health)
		err := ps.Ping(pctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fail(fmt.Errorf("ping: %w", err))
			return
		}
		pinged = true
	}
}

// delivery is one entry of Run's queue: a message for the handler, or a
// mark of partition for RedisOptions.OnMark.
type delivery struct {
	payload   string
	mark      bool
	partition int
}

// dispatch drains the queue into h (and marks into onMark), one at a time
// and in order, until ctx ends. The payload is copied into one reused
// buffer: Handler's contract (valid until it returns) allows that, so
// steady-state delivery allocates nothing beyond go-redis's own string.
func dispatch(ctx context.Context, in <-chan delivery, h Handler, onMark func(partition int, mark string)) {
	var buf []byte
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-in:
			if d.mark {
				if onMark != nil {
					onMark(d.partition, d.payload)
				}
				continue
			}
			buf = append(buf[:0], d.payload...)
			h(buf)
			if cap(buf) > 1<<16 {
				// One huge message must not pin its size for the node's life.
				buf = nil
			}
		}
	}
}

// errRunning is returned by a second concurrent Run.
var errRunning = errors.New("broker: Run is already running")

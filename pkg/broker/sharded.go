package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// DefaultPartitions is the number of sharded Pub/Sub partitions when none is
// configured. Every node and every publisher must use the same number.
const DefaultPartitions = 64

// Partition returns the partition that carries project's messages among n:
// FNV-1a (32-bit) of the project id, modulo n, which must be positive.
// Other publishers can reproduce it in a few lines of any language.
func Partition(project string, n int) int {
	const (
		offset32 = 2166136261
		prime32  = 16777619
	)
	// hash/fnv would allocate a hasher per call; this is the same
	// function inlined.
	h := uint32(offset32)
	for i := 0; i < len(project); i++ {
		h ^= uint32(project[i])
		h *= prime32
	}
	return int(h % uint32(n))
}

// ShardChannel returns the sharded Pub/Sub channel of a partition:
// "<channel>:{<partition>}". The braces make the partition number a Redis
// Cluster hash tag, so a partition's channel always hashes to one slot, and
// hence one shard, whatever the base channel is called.
func ShardChannel(channel string, partition int) string {
	return channel + ":{" + strconv.Itoa(partition) + "}"
}

// RedisShardedOptions configures NewRedisSharded: the options of the
// single-channel broker, plus the cluster's seed nodes and the number of
// partitions.
type RedisShardedOptions struct {
	// RedisOptions' URL is parsed by redis.ParseClusterURL: one seed node
	// in the host part, more as addr= query parameters, e.g.
	// redis://:password@10.0.0.1:6379?addr=10.0.0.2:6379. It may be empty
	// when Addrs is not.
	RedisOptions
	// Addrs are further seed nodes (host:port) of the cluster.
	Addrs []string
	// Partitions is N: a project's messages travel on partition
	// Partition(project, N). It must be the same on every node and every
	// publisher. Zero or less means DefaultPartitions.
	Partitions int
}

// RedisSharded is the broker for installations whose event rate outgrows
// one Redis: it runs on a Redis Cluster with sharded Pub/Sub (Redis 7+).
// A message travels on the partition of its project (see Partition and
// ShardChannel): Publish SPUBLISHes it there, so it loads only the shard
// that owns that partition, and a node SSUBSCRIBEs only to the partitions
// of the projects it has connections for, as told through Want and Unwant
// (ProjectAware), so it is not sent the events of projects it does not
// serve.
//
// Each wanted partition has its own PubSub: go-redis binds a PubSub to the
// slot of its first channel, and each partition lives in its own slot. Each
// partition's subscription survives outages like Redis's single one, with
// the same backoff, health checks and metrics. Messages of one project
// arrive in order (one partition, one connection); messages of different
// partitions may interleave.
type RedisSharded struct {
	client  *redis.ClusterClient
	channel string
	n       int
	where   string // seed nodes, for logs and errors
	buffer  int
	log     *zap.Logger
	m       *metrics
	timing  timing
	drops   dropLog
	onLoss  func()
	onMark  func(int, string)
	closed  chan struct{}

	mu sync.Mutex
	// want counts the outstanding Want calls per partition.
	want []int
	// subs holds the running subscriber of each wanted partition while
	// Run runs; nil elsewhere.
	subs []*partitionSub
	// lastDone is the done channel of each partition's last stopped
	// subscriber: its successor waits for it, so an Unwant quickly
	// followed by a Want never has two PubSubs on one partition (which
	// could deliver a message twice).
	lastDone []chan struct{}
	// runCtx is the context of the running Run: subscribers started by a
	// Want during Run must end with it, so it has to be reachable from
	// Want. nil while Run is not running.
	runCtx  context.Context
	queue   chan delivery
	runDone chan struct{} // non-nil while Run runs; closed when it returns
	wg      sync.WaitGroup
	// clusterErr is the result of the last cluster PING during Run: it
	// makes Ready meaningful on a node that wants no partition yet.
	clusterErr error
	ready      error
}

// partitionSub is one partition's subscriber. Its state is guarded by
// RedisSharded.mu.
type partitionSub struct {
	cancel context.CancelFunc
	done   chan struct{}
	// subscribed is true while Redis has confirmed the subscription.
	subscribed bool
	// err is why the last attempt failed; nil while subscribed and while
	// the first attempt is still under way. A partition being subscribed
	// for a newly arrived project does not make the node unready: that
	// would flap /readyz on every new project.
	err error
}

var (
	_ Broker       = (*RedisSharded)(nil)
	_ ProjectAware = (*RedisSharded)(nil)
	_ Backlogged   = (*RedisSharded)(nil)
)

// NewRedisSharded parses the options and registers the metrics (the
// broker_* series of Redis, plus broker_subscribed_partitions). It does not
// connect: Run does.
func NewRedisSharded(opts RedisShardedOptions) (*RedisSharded, error) {
	var co *redis.ClusterOptions
	if opts.URL != "" {
		var err error
		if co, err = redis.ParseClusterURL(opts.URL); err != nil {
			return nil, fmt.Errorf("redis sharded broker: parse URL: %w", redactURLError(err))
		}
	} else {
		co = &redis.ClusterOptions{}
	}
	co.Addrs = append(co.Addrs, opts.Addrs...)
	if len(co.Addrs) == 0 {
		return nil, errors.New("redis sharded broker: no URL and no Addrs")
	}
	if co.DialTimeout == 0 {
		co.DialTimeout = defaultDialTimeout
	}
	// As in NewRedis: one dial per attempt (the links back off by
	// themselves), and go-redis must honour Publish's deadline on the socket.
	co.DialerRetries = 1
	co.ContextTimeoutEnabled = true

	s := &RedisSharded{
		channel: opts.Channel,
		n:       opts.Partitions,
		where:   "cluster " + strings.Join(co.Addrs, ","),
		buffer:  opts.Buffer,
		log:     opts.Logger,
		onLoss:  opts.OnLoss,
		onMark:  opts.OnMark,
		timing:  defaultTiming(),
		closed:  make(chan struct{}),
	}
	if s.channel == "" {
		s.channel = DefaultChannel
	}
	if s.n <= 0 {
		s.n = DefaultPartitions
	}
	if s.buffer <= 0 {
		s.buffer = DefaultBuffer
	}
	if s.log == nil {
		s.log = zap.NewNop()
	}
	var err error
	if s.m, err = newMetrics(opts.Registerer, true); err != nil {
		return nil, fmt.Errorf("redis sharded broker: %w", err)
	}
	s.log = s.log.With(zap.String("broker", "redis-sharded"))
	s.want = make([]int, s.n)
	s.subs = make([]*partitionSub, s.n)
	s.lastDone = make([]chan struct{}, s.n)
	s.updateLocked()
	s.client = redis.NewClusterClient(co)
	return s, nil
}

// Partitions returns N, the number of partitions this broker uses.
func (s *RedisSharded) Partitions() int { return s.n }

// Publish implements Broker: it reads the message's top-level "project"
// (and nothing else: the router decodes the rest) and SPUBLISHes the
// message on that project's partition. A message that is not a JSON object
// with a non-empty string "project" is refused with an error wrapping
// ErrNoProject, since no partition would carry it. Like Redis.Publish it
// gives up after 2 s or when ctx ends.
func (s *RedisSharded) Publish(ctx context.Context, msg []byte) error {
	if s.isClosed() {
		return ErrClosed
	}
	// encoding/json matches "project" case-insensitively; a message that
	// spells it otherwise lands on a partition whose router then refuses
	// it as invalid, which loses nothing that was valid.
	var head struct {
		Project string `json:"project"`
	}
	if err := json.Unmarshal(msg, &head); err != nil {
		return fmt.Errorf("redis sharded broker: publish: %w: %w", ErrNoProject, err)
	}
	if head.Project == "" {
		return fmt.Errorf("redis sharded broker: publish: %w", ErrNoProject)
	}
	ch := ShardChannel(s.channel, Partition(head.Project, s.n))
	ctx, cancel := context.WithTimeout(ctx, s.timing.publishTimeout)
	defer cancel()
	if err := s.client.SPublish(ctx, ch, msg).Err(); err != nil {
		if s.isClosed() {
			return ErrClosed
		}
		return fmt.Errorf("redis sharded broker: spublish to %q on %s: %w", ch, s.where, err)
	}
	return nil
}

// Mark SPUBLISHes mark on partition's channel of marks, for the OnMark of
// every node subscribed to the partition. Like Publish it gives up after
// 2 s or when ctx ends.
func (s *RedisSharded) Mark(ctx context.Context, partition int, mark string) error {
	if partition < 0 || partition >= s.n {
		return fmt.Errorf("redis sharded broker: mark of partition %d: out of [0, %d)", partition, s.n)
	}
	if s.isClosed() {
		return ErrClosed
	}
	ch := ShardChannel(s.channel+MarkSuffix, partition)
	ctx, cancel := context.WithTimeout(ctx, s.timing.publishTimeout)
	defer cancel()
	if err := s.client.SPublish(ctx, ch, mark).Err(); err != nil {
		return fmt.Errorf("redis sharded broker: spublish mark to %q on %s: %w", ch, s.where, err)
	}
	return nil
}

// Want implements ProjectAware: the node subscribes to project's partition
// when no other wanted project already shares it. Before Run the wish is
// recorded and Run subscribes.
func (s *RedisSharded) Want(project string) {
	p := Partition(project, s.n)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.want[p]++
	if s.want[p] == 1 && s.runCtx != nil {
		s.startLocked(p)
		s.updateLocked()
	}
}

// WantAll subscribes to every partition for as long as the broker runs,
// whatever projects this node serves: the event history's appender must
// hear every project (RESUME.md).
func (s *RedisSharded) WantAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for p := range s.want {
		s.want[p]++
		if s.want[p] == 1 && s.runCtx != nil {
			s.startLocked(p)
		}
	}
	if s.runCtx != nil {
		s.updateLocked()
	}
}

// Unwant implements ProjectAware: it undoes one Want, and the node
// unsubscribes from the partition when nothing wants it any more. An
// Unwant without a matching Want is ignored (and logged).
func (s *RedisSharded) Unwant(project string) {
	p := Partition(project, s.n)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.want[p] == 0 {
		s.log.Warn("Unwant without a matching Want; ignored",
			zap.String("project", project), zap.Int("partition", p))
		return
	}
	s.want[p]--
	if s.want[p] == 0 && s.subs[p] != nil {
		s.stopLocked(p)
		s.updateLocked()
	}
}

// Run implements Broker: it subscribes to every wanted partition (and to
// those wanted later), calls h for each message one at a time, and returns
// ctx's error when ctx ends, or ErrClosed after Close.
func (s *RedisSharded) Run(ctx context.Context, h Handler) error {
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.mu.Lock()
	switch {
	case s.isClosed():
		s.mu.Unlock()
		return ErrClosed
	case s.runDone != nil:
		s.mu.Unlock()
		return fmt.Errorf("redis sharded broker: %w", errRunning)
	}
	runDone := make(chan struct{})
	s.runDone = runDone
	s.runCtx = rctx
	s.queue = make(chan delivery, s.buffer)
	s.clusterErr = fmt.Errorf("no answer from %s yet", s.where)
	for p, w := range s.want {
		if w > 0 {
			s.startLocked(p)
		}
	}
	s.updateLocked()
	queue := s.queue
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		s.watchCluster(rctx)
	}()
	go func() {
		select {
		case <-s.closed:
			cancel()
		case <-rctx.Done():
		}
	}()

	dispatch(rctx, queue, h, s.onMark)
	cancel()

	s.mu.Lock()
	for p, sub := range s.subs {
		if sub != nil {
			s.stopLocked(p)
		}
	}
	s.runCtx, s.queue = nil, nil
	s.updateLocked()
	s.mu.Unlock()
	// No Want can start a subscriber now (runCtx is nil), so Wait cannot
	// race with Add.
	s.wg.Wait()

	s.mu.Lock()
	s.runDone = nil
	s.mu.Unlock()
	close(runDone)
	if err := ctx.Err(); err != nil {
		return err
	}
	return ErrClosed
}

// startLocked starts the subscriber of partition p. s.mu is held.
func (s *RedisSharded) startLocked(p int) {
	ctx, cancel := context.WithCancel(s.runCtx)
	ch := ShardChannel(s.channel, p)
	channels := []string{ch}
	markChannel := ""
	if s.onMark != nil {
		markChannel = ShardChannel(s.channel+MarkSuffix, p) // the same slot as ch
		channels = append(channels, markChannel)
	}
	sub := &partitionSub{cancel: cancel, done: make(chan struct{})}
	prev := s.lastDone[p]
	s.subs[p] = sub
	l := &link{
		timing:  s.timing,
		kind:    "ssubscribe",
		channel: ch,
		where:   s.where,
		open: func(ctx context.Context) (*redis.PubSub, error) {
			// Empty first, then SSUBSCRIBE: the cluster client picks the
			// node that owns ch's slot when the connection is made.
			ps := s.client.SSubscribe(ctx)
			if err := ps.SSubscribe(ctx, channels...); err != nil {
				return ps, fmt.Errorf("ssubscribe: %w", err)
			}
			return ps, nil
		},
		markChannel: markChannel,
		partition:   p,
		out:         s.queue,
		report:      func(err error) { s.reportPartition(p, sub, err) },
		onLoss:      s.onLoss,
		quiet:       true,
		m:           s.m,
		log:         s.log.With(zap.Int("partition", p)),
		drops:       &s.drops,
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer close(sub.done)
		if prev != nil {
			select {
			case <-prev:
			case <-ctx.Done():
				return
			}
		}
		l.run(ctx)
	}()
}

// stopLocked stops the subscriber of partition p. s.mu is held.
func (s *RedisSharded) stopLocked(p int) {
	sub := s.subs[p]
	sub.cancel()
	s.lastDone[p] = sub.done
	s.subs[p] = nil
}

// reportPartition is a partition link's state callback.
func (s *RedisSharded) reportPartition(p int, sub *partitionSub, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subs[p] != sub {
		return // stopped meanwhile
	}
	if err != nil {
		err = fmt.Errorf("partition %d: %w", p, err)
	}
	sub.subscribed, sub.err = err == nil, err
	s.updateLocked()
}

// watchCluster PINGs the cluster every health interval while Run runs, and
// logs when the answer changes. Partition subscriptions report their own
// state; this covers the node that wants no partition yet, which is
// otherwise blind to an unreachable cluster.
func (s *RedisSharded) watchCluster(ctx context.Context) {
	t := time.NewTicker(s.timing.health)
	defer t.Stop()
	down := false // an outage has been logged and not yet ended
	for {
		pctx, cancel := context.WithTimeout(ctx, s.timing.health)
		err := s.client.Ping(pctx).Err()
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		s.clusterErr = err
		s.updateLocked()
		s.mu.Unlock()
		switch {
		case err != nil && !down:
			s.log.Warn("redis cluster unreachable; retrying", zap.String("redis", s.where), zap.Error(err))
			down = true
		case err == nil && down:
			s.log.Info("redis cluster reachable again", zap.String("redis", s.where))
			down = false
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// updateLocked recomputes Ready's answer and the gauges. s.mu is held.
func (s *RedisSharded) updateLocked() {
	subscribed := 0
	var firstDown error
	for _, sub := range s.subs {
		switch {
		case sub == nil:
		case sub.subscribed:
			subscribed++
		case sub.err != nil && firstDown == nil:
			firstDown = sub.err
		}
	}
	switch {
	case s.runCtx == nil:
		s.ready = fmt.Errorf("redis sharded broker: not subscribed on %s: not running", s.where)
	case s.clusterErr != nil:
		s.ready = fmt.Errorf("redis sharded broker: cluster unreachable: %w", s.clusterErr)
	case firstDown != nil:
		s.ready = fmt.Errorf("redis sharded broker: %w", firstDown)
	default:
		s.ready = nil
	}
	if s.ready == nil {
		s.m.connected.Set(1)
	} else {
		s.m.connected.Set(0)
	}
	s.m.partitions.Set(float64(subscribed))
}

// Backlog implements Backlogged: messages received from any partition
// that wait for the handler.
func (s *RedisSharded) Backlog() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// Ready implements Broker: nil while Run runs, the cluster answers, and no
// wanted partition has failed to subscribe (a partition whose first
// attempt is still under way does not count); otherwise the first reason
// why not.
func (s *RedisSharded) Ready() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ready
}

// Close stops Run (which returns ErrClosed), waits for it to return, and
// releases the connections; Publish returns ErrClosed afterwards. It must
// not be called from the handler. Closing twice is harmless.
func (s *RedisSharded) Close() error {
	s.mu.Lock()
	if s.isClosed() {
		s.mu.Unlock()
		return nil
	}
	close(s.closed)
	runDone := s.runDone
	s.mu.Unlock()
	if runDone != nil {
		<-runDone
	}
	if err := s.client.Close(); err != nil {
		return fmt.Errorf("redis sharded broker: close: %w", err)
	}
	return nil
}

func (s *RedisSharded) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

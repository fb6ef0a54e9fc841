package main

import (
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/history"
	"github.com/switchboard-rt/switchboard/pkg/presence"
	projectusage "github.com/switchboard-rt/switchboard/pkg/usage" // main.go has a func usage
)

// brokerFlags chooses the event backbone: the embedded memory broker
// unless a Redis URL is given. Shared by serve and publish.
type brokerFlags struct {
	redisURL   string
	channel    string
	sharded    bool
	partitions int
	buffer     int
	// feed, set by resume, is the history's appender feed: it hears of
	// lost backbone messages and of marks, and publishes its marks
	// through the broker.
	feed *history.Feed
}

func (b *brokerFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&b.redisURL, "redis-url", "", "Redis backbone: redis://[:PASSWORD@]HOST:PORT/DB or rediss://; empty uses the embedded broker (one node)")
	fs.StringVar(&b.channel, "redis-channel", broker.DefaultChannel, "Redis Pub/Sub channel carrying backbone messages")
	fs.BoolVar(&b.sharded, "redis-sharded", false, "Redis Cluster sharded Pub/Sub: SPUBLISH/SSUBSCRIBE per project partition (--redis-url names the cluster: redis://H:P?addr=H2:P2&addr=H3:P3)")
	fs.IntVar(&b.partitions, "redis-partitions", broker.DefaultPartitions, "with --redis-sharded: partitions projects are hashed over (every node and publisher must agree)")
	fs.IntVar(&b.buffer, "broker-buffer", broker.DefaultBuffer, "messages buffered between the backbone and the router; beyond it Redis messages are dropped and counted")
}

// applyDefaults gives the flags the README's rule: zero (or an empty
// channel) takes the default, and none can be switched off. The embedded
// broker would otherwise take a zero buffer as 1, and the dashboard's
// channel would be ".nodes".
func (b *brokerFlags) applyDefaults() error {
	if b.channel == "" {
		b.channel = broker.DefaultChannel
	}
	return errors.Join(
		flagDefault("broker-buffer", &b.buffer, broker.DefaultBuffer),
		flagDefault("redis-partitions", &b.partitions, broker.DefaultPartitions),
	)
}

// open builds the chosen broker. The returned close function is never nil.
func (b *brokerFlags) open(log *zap.Logger, reg prometheus.Registerer) (broker.Broker, func() error, error) {
	if err := b.applyDefaults(); err != nil {
		return nil, nil, err
	}
	if b.redisURL == "" {
		if b.sharded {
			return nil, nil, errors.New("--redis-sharded needs --redis-url")
		}
		return broker.NewMemory(b.buffer), func() error { return nil }, nil
	}
	// go-redis logs through a process-wide logger; route it through ours so
	// an outage is one line per state change, not one per dial.
	redis.SetLogger(broker.NewRedisLogger(log))
	opts := broker.RedisOptions{URL: b.redisURL, Channel: b.channel, Buffer: b.buffer, Logger: log, Registerer: reg}
	if b.feed != nil {
		opts.OnLoss, opts.OnMark = b.feed.Lost, b.feed.Mark
	}
	var r interface {
		broker.Broker
		history.Marker
		Close() error
	}
	var err error
	if b.sharded {
		r, err = broker.NewRedisSharded(broker.RedisShardedOptions{RedisOptions: opts, Partitions: b.partitions})
	} else {
		r, err = broker.NewRedis(opts)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("--redis-url: %w", err)
	}
	if b.feed != nil {
		b.feed.Marker = r
	}
	return r, r.Close, nil
}

// Channels of their own beside the event channel: <--redis-channel> plus
// these suffixes.
const (
	nodesSuffix = ".nodes" // the dashboard's once-a-second samples
	adminSuffix = ".admin" // the admin API's cluster questions (explain, connections) and answers
)

// peers builds a channel between the nodes beside the events: a Redis
// broker of its own on <channel><suffix>, so what the nodes tell each
// other never shares a connection or a channel with events. Nil without
// Redis (the node answers alone) and with --redis-sharded, whose cluster
// URL a plain client cannot dial. The returned close function is never
// nil.
func (b *brokerFlags) peers(log *zap.Logger, suffix, name string) (broker.Broker, func() error, error) {
	if b.redisURL == "" || b.sharded {
		return nil, func() error { return nil }, nil
	}
	r, err := broker.NewRedis(broker.RedisOptions{URL: b.redisURL, Channel: b.channel + suffix, Buffer: 256, Logger: log.Named(name)})
	if err != nil {
		return nil, nil, fmt.Errorf("--redis-url: %s peers: %w", name, err)
	}
	return r, r.Close, nil
}

// presences builds the presence store that goes with the backbone: the
// node's own memory when it is alone, Redis (the same server or cluster as
// the backbone) when nodes share one. The returned close function is never
// nil.
func (b *brokerFlags) presences() (presence.Store, func() error, error) {
	if b.redisURL == "" {
		return presence.NewMemory(), func() error { return nil }, nil
	}
	client, err := b.client()
	if err != nil {
		return nil, nil, fmt.Errorf("--redis-url: presence store: %w", err)
	}
	s, err := presence.NewRedis(presence.RedisOptions{Client: client})
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	return s, client.Close, nil
}

// usageStore builds the usage store that goes with the backbone: the node's
// own memory when it is alone, Redis when nodes share one (every node adds
// into the same keys, so a query reads the cluster's sum). retention 0
// takes the store's default. The returned close function is never nil.
func (b *brokerFlags) usageStore(retention time.Duration) (projectusage.Store, func() error, error) {
	if b.redisURL == "" {
		return projectusage.NewMemory(retention), func() error { return nil }, nil
	}
	client, err := b.client()
	if err != nil {
		return nil, nil, fmt.Errorf("--redis-url: usage store: %w", err)
	}
	s, err := projectusage.NewRedis(projectusage.RedisOptions{Client: client, Retention: retention})
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	return s, client.Close, nil
}

// client is a Redis client of its own on --redis-url: a cluster client
// with --redis-sharded.
func (b *brokerFlags) client() (redis.UniversalClient, error) {
	if b.sharded {
		co, err := redis.ParseClusterURL(b.redisURL)
		if err != nil {
			return nil, err
		}
		return redis.NewClusterClient(co), nil
	}
	o, err := redis.ParseURL(b.redisURL)
	if err != nil {
		return nil, err
	}
	return redis.NewClient(o), nil
}

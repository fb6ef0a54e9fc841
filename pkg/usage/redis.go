package usage

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisPrefix starts the name of every key the Redis store writes.
const DefaultRedisPrefix = "switchboard:usage"

// RedisOptions configures NewRedis.
type RedisOptions struct {
	// Client is the connection (a *redis.Client or a *redis.ClusterClient).
	Client redis.UniversalClient
	// Prefix names the keys; empty means DefaultRedisPrefix. Nodes of one
	// cluster must agree on it.
	Prefix string
	// Retention is how long a minute is kept; 0 means
	// DefaultRedisRetention.
	Retention time.Duration
}

// Redis is a cluster's store: one hash per project and minute,
//
//	<prefix>:{<project>}:<unix minute>   fields c, m, i, o
//
// (connections, messages, inbound, outbound), which every node adds to
// with HINCRBY, so the cluster's sum is what a query reads and no node
// needs to know the others. Each key expires retention after its minute
// ends (EXPIREAT, so every node sets the same time). The hash tag puts a
// project's minutes in one Redis Cluster slot. Redis holds one small hash
// per project and minute with usage in the retention; a node holds nothing
// between folds.
type Redis struct {
	c         redis.UniversalClient
	prefix    string
	retention time.Duration
}

var _ Store = (*Redis)(nil)

// NewRedis returns a store on opts.Client.
func NewRedis(opts RedisOptions) (*Redis, error) {
	if opts.Client == nil {
		return nil, errors.New("usage: redis store without a client")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultRedisPrefix
	}
	if opts.Retention <= 0 {
		opts.Retention = DefaultRedisRetention
	}
	return &Redis{c: opts.Client, prefix: opts.Prefix, retention: opts.Retention}, nil
}

// Retention is how long a minute is kept.
func (r *Redis) Retention() time.Duration { return r.retention }

func (r *Redis) key(project string, minute int64) string {
	return r.prefix + ":{" + project + "}:" + strconv.FormatInt(minute, 10)
}

// redisBatch is the most projects (or minutes, for a query) one pipeline
// carries: a fold of 100,000 projects goes as 100 round trips of bounded
// size rather than one buffer of half a million commands.
const redisBatch = 1000

var fields = [numMetrics]string{"c", "m", "i", "o"}

// Add adds t's counts to minute, in transactions (MULTI/EXEC) of
// redisBatch projects; each one stored is taken out of t, so that a retry
// after a failure adds only the batches that were not. (A reply lost
// after its EXEC ran is the one case left where a retry counts twice.)
func (r *Redis) Add(ctx context.Context, minute int64, t *Tally) error {
	expireAt := time.Unix((minute+1)*60, 0).Add(r.retention)
	pipe := r.c.TxPipeline()
	batch := make([]string, 0, min(t.Len(), redisBatch))
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("usage: redis add: %w", err)
		}
		for _, p := range batch {
			t.Delete(p)
		}
		batch = batch[:0]
		return nil
	}
	var err error
	t.All(func(p string, c Counts) {
		if err != nil {
			return
		}
		k := r.key(p, minute)
		for _, m := range Metrics {
			if v := c.Of(m); v != 0 {
				pipe.HIncrBy(ctx, k, fields[m], v)
			}
		}
		pipe.ExpireAt(ctx, k, expireAt)
		if batch = append(batch, p); len(batch) == redisBatch {
			err = flush()
		}
	})
	if err != nil {
		return err
	}
	return flush()
}

// Query returns project's minutes from..to with usage, reading at most
// the retention's minutes (older keys have expired), and each minute's
// Unattributed counts (the key of project "", which a node writes when a
// bound took counts off their project), which mark it incomplete.
func (r *Redis) Query(ctx context.Context, project string, from, to int64) ([]Minute, error) {
	from = max(from, time.Now().Add(-r.retention).Unix()/60-1)
	var out []Minute
	for lo := from; lo <= to; lo += redisBatch {
		hi := min(to, lo+redisBatch-1)
		pipe := r.c.Pipeline()
		cmds := make([][2]*redis.SliceCmd, 0, hi-lo+1)
		for k := lo; k <= hi; k++ {
			cmds = append(cmds, [2]*redis.SliceCmd{
				pipe.HMGet(ctx, r.key(project, k), fields[:]...),
				pipe.HMGet(ctx, r.key(Unattributed, k), fields[:]...),
			})
		}
		if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return nil, fmt.Errorf("usage: redis query: %w", err)
		}
		for i, cmd := range cmds {
			m := Minute{Minute: lo + int64(i)}
			var err error
			if m.Counts, err = r.counts(cmd[0], project, m.Minute); err != nil {
				return nil, err
			}
			if m.Unattributed, err = r.counts(cmd[1], Unattributed, m.Minute); err != nil {
				return nil, err
			}
			if !m.IsZero() || m.Incomplete() {
				out = append(out, m)
			}
		}
	}
	return out, nil
}

// counts reads an HMGET of a minute's fields.
func (r *Redis) counts(cmd *redis.SliceCmd, project string, minute int64) (Counts, error) {
	var c Counts
	for m, v := range cmd.Val() {
		s, ok := v.(string)
		if !ok {
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return c, fmt.Errorf("usage: redis query: field %s of %s: %w", fields[m], r.key(project, minute), err)
		}
		switch Metric(m) {
		case Connections:
			c.Connections = n
		case Messages:
			c.Messages = n
		case Inbound:
			c.Inbound = n
		case Outbound:
			c.Outbound = n
		}
	}
	return c, nil
}

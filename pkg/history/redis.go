package history

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// DefaultPrefix starts the name of every key the Redis store writes.
const DefaultPrefix = "switchboard:history"

// redisOverhead is what an event costs Redis beside its bytes, counted by
// the caps so that they bound Redis's memory, not only payloads. Measured
// (BenchmarkRedisBytesPerEvent, 1 KB events, Redis 7.0 defaults):
// used_memory grows by 1,206 B an event, MEMORY USAGE of the stream says
// 1,306 B (listpacks of stream-node-max-bytes 4096 hold three such
// events, and jemalloc rounds each up).
const redisOverhead = 200

// RedisOptions configures NewRedis.
type RedisOptions struct {
	// Client is the connection: a *redis.Client, or a *redis.ClusterClient
	// (all keys of a partition share one hash tag, hence one slot).
	Client redis.UniversalClient
	// Prefix names the keys; empty means DefaultPrefix. Every node must
	// use the same.
	Prefix string
	// Partitions is the sharded broker's N (--redis-partitions): a
	// project's keys carry the tag {Partition(project, N)}, the same as
	// its sharded channel, so its history lives on the shard that carries
	// its events. Zero or less: one partition, tag {0} (plain Redis).
	Partitions int
	// Node is this node's id, the lease owner for appends. Readers need none.
	Node string
	// Config bounds the history; MaxBytes caps each partition.
	Config Config
	// TailCacheBytes caps what ReadFrom keeps of the streams' newest
	// events (all projects together); zero means DefaultTailCacheBytes.
	TailCacheBytes int64
}

// Redis is the history shared by all nodes. Its keys, per partition tag T:
//
//	<prefix>:{T}:lease           string: the node allowed to append (Lease)
//	<prefix>:{T}:p               hash: b = bytes held, id = the newest position, last = the digests of the last 4 events appended,
//	                             seal = "<mark> <last>" of the last hand-over (sealScript)
//	<prefix>:{T}:heads           zset: project -> ms of its oldest held event
//	<prefix>:{T}:gaps            zset: positions before which events may be missing
//	<prefix>:{T}:s:<project>     stream: the project's events (field d)
//	<prefix>:{T}:m:<project>     hash: b = bytes held, f = newest position evicted
//
// Every write is one Lua script, fenced by the lease: only its holder
// appends, and the caps are enforced in the same call, so a partition
// never holds more than its cap between calls. Every key expires
// Window+1 min after the partition's last append, so an abandoned
// installation leaves nothing behind.
//
// ReadFrom reads through a cache of each project's newest events, held by
// the Redis value (never shared between values), so that the subscriptions
// of a resume storm do not each read the stream again (tail.go).
type Redis struct {
	c      redis.UniversalClient
	prefix string
	n      int
	node   string
	cfg    Config
	ttl    time.Duration
	tails  *tailCaches
}

var (
	_ Store  = (*Redis)(nil)
	_ Reader = (*Redis)(nil)
)

// NewRedis returns the store; it opens no connection of its own.
func NewRedis(opts RedisOptions) (*Redis, error) {
	if opts.Client == nil {
		return nil, errors.New("history: Redis store needs a client")
	}
	r := &Redis{c: opts.Client, prefix: opts.Prefix, n: opts.Partitions, node: opts.Node, cfg: opts.Config.withDefaults(),
		tails: newTailCaches(opts.TailCacheBytes)}
	if r.prefix == "" {
		r.prefix = DefaultPrefix
	}
	if r.n <= 0 {
		r.n = 1
	}
	r.ttl = r.cfg.Window + time.Minute
	return r, nil
}

// Partitions returns the number of partitions (leases) of the store.
func (r *Redis) Partitions() int { return r.n }

// PartitionOf returns project's partition: broker.Partition, so that the
// history of a project sits with its sharded channel.
func (r *Redis) PartitionOf(project string) int {
	if r.n == 1 {
		return 0
	}
	return broker.Partition(project, r.n)
}

// tag is the hash-tagged key prefix of partition p.
func (r *Redis) tag(p int) string { return r.prefix + ":{" + strconv.Itoa(p) + "}:" }

// LeaseKey is the key of partition p's lease.
func (r *Redis) LeaseKey(p int) string { return r.tag(p) + "lease" }

// StreamKey is the key of project's stream.
func (r *Redis) StreamKey(project string) string {
	return r.tag(r.PartitionOf(project)) + "s:" + project
}

// appendScript appends one event, fenced by the lease, and trims the
// partition. ARGV[3] (prev) selects the mode: "*" records a gap first
// (events before this one may be missing); "-" appends unchained; any
// other value must equal the partition's last (the digests of its last
// events) or nothing is written and {2, last, seal} tells the Appender
// where history stands (seal: sealScript's, or empty). A partition without last has unknown history: its first
// append is always a gap. Replies {0} when the caller does not hold the
// lease, {1, id, last} when appended.
var appendScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local last = redis.call('HGET', KEYS[2], 'last')
local gap = ARGV[3] == '*' or not last
if not gap and ARGV[3] ~= '-' and last ~= ARGV[3] then
  return {2, last, redis.call('HGET', KEYS[2], 'seal') or ''}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = tonumber(ARGV[5])
local ov = tonumber(ARGV[12])
-- Ids grow across the partition, not only within a stream, so that a
-- gap (or any position) of the partition orders against every project's.
local id = now .. '-0'
local pid = redis.call('HGET', KEYS[2], 'id')
if pid then
  local pm, ps = string.match(pid, '^(%d+)-(%d+)$')
  if tonumber(pm) >= now then id = pm .. '-' .. (tonumber(ps) + 1) end
end
redis.call('XADD', KEYS[5], id, 'd', ARGV[2])
redis.call('HSET', KEYS[2], 'id', id)
if gap then
  redis.call('ZADD', KEYS[4], string.match(id, '^(%d+)'), id)
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - w - 1000)
  last = ''
end
last = last .. ARGV[4]
if #last > 64 then last = string.sub(last, -64) end
local n = #ARGV[2] + ov
redis.call('HSET', KEYS[2], 'last', last)
redis.call('HINCRBY', KEYS[2], 'b', n)
redis.call('HINCRBY', KEYS[6], 'b', n)
if not redis.call('ZSCORE', KEYS[3], ARGV[9]) then
  redis.call('ZADD', KEYS[3], string.match(id, '^(%d+)'), ARGV[9])
end
-- drop evicts project p's oldest event (stream s, meta m).
local function drop(p, s, m)
  local e = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
  if #e == 0 then
    -- Nothing held (the stream expired): take back what it still counted.
    local rb = tonumber(redis.call('HGET', m, 'b') or '0')
    redis.call('HINCRBY', KEYS[2], 'b', -rb)
    redis.call('HSET', m, 'b', 0)
    redis.call('ZREM', KEYS[3], p)
    return
  end
  local eid = e[1][1]
  local sz = #e[1][2][2] + ov
  redis.call('XDEL', s, eid)
  redis.call('HINCRBY', m, 'b', -sz)
  redis.call('HSET', m, 'f', eid)
  redis.call('HINCRBY', KEYS[2], 'b', -sz)
  local nx = redis.call('XRANGE', s, '-', '+', 'COUNT', 1)
  if #nx == 0 then redis.call('ZREM', KEYS[3], p)
  else redis.call('ZADD', KEYS[3], string.match(nx[1][1], '^(%d+)'), p) end
end
while true do
  local h = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if #h == 0 or tonumber(h[2]) + w >= now then break end
  drop(h[1], ARGV[10] .. h[1], ARGV[11] .. h[1])
end
while tonumber(redis.call('HGET', KEYS[6], 'b') or '0') > tonumber(ARGV[6]) do
  drop(ARGV[9], KEYS[5], KEYS[6])
end
while tonumber(redis.call('HGET', KEYS[2], 'b') or '0') > tonumber(ARGV[7]) do
  local h = redis.call('ZRANGE', KEYS[3], 0, 0)
  if #h == 0 then break end
  drop(h[1], ARGV[10] .. h[1], ARGV[11] .. h[1])
end
for i = 2, 6 do redis.call('PEXPIRE', KEYS[i], ARGV[8]) end
return {1, id, last}
`)

// checkScript tells whether a project's history is complete after a
// position: the window, the project's floor, the partition's gaps, and a
// live lease (with no appender, events are being lost now). Replies 1 or
// 0. Since runs it and XRANGE in one MULTI, so no eviction falls between
// the proof and the read.
var checkScript = redis.NewScript(`
local function before(a, b) -- a < b, both "ms-seq"
  local am, as = string.match(a, '^(%d+)-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)-(%d+)$')
  am, as, bm, bs = tonumber(am), tonumber(as), tonumber(bm), tonumber(bs)
  return am < bm or (am == bm and as < bs)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local after = ARGV[1]
local ams = tonumber(string.match(after, '^(%d+)'))
if ams + tonumber(ARGV[2]) < now then return 0 end
if not redis.call('GET', KEYS[3]) then return 0 end
local f = redis.call('HGET', KEYS[1], 'f')
if f and before(after, f) then return 0 end
for _, g in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], ams, '+inf')) do
  if before(after, g) then return 0 end
end
return 1
`)

// appendStatus is the first element of appendScript's reply.
type appendStatus int64

const (
	appendNotLeader appendStatus = 0
	appendDone      appendStatus = 1
	appendResync    appendStatus = 2
)

// ErrNotLeader reports an append refused because another node (or none)
// holds the partition's lease.
var ErrNotLeader = errors.New("history: this node does not hold the partition's lease")

// Append implements Store, fenced by the partition's lease (held by
// RedisOptions.Node) and unchained: for a single writer that knows it is
// the only one (tests, tools). Nodes append through the Appender.
func (r *Redis) Append(ctx context.Context, project string, data []byte) (Position, error) {
	rep, err := r.append(ctx, project, data, "-", Digest(data))
	if err != nil {
		return Position{}, err
	}
	if rep.status != appendDone {
		return Position{}, fmt.Errorf("append to %s: %w", project, ErrNotLeader)
	}
	return rep.pos, nil
}

// appendReply is appendScript's answer: the position and the partition's
// last after an append (appendDone); where history stands, and its seal,
// when the chain did not follow (appendResync).
type appendReply struct {
	status appendStatus
	pos    Position
	last   string
	seal   string
}

// append runs appendScript; prev is "*", "-" or the expected last.
func (r *Redis) append(ctx context.Context, project string, data []byte, prev string, digest uint64) (appendReply, error) {
	t := r.tag(r.PartitionOf(project))
	keys := []string{t + "lease", t + "p", t + "heads", t + "gaps", t + "s:" + project, t + "m:" + project}
	res, err := appendScript.Run(ctx, r.c, keys,
		r.node, data, prev, fmt.Sprintf("%016x", digest), r.cfg.Window.Milliseconds(),
		r.cfg.MaxProjectBytes, r.cfg.MaxBytes, r.ttl.Milliseconds(), project, t+"s:", t+"m:", redisOverhead).Slice()
	if err != nil {
		return appendReply{}, fmt.Errorf("history: append to %s: %w", project, err)
	}
	st, _ := res[0].(int64)
	switch appendStatus(st) {
	case appendDone:
		pos, err := ParsePosition(fmt.Sprint(res[1]))
		if err != nil {
			return appendReply{}, fmt.Errorf("history: append to %s: Redis answered id: %w", project, err)
		}
		return appendReply{status: appendDone, pos: pos, last: fmt.Sprint(res[2])}, nil
	case appendResync:
		rep := appendReply{status: appendResync}
		rep.last, _ = res[1].(string)
		if len(res) > 2 {
			rep.seal, _ = res[2].(string)
		}
		return rep, nil
	}
	return appendReply{status: appendNotLeader}, nil
}

// Since implements Store.
func (r *Redis) Since(ctx context.Context, project string, after Position, limit int) ([]Event, bool, error) {
	t := r.tag(r.PartitionOf(project))
	// Inside MULTI an EVALSHA of a script Redis does not know would fail
	// the transaction, so load it first (a no-op once loaded).
	if err := checkScript.Load(ctx, r.c).Err(); err != nil {
		return nil, false, fmt.Errorf("history: read %s after %s: load script: %w", project, after, err)
	}
	var check *redis.Cmd
	var xr *redis.XMessageSliceCmd
	_, err := r.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		check = checkScript.EvalSha(ctx, p, []string{t + "m:" + project, t + "gaps", t + "lease"},
			after.String(), r.cfg.Window.Milliseconds())
		xr = p.XRangeN(ctx, t+"s:"+project, "("+after.String(), "+", int64(limit))
		return nil
	})
	if err != nil {
		return nil, false, fmt.Errorf("history: read %s after %s: %w", project, after, err)
	}
	if ok, _ := check.Int(); ok != 1 {
		return nil, false, nil
	}
	msgs := xr.Val()
	evs := make([]Event, 0, len(msgs))
	for _, m := range msgs {
		pos, err := ParsePosition(m.ID)
		if err != nil {
			return nil, false, fmt.Errorf("history: read %s after %s: %w", project, after, err)
		}
		d, _ := m.Values["d"].(string)
		evs = append(evs, Event{Pos: pos, Data: []byte(d)})
	}
	return evs, true, nil
}

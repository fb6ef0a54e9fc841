package presence

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultPrefix starts the name of every key the Redis store writes.
const DefaultPrefix = "switchboard:presence"

// RedisOptions configures NewRedis.
type RedisOptions struct {
	// Client is the connection (a *redis.Client, or a *redis.ClusterClient:
	// every key carries one hash tag, so all of them live in one slot).
	Client redis.UniversalClient
	// Prefix names the keys; empty means DefaultPrefix. Nodes of one
	// cluster must agree on it.
	Prefix string
}

// Redis is the cluster's store. Its keys, all under one hash tag {P}:
//
//	{P}:nodes                  set: the live nodes' ids
//	{P}:hb:<node>              a node's heartbeat, a key with a TTL
//	{P}:reaping                zset: dead nodes being reaped, by lease end (ms)
//	{P}:held:<node>            set: "<project>\n<id>" of every record the node holds
//	{P}:docs:<project>         hash: id -> document
//	{P}:users:<project>        hash: user id -> id (one record per user)
//	{P}:holders:<project>:<id> set: the nodes holding the record
//	{P}:expiry                 zset: "<project>\n<id>" by expiresAt (ms)
//
// A node refreshes one key, its heartbeat, however many presences it
// holds: Tick is one script call (one round trip) per period. When a
// node's heartbeat has expired, the first survivor whose Tick sees it
// takes the node out of {P}:nodes (that removal is the lock: only one
// survivor gets it), and reaps {P}:held:<node>: each record loses that
// holder, and one without holders is deleted, its document returned to
// that survivor alone, which announces it. A reaper that dies mid-way
// leaves the node in {P}:reaping, and another survivor takes it over once
// the lease ends.
//
// Every write is a Lua script, so a record and its indexes never disagree.
type Redis struct {
	c      redis.UniversalClient
	prefix string // the hash-tagged prefix, {P}

	mu         sync.Mutex
	node       string // this node's id; a fresh one after the cluster took it for dead
	registered bool   // node was in {P}:nodes at the last Tick
}

var _ Store = (*Redis)(nil)

// NewRedis returns a store on opts.Client with a fresh node id.
func NewRedis(opts RedisOptions) (*Redis, error) {
	if opts.Client == nil {
		return nil, errors.New("presence: redis store without a client")
	}
	if opts.Prefix == "" {
		opts.Prefix = DefaultPrefix
	}
	return &Redis{c: opts.Client, prefix: "{" + opts.Prefix + "}", node: newNodeID()}, nil
}

func newNodeID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Node returns this node's current id.
func (r *Redis) Node() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.node
}

// reapBatch is how many held records one reap call handles: a script
// runs alone in Redis, so a dead node holding 19,000 records is reaped in
// 38 short calls rather than one long stall.
const reapBatch = 500

// expireBatch bounds the expired records one Tick deletes.
const expireBatch = 100

// reapLease is how long a survivor may take to reap a dead node before
// another survivor takes over.
const reapLease = 30 * time.Second

// drop is shared by the scripts: it deletes record id of project with
// its indexes and returns its document, or false when there is none.
const dropLua = `
local function drop(p, project, id)
  local docs = p..':docs:'..project
  local doc = redis.call('HGET', docs, id)
  if not doc then return false end
  redis.call('HDEL', docs, id)
  local ok, d = pcall(cjson.decode, doc)
  if ok and type(d) == 'table' and type(d.userId) == 'string' then
    local users = p..':users:'..project
    if redis.call('HGET', users, d.userId) == id then redis.call('HDEL', users, d.userId) end
  end
  local member = project..'\n'..id
  redis.call('ZREM', p..':expiry', member)
  local hk = p..':holders:'..project..':'..id
  for _, n in ipairs(redis.call('SMEMBERS', hk)) do redis.call('SREM', p..':held:'..n, member) end
  redis.call('DEL', hk)
  return doc
end
`

// upsertScript: KEYS[1] prefix; ARGV project, uid, id, createdAt, tail,
// node ("" holds nothing), expiresAt ms. Returns {id, doc, created} or
// {"", "taken"}.
var upsertScript = redis.NewScript(`
local p = KEYS[1]
local project, uid, cand, now, tail, node, exp = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local docs = p..':docs:'..project
local users = p..':users:'..project
local id = redis.call('HGET', users, uid)
local created, fresh = now, 1
local old = false
if id then old = redis.call('HGET', docs, id) end
if old then
  fresh = 0
  created = string.match(old, '"%$createdAt":"([^"]*)"') or now
else
  id = cand
  local other = redis.call('HGET', docs, id)
  if other then
    local ok, d = pcall(cjson.decode, other)
    if not (ok and type(d) == 'table' and d.userId == uid) then return {'', 'taken'} end
  end
end
local doc = '{"$id":"'..id..'","$createdAt":"'..created..'",'..tail
redis.call('HSET', users, uid, id)
redis.call('HSET', docs, id, doc)
local member = project..'\n'..id
redis.call('ZADD', p..':expiry', exp, member)
if node ~= '' then
  redis.call('SADD', p..':holders:'..project..':'..id, node)
  redis.call('SADD', p..':held:'..node, member)
end
return {id, doc, fresh}
`)

// releaseScript: KEYS[1] prefix; ARGV project, id, node. Returns the
// document when the record went, false otherwise.
var releaseScript = redis.NewScript(dropLua + `
local p = KEYS[1]
local project, id, node = ARGV[1], ARGV[2], ARGV[3]
local hk = p..':holders:'..project..':'..id
redis.call('SREM', hk, node)
redis.call('SREM', p..':held:'..node, project..'\n'..id)
if redis.call('SCARD', hk) > 0 then return false end
return drop(p, project, id)
`)

// deleteScript: KEYS[1] prefix; ARGV project, id.
var deleteScript = redis.NewScript(dropLua + `
return drop(KEYS[1], ARGV[1], ARGV[2])
`)

// tickScript: KEYS[1] prefix; ARGV node, ttl ms, now ms, lease ms,
// expire batch. Refreshes the heartbeat, claims the nodes whose heartbeat
// ran out (and reaps whose lease ended), deletes expired records. Returns
// {fresh, {claimed nodes}, {project, doc, ...}}.
var tickScript = redis.NewScript(dropLua + `
local p = KEYS[1]
local node, ttl, now, lease, limit = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local fresh = redis.call('SADD', p..':nodes', node)
redis.call('SET', p..':hb:'..node, '1', 'PX', ttl)
local claimed = {}
for _, n in ipairs(redis.call('SMEMBERS', p..':nodes')) do
  if redis.call('EXISTS', p..':hb:'..n) == 0 then
    redis.call('SREM', p..':nodes', n)
    redis.call('ZADD', p..':reaping', now + lease, n)
    claimed[#claimed+1] = n
  end
end
for _, n in ipairs(redis.call('ZRANGEBYSCORE', p..':reaping', '-inf', now)) do
  redis.call('ZADD', p..':reaping', now + lease, n)
  claimed[#claimed+1] = n
end
local removed = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', p..':expiry', '-inf', now, 'LIMIT', 0, limit)) do
  local project, id = string.match(m, '^(.*)\n([^\n]*)$')
  local doc = false
  if project then doc = drop(p, project, id) end
  redis.call('ZREM', p..':expiry', m)
  if doc then removed[#removed+1] = project; removed[#removed+1] = doc end
end
return {fresh, claimed, removed}
`)

// reapScript: KEYS[1] prefix; ARGV dead node, batch. Returns {done,
// project, doc, ...}; done is 1 once the node's holdings are all gone.
var reapScript = redis.NewScript(dropLua + `
local p = KEYS[1]
local node, batch = ARGV[1], tonumber(ARGV[2])
local held = p..':held:'..node
local out = {0}
local members = redis.call('SPOP', held, batch)
for _, m in ipairs(members) do
  local project, id = string.match(m, '^(.*)\n([^\n]*)$')
  if project then
    local hk = p..':holders:'..project..':'..id
    redis.call('SREM', hk, node)
    if redis.call('SCARD', hk) == 0 then
      local doc = drop(p, project, id)
      if doc then out[#out+1] = project; out[#out+1] = doc end
    end
  end
end
if #members < batch then
  out[1] = 1
  redis.call('ZREM', p..':reaping', node)
  redis.call('DEL', held, p..':hb:'..node)
end
return out
`)

// Upsert implements Store.
func (r *Redis) Upsert(ctx context.Context, u Upsert) (Record, error) {
	node := ""
	if u.Hold {
		node = r.Node()
	}
	v, err := upsertScript.Run(ctx, r.c, []string{r.prefix},
		u.Project, u.UserID, u.ID, u.CreatedAt, u.Tail, node, u.ExpiresAt.UnixMilli()).Slice()
	if err != nil {
		return Record{}, fmt.Errorf("presence: redis upsert: %w", err)
	}
	if len(v) != 3 {
		if len(v) == 2 && v[1] == "taken" {
			return Record{}, ErrIDTaken
		}
		return Record{}, fmt.Errorf("presence: redis upsert: unexpected reply %v", v)
	}
	id, _ := v[0].(string)
	doc, _ := v[1].(string)
	fresh, _ := v[2].(int64)
	return Record{ID: id, Doc: []byte(doc), Created: fresh == 1}, nil
}

// Release implements Store.
func (r *Redis) Release(ctx context.Context, project, id string) ([]byte, error) {
	return docReply(releaseScript.Run(ctx, r.c, []string{r.prefix}, project, id, r.Node()), "release")
}

// Delete implements Store.
func (r *Redis) Delete(ctx context.Context, project, id string) ([]byte, error) {
	return docReply(deleteScript.Run(ctx, r.c, []string{r.prefix}, project, id), "delete")
}

// docReply reads a script's document-or-false reply.
func docReply(cmd *redis.Cmd, op string) ([]byte, error) {
	s, err := cmd.Text()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("presence: redis %s: %w", op, err)
	}
	return []byte(s), nil
}

// List implements Store.
func (r *Redis) List(ctx context.Context, project string) ([][]byte, error) {
	vals, err := r.c.HVals(ctx, r.prefix+":docs:"+project).Result()
	if err != nil {
		return nil, fmt.Errorf("presence: redis list: %w", err)
	}
	out := make([][]byte, len(vals))
	for i, v := range vals {
		out[i] = []byte(v)
	}
	return out, nil
}

// Tick implements Store. ttl is this node's heartbeat lifetime: a node
// whose Tick does not come back within it is taken for dead.
func (r *Redis) Tick(ctx context.Context, ttl time.Duration, now time.Time) (TickResult, error) {
	var res TickResult
	r.mu.Lock()
	node := r.node
	r.mu.Unlock()
	v, err := tickScript.Run(ctx, r.c, []string{r.prefix}, node, ttl.Milliseconds(), now.UnixMilli(),
		reapLease.Milliseconds(), expireBatch).Slice()
	if err != nil {
		return res, fmt.Errorf("presence: redis tick: %w", err)
	}
	if len(v) != 3 {
		return res, fmt.Errorf("presence: redis tick: unexpected reply %v", v)
	}
	fresh, _ := v[0].(int64)
	r.mu.Lock()
	if fresh == 1 && r.registered && r.node == node {
		// Another node reaped us: what we held is gone or going. Go on
		// under a new id, so that the reaper (who drains the old id's
		// set) cannot take what we hold from now on.
		res.Lost = true
		r.node = newNodeID()
		r.registered = false
	} else if r.node == node {
		r.registered = true
	}
	r.mu.Unlock()
	res.Removed = appendRemoved(res.Removed, v[2])
	claimed, _ := v[1].([]any)
	for _, n := range claimed {
		dead, _ := n.(string)
		removed, err := r.reap(ctx, dead)
		res.Removed = append(res.Removed, removed...)
		if err != nil {
			return res, err
		}
	}
	return res, nil
}

// reap deletes what dead held, in batches.
func (r *Redis) reap(ctx context.Context, dead string) ([]Removed, error) {
	var out []Removed
	for {
		v, err := reapScript.Run(ctx, r.c, []string{r.prefix}, dead, reapBatch).Slice()
		if err != nil {
			return out, fmt.Errorf("presence: redis reap of node %s: %w", dead, err)
		}
		if len(v) == 0 {
			return out, fmt.Errorf("presence: redis reap of node %s: empty reply", dead)
		}
		out = appendRemoved(out, v[1:])
		if done, _ := v[0].(int64); done == 1 {
			return out, nil
		}
	}
}

// appendRemoved reads a flat {project, doc, ...} reply.
func appendRemoved(dst []Removed, v any) []Removed {
	var flat []any
	switch x := v.(type) {
	case []any:
		flat = x
	default:
		return dst
	}
	for i := 0; i+1 < len(flat); i += 2 {
		project, _ := flat[i].(string)
		doc, _ := flat[i+1].(string)
		if project != "" && doc != "" {
			dst = append(dst, Removed{Project: project, Doc: []byte(doc)})
		}
	}
	return dst
}

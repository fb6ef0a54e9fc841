package auth

import (
	"context"
	"sync"
	"time"
)

// cacheKey names one lookup: a credential (kind "session" or "jwt") or a
// user id (kind "userId") in a project.
type cacheKey struct{ project, kind, value string }

type cacheEntry struct {
	id      Identity
	expires time.Time
}

// answerCache keeps resolved identities per credential for a TTL, so that a
// reconnect storm does not become a storm on the backend. It is bounded:
// past size entries it evicts expired answers, then arbitrary ones. A
// negative TTL keeps nothing. Errors are never cached: an answer that
// granted nothing must be asked again.
type answerCache struct {
	ttl  time.Duration
	size int

	mu sync.Mutex
	m  map[cacheKey]cacheEntry
}

func newAnswerCache(ttl time.Duration, size int) *answerCache {
	return &answerCache{ttl: ttl, size: size, m: make(map[cacheKey]cacheEntry)}
}

// get returns the answer for k if one is kept and has not expired.
func (c *answerCache) get(k cacheKey, now time.Time) (Identity, bool) {
	c.mu.Lock()
	e, ok := c.m[k]
	c.mu.Unlock()
	if !ok || !now.Before(e.expires) {
		return Identity{}, false
	}
	return e.id, true
}

// put keeps id for k until now+TTL.
func (c *answerCache) put(k cacheKey, id Identity, now time.Time) {
	if c.ttl < 0 {
		return
	}
	c.mu.Lock()
	if len(c.m) >= c.size {
		c.evictLocked(now)
	}
	c.m[k] = cacheEntry{id: id, expires: now.Add(c.ttl)}
	c.mu.Unlock()
}

// dropUser forgets every answer naming uid in project: after a permission
// change none of them may be reused.
func (c *answerCache) dropUser(project, uid string) {
	c.mu.Lock()
	for k, e := range c.m {
		if k.project == project && e.id.UserID == uid {
			delete(c.m, k)
		}
	}
	c.mu.Unlock()
}

func (c *answerCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// evictLocked makes room: expired answers first, then arbitrary ones (map
// order is random) until a tenth of the cache is free.
func (c *answerCache) evictLocked(now time.Time) {
	for k, e := range c.m {
		if !now.Before(e.expires) {
			delete(c.m, k)
		}
	}
	for k := range c.m {
		if len(c.m) < c.size*9/10 {
			break
		}
		delete(c.m, k)
	}
}

// flight makes concurrent lookups of one key share one backend call (the
// singleflight pattern, written here rather than adding a module). The
// call runs on a goroutine of its own; every caller, the first included,
// waits for its answer or for its own context to end, whichever comes
// first, so a caller's deadline holds even when the call's is longer.
type flight struct {
	mu    sync.Mutex
	calls map[cacheKey]*flightCall
}

type flightCall struct {
	done chan struct{}
	id   Identity
	err  error
}

// do runs fn once for every caller of k that arrives while it runs.
// shared reports whether this caller joined a call another one started.
func (f *flight) do(ctx context.Context, k cacheKey, fn func() (Identity, error)) (id Identity, err error, shared bool) {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = make(map[cacheKey]*flightCall)
	}
	c, shared := f.calls[k]
	if !shared {
		c = &flightCall{done: make(chan struct{})}
		f.calls[k] = c
		go f.run(k, c, fn)
	}
	f.mu.Unlock()
	select {
	case <-c.done:
		return c.id, c.err, shared
	case <-ctx.Done():
		return Identity{}, ctx.Err(), shared
	}
}

func (f *flight) run(k cacheKey, c *flightCall, fn func() (Identity, error)) {
	c.id, c.err = fn()
	f.mu.Lock()
	delete(f.calls, k)
	f.mu.Unlock()
	close(c.done)
}

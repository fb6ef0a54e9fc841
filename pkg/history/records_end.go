package history

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// endScript closes records (KEYS) written by node ARGV[1], keeping their
// anchors: o = 0, the floor the later of its own and Redis's now -
// ARGV[2] (µs; negative: the floor as it is), and the TTL the window
// (ARGV[3], ms). A record another
// node wrote since (its subscription resumed there) is left alone.
var endScript = redis.NewScript(`
local t = redis.call('TIME')
local c = -1
if tonumber(ARGV[2]) >= 0 then
  c = math.floor((tonumber(t[1]) * 1000000 + tonumber(t[2]) - tonumber(ARGV[2])) / 1000)
end
local n = 0
for _, k in ipairs(KEYS) do
  if redis.call('HGET', k, 'n') == ARGV[1] then
    local f = tonumber(redis.call('HGET', k, 'f') or '0')
    if c > f then f = c end
    redis.call('HSET', k, 'o', '0', 'f', string.format('%d', f))
    redis.call('PEXPIRE', k, ARGV[3])
    n = n + 1
  end
end
return n
`)

// End implements Records: one script call per partition of the batch and
// per putChunk records, in one pipeline.
func (s *RedisRecords) End(ctx context.Context, floorAge time.Duration, node string, refs ...Record) error {
	if len(refs) == 0 {
		return nil
	}
	age := floorAge.Microseconds()
	if floorAge < 0 {
		age = -1 // the floor as it is
	}
	var calls [][]string
	open := map[int]int{} // per partition, the index of the call being filled
	for _, ref := range refs {
		p := s.r.PartitionOf(ref.Project)
		i, ok := open[p]
		if !ok || len(calls[i]) == putChunk {
			i = len(calls)
			open[p] = i
			calls = append(calls, nil)
		}
		calls[i] = append(calls[i], s.RecordKey(ref.Project, ref.ID))
	}
	run := func() ([]redis.Cmder, error) {
		return s.r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, keys := range calls {
				endScript.EvalSha(ctx, p, keys, node, age, s.window.Milliseconds())
			}
			return nil
		})
	}
	if err := runLoading(ctx, s.r.c, endScript, run); err != nil {
		return fmt.Errorf("history: end %d records: %w", len(refs), err)
	}
	return nil
}

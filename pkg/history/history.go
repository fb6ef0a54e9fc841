// Package history keeps each project's recent events, bounded by a time
// window and byte caps, so that a subscription that was away (a drain, a
// crash, a dropped network) can be given what it missed (RESUME.md).
//
// It owns the events held and their positions: Memory for the embedded
// broker, Redis shared by every node (with the Appender that, on one node
// at a time, copies what Appwrite publishes into it). It never sees a
// connection, never matches channels, queries or roles, and never
// publishes: the server decides what a returning subscription may read.
package history

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"
	"time"
)

// Defaults, used when a Config field is zero.
const (
	// DefaultWindow is how long an event stays resumable: the SDK retries
	// after 1 s five times, then every 5 s, so two minutes cover a drain,
	// a crash and most network drops with a wide margin.
	DefaultWindow = 2 * time.Minute
	// DefaultMaxProjectBytes caps one project's history: at the 25 events/s
	// of the storm and ~1 KB an event, two minutes is 3 MB.
	DefaultMaxProjectBytes = 8 << 20
	// DefaultMaxBytes caps the whole store (Memory), or one partition
	// (Redis), however many projects there are.
	DefaultMaxBytes = 256 << 20
)

// Config bounds a store. A zero field means its default.
type Config struct {
	// Window is how long an event is kept (--resume-window).
	Window time.Duration
	// MaxProjectBytes caps one project's events (bytes held, overhead
	// included).
	MaxProjectBytes int64
	// MaxBytes caps all projects together: the whole Memory store, or one
	// partition of the Redis store.
	MaxBytes int64
}

func (c Config) withDefaults() Config {
	if c.Window <= 0 {
		c.Window = DefaultWindow
	}
	if c.MaxProjectBytes <= 0 {
		c.MaxProjectBytes = DefaultMaxProjectBytes
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = DefaultMaxBytes
	}
	return c
}

// Position identifies an event in its project's history: the milliseconds
// of its append and a sequence within that millisecond, as a Redis stream
// id is ("1767225600000-3"). Positions of one project grow strictly in the
// order of appends. The zero Position is before every event.
type Position struct {
	MS  uint64
	Seq uint64
}

// Less tells whether p comes before q.
func (p Position) Less(q Position) bool {
	return p.MS < q.MS || p.MS == q.MS && p.Seq < q.Seq
}

// String formats p as a Redis stream id.
func (p Position) String() string {
	return strconv.FormatUint(p.MS, 10) + "-" + strconv.FormatUint(p.Seq, 10)
}

// ErrBadPosition is returned by ParsePosition for anything but
// "<ms>-<seq>" in decimal.
var ErrBadPosition = errors.New("history: position is not <ms>-<seq>")

// ParsePosition reads a position formatted by String (or a Redis stream
// id). Positions come back from Redis and from stored subscription
// records, so every malformed one is an error, never a guess.
func ParsePosition(s string) (Position, error) {
	for i := 0; i < len(s); i++ {
		if s[i] != '-' {
			continue
		}
		ms, err1 := parseDecimal(s[:i])
		seq, err2 := parseDecimal(s[i+1:])
		if err1 != nil || err2 != nil {
			break
		}
		return Position{MS: ms, Seq: seq}, nil
	}
	return Position{}, fmt.Errorf("%w: %q", ErrBadPosition, s)
}

// parseDecimal accepts only digits (no sign, no spaces), as Redis writes them.
func parseDecimal(s string) (uint64, error) {
	if s == "" || s[0] == '+' {
		return 0, ErrBadPosition
	}
	return strconv.ParseUint(s, 10, 64)
}

// Event is one event held in history: its position and the message exactly
// as the broker received it (the JSON of PROTOCOL.md). Data is shared:
// callers must not modify it.
type Event struct {
	Pos    Position
	Data   []byte
	Digest uint64 // Digest(Data); set by ReadFrom
}

// Store is a per-project bounded history.
type Store interface {
	// Append adds an event to project's history and returns its position.
	// data is copied.
	Append(ctx context.Context, project string, data []byte) (Position, error)
	// Since returns at most limit events of project after position after,
	// oldest first, and whether the history is complete from after: false
	// when an event after it may be missing (it left the window or a byte
	// cap, or was never recorded), in which case no events are returned.
	// Fewer than limit events means there are no more for now.
	Since(ctx context.Context, project string, after Position, limit int) ([]Event, bool, error)
}

// castagnoli is the CRC-32C table; crc32 uses the CPU's instruction for it.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Digest identifies an event by its bytes, the same on every node: CRC-32C
// and CRC-32 (IEEE) of the message side by side, both computed in hardware
// (about 0.1 ns a byte; hash/fnv is ten times slower). Nodes that receive
// the same Pub/Sub message compute the same digest, which is how a node
// that never saw a stream id can say where it stands (RESUME.md).
func Digest(data []byte) uint64 {
	return uint64(crc32.Checksum(data, castagnoli))<<32 | uint64(crc32.ChecksumIEEE(data))
}

// nowMS is t in Unix milliseconds, as positions count.
func nowMS(t time.Time) uint64 { return uint64(t.UnixMilli()) }

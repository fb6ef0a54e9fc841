// Package presence keeps the presence records of a Switchboard cluster:
// one record per user and project, held by the nodes whose connections
// upserted it, gone when no node holds it any more, when it expires, or
// when the node holding it dies.
//
// The package stores and counts; it never publishes and never sees a
// connection. The server counts its own connections per record and tells
// the store only when this node starts or stops holding one (Upsert with
// Hold, Release), so a user's churning tabs cost the store nothing; a
// Store reports which records it deleted, and the caller announces them.
//
// Two stores: Memory for a single node (the embedded default) and Redis
// for a cluster.
package presence

import (
	"context"
	"errors"
	"time"
)

// DefaultGrace is how long after a node dies its presences are deleted,
// when nothing else is configured: the survivors notice within it.
const DefaultGrace = 15 * time.Second

// ErrIDTaken is returned by Upsert when the id asked for belongs to
// another user's presence in the project (ids are unique per project).
var ErrIDTaken = errors.New("presence: the requested id belongs to another user's presence")

// Upsert is one presence write.
type Upsert struct {
	Project string
	UserID  string
	// ID is the id the record gets when the user has none yet; the
	// caller picks a fresh one when the client asked for none. A user's
	// existing record keeps its own id and creation time.
	ID string
	// CreatedAt is the record's creation time if it is new (formatted).
	CreatedAt string
	// ExpiresAt is when the record goes unless upserted again.
	ExpiresAt time.Time
	// Tail is the document after its id and creation time
	// (protocol.AppendPresenceTail).
	Tail []byte
	// Hold makes this node one of the record's holders: it stays while
	// any holder remains. An upsert through the admin API holds nothing.
	Hold bool
}

// Record is a stored presence.
type Record struct {
	ID  string
	Doc []byte // the whole document, JSON
	// Created is true when the write made the record (none was stored).
	Created bool
}

// Removed is a record a store deleted, for the caller to announce.
type Removed struct {
	Project string
	Doc     []byte
}

// TickResult is what one Tick did.
type TickResult struct {
	// Removed are the records deleted: expired, or held only by nodes
	// that died.
	Removed []Removed
	// Lost is true when the cluster took this node for dead (it could not
	// reach the store for longer than its heartbeat lives) and deleted
	// what it held: the caller upserts its live presences again.
	Lost bool
}

// Store keeps presence records. Calls for one project and user must not
// overlap (the server orders them); calls for different ones may.
type Store interface {
	// Upsert writes u and returns the record as stored.
	Upsert(ctx context.Context, u Upsert) (Record, error)
	// Release says this node holds project's record id no more. The
	// record is deleted when no holder remains; its document is returned
	// then, nil otherwise.
	Release(ctx context.Context, project, id string) ([]byte, error)
	// Delete deletes project's record id whoever holds it, returning its
	// document, or nil when there was none.
	Delete(ctx context.Context, project, id string) ([]byte, error)
	// List returns the documents of project's records.
	List(ctx context.Context, project string) ([][]byte, error)
	// Tick is called periodically: it keeps this node's holdings alive
	// for ttl, deletes the records of nodes whose own ttl ran out, and
	// deletes records whose expiresAt is before now.
	Tick(ctx context.Context, ttl time.Duration, now time.Time) (TickResult, error)
}

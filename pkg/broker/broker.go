// Package broker carries backbone messages (the JSON of PROTOCOL.md) from
// publishers to every node's router.
//
// A Broker is one-to-many: every message published on any node reaches the
// handler of every node that runs the broker. Delivery is at-most-once, as
// with Redis Pub/Sub.
package broker

import (
	"context"
	"errors"
)

// ErrClosed is returned by Publish after the broker has stopped.
var ErrClosed = errors.New("broker: closed")

// ErrNoProject is returned by a broker that routes by project (RedisSharded)
// when asked to publish a message without a top-level "project" field: it
// cannot know which partition would carry it.
var ErrNoProject = errors.New("broker: message has no project")

// Handler receives one raw backbone message. The slice is only valid until
// the handler returns.
type Handler func(msg []byte)

// Broker moves backbone messages between publishers and routers.
type Broker interface {
	// Publish hands one message to the backbone. It returns once the
	// message is accepted (not when it is delivered).
	Publish(ctx context.Context, msg []byte) error
	// Run calls h for every message, one at a time and in order, until ctx
	// is cancelled; then it returns ctx's error.
	Run(ctx context.Context, h Handler) error
	// Ready returns nil while the broker can carry messages, or the reason
	// it cannot.
	Ready() error
}

// ProjectAware is implemented by brokers that only receive the messages of
// projects this node asked for (RedisSharded). The server calls Want when a
// project's first connection arrives on this node and Unwant when its last
// connection leaves; calls for one project must be balanced. A broker that
// is not ProjectAware delivers every project's messages.
type ProjectAware interface {
	// Want starts (or keeps) the delivery of project's messages to this node.
	Want(project string)
	// Unwant undoes one Want; delivery stops when no Want remains.
	Unwant(project string)
}

// Backlogged is implemented by brokers that buffer received messages for
// the handler (all of this package's): Backlog is how many wait there now,
// which shows a router falling behind before the buffer fills and
// messages are dropped.
type Backlogged interface {
	Backlog() int
}

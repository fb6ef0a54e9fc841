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

package server

import (
	"context"
	"fmt"
	"strings"
)

// tasks are the goroutines a node runs for its whole life, each with a
// name, so that a shutdown that runs out of time can say which of them did
// not stop instead of waiting for them forever.
type tasks struct {
	list []task
}

type task struct {
	name string
	done chan struct{}
}

// start runs f in a goroutine of its own, known by name; the channel is
// closed when f has returned.
func (t *tasks) start(name string, f func()) <-chan struct{} {
	done := make(chan struct{})
	t.list = append(t.list, task{name: name, done: done})
	go func() {
		defer close(done)
		f()
	}()
	return done
}

// wait returns when every task has returned, or when ctx ends; then the
// error names the tasks still running.
func (t *tasks) wait(ctx context.Context) error {
	for _, k := range t.list {
		select {
		case <-k.done:
		case <-ctx.Done():
		}
	}
	var stuck []string
	for _, k := range t.list {
		select {
		case <-k.done:
		default:
			stuck = append(stuck, k.name)
		}
	}
	if len(stuck) > 0 {
		return fmt.Errorf("%s did not stop: %w", strings.Join(stuck, ", "), context.Cause(ctx))
	}
	return nil
}

package server

import (
	"sync"

	"golang.org/x/sys/unix"
)

// fdQuarantine delays the close of the descriptors of sockets the node
// adopted from netpoll. netpoll's poller can still be handling an event it
// fetched for a socket just before the hand-over (its log then says
// "readall(fd=N) ... bad file descriptor"). Were the number free by then,
// the next accepted socket — a client's upgrade, an admin request — would
// take it, and that stale event would read the newcomer's bytes into a
// dead connection. So a socket is shut down at once (the peer sees the
// close, queued bytes still go out first) and its number is released one
// to two sweeper ticks later, when no such event can be in flight.
type fdQuarantine struct {
	mu      sync.Mutex
	waiting []int // shut down since the last tick
	due     []int // waited a whole tick: closed at the next
}

// add shuts fd down now and closes it later.
func (q *fdQuarantine) add(fd int) {
	_ = unix.Shutdown(fd, unix.SHUT_RDWR)
	q.mu.Lock()
	q.waiting = append(q.waiting, fd)
	q.mu.Unlock()
}

// tick closes the descriptors that have waited a whole tick.
func (q *fdQuarantine) tick() {
	q.mu.Lock()
	due := q.due
	q.due, q.waiting = q.waiting, nil
	q.mu.Unlock()
	for _, fd := range due {
		_ = unix.Close(fd)
	}
}

// closeAll closes every descriptor still waiting, at shutdown.
func (q *fdQuarantine) closeAll() {
	q.tick()
	q.tick()
}

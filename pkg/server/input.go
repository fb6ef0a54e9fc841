package server

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"golang.org/x/sys/unix"
)

// poller is one epoll instance whose one-shot notifications one goroutine
// hands to a callback. A connection is registered only while it waits for
// the event, and the event unregisters it (EPOLLONESHOT), so a connection
// is never handed out twice before it asks again.
//
// The node has two: the outWaiter's, for sockets whose send buffer was
// full (EPOLLOUT), and the input poller, which watches upgraded
// connections for client frames once netpoll has handed their sockets over
// (see conn.adopt).
type poller struct {
	epfd, wakefd int
	events       uint32
	ready        func(*conn)

	mu    sync.Mutex
	conns map[int32]*conn // by fd
}

func newPoller(events uint32, ready func(*conn)) (*poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(wakefd)}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl eventfd: %w", err)
	}
	return &poller{epfd: epfd, wakefd: wakefd, events: events | unix.EPOLLONESHOT, ready: ready, conns: make(map[int32]*conn)}, nil
}

// arm asks for one notification for c. added says whether c's fd is in
// this epoll already (it stays there, disarmed, after a notification); the
// caller records that it is once arm succeeds. The caller holds c.mu.
func (p *poller) arm(c *conn, added bool) error {
	op := unix.EPOLL_CTL_ADD
	if added {
		op = unix.EPOLL_CTL_MOD
	}
	ev := unix.EpollEvent{Events: p.events, Fd: int32(c.fd)}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := unix.EpollCtl(p.epfd, op, c.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl: %w", err)
	}
	p.conns[int32(c.fd)] = c
	return nil
}

// forget removes c, whose fd is in this epoll, before the fd is closed, so
// that a later connection that reuses the fd number can never be mistaken
// for it. The caller holds c.mu.
func (p *poller) forget(c *conn) {
	p.mu.Lock()
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	if p.conns[int32(c.fd)] == c {
		delete(p.conns, int32(c.fd))
	}
	p.mu.Unlock()
}

// run delivers notifications until close is called.
func (p *poller) run() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for i := 0; i < n; i++ {
			fd := events[i].Fd
			if fd == int32(p.wakefd) {
				unix.Close(p.epfd)
				unix.Close(p.wakefd)
				return
			}
			p.mu.Lock()
			c := p.conns[fd]
			delete(p.conns, fd)
			p.mu.Unlock()
			if c != nil {
				p.ready(c)
			}
		}
	}
}

// registered returns the connections waiting in p.
func (p *poller) registered() []*conn { return p.sample(math.MaxInt) }

// sample returns up to max of the connections waiting in p.
func (p *poller) sample(max int) []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]*conn, 0, min(max, len(p.conns)))
	for _, c := range p.conns {
		if len(out) == max {
			break
		}
		out = append(out, c)
	}
	return out
}

// free closes the epoll and its eventfd of a poller whose run never
// started (run closes them itself when it stops).
func (p *poller) free() {
	unix.Close(p.epfd)
	unix.Close(p.wakefd)
}

// close stops run.
func (p *poller) close() {
	var one = [8]byte{1}
	_, _ = unix.Write(p.wakefd, one[:])
}

// maxReaders bounds the goroutines reading adopted sockets at once. A read
// usually takes microseconds, but one that waits on the auth backend holds
// its goroutine; beyond the bound, readable sockets wait in a queue, so a
// burst (every client of a node pinging at once) cannot start a goroutine
// per connection.
const maxReaders = 1024

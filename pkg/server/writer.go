package server

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// outFrame is one queued server frame as up to three slices written with a
// single writev: head and tail belong to this recipient (or to every
// recipient with the same subscription ids), body is the event's shared,
// encode-once part. Non-event frames keep everything in head.
type outFrame struct {
	head, body, tail []byte
}

func (f outFrame) size() int { return len(f.head) + len(f.body) + len(f.tail) }

// iovBatch is how many iovecs one writev carries. Linux allows 1024; 64
// covers ~21 queued frames, more than a healthy connection ever holds.
const iovBatch = 64

// errWouldBlock reports that the socket buffer is full: the rest of the
// queue waits for EPOLLOUT.
var errWouldBlock = errors.New("socket send buffer full")

// writevQueue writes as much of queue (starting off bytes into queue[0]) as
// the socket takes without blocking. It returns how many whole frames were
// written and the new offset into the first unwritten frame.
func writevQueue(fd int, queue []outFrame, off int) (done, newOff int, err error) {
	for done < len(queue) {
		var iov [iovBatch]unix.Iovec
		n, skip := 0, off
		for i := done; i < len(queue) && n+3 <= iovBatch; i++ {
			for _, p := range [3][]byte{queue[i].head, queue[i].body, queue[i].tail} {
				if skip >= len(p) {
					skip -= len(p)
					continue
				}
				p = p[skip:]
				skip = 0
				iov[n].Base = &p[0]
				iov[n].SetLen(len(p))
				n++
			}
		}
		if n == 0 {
			return done, off, nil
		}
		w, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
		switch errno {
		case 0:
		case unix.EAGAIN:
			return done, off, errWouldBlock
		case unix.EINTR:
			continue
		default:
			return done, off, fmt.Errorf("writev: %w", errno)
		}
		// Advance over what the kernel took.
		left := int(w)
		for done < len(queue) && left > 0 {
			rest := queue[done].size() - off
			if left < rest {
				off += left
				left = 0
				break
			}
			left -= rest
			off = 0
			done++
		}
		if off > 0 {
			// A partial write means the buffer is full now.
			return done, off, errWouldBlock
		}
	}
	return done, off, nil
}

// writePool is the fixed set of goroutines that drain connections' queues.
// A connection is in the pool's channel at most once (conn.queued), so a
// burst of events to one client costs one wake-up, and its frames leave in
// as few writev calls as the kernel allows.
type writePool struct {
	ch chan *conn
	wg sync.WaitGroup
}

func newWritePool(workers, backlog int) *writePool {
	p := &writePool{ch: make(chan *conn, backlog)}
	for i := 0; i < workers; i++ {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for c := range p.ch {
				c.drain()
			}
		}()
	}
	return p
}

// stop ends the workers once the channel is empty.
func (p *writePool) stop() {
	close(p.ch)
	p.wg.Wait()
}

// outWaiter holds the connections whose socket was full when last written:
// it waits for EPOLLOUT on its own epoll instance (netpoll's instance only
// watches reads for us) and hands them back to the write pool. Registration
// is one-shot, so a connection costs nothing here while it is healthy.
type outWaiter struct {
	epfd, wakefd int
	pool         *writePool

	mu    sync.Mutex
	conns map[int32]*conn // by fd
}

func newOutWaiter(pool *writePool) (*outWaiter, error) {
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
	return &outWaiter{epfd: epfd, wakefd: wakefd, pool: pool, conns: make(map[int32]*conn)}, nil
}

// arm asks for one EPOLLOUT notification for c. The caller holds c.mu.
func (w *outWaiter) arm(c *conn) error {
	op := unix.EPOLL_CTL_ADD
	if c.outArmed {
		op = unix.EPOLL_CTL_MOD
	}
	ev := unix.EpollEvent{Events: unix.EPOLLOUT | unix.EPOLLONESHOT, Fd: int32(c.fd)}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := unix.EpollCtl(w.epfd, op, c.fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl EPOLLOUT: %w", err)
	}
	c.outArmed = true
	w.conns[int32(c.fd)] = c
	return nil
}

// forget removes c before its fd is closed, so a later connection that
// reuses the fd number can never be mistaken for it. The caller holds c.mu.
func (w *outWaiter) forget(c *conn) {
	if !c.outArmed {
		return
	}
	w.mu.Lock()
	_ = unix.EpollCtl(w.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
	if w.conns[int32(c.fd)] == c {
		delete(w.conns, int32(c.fd))
	}
	w.mu.Unlock()
	c.outArmed = false
}

// run delivers EPOLLOUT notifications until close is called.
func (w *outWaiter) run() {
	events := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(w.epfd, events, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for i := 0; i < n; i++ {
			fd := events[i].Fd
			if fd == int32(w.wakefd) {
				unix.Close(w.epfd)
				unix.Close(w.wakefd)
				return
			}
			w.mu.Lock()
			c := w.conns[fd]
			delete(w.conns, fd)
			w.mu.Unlock()
			if c != nil {
				c.schedule()
			}
		}
	}
}

// close stops run.
func (w *outWaiter) close() {
	var one = [8]byte{1}
	_, _ = unix.Write(w.wakefd, one[:])
}

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
// written, the new offset into the first unwritten frame, and how many
// writev calls it made.
func writevQueue(fd int, queue []outFrame, off int) (done, newOff, calls int, err error) {
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
			return done, off, calls, nil
		}
		w, _, errno := unix.Syscall(unix.SYS_WRITEV, uintptr(fd), uintptr(unsafe.Pointer(&iov[0])), uintptr(n))
		calls++
		switch errno {
		case 0:
		case unix.EAGAIN:
			return done, off, calls, errWouldBlock
		case unix.EINTR:
			continue
		default:
			return done, off, calls, fmt.Errorf("writev: %w", errno)
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
			return done, off, calls, errWouldBlock
		}
	}
	return done, off, calls, nil
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

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
	// born is when the event arrived at the router (deliveryLatency.stamp),
	// for the delivery-latency histogram and the oldest-queued-frame gauge;
	// 0 on a frame that is not an event's.
	born int64
}

func (f outFrame) size() int { return len(f.head) + len(f.body) + len(f.tail) }

// sendQueue is a connection's outbound frames and where they stand. It is
// guarded by its connection's mu; write releases that lock around the
// system call.
//
// Invariant: a non-empty queue is scheduled (in the write pool's channel or
// being drained by a worker), waiting for EPOLLOUT (its fd armed in the
// node's waiter), or being written — so no frame is ever left behind with
// nobody to send it. Each way in keeps it: the router queues and schedules
// unless the queue is scheduled or waits for EPOLLOUT already; a reply is
// written at once by its sender (or by the writer already at work, whose
// loop takes it); a write that fills the socket leaves the queue waiting;
// EPOLLOUT schedules it again. A write ends only on an empty queue, a full
// socket or an error (which closes the connection and drops the queue).
//
// The queue is bounded in bytes: a push over the limit cuts it (see push),
// because a client that does not read must never hold the node's memory or
// anyone else's events.
type sendQueue struct {
	frames    []outFrame
	off       int  // bytes of frames[0] already written
	bytes     int  // bytes queued, including a batch being written
	scheduled bool // in the write pool's channel, or being drained by a worker
	waitOut   bool // the socket was full: waiting for EPOLLOUT before writing again
	writing   bool // a writev runs without the lock: nobody else writes, and the fd stays open
	armed     bool // the fd is in the waiter's epoll (it stays there, disarmed, after a notification)
}

// errSlowConsumer reports that a push found the queue over its byte limit:
// the queue was cut to the slow-consumer close frame and the connection
// must go.
var errSlowConsumer = errors.New("slow consumer: send queue over its limit")

// errWouldBlock reports that the socket buffer is full: the rest of the
// queue waits for EPOLLOUT.
var errWouldBlock = errors.New("socket send buffer full")

// push queues f. A queue that would exceed limit bytes is a slow consumer's:
// it is cut (see cut) and push returns errSlowConsumer. A single frame
// larger than the limit is still queued when nothing else is.
func (q *sendQueue) push(f outFrame, limit int) error {
	if q.overflows(f.size(), limit) {
		return q.cut()
	}
	q.frames = append(q.frames, f)
	q.bytes += f.size()
	return nil
}

// overflows reports whether a frame of size bytes would take the queue
// over limit: push's rule, which explain applies without pushing.
func (q *sendQueue) overflows(size, limit int) bool {
	return len(q.frames) > 0 && q.bytes+size > limit
}

// cut drops the queued frames, but for one already half written (the close
// frame must follow whole frames to parse), and queues the slow-consumer
// close frame in their place.
func (q *sendQueue) cut() error {
	keep := 0
	if q.off > 0 {
		keep = 1
	}
	clear(q.frames[keep:])
	q.frames = q.frames[:keep]
	q.bytes = 0
	if keep == 1 {
		q.bytes = q.frames[0].size()
	}
	last := closeSlowConsumer.frame(0, "")
	q.frames = append(q.frames, outFrame{head: last})
	q.bytes += len(last)
	return errSlowConsumer
}

// oldestBorn returns the stamp of the first event frame queued (its
// oldest: frames leave in order), 0 when none is.
func (q *sendQueue) oldestBorn() int64 {
	for _, f := range q.frames {
		if f.born != 0 {
			return f.born
		}
	}
	return 0
}

// empty reports whether nothing is queued.
func (q *sendQueue) empty() bool { return len(q.frames) == 0 }

// write writes the queue to fd until it is empty or the socket is full
// (errWouldBlock: the caller arms the EPOLLOUT wait). mu, the connection's
// lock, is held by the caller and released around each writev, so that the
// router queues the next events meanwhile instead of waiting out a system
// call; they leave in the next writev of the same loop. Only one goroutine
// writes at a time: another caller finds q.writing and leaves its frames to
// that writer. It returns the frames, bytes and writev calls it
// completed. Each batch's event frames are recorded in lat once written.
func (q *sendQueue) write(mu *sync.Mutex, fd int, lat *deliveryLatency) (frames, bytes, calls int, err error) {
	for len(q.frames) > 0 && !q.waitOut && !q.writing {
		batch, off := q.frames, q.off
		q.frames, q.off = nil, 0
		q.writing = true
		mu.Unlock()
		done, end, n, werr := writevQueue(fd, batch, off)
		lat.written(batch[:done], fd)
		mu.Lock()
		q.writing = false
		frames += done
		calls += n
		bytes += end - off
		for _, f := range batch[:done] {
			bytes += f.size()
		}
		off = end
		clear(batch[:done])
		if done < len(batch) {
			// The unwritten rest goes back in front of what was queued
			// meanwhile (a slow-consumer cut may have left only its close
			// frame there).
			q.frames, q.off = append(batch[done:], q.frames...), off
		}
		q.bytes = 0
		for _, f := range q.frames {
			q.bytes += f.size()
		}
		if werr == errWouldBlock {
			q.waitOut = true
		}
		if werr != nil {
			return frames, bytes, calls, werr
		}
	}
	return frames, bytes, calls, nil
}

// wake marks the queue scheduled and reports whether the caller must hand
// it to the write pool: not when it is there already, nor while it waits
// for EPOLLOUT (the waiter schedules it then) unless urgent (a cut queue
// must close now, not when its client reads again).
func (q *sendQueue) wake(urgent bool) bool {
	if q.scheduled || (q.waitOut && !urgent) {
		return false
	}
	q.scheduled = true
	return true
}

// drop forgets every frame, for a connection that is gone.
func (q *sendQueue) drop() {
	clear(q.frames)
	q.frames, q.off, q.bytes = nil, 0, 0
}

// iovBatch is how many iovecs one writev carries. Linux allows 1024; 64
// covers ~21 queued frames, more than a healthy connection ever holds.
const iovBatch = 64

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

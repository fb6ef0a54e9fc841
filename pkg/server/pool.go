package server

import "sync"

// boundedPool runs a function on items, on at most max goroutines at once:
// a goroutine is started only while fewer run, and it takes queued items
// before it ends. Nothing runs for an idle node, and a burst queues
// instead of starting a goroutine per item. A run that is about to wait
// for long steps out of the count meanwhile (detach), so that the queue
// does not wait behind it.
type boundedPool[T any] struct {
	max int
	do  func(T)

	mu      sync.Mutex
	running int
	queue   []T
}

// run has x handled, now or when a goroutine is free.
func (p *boundedPool[T]) run(x T) {
	p.mu.Lock()
	if p.running >= p.max {
		p.queue = append(p.queue, x)
		p.mu.Unlock()
		return
	}
	p.running++
	p.mu.Unlock()
	go p.work(x)
}

func (p *boundedPool[T]) work(x T) {
	for {
		p.do(x)
		p.mu.Lock()
		if len(p.queue) == 0 {
			p.running--
			p.mu.Unlock()
			return
		}
		x = p.popLocked()
		p.mu.Unlock()
	}
}

// popLocked takes the queue's first item; the queue is not empty. p.mu
// is held.
func (p *boundedPool[T]) popLocked() T {
	x := p.queue[0]
	var zero T
	p.queue[0] = zero
	p.queue = p.queue[1:]
	if len(p.queue) == 0 {
		p.queue = nil // let a burst's backing array go
	}
	return x
}

// detach tells the pool that the calling run is about to wait for long
// (a resume waiting for its history, up to seconds): it no longer counts
// against max, and a queued item gets a goroutine of its own now rather
// than after the wait. attach undoes it when the wait is over; the count
// may then exceed max for a while, until runs end.
func (p *boundedPool[T]) detach() {
	p.mu.Lock()
	p.running--
	if len(p.queue) == 0 || p.running >= p.max {
		p.mu.Unlock()
		return
	}
	x := p.popLocked()
	p.running++
	p.mu.Unlock()
	go p.work(x)
}

// attach ends a detach.
func (p *boundedPool[T]) attach() {
	p.mu.Lock()
	p.running++
	p.mu.Unlock()
}

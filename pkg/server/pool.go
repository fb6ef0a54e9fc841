package server

import "sync"

// boundedPool runs a function on items, on at most max goroutines at once:
// a goroutine is started only while fewer run, and it takes queued items
// before it ends. Nothing runs for an idle node, and a burst queues
// instead of starting a goroutine per item.
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
		x = p.queue[0]
		var zero T
		p.queue[0] = zero
		p.queue = p.queue[1:]
		if len(p.queue) == 0 {
			p.queue = nil // let a burst's backing array go
		}
		p.mu.Unlock()
	}
}

package server

import "sync"

// writePool is the fixed set of goroutines that drain connections' queues.
// A connection is in the pool's channel at most once (sendQueue.scheduled),
// so a burst of events to one client costs one wake-up, and its frames
// leave in as few writev calls as the kernel allows.
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

package server

import (
	"testing"
	"time"
)

// A run that detaches (a resume waiting for its history) lets queued items
// run meanwhile, though the pool's bound is reached: a storm of resumes
// that wait for seconds must not hold every other connection's input
// behind them.
func TestBoundedPoolDetach(t *testing.T) {
	release := make(chan struct{})
	ran := make(chan int, 3)
	var p boundedPool[int]
	p = boundedPool[int]{max: 1, do: func(x int) {
		if x == 0 {
			p.detach()
			<-release
			p.attach()
		}
		ran <- x
	}}
	p.run(0)
	p.run(1)
	p.run(2)
	for _, want := range []int{1, 2} {
		select {
		case got := <-ran:
			if got != want {
				t.Fatalf("ran %d, want %d", got, want)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("item %d waited behind the detached run", want)
		}
	}
	close(release)
	if got := <-ran; got != 0 {
		t.Fatalf("ran %d, want 0", got)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		p.mu.Lock()
		running, queued := p.running, len(p.queue)
		p.mu.Unlock()
		if running == 0 && queued == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d still counted as running, %d queued, after every run ended", running, queued)
		}
		time.Sleep(time.Millisecond)
	}
}

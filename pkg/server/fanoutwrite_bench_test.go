package server

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// BenchmarkFanoutWrite is BenchmarkFanout with the sockets: one event to
// n connections, each the end of a Unix socket pair, routed and then
// written by two goroutines that drain the scheduled connections as the
// write pool's workers do (a writev each). It reports wall time and the
// process's CPU time (getrusage) per delivery, which is what the node
// spends per delivery that is not the client's; the peers are read dry
// outside the measured part.
func BenchmarkFanoutWrite(b *testing.B) {
	for _, n := range []int{1000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) { benchFanoutWrite(b, n) })
	}
}

func benchFanoutWrite(b *testing.B, n int) {
	s, err := New(Config{Broker: broker.NewMemory(1)})
	if err != nil {
		b.Fatal(err)
	}
	s.pool = &writePool{ch: make(chan *conn, n)}
	peers := make([]int, n)
	conns := make([]*conn, n)
	for i := range conns {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		peers[i] = fds[1]
		c := &conn{Context: context.Background(), srv: s, fd: fds[0], state: stateLive, project: "p1", roles: []string{"guests"}}
		c.subs = []subscription{{id: "sub-shared", channels: []string{"files"}}}
		c.id = s.idx.Insert(c)
		s.idx.Set(c.id, "p1", c.roles, c.subs[0].channels)
		conns[i] = c
	}
	defer func() {
		for i, c := range conns {
			unix.Close(c.fd)
			unix.Close(peers[i])
		}
	}()
	msg := []byte(event("p1", []string{"any"}, []string{"files", "buckets.b1.files"}, `{"$id":"f1","name":"report.pdf","size":12345}`))
	buf := make([]byte, 64<<10)
	var cpu time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		before := cpuTime(b)
		s.router.route(msg)
		var wg sync.WaitGroup
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case c := <-s.pool.ch:
						c.drain()
					default:
						return
					}
				}
			}()
		}
		wg.Wait()
		cpu += cpuTime(b) - before
		b.StopTimer()
		for _, fd := range peers {
			for {
				if k, err := unix.Read(fd, buf); k <= 0 || err != nil {
					break
				}
			}
		}
		b.StartTimer()
	}
	deliveries := float64(b.N) * float64(n)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/deliveries, "ns/delivery")
	b.ReportMetric(float64(cpu.Nanoseconds())/deliveries, "cpu-ns/delivery")
	runtime.KeepAlive(conns)
}

// cpuTime is the process's user and system time so far.
func cpuTime(b *testing.B) time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

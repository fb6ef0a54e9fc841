package server

import (
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkLoopbackWriteFloor measures what the kernel alone charges for a
// delivery on this machine: one ~150-byte frame written with writevQueue
// (the node's own write) to each of many loopback TCP sockets in turn, with
// no router, no queue and no lock. It is the floor under the time to the
// last delivery of a broadcast: ms/19000conns is ns/op scaled to a
// broadcast to 19,000 connections.
//
//	readers=0: nobody reads (the receiving ends are emptied, untimed, after
//	           every round), so no wake-up happens on the other side.
//	readers=1: one epoll loop reads as the load generator does, on the same
//	           cores, as in `make bench`.
//
// Both ends live in this process, so the socket count is bounded by half
// the descriptor limit.
func BenchmarkLoopbackWriteFloor(b *testing.B) {
	srv, cli := loopbackPairs(b)
	n := len(srv)
	frame := outFrame{head: make([]byte, 10), body: make([]byte, 120), tail: make([]byte, 20)}
	for _, readers := range []int{0, 1} {
		for _, writers := range []int{1, 2} {
			b.Run(fmt.Sprintf("conns=%d/writers=%d/readers=%d", n, writers, readers), func(b *testing.B) {
				benchWriteFloor(b, srv, cli, frame, writers, readers)
			})
		}
	}
}

func benchWriteFloor(b *testing.B, srv, cli []int, frame outFrame, writers, readers int) {
	drain := func() {
		buf := make([]byte, 64<<10)
		for _, fd := range cli {
			for {
				if n, _ := unix.Read(fd, buf); n <= 0 {
					break
				}
			}
		}
	}
	drain()
	stop := make(chan struct{})
	var rwg sync.WaitGroup
	if readers > 0 {
		ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
		if err != nil {
			b.Fatal(err)
		}
		defer unix.Close(ep)
		for i, fd := range cli {
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET, Fd: int32(i)}
			if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
				b.Fatal(err)
			}
		}
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			evs := make([]unix.EpollEvent, 256)
			buf := make([]byte, 16<<10)
			for {
				select {
				case <-stop:
					return
				default:
				}
				k, err := unix.EpollWait(ep, evs, 50)
				if err != nil {
					continue
				}
				for _, e := range evs[:k] {
					for {
						if m, _ := unix.Read(cli[e.Fd], buf); m <= 0 {
							break
						}
					}
				}
			}
		}()
	}
	q := []outFrame{frame}
	b.ResetTimer()
	// Rounds of one write per socket, split among the writers; without a
	// reader the receiving ends are emptied between rounds, off the clock,
	// so that every write meets an empty receive queue as in a broadcast.
	for done := 0; done < b.N; {
		round := min(len(srv), b.N-done)
		var wg sync.WaitGroup
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func(w int) {
				defer wg.Done()
				for k := w; k < round; k += writers {
					if _, _, _, err := writevQueue(srv[k], q, 0); err != nil && err != errWouldBlock {
						b.Error(err)
						return
					}
				}
			}(w)
		}
		wg.Wait()
		done += round
		if readers == 0 {
			b.StopTimer()
			drain()
			b.StartTimer()
		}
	}
	b.StopTimer()
	close(stop)
	rwg.Wait()
	drain()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)*19000/1e6, "ms/19000conns")
}

// loopbackPairs opens connected loopback TCP pairs, 9,000 or as many as
// half the descriptor limit allows (both ends are in this process): the
// accepted (server) ends and the client ends, both non-blocking, closed at
// the end of b.
func loopbackPairs(b *testing.B) (srv, cli []int) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		b.Fatal(err)
	}
	n := min(9000, int(lim.Cur-200)/2)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	b.Cleanup(func() {
		for _, fd := range append(srv, cli...) {
			unix.Close(fd)
		}
	})
	lfd := listenerFD(b, ln)
	for i := 0; i < n; i++ {
		c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			b.Fatal(err)
		}
		cli = append(cli, c)
		// Spread the source addresses so that n is not bound by one
		// address's ephemeral ports.
		if err := unix.Bind(c, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, byte(2 + i%4)}}); err != nil {
			b.Fatal(err)
		}
		if err := unix.Connect(c, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err != nil && err != unix.EINPROGRESS {
			b.Fatal(err)
		}
		deadline := time.Now().Add(5 * time.Second)
		for {
			s, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			if err == nil {
				_ = unix.SetsockoptInt(s, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
				srv = append(srv, s)
				break
			}
			if err != unix.EAGAIN || time.Now().After(deadline) {
				b.Fatal("accept: ", err)
			}
		}
	}
	return srv, cli
}

// listenerFD returns ln's descriptor, non-blocking, owned by ln.
func listenerFD(b *testing.B, ln net.Listener) int {
	raw, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		b.Fatal(err)
	}
	var fd int
	if err := raw.Control(func(f uintptr) { fd = int(f) }); err != nil {
		b.Fatal(err)
	}
	return fd
}

package server

import (
	"testing"

	"golang.org/x/sys/unix"
)

// TestQuarantineShutsNowClosesLater: the peer sees the close at once, but
// the descriptor number stays taken (so no new socket can get it) until a
// whole sweeper tick has passed.
func TestQuarantineShutsNowClosesLater(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	ours, peer := fds[0], fds[1]
	defer unix.Close(peer)
	open := func(fd int) bool {
		_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		return err == nil
	}

	var q fdQuarantine
	q.add(ours)
	buf := make([]byte, 1)
	if n, err := unix.Read(peer, buf); n != 0 || err != nil {
		t.Fatalf("peer read after add = %d, %v; want EOF", n, err)
	}
	if !open(ours) {
		t.Fatal("descriptor closed at once")
	}
	q.tick() // the tick that was running when it was added
	if !open(ours) {
		t.Fatal("descriptor closed before it waited a whole tick")
	}
	q.tick()
	if open(ours) {
		t.Fatal("descriptor still open after two ticks")
	}
}

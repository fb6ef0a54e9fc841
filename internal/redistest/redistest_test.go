package redistest

import (
	"errors"
	"net"
	"syscall"
	"testing"
)

// A port taken between FreePorts and the bind is reported as such (Start
// then tries another port, a restart retries the same one), and the same
// server starts once the port is free again.
func TestLaunchReportsATakenPort(t *testing.T) {
	port := FreePorts(t, 1)[0]
	s := New(t, port)
	ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.launch(); !errors.Is(err, errPortTaken) {
		ln.Close()
		t.Fatalf("launch on a taken port: %v, want errPortTaken", err)
	}
	ln.Close()
	s.Start()
	if !answers(s.Addr()) {
		t.Fatal("no answer after Start")
	}
}

func TestRefusedAddrRefuses(t *testing.T) {
	addr := RefusedAddr(t)
	for range 3 {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			t.Fatalf("connect to %s succeeded", addr)
		}
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("connect to %s: %v, want ECONNREFUSED", addr, err)
		}
	}
	if ln, err := net.Listen("tcp", addr); err == nil {
		ln.Close()
		t.Fatalf("%s could be bound again", addr)
	}
}

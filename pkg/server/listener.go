package server

import (
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"
)

// pollListener gives netpoll's event loop the WebSocket listener's own
// socket. netpoll would otherwise convert the listener itself, into a
// duplicate descriptor whose Close (v0.7.2, net_listener.go) closes the
// same number twice: once with syscall.Close, again through the os.File
// it came from. Between the two, another goroutine may have been given
// that number (an accepted socket, a Redis connection, an epoll of a
// second node in the same process), and the second close takes it away.
type pollListener struct {
	*net.TCPListener // Addr and Close: closed once, by its owner
	fd               int
}

func newPollListener(ln net.Listener) (*pollListener, error) {
	tl, ok := ln.(*net.TCPListener)
	if !ok {
		return nil, fmt.Errorf("listener %T is not TCP", ln)
	}
	rc, err := tl.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("listener descriptor: %w", err)
	}
	l := &pollListener{TCPListener: tl, fd: -1}
	if err := rc.Control(func(fd uintptr) { l.fd = int(fd) }); err != nil {
		return nil, fmt.Errorf("listener descriptor: %w", err)
	}
	return l, nil
}

// Fd is the listening socket, which netpoll polls for readability.
func (l *pollListener) Fd() int { return l.fd }

// Accept takes one pending connection off the socket without blocking; it
// returns nil and no error when none is pending (netpoll's contract).
func (l *pollListener) Accept() (net.Conn, error) {
	for {
		fd, sa, err := unix.Accept4(l.fd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		switch {
		case err == nil:
			// What netpoll sets on the sockets it accepts itself.
			_ = unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
			return &acceptedSocket{fd: fd, local: l.Addr(), remote: tcpAddr(sa)}, nil
		case errors.Is(err, unix.EINTR), errors.Is(err, unix.ECONNABORTED):
			continue
		case errors.Is(err, unix.EAGAIN):
			return nil, nil
		default:
			// Unwrapped: netpoll backs off on EMFILE and ENFILE by
			// comparing the syscall.Errno itself.
			return nil, err
		}
	}
}

// tcpAddr is the peer's address; sa is Accept4's own, so its bytes are
// not shared.
func tcpAddr(sa unix.Sockaddr) net.Addr {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: a.Addr[:], Port: a.Port}
	case *unix.SockaddrInet6:
		var zone string
		if a.ZoneId != 0 {
			if ifi, err := net.InterfaceByIndex(int(a.ZoneId)); err == nil {
				zone = ifi.Name
			}
		}
		return &net.TCPAddr{IP: a.Addr[:], Port: a.Port, Zone: zone}
	}
	return &net.TCPAddr{}
}

// acceptedSocket is an accepted descriptor on its way to netpoll, which
// reads only its Fd and addresses (connection.initNetFD) and from then on
// owns and closes it; the rest of net.Conn is never called.
type acceptedSocket struct {
	fd            int
	local, remote net.Addr
}

var errNotForUse = errors.New("server: an accepted socket is used only through netpoll")

func (a *acceptedSocket) Fd() int                          { return a.fd }
func (a *acceptedSocket) LocalAddr() net.Addr              { return a.local }
func (a *acceptedSocket) RemoteAddr() net.Addr             { return a.remote }
func (a *acceptedSocket) Read([]byte) (int, error)         { return 0, errNotForUse }
func (a *acceptedSocket) Write([]byte) (int, error)        { return 0, errNotForUse }
func (a *acceptedSocket) Close() error                     { return errNotForUse }
func (a *acceptedSocket) SetDeadline(time.Time) error      { return errNotForUse }
func (a *acceptedSocket) SetReadDeadline(time.Time) error  { return errNotForUse }
func (a *acceptedSocket) SetWriteDeadline(time.Time) error { return errNotForUse }

package server

import (
	"net"
	"net/http"
	"net/netip"
	"strings"

	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/proxyproto"
)

// A connection's client address is decided once, in its handshake, and
// used there by everything that names the client: the per-IP connect limit
// and the log lines of the handshake. It is not kept afterwards (24 bytes
// per idle connection); the handshake's log line ties it to the connection
// id that later lines carry.
//
// In order:
//  1. the TCP peer;
//  2. with Config.ProxyProtocol, the source of the PROXY header, which the
//     peer must send (and be in TrustedProxies, when that is set);
//  3. when the address so far is in TrustedProxies, the right-most address
//     of X-Forwarded-For that is not itself a trusted proxy, or else
//     X-Real-IP.

// trustedSet is the list of proxies whose word on the client's address is
// taken. Lists are short (a few load balancer subnets), so a scan beats any
// index.
type trustedSet []netip.Prefix

// contains reports whether a is in one of the prefixes.
func (t trustedSet) contains(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	for _, p := range t {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// unmapPrefix writes an IPv4-mapped IPv6 prefix (::ffff:10.0.0.0/104) as
// the IPv4 prefix it is (10.0.0.0/8), because addresses are compared
// unmapped; and masks it.
func unmapPrefix(p netip.Prefix) netip.Prefix {
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// peerAddr is the IP of a socket's remote end, IPv4-mapped IPv6 unmapped so
// that one client has one form; invalid for a non-IP socket.
func peerAddr(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	case nil:
		return netip.Addr{}
	}
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

// proxyHeader reads the PROXY protocol header at the start of data, which
// netpoll has buffered: nothing here reads the socket or waits, and a
// header still incomplete when the handshake timeout strikes is closed by
// the handshake wheel like any slow request. It returns the client address
// and the header's length, with ok; or ok false and the bytes to consume:
// 0 to wait for more, len(data) once it has refused the connection.
func (c *conn) proxyHeader(data []byte, peer netip.Addr) (client netip.Addr, n int, ok bool) {
	s := c.srv
	if len(s.trusted) > 0 && !s.trusted.contains(peer) {
		// Whoever may send a header can claim any address, so only the
		// listed proxies may connect at all (the specification forbids
		// guessing whether a header is there).
		c.refuseProxy(http.StatusForbidden, "not a trusted proxy", peer, nil)
		return netip.Addr{}, len(data), false
	}
	h, n, err := proxyproto.Parse(data)
	switch {
	case err == proxyproto.ErrIncomplete:
		if n > s.cfg.MaxHeaderBytes {
			// A v2 header announcing more TLVs than a request head may
			// hold is refused before they arrive.
			c.refuseProxy(http.StatusRequestHeaderFieldsTooLarge, "PROXY protocol header too large", peer, nil)
			return netip.Addr{}, len(data), false
		}
		return netip.Addr{}, 0, false
	case err == proxyproto.ErrNoHeader:
		c.refuseProxy(http.StatusBadRequest, "PROXY protocol header required", peer, err)
		return netip.Addr{}, len(data), false
	case err != nil:
		c.refuseProxy(http.StatusBadRequest, "invalid PROXY protocol header", peer, err)
		return netip.Addr{}, len(data), false
	}
	if !h.Source.IsValid() {
		// LOCAL (the balancer's own health check), UNKNOWN, AF_UNSPEC or
		// AF_UNIX: the specification says to use the real connection's
		// addresses.
		return peer, n, true
	}
	return h.Source.Addr().Unmap(), n, true
}

// forwardedClient is the client a trusted proxy (at client) forwarded for.
// X-Forwarded-For is read from the right: each proxy appends the address
// it got the request from, so the right-most entries are the ones trusted
// proxies wrote, and the first from the right that is not a trusted proxy
// is the client; whatever lies left of it the client may have made up.
// X-Real-IP, one address set by the nearest proxy, counts only without
// X-Forwarded-For, since a proxy that appends to the list is the common
// set-up and the list shows the whole path. An entry that is not an
// address stops the walk at the last proxy that handed it on.
func forwardedClient(forwarded, realIP string, client netip.Addr, trusted trustedSet) netip.Addr {
	if strings.TrimSpace(forwarded) == "" {
		if a, ok := parseForwardedAddr(realIP); ok {
			return a
		}
		return client
	}
	for forwarded != "" {
		var entry string
		if i := strings.LastIndexByte(forwarded, ','); i >= 0 {
			entry, forwarded = forwarded[i+1:], forwarded[:i]
		} else {
			entry, forwarded = forwarded, ""
		}
		if strings.TrimSpace(entry) == "" {
			continue // an empty list element (RFC 9110, 5.6.1)
		}
		a, ok := parseForwardedAddr(entry)
		if !ok {
			return client
		}
		client = a
		if !trusted.contains(a) {
			return a
		}
	}
	// Trusted proxies all the way: the farthest one is the client.
	return client
}

// parseForwardedAddr parses one forwarded address: an IP, optionally with
// a port ("192.0.2.1:5000", "[2001:db8::1]:5000") or in brackets, as some
// proxies write it.
func parseForwardedAddr(s string) (netip.Addr, bool) {
	s = strings.TrimSpace(s)
	a, err := netip.ParseAddr(s)
	if err != nil {
		ap, perr := netip.ParseAddrPort(s)
		if perr != nil {
			if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
				return netip.Addr{}, false
			}
			if a, err = netip.ParseAddr(s[1 : len(s)-1]); err != nil {
				return netip.Addr{}, false
			}
		} else {
			a = ap.Addr()
		}
	}
	if a.Zone() != "" {
		return netip.Addr{}, false
	}
	return a.Unmap(), true
}

// refuseProxy answers a connection whose PROXY header is missing, invalid
// or not to be trusted, and closes it. The HTTP answer is for the person
// who points a browser or curl at a port that wants a header; a balancer
// just sees the close.
func (c *conn) refuseProxy(status int, reason string, peer netip.Addr, err error) {
	s := c.srv
	s.metrics.protocolErrors.WithLabelValues("proxy").Inc()
	if ce := s.log.Check(zap.DebugLevel, "PROXY header refused"); ce != nil {
		ce.Write(zap.Uint32("conn", uint32(c.id)), zap.Stringer("peer", peer), zap.String("reason", reason), zap.Error(err))
	}
	c.rejectHTTP(status, reason)
}

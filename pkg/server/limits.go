package server

import (
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// connectLimiter counts upgrades per client IP in fixed one-minute windows.
// One map for the whole node, cleared when the minute turns: no timer and
// no state per connection.
type connectLimiter struct {
	limit int // per IP per minute; 0 disables

	mu     sync.Mutex
	minute int64
	counts map[netip.Addr]int
}

// allow counts one connect from addr and reports whether it is within the
// limit.
func (l *connectLimiter) allow(ip netip.Addr, now time.Time) bool {
	if l.limit <= 0 || !ip.IsValid() {
		return true // not an IP socket: nothing to count by
	}
	m := now.Unix() / 60
	l.mu.Lock()
	defer l.mu.Unlock()
	if m != l.minute || l.counts == nil {
		l.minute, l.counts = m, make(map[netip.Addr]int)
	}
	l.counts[ip]++
	return l.counts[ip] <= l.limit
}

// allowMessage counts one client message on the connection's read side and
// reports whether it is within the per-minute limit.
func (c *conn) allowMessage(now time.Time) bool {
	limit := c.srv.cfg.MessagesPerMinute
	if limit <= 0 {
		return true
	}
	m := uint32(now.Unix() / 60)
	if m != c.msgMinute {
		c.msgMinute, c.msgCount = m, 0
	}
	if c.msgCount < 0xffff {
		c.msgCount++
	}
	return int(c.msgCount) <= limit
}

// originAllowed reports whether an Origin header may connect. Browsers
// always send one; other clients usually send none, which is allowed, as
// in Appwrite. An entry "*" allows any origin; an entry "*.example.com"
// allows its subdomains; matching ignores case and compares scheme and host.
func (s *Server) originAllowed(origin string) bool {
	if len(s.cfg.AllowedOrigins) == 0 || origin == "" {
		return true
	}
	origin = strings.ToLower(strings.TrimRight(origin, "/"))
	_, host, _ := strings.Cut(origin, "://")
	for _, a := range s.cfg.AllowedOrigins {
		a = strings.ToLower(strings.TrimRight(a, "/"))
		switch {
		case a == "*" || a == origin:
			return true
		case strings.HasPrefix(a, "*.") && strings.HasSuffix(host, a[1:]):
			return true
		case !strings.Contains(a, "://") && a == host:
			return true
		}
	}
	return false
}

// statusTryAgainLater is close code 1013 (RFC 6455's registry), which
// gobwas does not name.
const statusTryAgainLater ws.StatusCode = 1013

package server

import (
	"hash/maphash"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/gobwas/ws"
)

// connectLimiter counts upgrades per client in fixed one-minute windows:
// an IPv4 address, or an IPv6 prefix of v6Bits (see
// DefaultConnectsIPv6Prefix). One table for the whole node, cleared when
// the minute turns: no timer and no state per connection.
//
// The table is a count-min sketch (limiterRows rows of limiterWidth
// 16-bit counters; a client's count is the least of its counters), because
// its size must not depend on how many clients come: a map of exact counts
// grows with every distinct address in the minute, and a flood of them (a
// botnet; an IPv6 host's 2^64 addresses, were it counted per address)
// would grow it without bound. The sketch is 8 MiB whatever the count.
// Its error is one way, a client refused a little early and never let
// through beyond its limit, and it only touches clients near their limit:
// with a million distinct addresses in one minute, no first connect was
// refused and 4 % of the clients that used their whole limit of 128 were
// refused at their 128th (TestConnectLimiterStaysBounded); with 100,000 it
// was exact. Half the table (4 MiB) would lose 20 % of those clients up to
// two connects. Conservative update (raising only the counters at the
// minimum) keeps the error down, and a random hash seed per node keeps
// a client from choosing addresses that collide with someone else's.
type connectLimiter struct {
	limit  int // per client per minute; 0 disables
	v6Bits int // IPv6 clients are counted per prefix of this length
	seed   maphash.Seed

	mu     sync.Mutex
	minute int64
	counts []uint16 // limiterRows x limiterWidth; nil until the first count
}

const (
	limiterRows  = 4
	limiterWidth = 1 << 20 // a power of two
	// limiterBytes is the connect limiter's fixed memory.
	limiterBytes = limiterRows * limiterWidth * 2
)

func newConnectLimiter(limit, v6Bits int) connectLimiter {
	return connectLimiter{limit: limit, v6Bits: v6Bits, seed: maphash.MakeSeed()}
}

// key is what the limiter counts ip by: the address for IPv4, its prefix
// for IPv6.
func (l *connectLimiter) key(ip netip.Addr) [16]byte {
	if ip.Is6() && l.v6Bits < 128 {
		p, _ := ip.Prefix(l.v6Bits)
		ip = p.Addr()
	}
	return ip.As16()
}

// allow counts one connect from ip and reports whether it is within the
// limit. Counters saturate at 65,535, so a limit above that never refuses.
func (l *connectLimiter) allow(ip netip.Addr, now time.Time) bool {
	if l.limit <= 0 || !ip.IsValid() {
		return true // not an IP socket: nothing to count by
	}
	// Double hashing (h1 + i*h2) gives each row its own index from one
	// 64-bit hash.
	h := maphash.Comparable(l.seed, l.key(ip))
	h1, h2 := uint32(h), uint32(h>>32)|1
	var idx [limiterRows]uint32
	for i := range idx {
		idx[i] = uint32(i)*limiterWidth + (h1+uint32(i)*h2)&(limiterWidth-1)
	}
	m := now.Unix() / 60
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.counts == nil:
		l.minute, l.counts = m, make([]uint16, limiterRows*limiterWidth)
	case m != l.minute:
		l.minute = m
		clear(l.counts) // 8 MiB: a fraction of a millisecond, once a minute
	}
	est := l.counts[idx[0]]
	for _, i := range idx[1:] {
		est = min(est, l.counts[i])
	}
	if int(est) >= l.limit {
		return false // a refused connect need not be counted: it already is over
	}
	if est == 0xffff {
		return true
	}
	est++
	for _, i := range idx {
		l.counts[i] = max(l.counts[i], est)
	}
	return true
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

// invalidOrigin is the error a refused origin gets: Appwrite's words
// (src/Appwrite/Network/Validator/Origin.php, getDescription), which name
// the origin's host without scheme or port and the kind of platform its
// scheme registers as, or "Unsupported platform" for a scheme that is none.
func invalidOrigin(origin string) string {
	platform, ok := originPlatform(strings.ToLower(originScheme(origin)))
	if !ok {
		return "Unsupported platform"
	}
	host := ""
	if u, err := url.Parse(origin); err == nil {
		host = u.Hostname()
	}
	return "Invalid Origin. Register your new client (" + host + ") as a new " + platform + " platform on your project console dashboard"
}

// originScheme is what precedes "://" (PHP's parse_url scheme), or "".
func originScheme(origin string) string {
	scheme, _, ok := strings.Cut(origin, "://")
	if !ok {
		return ""
	}
	return scheme
}

// originPlatform names the platform a scheme registers as in Appwrite
// (the $platforms table of Origin.php); ok is false for any other scheme.
func originPlatform(scheme string) (name string, ok bool) {
	switch scheme {
	case "http", "https":
		return "Web", true
	case "appwrite-ios":
		return "iOS", true
	case "appwrite-macos":
		return "macOS", true
	case "appwrite-watchos":
		return "watchOS", true
	case "appwrite-tvos":
		return "tvOS", true
	case "appwrite-android":
		return "Android", true
	case "appwrite-windows":
		return "Windows", true
	case "appwrite-linux":
		return "Linux", true
	}
	return "", false
}

// statusTryAgainLater is close code 1013 (RFC 6455's registry), which
// gobwas does not name.
const statusTryAgainLater ws.StatusCode = 1013

package server

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func TestForwardedClient(t *testing.T) {
	trusted := trustedSet{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:ffff::/48")}
	peer := netip.MustParseAddr("10.0.0.1")
	for _, tc := range []struct {
		name, xff, realIP, want string
	}{
		{"none", "", "", "10.0.0.1"},
		{"one", "198.51.100.1", "", "198.51.100.1"},
		{"the client's own claim left of it is ignored", "6.6.6.6, 198.51.100.1", "", "198.51.100.1"},
		{"trusted hops are skipped", "198.51.100.1, 10.1.2.3, 10.0.0.9", "", "198.51.100.1"},
		{"all trusted: the farthest", "10.1.2.3, 10.0.0.9", "", "10.1.2.3"},
		{"IPv6 and a trusted IPv6 hop", "2001:db8::1, 2001:db8:ffff::2", "", "2001:db8::1"},
		{"ports and brackets", "[2001:db8::1]:5000, 10.0.0.9:80", "", "2001:db8::1"},
		{"IPv4 with port", "198.51.100.1:5000", "", "198.51.100.1"},
		{"brackets without port", "[2001:db8::1]", "", "2001:db8::1"},
		{"IPv4-mapped is unmapped", "::ffff:198.51.100.1", "", "198.51.100.1"},
		{"empty elements", "198.51.100.1,, ,", "", "198.51.100.1"},
		{"garbage right of the client stops at the proxy that passed it", "198.51.100.1, unknown", "", "10.0.0.1"},
		{"garbage behind a trusted hop", "198.51.100.1, unknown, 10.0.0.9", "", "10.0.0.9"},
		{"garbage left of the client is never read", "unknown, 198.51.100.1", "", "198.51.100.1"},
		{"zone", "fe80::1%eth0", "", "10.0.0.1"},
		{"X-Real-IP alone", "", "198.51.100.7", "198.51.100.7"},
		{"X-Real-IP garbage", "", "nope", "10.0.0.1"},
		{"X-Forwarded-For wins over X-Real-IP", "198.51.100.1", "198.51.100.7", "198.51.100.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := forwardedClient(tc.xff, tc.realIP, peer, trusted); got.String() != tc.want {
				t.Fatalf("forwardedClient(%q, %q) = %v, want %s", tc.xff, tc.realIP, got, tc.want)
			}
		})
	}
}

func TestForwardedForOnlyFromTrustedProxies(t *testing.T) {
	s, logs := observedNode(t, func(c *Config) {
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32")}
		c.ConnectsPerIP = 2
	})
	xff := func(v string) http.Header { return http.Header{"X-Forwarded-For": {v}} }
	// From the trusted proxy: the header names the client.
	mustConnect(t, s, "127.0.0.1", nil, xff("198.51.100.1"))
	mustConnect(t, s, "127.0.0.1", nil, xff("6.6.6.6, 198.51.100.1"))
	mustBeLimited(t, s, "127.0.0.1", nil, xff("7.7.7.7, 198.51.100.1"))
	mustConnect(t, s, "127.0.0.1", nil, xff("198.51.100.2, 127.0.0.1"))
	mustConnect(t, s, "127.0.0.1", nil, http.Header{"X-Real-Ip": {"198.51.100.3"}})
	// From anyone else: the headers change nothing, whatever they say.
	mustConnect(t, s, "127.0.0.2", nil, xff("198.51.100.4"))
	mustConnect(t, s, "127.0.0.2", nil, http.Header{"X-Forwarded-For": {"198.51.100.5"}, "X-Real-Ip": {"198.51.100.5"}})
	mustBeLimited(t, s, "127.0.0.2", nil, xff("198.51.100.6"))

	want := "198.51.100.1 198.51.100.1 198.51.100.2 198.51.100.3 127.0.0.2 127.0.0.2"
	if got := clientsLogged(logs, "connection opened"); strings.Join(got, " ") != want {
		t.Fatalf("connections logged from %v, want %s", got, want)
	}
	if got := clientsLogged(logs, "connect limit reached"); strings.Join(got, " ") != "198.51.100.1 127.0.0.2" {
		t.Fatalf("limit logged for %v", got)
	}
}

// TestForwardedForBehindProxyProtocol: the address the PROXY header gives
// decides whether X-Forwarded-For is read, as the peer's does without it:
// a client the balancer forwarded is not a proxy; a trusted L7 proxy
// behind the balancer (a CDN, an ingress) is.
func TestForwardedForBehindProxyProtocol(t *testing.T) {
	s, logs := observedNode(t, func(c *Config) {
		c.ProxyProtocol = true
		c.TrustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.1/32"), netip.MustParsePrefix("10.0.0.0/8")}
	})
	xff := http.Header{"X-Forwarded-For": {"198.51.100.8"}}
	mustConnect(t, s, "127.0.0.1", proxyV2("192.0.2.1"), xff)
	mustConnect(t, s, "127.0.0.1", proxyV2("10.1.1.1"), xff)
	if got := clientsLogged(logs, "connection opened"); strings.Join(got, " ") != "192.0.2.1 198.51.100.8" {
		t.Fatalf("connections logged from %v", got)
	}
}

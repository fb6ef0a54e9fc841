// Package loadgen is Switchboard's load generator: it opens many WebSocket
// connections from a few epoll event loops (no goroutine per connection),
// spreads them over loopback source addresses, splits itself into worker
// processes when one process's file descriptor limit would bind, publishes
// events through a node's admin API and measures delivery latency and
// completeness. `switchboard bench` is its command line.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/url"
	"runtime"
	"strconv"
	"time"
)

// Config describes one run. The zero value of each optional field takes the
// default documented on it.
type Config struct {
	// URL is the WebSocket endpoint, e.g.
	// ws://127.0.0.1:9505/v1/realtime?project=P&channels[]=files.
	URL string
	// Conns is the total number of connections across all workers.
	Conns int
	// Rate is the connect rate in connections per second across all
	// workers; 0 connects as fast as the loops can.
	Rate float64
	// Hold is how long the connections stay open after the ramp.
	Hold time.Duration
	// Loops is the number of event-loop goroutines per process; default
	// GOMAXPROCS.
	Loops int
	// Workers is the number of processes; 0 picks the fewest that fit the
	// descriptor budget (MaxFDsPerWorker, or RLIMIT_NOFILE).
	Workers int
	// MaxFDsPerWorker caps the descriptors one worker may use; 0 means the
	// process's RLIMIT_NOFILE.
	MaxFDsPerWorker int
	// SourceIPs is how many loopback source addresses (127.0.0.2, .3, ...)
	// the connections are spread over; 0 picks one per 16,000 connections
	// (at least two). Ignored (no bind) when the target is not loopback.
	SourceIPs int
	// Auth, when set, is sent as an `authentication` message after
	// `connected`.
	Auth string
	// PingEvery sends the Appwrite {"type":"ping"} on every connection at
	// this interval; 0 never does.
	PingEvery time.Duration
	// ConnectTimeout bounds a connection's way from connect() to its
	// `connected` message (and auth response).
	ConnectTimeout time.Duration
	// CloseTimeout bounds the wait for the server's close frame at the end.
	CloseTimeout time.Duration
	// Stalled is how many of the Conns connections stop reading their
	// socket once `connected` arrived, spread evenly over the run (about
	// every Conns/Stalled-th connection). Their kernel buffers fill and the
	// server has to treat them as slow consumers; the event figures then
	// cover the other (healthy) connections only, and the summary's
	// `stalled` section says how many of these the server closed.
	Stalled int
	// Compressing is the fraction (0 to 1) of the connections, spread
	// evenly, that offer permessage-deflate (RFC 7692) as browsers do and
	// inflate the compressed events they receive to read them.
	Compressing float64

	// PublishURL is the admin endpoint events are POSTed to, e.g.
	// http://127.0.0.1:9506/v1/publish. Events are published only when
	// it is set and Events > 0.
	PublishURL string
	// APIKey is sent as "Authorization: Bearer APIKey" with each publish.
	APIKey string
	// PublishRate is events per second; 0 means 10.
	PublishRate float64
	// Events is how many events are published.
	Events int
	// Drain bounds the wait for deliveries after the last publish.
	Drain time.Duration
	// Roles are the roles of published events; default ["any"].
	Roles []string
	// PayloadBytes pads each event payload with filler up to about this
	// many bytes (0: no padding, about 40 bytes), so that queues and
	// socket buffers fill at a realistic event size.
	PayloadBytes int

	// Resume makes every connection an Appwrite Web SDK 25+ client across
	// a drain (resume.go): it opens the URL without its channels[] and,
	// after `connected` (and the authentication), subscribes by message to
	// those channels under an id of its own, the same one every time; it
	// counts as open once the response came. When the server ends it
	// (close frame, EOF, reset), it comes back after ReconnectDelay to the
	// next node (URL's, then Nodes, round) and subscribes again; a failed
	// try waits and moves on the same way. Every event's sequence is
	// tracked per connection: missing, duplicated, out of order.
	Resume bool
	// ReconnectDelay is what a resuming connection waits before each
	// reconnect; 0 means DefaultReconnectDelay.
	ReconnectDelay time.Duration
	// Nodes are more host:port addresses (IPv4 literals) serving the same
	// path as URL. Connection g starts on node g mod (1+len(Nodes)), URL's
	// being node 0.
	Nodes []string
	// SubscriptionPrefix starts every resuming connection's subscription
	// id (the rest is its run-wide index); empty: one made from the run's
	// start time, so two runs on the same Redis never share ids.
	SubscriptionPrefix string
	// Storm, with Resume, makes the hold a disruption (storm.go).
	Storm *Storm `json:"storm,omitempty"`
	// Publish, when set, sends each event's backbone message itself (e.g.
	// a PUBLISH to Redis, as Appwrite does) instead of POSTing it to
	// PublishURL, which may then be empty.
	Publish func(ctx context.Context, msg []byte) error `json:"-"`

	// ServerPIDs are the processes whose RSS is reported.
	ServerPIDs []int
	// WorkerCommand builds the command that runs one worker process (it
	// must call RunWorker with its stdin and stdout). Needed only when the
	// run splits into processes.
	WorkerCommand func() (name string, args []string, env []string) `json:"-"`
}

// DefaultReconnectDelay is the Appwrite Web SDK's wait before each of its
// first five reconnects (src/services/realtime.ts: 1 s, no jitter).
const DefaultReconnectDelay = time.Second

// target is the parsed URL.
type target struct {
	addr     [4]byte
	port     int
	hostPort string // for the Host header
	path     string // path and query, as requested
	// messagePath is path without channels[]: resuming connections
	// subscribe by message instead.
	messagePath string
	project     string
	channels    []string
	loopback    bool
}

func (c *Config) setDefaults() {
	if c.Loops <= 0 {
		c.Loops = runtime.GOMAXPROCS(0)
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 10 * time.Second
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = 3 * time.Second
	}
	if c.PublishRate <= 0 {
		c.PublishRate = 10
	}
	if c.Drain <= 0 {
		c.Drain = 10 * time.Second
	}
	if len(c.Roles) == 0 {
		c.Roles = []string{"any"}
	}
	if c.SourceIPs <= 0 {
		c.SourceIPs = max(2, (c.Conns+15999)/16000)
	}
	if c.ReconnectDelay <= 0 {
		c.ReconnectDelay = DefaultReconnectDelay
	}
}

// maxPayloadBytes keeps a padded event under the node's 1 MiB publish
// body limit with room for the envelope.
const maxPayloadBytes = 512 << 10

// isStalled reports whether run-wide connection g is one of the Stalled
// ones: g is stalled when floor((g+1)*Stalled/Conns) steps past
// floor(g*Stalled/Conns), which picks exactly Stalled of the Conns
// indexes, evenly spaced, however the run is split over processes.
func (c *Config) isStalled(g int) bool { return spread(g, c.Stalled, c.Conns) }

// isCompressing reports whether run-wide connection g is one of the
// Compressing fraction, spread as isStalled spreads the stalled ones.
func (c *Config) isCompressing(g int) bool {
	return spread(g, int(math.Round(c.Compressing*float64(c.Conns))), c.Conns)
}

// spread reports whether g is one of k indexes of n picked evenly: g is
// picked when floor((g+1)*k/n) steps past floor(g*k/n).
func spread(g, k, n int) bool {
	if k <= 0 || n <= 0 {
		return false
	}
	return (int64(g)+1)*int64(k)/int64(n) > int64(g)*int64(k)/int64(n)
}

// publishing reports whether the run publishes events.
func (c *Config) publishing() bool { return c.Events > 0 && (c.PublishURL != "" || c.Publish != nil) }

// validate checks the fields a run cannot do without.
func (c *Config) validate() error {
	if c.Conns <= 0 {
		return errors.New("conns must be positive")
	}
	if c.Rate < 0 {
		return errors.New("rate must not be negative")
	}
	if c.Events < 0 {
		return errors.New("events must not be negative")
	}
	if c.Stalled < 0 || c.Stalled > c.Conns {
		return fmt.Errorf("stalled must be between 0 and conns (%d)", c.Conns)
	}
	if c.Compressing < 0 || c.Compressing > 1 {
		return errors.New("compressing must be a fraction between 0 and 1")
	}
	if c.PayloadBytes < 0 || c.PayloadBytes > maxPayloadBytes {
		return fmt.Errorf("payload-bytes must be between 0 and %d", maxPayloadBytes)
	}
	if c.Resume && c.Stalled > 0 {
		return errors.New("resuming connections cannot also stall")
	}
	if c.Storm != nil && (!c.Resume || !c.publishing()) {
		return errors.New("a storm needs resuming connections and events")
	}
	if len(c.Nodes) > 250 {
		return errors.New("at most 251 nodes")
	}
	if c.SourceIPs > 250 {
		return errors.New("at most 250 source addresses (127.0.0.2-127.0.0.251)")
	}
	return nil
}

// parseTarget reads host, port, path, project and channels out of rawURL.
// Only IPv4 literals and "localhost" are accepted: resolving names per
// connection is no business of a load generator.
func parseTarget(rawURL string) (*target, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("url %q: %w", rawURL, err)
	}
	if u.Scheme != "ws" {
		return nil, fmt.Errorf("url %q: scheme must be ws (no TLS in the generator)", rawURL)
	}
	host, portStr := u.Hostname(), u.Port()
	if portStr == "" {
		portStr = "80"
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 || port > 65535 {
		return nil, fmt.Errorf("url %q: bad port %q", rawURL, portStr)
	}
	if host == "localhost" {
		host = "127.0.0.1"
	}
	ip := net.ParseIP(host).To4()
	if ip == nil {
		return nil, fmt.Errorf("url %q: host must be an IPv4 address", rawURL)
	}
	t := &target{port: port, hostPort: u.Host, path: u.RequestURI(), loopback: ip[0] == 127}
	copy(t.addr[:], ip)
	q := u.Query()
	t.project = q.Get("project")
	t.channels = q["channels[]"]
	q.Del("channels[]")
	u.RawQuery = q.Encode()
	t.messagePath = u.RequestURI()
	return t, nil
}

// nodeTargets is the run's nodes: t, then one per Config.Nodes address,
// on the same path.
func nodeTargets(c *Config, t *target) ([]*target, error) {
	ts := []*target{t}
	for _, hp := range c.Nodes {
		host, portStr, err := net.SplitHostPort(hp)
		if err != nil {
			return nil, fmt.Errorf("node %q: %w", hp, err)
		}
		port, err := strconv.Atoi(portStr)
		ip := net.ParseIP(host).To4()
		if err != nil || port <= 0 || port > 65535 || ip == nil {
			return nil, fmt.Errorf("node %q: want IPv4:port", hp)
		}
		n := *t
		copy(n.addr[:], ip)
		n.port, n.hostPort, n.loopback = port, hp, ip[0] == 127
		if n.loopback != t.loopback {
			return nil, fmt.Errorf("node %q: all nodes must be loopback or none", hp)
		}
		ts = append(ts, &n)
	}
	return ts, nil
}

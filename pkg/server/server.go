// Package server is the Switchboard node: a netpoll event loop that accepts
// client sockets and runs their WebSocket upgrade, then hands them to the
// node's own one-shot epoll (no per-connection buffers while idle); the
// frame codec, the write pool that fans events out, the router that feeds
// it from the broker, and the admin HTTP endpoints.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/dashboard"
	"github.com/switchboard-rt/switchboard/pkg/explain"
	"github.com/switchboard-rt/switchboard/pkg/history"
	"github.com/switchboard-rt/switchboard/pkg/index"
	"github.com/switchboard-rt/switchboard/pkg/presence"
	"github.com/switchboard-rt/switchboard/pkg/usage"
)

// Defaults of Config. A zero field takes its default; the flags of
// `switchboard serve` default to the same constants, so a Config{} and a
// bare command line behave alike.
const (
	DefaultListen            = ":9505"
	DefaultAdminListen       = "127.0.0.1:9506"
	DefaultPath              = "/v1/realtime"
	DefaultMaxMessageSize    = 64000 // Appwrite's: setPackageMaxLength(64000) in app/realtime.php
	DefaultMaxHeaderBytes    = 8 << 10
	DefaultMaxQueueBytes     = 1 << 20
	DefaultMaxSubscriptions  = 100
	DefaultConnectsPerIP     = 128
	DefaultMessagesPerMinute = 32
	DefaultHandshakeTimeout  = 5 * time.Second
	DefaultDrainTime         = 5 * time.Second
	DefaultIndexShards       = 64
	DefaultTCPKeepAlive      = 2 * time.Minute
	DefaultAuthTimeout       = 5 * time.Second
	// DefaultPresenceGrace is how soon the presences of a node that died
	// are deleted by the others (PRESENCE.md).
	DefaultPresenceGrace = presence.DefaultGrace
	// DefaultMaxPresenceBytes bounds a presence's metadata (compacted
	// JSON): it is stored, listed and sent in every presence event.
	DefaultMaxPresenceBytes = 4 << 10
	// DefaultCompressionMinBytes is the smallest event message sent
	// compressed: below it, deflate's block headers and the stored tail
	// (COMPRESSION.md) save too little to pay for the client's inflate.
	DefaultCompressionMinBytes = 256
)

// Off, as a limit or duration of Config marked "Off turns it off", turns
// that limit or behaviour off; so does any other negative value, which is
// why Off as a time.Duration (-1ns) serves as well as -1s. Zero never
// means off: it takes the default, which for a few limits is itself "no
// limit" (their fields say so).
const Off = -1

// Config is a node's configuration. A zero field takes its default (the
// Default constants); a negative value is Off where a field says Off
// turns it off, and refused by New everywhere else.
type Config struct {
	Listen      string // WebSocket address; default DefaultListen
	AdminListen string // admin HTTP address; default DefaultAdminListen
	Path        string // WebSocket path; default DefaultPath
	// ReusePort lets several processes listen on the same WebSocket
	// address (SO_REUSEPORT): the kernel spreads new connections over
	// them, which is how a host outgrows one process's descriptor limit.
	ReusePort bool

	Projects []string // when non-empty, the only projects accepted
	APIKey   string   // when set, POST /v1/publish, /v1/presences, /v1/explain, /v1/connections and the dashboard need "Authorization: Bearer <APIKey>" (the dashboard also takes it as basic auth's password)

	MaxMessageSize   int // largest client message after reassembly (at most 16 MiB)
	MaxHeaderBytes   int // largest upgrade request head
	MaxQueueBytes    int // outbound bytes queued per connection before it is a slow consumer
	MaxSubscriptions int // subscriptions per connection

	// Compression: Off turns it off, declining every permessage-deflate
	// offer (RFC 7692); zero (the default) or a positive value negotiates
	// it with clients that offer it, and sends them events compressed
	// (COMPRESSION.md).
	Compression int
	// CompressionMinBytes is the smallest event message (the frame's
	// payload: envelope, document and subscriptions) sent compressed;
	// default DefaultCompressionMinBytes. Off turns the threshold off:
	// every event is compressed.
	CompressionMinBytes int

	ConnectsPerIP     int      // upgrades per client IP per minute; Off turns the limit off
	MessagesPerMinute int      // client messages per connection per minute; Off turns the limit off
	AllowedOrigins    []string // when non-empty, browser origins allowed to connect

	// ConnectsIPv6Prefix is the prefix length ConnectsPerIP counts IPv6
	// clients by; default DefaultConnectsIPv6Prefix, 128 counts each
	// address.
	ConnectsIPv6Prefix int

	// ProxyProtocol requires a PROXY protocol header (v1 or v2) before the
	// upgrade request of every connection to Listen, and takes the
	// client's address from it; a connection without a valid one is
	// refused. Turn it on only when every client comes through a balancer
	// that sends it (HAProxy send-proxy-v2, AWS NLB): whoever may send a
	// header can claim any address.
	ProxyProtocol bool
	// TrustedProxies are the balancers whose word on the client's address
	// is taken: with ProxyProtocol, the only peers that may connect;
	// always, the only senders whose X-Forwarded-For or X-Real-IP is read
	// (the right-most address of X-Forwarded-For that is not itself in
	// the list is the client). Empty: no forwarding header is ever read.
	TrustedProxies []netip.Prefix

	// MaxConns bounds the upgraded connections held; above it upgrades
	// get HTTP 503. The default is no limit, so zero and Off both leave
	// it unbounded.
	MaxConns         int
	HandshakeTimeout time.Duration // bound on the upgrade request arriving whole
	// DrainTime is what Shutdown spreads the clients' close 1001 over;
	// Off tells them all at once.
	DrainTime    time.Duration
	WriteWorkers int // write pool size; default 2 x GOMAXPROCS
	IndexShards  int // subscription index shards

	// IdleTimeout closes (1001) an upgraded connection that sent no frame
	// for this long: a dead peer that TCP has not noticed yet. The default
	// is off, so zero and Off both turn it off. The Appwrite SDK pings
	// every 20 s, so anything well above that only ever catches dead or
	// stuck clients. Checked at one-second granularity.
	IdleTimeout time.Duration
	// TCPKeepAlive is the idle time before the kernel probes an accepted
	// socket (then every third of it, three probes): it reaps peers that
	// vanished without a FIN. Off turns keepalive off.
	TCPKeepAlive time.Duration

	AuthTimeout time.Duration // bound on one resolver call

	// Presences stores presence records; default presence.NewMemory()
	// (one node). Nodes sharing a Redis backbone share a presence.Redis.
	Presences presence.Store
	// PresenceGrace: the presences of a node that died are deleted, and
	// their delete events sent, within this. A node refreshes its
	// heartbeat every quarter of it.
	PresenceGrace time.Duration
	// MaxPresenceBytes bounds a presence's metadata; more is error 1003.
	MaxPresenceBytes int

	// Usage keeps the per-project usage counts (GET /v1/usage); default
	// usage.NewMemory with usage.DefaultMemoryRetention (one node). Nodes
	// sharing a Redis backbone share a usage.Redis, which sums them.
	Usage usage.Store

	Broker broker.Broker // required
	// Peers carries the dashboard's once-a-second node samples between
	// the nodes of a cluster: a broker on a channel of its own (never the
	// event channel). Nil: the dashboard shows this node alone.
	Peers broker.Broker
	// AdminPeers carries the admin API's cluster questions (POST
	// /v1/explain, GET /v1/connections) and their answers between the
	// nodes: a broker on a channel of its own, never the event channel.
	// Nil: those questions are answered for this node alone.
	AdminPeers broker.Broker
	Resolver   auth.Resolver // default auth.None
	Logger     *zap.Logger   // default zap.NewNop
	// Registry holds the node's series (the server's, the broker's) and
	// is served on /metrics with the Go and process collectors, which the
	// server adds itself and keeps apart: the dashboard gathers Registry
	// every second, and the process collector lists /proc/self/fd on
	// kernels before 6.2 (0.8 µs a descriptor measured). Default a new
	// registry; do not register those two collectors in it.
	Registry *prometheus.Registry

	// Resume, when set, lets subscriptions that come back under a known
	// id get what they missed (RESUME.md). Nil: every subscription starts
	// live.
	Resume *ResumeConfig
}

// DefaultConnectsIPv6Prefix counts IPv6 clients per /64 for the connect
// limit. A /64 is the smallest block a network gives one subscriber (RFC
// 6177; SLAAC needs it), and a host picks any of its 2^64 addresses at will
// (privacy addresses, RFC 8981): counted per address, one client could
// open a fresh address for every connect and never reach its limit. Per
// /64 it is counted like an IPv4 client behind its home router.
const DefaultConnectsIPv6Prefix = 64

func (c *Config) setDefaults() {
	orDefault(&c.Listen, DefaultListen)
	orDefault(&c.AdminListen, DefaultAdminListen)
	orDefault(&c.Path, DefaultPath)
	orDefault(&c.MaxMessageSize, DefaultMaxMessageSize)
	orDefault(&c.MaxHeaderBytes, DefaultMaxHeaderBytes)
	orDefault(&c.MaxQueueBytes, DefaultMaxQueueBytes)
	orDefault(&c.MaxSubscriptions, DefaultMaxSubscriptions)
	orDefault(&c.ConnectsPerIP, DefaultConnectsPerIP)
	orDefault(&c.MessagesPerMinute, DefaultMessagesPerMinute)
	orDefault(&c.WriteWorkers, 2*runtime.GOMAXPROCS(0))
	orDefault(&c.IndexShards, DefaultIndexShards)
	orDefault(&c.ConnectsIPv6Prefix, DefaultConnectsIPv6Prefix)
	orDefault(&c.HandshakeTimeout, DefaultHandshakeTimeout)
	orDefault(&c.DrainTime, DefaultDrainTime)
	orDefault(&c.TCPKeepAlive, DefaultTCPKeepAlive)
	orDefault(&c.AuthTimeout, DefaultAuthTimeout)
	orDefault(&c.PresenceGrace, DefaultPresenceGrace)
	orDefault(&c.MaxPresenceBytes, DefaultMaxPresenceBytes)
	orDefault(&c.CompressionMinBytes, DefaultCompressionMinBytes)
	if c.Presences == nil {
		c.Presences = presence.NewMemory()
	}
	if c.Usage == nil {
		c.Usage = usage.NewMemory(usage.DefaultMemoryRetention)
	}
	if c.Resolver == nil {
		c.Resolver = auth.None{}
	}
	if c.Logger == nil {
		c.Logger = zap.NewNop()
	}
	if c.Registry == nil {
		c.Registry = prometheus.NewRegistry()
	}
}

// orDefault sets *v to d when *v is the zero value.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// validate refuses values that no default can stand in for.
func (c *Config) validate() error {
	if c.Broker == nil {
		return errors.New("server: config has no broker")
	}
	for _, f := range []struct {
		name string
		v    int
	}{
		{"max message size", c.MaxMessageSize}, {"max header bytes", c.MaxHeaderBytes}, {"max queue bytes", c.MaxQueueBytes},
		{"max subscriptions", c.MaxSubscriptions}, {"write workers", c.WriteWorkers}, {"index shards", c.IndexShards},
		{"max presence bytes", c.MaxPresenceBytes},
	} {
		if f.v < 0 {
			return fmt.Errorf("server: %s %d is negative", f.name, f.v)
		}
	}
	if c.HandshakeTimeout < 0 || c.AuthTimeout < 0 {
		return errors.New("server: handshake and auth timeouts cannot be negative")
	}
	// Zero took the default: /0 cannot be asked for.
	if c.ConnectsIPv6Prefix < 1 || c.ConnectsIPv6Prefix > 128 {
		return fmt.Errorf("server: IPv6 prefix /%d for the connect limit is not within /1 to /128", c.ConnectsIPv6Prefix)
	}
	if c.PresenceGrace < 100*time.Millisecond {
		return fmt.Errorf("server: presence grace %v is under 100ms", c.PresenceGrace)
	}
	if c.MaxMessageSize > 16<<20 {
		return fmt.Errorf("server: max message size %d is over 16 MiB", c.MaxMessageSize)
	}
	return nil
}

// Server is one Switchboard node.
type Server struct {
	cfg        Config
	log        *zap.Logger
	invalidLog *zap.Logger // sampled: garbage on the backbone, or a client hammering a limit, must not flood the log
	metrics    *metrics
	latency    *deliveryLatency
	allowed    map[string]bool
	trusted    trustedSet
	// sendBuffer, when positive, is the SO_SNDBUF of accepted sockets (the
	// kernel doubles it and locks it against autotuning). Only tests set
	// it, between New and Start: a small one makes writes end part-way
	// whatever the host's tcp_wmem, while the client keeps a receive
	// window well above the MSS. A client that shrinks its own SO_RCVBUF
	// for this instead advertises a window below the loopback MSS (64
	// KiB), and the server's unsent bytes then wait on the persist timer's
	// backed-off probes.
	sendBuffer int

	idx        *index.Index[*conn]
	strs       interner
	users      userTable
	projects   projectTable
	connects   connectLimiter
	handshakes *handshakeWheel
	clock      atomic.Uint32 // coarse unix seconds, advanced by the sweeper: a frame stamps its conn without a clock read
	open       atomic.Int64  // upgraded connections, for MaxConns
	stopSweep  chan struct{}
	pool       *writePool
	waiter     *poller      // EPOLLOUT for sockets whose send buffer was full
	quarantine fdQuarantine // closed adopted sockets whose numbers are not free yet
	input      *poller      // client input of connections netpoll handed over
	readBufs   sync.Pool
	inflaters  inflaterPool       // shared by every connection: none holds one between messages
	readers    boundedPool[*conn] // reads adopted sockets (conn.readAdopted)
	router     *router
	holds      *holds   // users whose roles are being re-resolved after a permission change
	resume     *resumer // nil when Config.Resume is
	presences  *presences
	usage      *usage.Collector // per-project usage: its Meter counts upgrades and client messages, the router counts events
	stopUsage  context.CancelFunc
	usageDone  <-chan struct{}
	dashboard  *dashboard.Dashboard
	node       string               // this node's name in the cluster (nodeName); set by Start
	inspect    *explain.Cluster     // the admin API's cluster questions
	runtime    *prometheus.Registry // the Go and process collectors: on /metrics, not in the dashboard's second

	serving  atomic.Bool
	draining atomic.Bool

	// life orders Start and Shutdown: whichever comes second sees what
	// the first did, whatever goroutines they are called from.
	life    sync.Mutex
	started bool // Start succeeded
	stopped bool // Shutdown was called

	ln, adminLn net.Listener
	loop        netpoll.EventLoop
	admin       *http.Server
	stopRouter  context.CancelFunc
	tasks       tasks           // router, pollers, sweeper, event loop, admin server, dashboard
	served      <-chan struct{} // closed when netpoll's Serve has returned
}

// New validates cfg and builds a node; Start makes it listen.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg,
		log: cfg.Logger,
		invalidLog: cfg.Logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
			return zapcore.NewSamplerWithOptions(c, time.Second, 5, 0)
		})),
		metrics: newMetrics(cfg.Registry),
		latency: newDeliveryLatency(),
		idx:     index.New[*conn](cfg.IndexShards),
	}
	s.registerDeliveryMetrics(cfg.Registry)
	s.connects = newConnectLimiter(cfg.ConnectsPerIP, cfg.ConnectsIPv6Prefix)
	for _, p := range cfg.TrustedProxies {
		if !p.IsValid() {
			return nil, fmt.Errorf("server: trusted proxy %v is not a valid prefix", p)
		}
		s.trusted = append(s.trusted, unmapPrefix(p))
	}
	s.projects.aware, _ = cfg.Broker.(broker.ProjectAware)
	s.handshakes = newHandshakeWheel(cfg.HandshakeTimeout)
	s.clock.Store(uint32(time.Now().Unix()))
	s.stopSweep = make(chan struct{})
	s.readers = boundedPool[*conn]{max: maxReaders, do: (*conn).readAdopted}
	s.router = newRouter(s)
	s.holds = newHolds(s)
	s.presences = newPresences(s)
	if rc := cfg.Resume; rc != nil {
		if rc.Reader == nil || rc.Records == nil {
			return nil, errors.New("server: resume needs a history reader and a record store")
		}
		s.resume = newResumer(s, *rc)
	}
	var err error
	if s.usage, err = usage.NewCollector(usage.CollectorOptions{
		Store: cfg.Usage, Sources: []usage.Swapper{s.router.swapUsage}, Logger: cfg.Logger.Named("usage"),
	}); err != nil {
		return nil, fmt.Errorf("server: %w", err)
	}
	cfg.Registry.MustRegister(s.usage.BoundMetrics()...)
	s.runtime = prometheus.NewRegistry()
	s.runtime.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if len(cfg.Projects) > 0 {
		s.allowed = make(map[string]bool, len(cfg.Projects))
		for _, p := range cfg.Projects {
			s.allowed[p] = true
		}
	}
	return s, nil
}

func (s *Server) projectAllowed(p string) bool {
	return s.allowed == nil || s.allowed[p]
}

// Start binds both listeners and starts serving; it returns once clients
// can connect. When a step fails, what the steps before it set up is
// undone (listeners closed, pollers and the write pool stopped), so a
// caller may try again. Start after Shutdown fails: a node is not reused.
func (s *Server) Start() (err error) {
	s.life.Lock()
	defer s.life.Unlock()
	switch {
	case s.stopped:
		return errors.New("server: start after shutdown")
	case s.started:
		return errors.New("server: already started")
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	s.pool = newWritePool(s.cfg.WriteWorkers, 1<<16)
	undo = append(undo, s.pool.stop)
	if s.waiter, err = newPoller(unix.EPOLLOUT, (*conn).schedule); err != nil {
		return fmt.Errorf("output poller: %w", err)
	}
	undo = append(undo, s.waiter.free)
	if s.input, err = newPoller(unix.EPOLLIN|unix.EPOLLRDHUP, (*conn).readable); err != nil {
		return fmt.Errorf("input poller: %w", err)
	}
	undo = append(undo, s.input.free)
	if s.loop, err = netpoll.NewEventLoop(s.onRequest, netpoll.WithOnPrepare(s.onPrepare)); err != nil {
		return fmt.Errorf("netpoll event loop: %w", err)
	}
	lc := net.ListenConfig{}
	if s.cfg.ReusePort {
		lc.Control = setReusePort
	}
	if s.ln, err = lc.Listen(context.Background(), "tcp", s.cfg.Listen); err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	undo = append(undo, func() { s.ln.Close() })
	pl, err := newPollListener(s.ln)
	if err != nil {
		return err
	}
	if s.adminLn, err = net.Listen("tcp", s.cfg.AdminListen); err != nil {
		return fmt.Errorf("admin listen %s: %w", s.cfg.AdminListen, err)
	}
	undo = append(undo, func() { s.adminLn.Close() })
	s.node = nodeName(s.ln.Addr())
	if s.dashboard, err = dashboard.New(dashboard.Options{
		Node: s.node, Gatherer: s.cfg.Registry, Ready: s.cfg.Broker.Ready,
		TopProjects: s.projects.top, TopUsage: s.topUsage, Peers: s.cfg.Peers, Logger: s.log,
	}); err != nil {
		return err
	}
	// Nothing below fails.
	// Which nodes are alive is the dashboard's word when it hears the
	// others; otherwise a question waits out its bound for them.
	var live func() []string
	if s.cfg.Peers != nil || s.cfg.AdminPeers == nil {
		live = s.dashboard.Nodes
	}
	s.inspect = explain.New(explain.Options{Node: s.node, Peers: s.cfg.AdminPeers, Live: live, Answer: s.answerExplain, Logger: s.log})
	s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopRouter = cancel
	s.tasks.start("dashboard", func() { s.dashboard.Run(ctx) })
	s.tasks.start("explain", func() { s.inspect.Run(ctx) })
	s.tasks.start("output poller", s.waiter.run)
	s.tasks.start("input poller", s.input.run)
	s.tasks.start("sweeper", func() { s.runSweeper(s.stopSweep) })
	if s.resume != nil {
		s.resume.start()
	}
	s.tasks.start("router", func() {
		if err := s.cfg.Broker.Run(ctx, s.router.route); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("broker stopped", zap.Error(err))
		}
	})
	s.served = s.tasks.start("event loop", func() {
		if err := s.loop.Serve(pl); err != nil && !s.draining.Load() {
			s.log.Error("event loop stopped", zap.Error(err))
		}
	})
	s.tasks.start("admin server", func() {
		if err := s.admin.Serve(s.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin server stopped", zap.Error(err))
		}
	})
	s.presences.start()
	// The collector outlives the router (Shutdown stops it last), so that
	// its last fold has every count.
	uctx, ucancel := context.WithCancel(context.Background())
	s.stopUsage = ucancel
	var utasks tasks
	s.usageDone = utasks.start("usage", func() { s.usage.Run(uctx) })
	s.started = true
	s.serving.Store(true)
	s.log.Info("serving", zap.String("listen", s.ln.Addr().String()), zap.String("admin", s.adminLn.Addr().String()))
	return nil
}

// nodeName names this node in the dashboard's cluster view: host, port
// and process, since nodes that share a port (ReusePort) share the rest.
func nodeName(listen net.Addr) string {
	host, err := os.Hostname()
	if err != nil {
		host = "unknown-host"
	}
	port := listen.String()
	if a, ok := listen.(*net.TCPAddr); ok {
		port = strconv.Itoa(a.Port)
	}
	return fmt.Sprintf("%s:%s pid %d", host, port, os.Getpid())
}

// topUsage is the dashboard's view of the usage collector's top projects.
func (s *Server) topUsage(n int) dashboard.UsageTop {
	top, from := s.usage.Top(n)
	conv := func(m usage.Metric) []dashboard.ProjectValue {
		out := make([]dashboard.ProjectValue, len(top[m]))
		for i, r := range top[m] {
			out[i] = dashboard.ProjectValue{Project: r.Project, Value: r.Value}
		}
		return out
	}
	return dashboard.UsageTop{Connections: conv(usage.Connections), Messages: conv(usage.Messages),
		Inbound: conv(usage.Inbound), Outbound: conv(usage.Outbound), Since: from * 60_000}
}

// setReusePort is a net.ListenConfig Control that sets SO_REUSEPORT.
func setReusePort(_, _ string, rc syscall.RawConn) error {
	var serr error
	err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
	})
	if err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("SO_REUSEPORT: %w", serr)
	}
	return nil
}

// Addr is the WebSocket listener's address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// AdminAddr is the admin listener's address.
func (s *Server) AdminAddr() net.Addr { return s.adminLn.Addr() }

// Shutdown drains the node: /readyz turns 503 and new upgrades are refused
// at once; every client gets close 1001, spread evenly over DrainTime so
// that they reconnect to other nodes without a stampede, while events keep
// flowing to those not yet told; slow readers get up to drainFlushWait
// more to take what was queued before their close frame; then the router,
// the listeners and the remaining sockets stop. The spread is shortened
// to end before ctx does.
//
// It returns when everything has stopped, or by the time ctx ends: then
// the error names what did not stop (still running in the background).
// Shutdown may be called at any moment after New, also before Start, which
// then fails, or while Start runs, which it waits for.
func (s *Server) Shutdown(ctx context.Context) error {
	s.life.Lock()
	if s.stopped {
		s.life.Unlock()
		return errors.New("server: already shut down")
	}
	s.stopped = true
	started := s.started
	s.life.Unlock()
	if !started {
		return nil
	}
	s.draining.Store(true)
	s.log.Info("telling clients to go away", zap.Int64("connections", s.open.Load()), zap.Duration("drain_time", s.cfg.DrainTime))
	s.awaitFlushed(ctx, s.goAwayAll(ctx))
	if s.resume != nil {
		// Before the router stops: the history's appender hands its lease
		// over with marks the router must still route. A slow one leaves
		// the last steps their time.
		hctx, cancel := reserveEnd(ctx)
		if err := s.resume.handOver(hctx); err != nil {
			s.log.Warn("resume: the history's hand-over did not finish", zap.Error(err))
		}
		cancel()
	}
	s.stopRouter()
	// The last steps keep the end of the time for themselves, so that a
	// stuck router or poller does not leave them none.
	early, cancel := reserveEnd(ctx)
	defer cancel()
	errs := []error{s.stopEventLoop(early)}
	if err := s.admin.Shutdown(early); err != nil {
		errs = append(errs, fmt.Errorf("admin server: %w", err))
	}
	// Sockets netpoll handed over are ours to close.
	for _, c := range s.input.registered() {
		c.shut(closeShutdown)
	}
	s.input.close()
	s.waiter.close()
	close(s.stopSweep)
	errs = append(errs, s.tasks.wait(early))
	if s.resume != nil {
		// After the router: the drain's records are written.
		if err := s.resume.shutdown(early); err != nil {
			errs = append(errs, fmt.Errorf("resume: %w", err))
		}
	}
	// Presences go first: deleting them may still queue frames.
	var last tasks
	presencesDone := last.start("presences", s.presences.shutdown)
	last.start("write pool", func() {
		<-presencesDone
		s.pool.stop()
	})
	last.start("usage", func() {
		s.stopUsage()
		<-s.usageDone
	})
	errs = append(errs, last.wait(ctx))
	s.quarantine.closeAll()
	s.serving.Store(false)
	err := errors.Join(errs...)
	if err != nil {
		err = fmt.Errorf("server: shutdown: %w", err)
		s.log.Error("shutdown did not finish", zap.Error(err))
	}
	return err
}

// reserveEnd is ctx ending a tenth earlier (at most 100 ms), for the steps
// before the last ones.
func reserveEnd(ctx context.Context) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if !ok {
		return context.WithCancel(ctx)
	}
	return context.WithDeadline(ctx, dl.Add(-min(time.Until(dl)/10, 100*time.Millisecond)))
}

// stopEventLoop stops netpoll's event loop and waits for its Serve to
// return. netpoll's Shutdown does nothing when Serve has not yet set up its
// server (a Shutdown right after Start can overtake the goroutine that
// calls Serve), and a Serve that starts after it would then wait forever:
// so Shutdown is called again until Serve has returned.
func (s *Server) stopEventLoop(ctx context.Context) error {
	retry := time.NewTicker(time.Millisecond)
	defer retry.Stop()
	var err error
	for {
		if e := s.loop.Shutdown(ctx); e != nil {
			err = fmt.Errorf("event loop: %w", e)
		}
		select {
		case <-s.served:
			return err
		case <-retry.C:
		case <-ctx.Done():
			return err // tasks.wait names Serve if it is still running
		}
	}
}

// drainTick is the step of the drain: each tick closes the share of
// connections that the elapsed time allows.
const drainTick = 10 * time.Millisecond

// goAwayAll sends close 1001 to every connection, spread over DrainTime
// (or what is left of ctx, keeping a tenth of it for the rest of the
// shutdown).
func (s *Server) goAwayAll(ctx context.Context) []*conn {
	var conns []*conn
	s.idx.Range(func(_ index.ID, c *conn) { conns = append(conns, c) })
	span := s.cfg.DrainTime
	if dl, ok := ctx.Deadline(); ok {
		span = min(span, time.Until(dl)*9/10)
	}
	start := time.Now()
	t := time.NewTicker(drainTick)
	defer t.Stop()
	done := 0
	for done < len(conns) {
		due := len(conns)
		if elapsed := time.Since(start); span > 0 && elapsed < span {
			// Round up, so the first connection goes at once.
			due = int((int64(len(conns))*int64(elapsed+drainTick) + int64(span) - 1) / int64(span))
			due = min(due, len(conns))
		}
		s.goAway(conns[done:due])
		done = due
		if done == len(conns) {
			break
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			span = 0 // out of time: tell the rest now
		}
	}
	return conns
}

// drainFlushWait bounds how long the drain waits, once every client is
// told, for the slowest readers to take what was queued before their
// close frame.
const drainFlushWait = 5 * time.Second

// awaitFlushed waits until every connection the drain told has written
// what it had queued, its close frame last, and closed: a client that
// reads slowly still gets everything sent before its 1001, and the
// drain's record of it stays exact (conn.goAway). It waits up to
// drainFlushWait, keeping a tenth of what is left of ctx for the rest of
// the shutdown; a client that has not read its queue by then is cut, as
// a dropped connection.
func (s *Server) awaitFlushed(ctx context.Context, conns []*conn) {
	wait := drainFlushWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)*9/10)
	}
	deadline := time.Now().Add(wait)
	t := time.NewTicker(drainTick)
	defer t.Stop()
	for conns = stillOpen(conns); len(conns) > 0 && time.Now().Before(deadline) && ctx.Err() == nil; conns = stillOpen(conns) {
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
	for _, c := range conns {
		c.mu.Lock()
		c.flags &^= flagFlushing
		c.settleLocked()
	}
}

// stillOpen returns those of conns not yet closed, in conns' array.
func stillOpen(conns []*conn) []*conn {
	open := conns[:0]
	for _, c := range conns {
		c.mu.Lock()
		if c.state != stateClosed {
			open = append(open, c)
		}
		c.mu.Unlock()
	}
	return open
}

// goAway sends close 1001 to conns. With resuming on, it does so between
// two events, under the router's lock, and records where each
// connection's subscriptions stood: exactly what was queued before the
// close frame, which the kernel delivers ahead of the FIN.
func (s *Server) goAway(conns []*conn) {
	s.metrics.drainCloses.Add(float64(len(conns)))
	rs := s.resume
	if rs == nil {
		for _, c := range conns {
			c.goAway(nil)
		}
		return
	}
	var recs []history.Record
	s.router.mu.Lock()
	for _, c := range conns {
		recs = append(recs, c.goAway(rs)...)
	}
	s.router.mu.Unlock()
	rs.put(recs...)
}

// onPrepare runs when netpoll accepts a socket, before it is polled.
func (s *Server) onPrepare(nc netpoll.Connection) context.Context {
	c := &conn{Context: context.Background(), srv: s, nc: nc, fd: nc.(interface{ Fd() int }).Fd()}
	c.id = s.idx.Insert(c)
	c.opened = s.clock.Load()
	c.lastSeen.Store(c.opened)
	s.metrics.connections.Inc()
	if err := nc.AddCloseCallback(c.onClosed); err != nil {
		// Nothing would ever take the connection out of the index: refuse
		// it now.
		s.log.Warn("refusing a connection: netpoll close callback not set", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		c.mu.Lock()
		c.releaseLocked(false)
		_ = nc.Close()
		return c
	}
	if s.cfg.TCPKeepAlive > 0 {
		if err := setKeepAlive(c.fd, s.cfg.TCPKeepAlive); err != nil {
			s.log.Debug("tcp keepalive not set", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		}
	}
	if s.sendBuffer > 0 {
		if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, s.sendBuffer); err != nil {
			s.log.Debug("send buffer not set", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		}
	}
	s.handshakes.add(c, time.Now())
	return c
}

// onRequest runs on netpoll's pool when c has bytes to read.
func (s *Server) onRequest(ctx context.Context, nc netpoll.Connection) error {
	c := ctx.(*conn)
	defer c.recoverConn()
	c.onRead(nc.Reader())
	return nil
}

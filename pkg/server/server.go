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
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/index"
)

// Config is a node's configuration. Zero values take the documented defaults.
type Config struct {
	Listen      string // WebSocket address; default ":9505"
	AdminListen string // admin HTTP address; default "127.0.0.1:9506"
	Path        string // WebSocket path; default "/v1/realtime"
	// ReusePort lets several processes listen on the same WebSocket
	// address (SO_REUSEPORT): the kernel spreads new connections over
	// them, which is how a host outgrows one process's descriptor limit.
	ReusePort bool

	Projects []string // when non-empty, the only projects accepted
	APIKey   string   // when set, POST /v1/publish needs "Authorization: Bearer <APIKey>"

	MaxMessageSize   int // largest client message after reassembly; default 64 KiB
	MaxHeaderBytes   int // largest upgrade request head; default 8 KiB
	MaxQueueBytes    int // outbound bytes queued per connection before it is a slow consumer; default 1 MiB
	MaxSubscriptions int // subscriptions per connection; default 100

	ConnectsPerIP     int      // upgrades per client IP per minute; 0 disables
	MessagesPerMinute int      // client messages per connection per minute; 0 disables
	AllowedOrigins    []string // when non-empty, browser origins allowed to connect

	MaxConns         int           // upgraded connections held; above it upgrades get HTTP 503; 0 = no limit
	HandshakeTimeout time.Duration // bound on the upgrade request arriving whole; default 5 s
	DrainTime        time.Duration // Shutdown spreads the clients' close 1001 over this; 0 = all at once
	WriteWorkers     int           // write pool size; default 2 x GOMAXPROCS
	IndexShards      int           // subscription index shards; default 64

	// IdleTimeout closes (1001) an upgraded connection that sent no frame
	// for this long: a dead peer that TCP has not noticed yet. 0 disables.
	// The Appwrite SDK pings every 20 s, so anything well above that only
	// ever catches dead or stuck clients. Checked at one-second granularity.
	IdleTimeout time.Duration
	// TCPKeepAlive is the idle time before the kernel probes an accepted
	// socket (then every third of it, three probes): it reaps peers that
	// vanished without a FIN. Default 2 min; negative disables.
	TCPKeepAlive time.Duration

	AuthTimeout time.Duration // bound on one resolver call; default 5 s

	Broker   broker.Broker        // required
	Resolver auth.Resolver        // default auth.None
	Logger   *zap.Logger          // default zap.NewNop
	Registry *prometheus.Registry // default a new registry

	// sendBuffer, when positive, is the SO_SNDBUF of accepted sockets (the
	// kernel doubles it and locks it against autotuning). Tests only: a
	// small one makes writes end part-way whatever the host's tcp_wmem,
	// while the client keeps a receive window well above the MSS. A client
	// that shrinks its own SO_RCVBUF for this instead advertises a window
	// below the loopback MSS (64 KiB), and the server's unsent bytes then
	// wait on the persist timer's backed-off probes (issue 12).
	sendBuffer int
}

func (c *Config) setDefaults() {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.Listen == "" {
		c.Listen = ":9505"
	}
	if c.AdminListen == "" {
		c.AdminListen = "127.0.0.1:9506"
	}
	if c.Path == "" {
		c.Path = "/v1/realtime"
	}
	def(&c.MaxMessageSize, 64<<10)
	def(&c.MaxHeaderBytes, 8<<10)
	def(&c.MaxQueueBytes, 1<<20)
	def(&c.MaxSubscriptions, 100)
	def(&c.WriteWorkers, 2*runtime.GOMAXPROCS(0))
	def(&c.IndexShards, 64)
	if c.HandshakeTimeout <= 0 {
		c.HandshakeTimeout = 5 * time.Second
	}
	if c.TCPKeepAlive == 0 {
		c.TCPKeepAlive = 2 * time.Minute
	}
	if c.IdleTimeout < 0 {
		c.IdleTimeout = 0
	}
	if c.AuthTimeout <= 0 {
		c.AuthTimeout = 5 * time.Second
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

// Server is one Switchboard node.
type Server struct {
	cfg        Config
	log        *zap.Logger
	invalidLog *zap.Logger // sampled: garbage on the backbone must not flood the log
	metrics    *metrics
	allowed    map[string]bool

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
	readers    readerPool

	serving  atomic.Bool
	draining atomic.Bool

	ln, adminLn net.Listener
	loop        netpoll.EventLoop
	admin       *http.Server
	stopRouter  context.CancelFunc
	wg          sync.WaitGroup // router, pollers, sweeper, event loop, admin server
}

// New validates cfg and builds a node; Start makes it listen.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if cfg.Broker == nil {
		return nil, errors.New("server: config has no broker")
	}
	if cfg.MaxMessageSize > 16<<20 {
		return nil, fmt.Errorf("server: max message size %d is over 16 MiB", cfg.MaxMessageSize)
	}
	s := &Server{
		cfg: cfg,
		log: cfg.Logger,
		invalidLog: cfg.Logger.WithOptions(zap.WrapCore(func(c zapcore.Core) zapcore.Core {
			return zapcore.NewSamplerWithOptions(c, time.Second, 5, 0)
		})),
		metrics: newMetrics(cfg.Registry),
		idx:     index.New[*conn](cfg.IndexShards),
	}
	s.connects.limit = cfg.ConnectsPerIP
	s.projects.aware, _ = cfg.Broker.(broker.ProjectAware)
	s.handshakes = newHandshakeWheel(cfg.HandshakeTimeout)
	s.clock.Store(uint32(time.Now().Unix()))
	s.stopSweep = make(chan struct{})
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
// can connect.
func (s *Server) Start() error {
	var err error
	lc := net.ListenConfig{}
	if s.cfg.ReusePort {
		lc.Control = setReusePort
	}
	if s.ln, err = lc.Listen(context.Background(), "tcp", s.cfg.Listen); err != nil {
		return fmt.Errorf("listen %s: %w", s.cfg.Listen, err)
	}
	if s.adminLn, err = net.Listen("tcp", s.cfg.AdminListen); err != nil {
		s.ln.Close()
		return fmt.Errorf("admin listen %s: %w", s.cfg.AdminListen, err)
	}
	s.pool = newWritePool(s.cfg.WriteWorkers, 1<<16)
	if s.waiter, err = newPoller(unix.EPOLLOUT, (*conn).schedule); err != nil {
		s.ln.Close()
		s.adminLn.Close()
		return err
	}
	if s.input, err = newPoller(unix.EPOLLIN|unix.EPOLLRDHUP, (*conn).readable); err != nil {
		s.waiter.close()
		s.ln.Close()
		s.adminLn.Close()
		return err
	}
	s.loop, err = netpoll.NewEventLoop(s.onRequest, netpoll.WithOnPrepare(s.onPrepare))
	if err != nil {
		return fmt.Errorf("netpoll event loop: %w", err)
	}
	s.admin = &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second}

	ctx, cancel := context.WithCancel(context.Background())
	s.stopRouter = cancel
	rt := newRouter(s)
	s.wg.Add(6)
	go func() { defer s.wg.Done(); s.waiter.run() }()
	go func() { defer s.wg.Done(); s.input.run() }()
	go func() { defer s.wg.Done(); s.runSweeper(s.stopSweep) }()
	go func() {
		defer s.wg.Done()
		if err := s.cfg.Broker.Run(ctx, rt.route); err != nil && !errors.Is(err, context.Canceled) {
			s.log.Error("broker stopped", zap.Error(err))
		}
	}()
	go func() {
		defer s.wg.Done()
		if err := s.loop.Serve(s.ln); err != nil && !s.draining.Load() {
			s.log.Error("event loop stopped", zap.Error(err))
		}
	}()
	go func() {
		defer s.wg.Done()
		if err := s.admin.Serve(s.adminLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("admin server stopped", zap.Error(err))
		}
	}()
	s.serving.Store(true)
	s.log.Info("serving", zap.String("listen", s.ln.Addr().String()), zap.String("admin", s.adminLn.Addr().String()))
	return nil
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
// flowing to those not yet told; then the router, the listeners and the
// remaining sockets stop. The spread is shortened to end before ctx does.
// It returns when everything has stopped or ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.draining.CompareAndSwap(false, true) {
		return errors.New("server: already shut down")
	}
	s.log.Info("telling clients to go away", zap.Int64("connections", s.open.Load()), zap.Duration("drain_time", s.cfg.DrainTime))
	s.goAwayAll(ctx)
	s.stopRouter()
	err := s.loop.Shutdown(ctx)
	if e := s.admin.Shutdown(ctx); err == nil {
		err = e
	}
	// Sockets netpoll handed over are ours to close.
	for _, c := range s.input.registered() {
		c.shut()
	}
	s.input.close()
	s.waiter.close()
	close(s.stopSweep)
	s.wg.Wait()
	s.pool.stop()
	s.quarantine.closeAll()
	s.serving.Store(false)
	return err
}

// drainTick is the step of the drain: each tick closes the share of
// connections that the elapsed time allows.
const drainTick = 10 * time.Millisecond

// goAwayAll sends close 1001 to every connection, spread over DrainTime
// (or what is left of ctx, keeping a tenth of it for the rest of the
// shutdown).
func (s *Server) goAwayAll(ctx context.Context) {
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
		for ; done < due; done++ {
			conns[done].goAway()
			s.metrics.drainCloses.Inc()
		}
		if done == len(conns) {
			break
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			span = 0 // out of time: tell the rest now
		}
	}
}

// onPrepare runs when netpoll accepts a socket, before it is polled.
func (s *Server) onPrepare(nc netpoll.Connection) context.Context {
	c := &conn{Context: context.Background(), srv: s, nc: nc, fd: nc.(interface{ Fd() int }).Fd()}
	c.id = s.idx.Insert(c)
	c.lastSeen.Store(s.clock.Load())
	_ = nc.AddCloseCallback(c.onClosed)
	s.metrics.connections.Inc()
	if s.cfg.TCPKeepAlive > 0 {
		if err := setKeepAlive(c.fd, s.cfg.TCPKeepAlive); err != nil {
			s.log.Debug("tcp keepalive not set", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		}
	}
	if s.cfg.sendBuffer > 0 {
		if err := unix.SetsockoptInt(c.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, s.cfg.sendBuffer); err != nil {
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

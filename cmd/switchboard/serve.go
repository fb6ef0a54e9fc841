package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cloudwego/netpoll"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"golang.org/x/sys/unix"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/history"
	"github.com/switchboard-rt/switchboard/pkg/server"
)

// Defaults of the flags serve consumes itself rather than passing on in
// server.Config.
const (
	defaultShutdownTimeout = 10 * time.Second
	// defaultReadBuffer is netpoll's input buffer per connection in its
	// upgrade, a quarter of netpoll's own 4 KiB default (measured when it
	// was chosen: 8.8 KB -> 5.2 KB RSS per idle connection at 10k).
	defaultReadBuffer = 1024
)

func serve(args []string, getenv func(string) string, stderr io.Writer) int {
	// First of all: a SIGTERM while the node starts (a deploy that changes
	// its mind, a supervisor stopping a crash loop) must lead to the drain
	// once the node is up, not kill the process with its clients untold.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)

	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usageWithEnv(fs, "switchboard serve [flags]")
	var (
		cfg             server.Config
		projects        string
		authMode        string
		jwtSecret       string
		authOpts        auth.HTTPOptions
		appwriteOpts    auth.AppwriteOptions
		logLevel        string
		logFormat       string
		shutdownTimeout time.Duration
		usageRetention  time.Duration
		resumeWindow    time.Duration
		bf              brokerFlags
		origins         string
		readBuffer      int
		trustedProxies  string
		compression     string
	)
	fs.StringVar(&cfg.Listen, "listen", server.DefaultListen, "WebSocket listen address")
	fs.StringVar(&cfg.AdminListen, "admin-listen", server.DefaultAdminListen, "admin HTTP listen address (publish, metrics, health, pprof, the dashboard at /)")
	fs.StringVar(&cfg.Path, "path", server.DefaultPath, "WebSocket endpoint path")
	fs.StringVar(&projects, "projects", "", "comma-separated project ids to accept; empty accepts any")
	fs.StringVar(&cfg.APIKey, "api-key", "", "bearer key required by POST /v1/publish, /v1/presences, /v1/explain, /v1/connections and the dashboard (GET /, where a browser gives it as the basic-auth password); empty requires none")
	fs.StringVar(&authMode, "auth", "none", "auth resolver: none (everyone is a guest), jwt (HS256), http (ask --auth-url) or appwrite (ask Appwrite's API at --appwrite-endpoint)")
	fs.StringVar(&jwtSecret, "jwt-secret", "", "HS256 secret for --auth jwt")
	fs.StringVar(&authOpts.URL, "auth-url", "", "backend URL for --auth http (POST {project, session|jwt|userId})")
	fs.DurationVar(&authOpts.CacheTTL, "auth-cache-ttl", auth.DefaultCacheTTL, "how long --auth http and --auth appwrite reuse an answer per session (-1s: never)")
	fs.StringVar(&authOpts.BearerAuth, "auth-key", "", "bearer key sent to --auth-url")
	fs.StringVar(&appwriteOpts.Endpoint, "appwrite-endpoint", "", "Appwrite API root for --auth appwrite, as the SDKs' setEndpoint takes it (https://appwrite.example.com/v1)")
	fs.StringVar(&appwriteOpts.APIKey, "appwrite-api-key", "", "Appwrite API key (users.read scope) for --auth appwrite: memberships from GET /users/{id}/memberships and permissionsChanged re-resolves users; empty: memberships from the user's own session, and a permission change asks the user to authenticate again")
	fs.IntVar(&appwriteOpts.MaxInFlight, "appwrite-max-in-flight", auth.DefaultAppwriteMaxInFlight, "requests in flight to Appwrite from this node with --auth appwrite; more wait, within --auth-timeout")
	fs.DurationVar(&cfg.AuthTimeout, "auth-timeout", server.DefaultAuthTimeout, "bound on one auth resolver call")
	fs.IntVar(&cfg.MaxMessageSize, "max-message-size", server.DefaultMaxMessageSize, "largest client message in bytes after reassembly; larger closes with 1009")
	fs.StringVar(&compression, "compression", "on", "permessage-deflate (RFC 7692) with clients that offer it, events compressed once for all their recipients: on or off")
	fs.IntVar(&cfg.CompressionMinBytes, "compression-min-bytes", server.DefaultCompressionMinBytes, "smallest event message in bytes (the whole frame payload) sent compressed (-1: every event)")
	fs.IntVar(&cfg.MaxHeaderBytes, "max-header-bytes", server.DefaultMaxHeaderBytes, "largest upgrade request head in bytes")
	fs.IntVar(&cfg.MaxQueueBytes, "max-queue-bytes", server.DefaultMaxQueueBytes, "outbound bytes queued per connection before it is closed as a slow consumer")
	fs.IntVar(&cfg.MaxSubscriptions, "max-subscriptions", server.DefaultMaxSubscriptions, "subscriptions per connection; more are refused with error 1003")
	fs.IntVar(&cfg.ConnectsPerIP, "connects-per-ip", server.DefaultConnectsPerIP, "WebSocket connects per client IP per minute; more get error 1013 and close (-1: no limit)")
	fs.IntVar(&cfg.ConnectsIPv6Prefix, "connects-ipv6-prefix", server.DefaultConnectsIPv6Prefix, "--connects-per-ip counts IPv6 clients per prefix of this length (a /64 is one subscriber's network; 128: per address)")
	fs.IntVar(&cfg.MessagesPerMinute, "messages-per-minute", server.DefaultMessagesPerMinute, "client messages per connection per minute; more get error 1013 (-1: no limit)")
	fs.BoolVar(&cfg.ProxyProtocol, "proxy-protocol", false, "require a PROXY protocol header (v1 or v2, as HAProxy send-proxy-v2 or AWS NLB send) on every WebSocket connection and take the client's address from it; connections without one are refused")
	fs.StringVar(&trustedProxies, "trusted-proxies", "", "comma-separated CIDRs or addresses of load balancers: with --proxy-protocol the only peers that may connect; their X-Forwarded-For (right-most untrusted address) or X-Real-IP names the client (empty: never read)")
	fs.StringVar(&origins, "allowed-origins", "", "comma-separated browser origins allowed to connect (scheme://host, host, *.domain); empty allows all")
	fs.IntVar(&cfg.MaxConns, "max-conns", 0, "upgraded connections held by this node; above it upgrades get HTTP 503 (the default, 0, is no limit; so is -1)")
	fs.DurationVar(&cfg.HandshakeTimeout, "handshake-timeout", server.DefaultHandshakeTimeout, "a connection must complete its upgrade request within this")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", 0, "close (1001) upgraded connections that send no frame for this long; the SDK pings every 20s (the default, 0, is off; so is -1s)")
	fs.DurationVar(&cfg.TCPKeepAlive, "tcp-keepalive", server.DefaultTCPKeepAlive, "TCP keepalive idle time on accepted sockets, then probes every third of it, three probes (-1s: off)")
	fs.IntVar(&cfg.WriteWorkers, "write-workers", 0, "write pool goroutines (0: 2 x GOMAXPROCS)")
	fs.IntVar(&cfg.IndexShards, "index-shards", server.DefaultIndexShards, "subscription index shards (rounded up to a power of two)")
	fs.IntVar(&readBuffer, "read-buffer", defaultReadBuffer, "netpoll's input buffer in bytes for a connection in its HTTP upgrade (upgraded connections leave netpoll and hold no buffer while idle)")
	bf.register(fs)
	fs.StringVar(&logLevel, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&logFormat, "log-format", "auto", "log format: auto (console on a terminal, else json), json, console")
	fs.DurationVar(&shutdownTimeout, "shutdown-timeout", defaultShutdownTimeout, "bound on the whole shutdown after SIGTERM/SIGINT (the drain included); it cannot be switched off")
	fs.BoolVar(&cfg.ReusePort, "reuse-port", false, "listen with SO_REUSEPORT so several processes share --listen (the kernel spreads connections over them)")
	fs.DurationVar(&cfg.PresenceGrace, "presence-grace", server.DefaultPresenceGrace, "the presences of a node that died are deleted, with their delete events, by the other nodes within this (with --redis-url)")
	fs.IntVar(&cfg.MaxPresenceBytes, "max-presence-bytes", server.DefaultMaxPresenceBytes, "largest presence metadata in bytes (compacted JSON); more gets error 1003")
	fs.DurationVar(&usageRetention, "usage-retention", 0, "how long per-project usage (GET /v1/usage) is kept at one-minute resolution; 0: 168h (7 days) in Redis with --redis-url, 1h in the node's memory without")
	fs.DurationVar(&resumeWindow, "resume-window", history.DefaultWindow, "a subscription that comes back under its id (SDK 25+) within this gets the events it missed (RESUME.md); -1s: off")
	fs.DurationVar(&cfg.DrainTime, "drain-time", server.DefaultDrainTime, "after SIGTERM, clients get close 1001 spread over this, so they reconnect elsewhere without a stampede (-1s: all at once)")
	if err := parseFlags(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "switchboard serve:", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "switchboard serve: unexpected arguments %q\n", fs.Args())
		return 2
	}
	// server.New gives the fields of cfg the table's rule (zero is the
	// default); the flags serve consumes itself get it here.
	if err := errors.Join(
		flagDefault("shutdown-timeout", &shutdownTimeout, defaultShutdownTimeout),
		flagDefault("read-buffer", &readBuffer, defaultReadBuffer),
		flagDefault("usage-retention", &usageRetention, 0),
		flagDefault("appwrite-max-in-flight", &appwriteOpts.MaxInFlight, auth.DefaultAppwriteMaxInFlight),
	); err != nil {
		fmt.Fprintln(stderr, "switchboard serve:", err)
		return 2
	}

	// netpoll's buffer size is process-wide and must be set before the
	// first connection, so it is the command's business, not the server's.
	netpoll.LinkBufferCap = readBuffer // the floor of every buffer node; netpoll's default is 4 KiB
	if err := netpoll.Configure(netpoll.Config{BufferSize: readBuffer}); err != nil {
		fmt.Fprintln(stderr, "switchboard serve: --read-buffer:", err)
		return 2
	}
	log, err := newLogger(logLevel, logFormat, os.Stderr)
	if err != nil {
		fmt.Fprintln(stderr, "switchboard serve:", err)
		return 2
	}
	defer log.Sync()
	log.Info("starting", zap.String("listen", cfg.Listen), zap.String("admin", cfg.AdminListen))

	switch compression {
	case "on":
	case "off":
		cfg.Compression = server.Off
	default:
		fmt.Fprintf(stderr, "switchboard serve: unknown --compression %q (want on or off)\n", compression)
		return 2
	}
	cfg.Projects = splitList(projects)
	cfg.AllowedOrigins = splitList(origins)
	if cfg.TrustedProxies, err = parsePrefixes(splitList(trustedProxies)); err != nil {
		fmt.Fprintln(stderr, "switchboard serve: --trusted-proxies:", err)
		return 2
	}
	// Before the resolver: --auth appwrite registers its metrics here.
	cfg.Registry = prometheus.NewRegistry()
	switch authMode {
	case "none":
		cfg.Resolver = auth.None{}
	case "jwt":
		r, err := auth.NewJWT([]byte(jwtSecret))
		if err != nil {
			fmt.Fprintln(stderr, "switchboard serve: --auth jwt:", err)
			return 2
		}
		cfg.Resolver = r
	case "appwrite":
		appwriteOpts.Timeout = cmp.Or(cfg.AuthTimeout, server.DefaultAuthTimeout)
		appwriteOpts.CacheTTL = authOpts.CacheTTL
		appwriteOpts.Registry = cfg.Registry
		r, err := auth.NewAppwrite(appwriteOpts)
		if err != nil {
			fmt.Fprintln(stderr, "switchboard serve: --auth appwrite:", err)
			return 2
		}
		cfg.Resolver = r
	case "http":
		// The resolver's own default is shorter: a zero --auth-timeout must
		// bound its calls by the server's default, as it does the rest.
		authOpts.Timeout = cmp.Or(cfg.AuthTimeout, server.DefaultAuthTimeout)
		r, err := auth.NewHTTP(authOpts)
		if err != nil {
			fmt.Fprintln(stderr, "switchboard serve: --auth http:", err)
			return 2
		}
		cfg.Resolver = r
	default:
		fmt.Fprintf(stderr, "switchboard serve: unknown --auth %q (want none, jwt, http or appwrite)\n", authMode)
		return 2
	}
	cfg.Logger = log
	if resumeWindow == 0 {
		resumeWindow = history.DefaultWindow
	}
	if resumeWindow > 0 {
		rc, closeResume, err := bf.resume(resumeWindow, log.Named("history"))
		if err != nil {
			fmt.Fprintln(stderr, "switchboard serve:", err)
			return 2
		}
		defer closeResume()
		cfg.Resume = rc
	}
	b, closeBroker, err := bf.open(log, cfg.Registry)
	if err != nil {
		fmt.Fprintln(stderr, "switchboard serve:", err)
		return 2
	}
	defer closeBroker()
	cfg.Broker = b
	if cfg.Resume != nil {
		wantAll(b)
	}
	ps, closePresences, err := bf.presences()
	if err != nil {
		fmt.Fprintln(stderr, "switchboard serve:", err)
		return 2
	}
	defer closePresences()
	cfg.Presences = ps
	us, closeUsage, err := bf.usageStore(usageRetention)
	if err != nil {
		fmt.Fprintln(stderr, "switchboard serve:", err)
		return 2
	}
	defer closeUsage()
	cfg.Usage = us
	peers, closePeers, err := bf.peers(log, nodesSuffix, "dashboard")
	if err != nil {
		fmt.Fprintln(stderr, "switchboard serve:", err)
		return 2
	}
	defer closePeers()
	cfg.Peers = peers
	adminPeers, closeAdminPeers, err := bf.peers(log, adminSuffix, "explain")
	if err != nil {
		fmt.Fprintln(stderr, "switchboard serve:", err)
		return 2
	}
	defer closeAdminPeers()
	cfg.AdminPeers = adminPeers

	srv, err := server.New(cfg)
	if err != nil {
		log.Error("configuration", zap.Error(err))
		return 2
	}
	if err := srv.Start(); err != nil {
		log.Error("start", zap.Error(err))
		return 1
	}

	s := <-sig
	log.Info("draining", zap.String("signal", s.String()), zap.Duration("timeout", shutdownTimeout))
	go exitIfStuck(log, sig, shutdownTimeout+exitGrace)
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		log.Error("shutdown did not finish within --shutdown-timeout", zap.Error(err))
		return 1
	}
	log.Info("stopped")
	return 0
}

// exitGrace is what the process may take past --shutdown-timeout to close
// the broker and flush its log before exitIfStuck ends it.
const exitGrace = 500 * time.Millisecond

// exitIfStuck ends the process when the shutdown has not by the deadline,
// or at once on a second signal: whatever is stuck, the node exits.
func exitIfStuck(log *zap.Logger, sig <-chan os.Signal, after time.Duration) {
	t := time.NewTimer(after)
	select {
	case s := <-sig:
		log.Error("second signal: exiting before the drain is done", zap.String("signal", s.String()))
	case <-t.C:
		log.Error("still not stopped past --shutdown-timeout: exiting", zap.Duration("after", after))
	}
	_ = log.Sync()
	os.Exit(1)
}

// newLogger builds the zap logger: console lines for a person at a
// terminal, JSON for everything else.
func newLogger(level, format string, out *os.File) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	if format == "auto" {
		format = "json"
		if _, err := unix.IoctlGetTermios(int(out.Fd()), unix.TCGETS); err == nil {
			format = "console"
		}
	}
	encCfg := zap.NewProductionEncoderConfig()
	encCfg.EncodeTime = zapcore.ISO8601TimeEncoder
	var enc zapcore.Encoder
	switch format {
	case "json":
		enc = zapcore.NewJSONEncoder(encCfg)
	case "console":
		encCfg.EncodeLevel = zapcore.CapitalColorLevelEncoder
		enc = zapcore.NewConsoleEncoder(encCfg)
	default:
		return nil, fmt.Errorf("--log-format %q: want auto, json or console", format)
	}
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(out), lvl)), nil
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/loadgen"
)

// workerFlag starts the hidden worker mode: the parent `switchboard bench`
// re-executes itself with it when the run needs several processes, and
// talks to the worker over its stdin and stdout.
const workerFlag = "--worker"

// benchCmd runs the load generator and prints one JSON summary line.
func benchCmd(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == workerFlag {
		// Ctrl-C reaches the whole process group; the parent decides
		// when workers close, so they can still report.
		signal.Ignore(syscall.SIGINT)
		if err := loadgen.RunWorker(os.Stdin, stdout); err != nil {
			fmt.Fprintln(stderr, "switchboard bench worker:", err)
			return 1
		}
		return 0
	}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usageWithEnv(fs, "switchboard bench --url ws://HOST:PORT/v1/realtime?project=P&channels[]=C --conns N [flags]")
	var (
		cfg   loadgen.Config
		roles string
		nodes string
		pids  pidList
	)
	fs.StringVar(&cfg.URL, "url", "ws://127.0.0.1:9505/v1/realtime?project=bench&channels[]=files", "WebSocket URL with project and channels[]")
	fs.IntVar(&cfg.Conns, "conns", 1000, "connections to open in total")
	fs.Float64Var(&cfg.Rate, "rate", 1000, "connections per second (0: as fast as possible)")
	fs.DurationVar(&cfg.Hold, "hold", 10*time.Second, "how long to keep the connections open after the ramp")
	fs.IntVar(&cfg.Workers, "workers", 0, "worker processes (0: as few as the descriptor limit allows)")
	fs.IntVar(&cfg.MaxFDsPerWorker, "max-fds-per-worker", 0, "descriptor budget per worker process (0: RLIMIT_NOFILE)")
	fs.IntVar(&cfg.Loops, "loops", 0, "event-loop goroutines per process (0: GOMAXPROCS)")
	fs.IntVar(&cfg.SourceIPs, "source-ips", 0, "loopback source addresses 127.0.0.2.. to spread over (0: one per 16,000 connections, at least 2)")
	fs.StringVar(&cfg.Auth, "auth", "", "session sent in an `authentication` message after `connected`")
	fs.DurationVar(&cfg.PingEvery, "ping-every", 0, `send {"type":"ping"} on every connection at this interval (0: never)`)
	fs.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 10*time.Second, "bound from connect() to `connected`")
	fs.DurationVar(&cfg.CloseTimeout, "close-timeout", 3*time.Second, "bound on the wait for the server's close frames at the end")
	fs.IntVar(&cfg.Stalled, "stalled", 0, "connections (spread evenly) that stop reading after `connected`, so the server must treat them as slow consumers; event figures then cover the others")
	fs.Float64Var(&cfg.Compressing, "compressing", 0, "fraction of the connections (0-1, spread evenly) that offer permessage-deflate as browsers do and inflate the events they receive")
	fs.StringVar(&cfg.PublishURL, "publish-url", "", "admin publish endpoint, e.g. http://127.0.0.1:9506/v1/publish (empty: no events)")
	fs.StringVar(&cfg.APIKey, "api-key", "", "bearer key for --publish-url")
	fs.Float64Var(&cfg.PublishRate, "publish-rate", 10, "events per second")
	fs.IntVar(&cfg.Events, "events", 0, "events to publish (broadcast to the URL's project and channels)")
	fs.DurationVar(&cfg.Drain, "drain", 10*time.Second, "bound on the wait for deliveries after the last publish")
	fs.StringVar(&roles, "roles", "any", "comma-separated roles of the published events")
	fs.IntVar(&cfg.PayloadBytes, "payload-bytes", 0, "pad each event payload to about this many bytes (0: no padding, ~40 bytes)")
	fs.BoolVar(&cfg.Resume, "resume", false, "connections act as the Appwrite Web SDK 25+ across a drain: subscribe by message under ids of their own, come back after --reconnect-delay to the next node when the server ends them, and have every event checked (missing, duplicated, out of order)")
	fs.DurationVar(&cfg.ReconnectDelay, "reconnect-delay", loadgen.DefaultReconnectDelay, "with --resume: the wait before each reconnect (the SDK's: 1 s, no jitter)")
	fs.StringVar(&nodes, "nodes", "", "comma-separated host:port of more nodes serving --url's path: connections spread over them, and with --resume come back to the next")
	fs.Var(&pids, "server-pid", "server process to report RSS of (repeatable, or a comma list)")
	if err := parseFlags(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "switchboard bench:", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "switchboard bench: unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg.Roles = splitList(roles)
	cfg.Nodes = splitList(nodes)
	cfg.ServerPIDs = pids
	cfg.WorkerCommand = func() (string, []string, []string) {
		exe, err := os.Executable()
		if err != nil {
			exe = os.Args[0]
		}
		return exe, []string{"bench", workerFlag}, nil
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	sum, err := loadgen.Run(ctx, cfg, stderr, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "switchboard bench:", err)
		return 1
	}
	b, err := json.Marshal(sum)
	if err != nil {
		fmt.Fprintln(stderr, "switchboard bench: encoding summary:", err)
		return 1
	}
	fmt.Fprintf(stdout, "%s\n", b)
	return 0
}

// pidList is a repeatable --server-pid that also takes comma lists.
type pidList []int

func (p *pidList) String() string {
	if p == nil || len(*p) == 0 {
		return ""
	}
	return fmt.Sprint([]int(*p))
}

func (p *pidList) Set(s string) error {
	for _, f := range splitList(s) {
		n, err := strconv.Atoi(f)
		if err != nil || n <= 0 {
			return fmt.Errorf("bad pid %q", f)
		}
		*p = append(*p, n)
	}
	return nil
}

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/switchboard-rt/switchboard/pkg/hostcheck"
)

// doctorCmd compares this host's limits and memory with what --conns
// connections need and prints the command that fixes each shortfall. Exit
// status 1 means the host cannot hold that many; 0 means it can (advice
// marked low or info may remain).
func doctorCmd(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("doctor", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = usageWithEnv(fs, "switchboard doctor [--conns N] [flags]")
	b := hostcheck.DefaultBudget(1_000_000)
	proc := "/proc"
	fs.IntVar(&b.Conns, "conns", b.Conns, "connections this node must hold")
	fs.IntVar(&b.ServerBytes, "server-bytes", b.ServerBytes, "node memory per idle connection in bytes")
	fs.IntVar(&b.KernelBytes, "kernel-bytes", b.KernelBytes, "kernel memory per established socket in bytes")
	fs.IntVar(&b.QueuedBytes, "queued-bytes", b.QueuedBytes, "socket memory per connection while a broadcast is queued, in bytes (checked against tcp_mem)")
	fs.IntVar(&b.Port, "port", b.Port, "WebSocket port (used in the conntrack fix commands)")
	fs.StringVar(&proc, "proc", proc, "proc file system to read (a copy, for tests)")
	if err := parseFlags(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "switchboard doctor:", err)
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "switchboard doctor: unexpected arguments %q\n", fs.Args())
		return 2
	}
	b.PageSize = os.Getpagesize()
	report, err := hostcheck.Run(os.DirFS(proc), b)
	if err != nil {
		fmt.Fprintln(stderr, "switchboard doctor:", err)
		return 2
	}
	if err := report.Write(stdout); err != nil {
		fmt.Fprintln(stderr, "switchboard doctor:", err)
		return 2
	}
	if !report.CanHold() {
		return 1
	}
	return 0
}

// Command switchboard runs and operates Switchboard, a realtime WebSocket
// server speaking the Appwrite Realtime protocol.
//
// Usage:
//
//	switchboard serve [flags]     run a node
//	switchboard publish [flags]   publish one event through a node's admin API
//	switchboard doctor [flags]    check this host's limits for --conns connections
//	switchboard bench [flags]     load-test a node (connections, fan-out latency, memory)
//
// Every flag can also be given as an environment variable
// SWITCHBOARD_<FLAG_IN_UPPER_SNAKE>, e.g. SWITCHBOARD_ADMIN_LISTEN; a flag on
// the command line wins over the environment.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() {
	os.Exit(run(os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// run dispatches a subcommand and returns the process exit status.
func run(args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], getenv, stderr)
	case "publish":
		return publishCmd(args[1:], getenv, stdout, stderr)
	case "doctor":
		return doctorCmd(args[1:], getenv, stdout, stderr)
	case "bench":
		return benchCmd(args[1:], getenv, stdout, stderr)
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return 0
	default:
		fmt.Fprintf(stderr, "switchboard: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `Switchboard: a realtime WebSocket server speaking the Appwrite Realtime protocol.

Usage:
  switchboard serve [flags]    run a node (see 'switchboard serve --help')
  switchboard publish [flags]  publish one event through a node (see 'switchboard publish --help')
  switchboard doctor [flags]   can this host hold --conns N connections? (see 'switchboard doctor --help')
  switchboard bench [flags]    load-test a node (see 'switchboard bench --help')

Every flag can also be set as SWITCHBOARD_<FLAG_IN_UPPER_SNAKE>.
`)
}

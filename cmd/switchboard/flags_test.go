package main

import (
	"context"
	"errors"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// The flags serve consumes itself follow the README's rule as
// server.Config's fields do: 0 takes the default. `--shutdown-timeout 0`
// used to reach context.WithTimeout as is, a shutdown with no time at all.
func TestServeZeroFlagsTakeTheirDefaults(t *testing.T) {
	shutdown := time.Duration(0)
	if err := flagDefault("shutdown-timeout", &shutdown, defaultShutdownTimeout); err != nil || shutdown != 10*time.Second {
		t.Errorf("--shutdown-timeout 0 became %v (%v), want 10s", shutdown, err)
	}
	readBuffer := 0
	if err := flagDefault("read-buffer", &readBuffer, defaultReadBuffer); err != nil || readBuffer != 1024 {
		t.Errorf("--read-buffer 0 became %d (%v), want 1024", readBuffer, err)
	}
	given := 3 * time.Second
	if err := flagDefault("shutdown-timeout", &given, defaultShutdownTimeout); err != nil || given != 3*time.Second {
		t.Errorf("--shutdown-timeout 3s became %v (%v)", given, err)
	}
	// The embedded broker took a zero buffer as 1, and the dashboard's
	// peers an empty channel as ".nodes".
	var bf brokerFlags
	if err := bf.applyDefaults(); err != nil || bf.buffer != broker.DefaultBuffer || bf.partitions != broker.DefaultPartitions || bf.channel != broker.DefaultChannel {
		t.Errorf("zero broker flags became %+v (%v)", bf, err)
	}
}

// A negative value means "off" only for a limit that can be switched off;
// for any other flag, serve refuses it before it binds anything. These used
// to start a node: a shutdown with no time at all, a broker buffer of 1.
func TestServeRefusesNegativeFlagsThatCannotBeSwitchedOff(t *testing.T) {
	for _, tc := range []struct{ flag, value string }{
		{"shutdown-timeout", "-1s"},
		{"read-buffer", "-1"},
		{"broker-buffer", "-1"},
		{"redis-partitions", "-1"},
		{"auth-timeout", "-1s"},
		{"max-queue-bytes", "-1"},
	} {
		t.Run(tc.flag, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, switchboardBin, "serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
				"--log-level", "warn", "--"+tc.flag, tc.value)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if ctx.Err() != nil || !errors.As(err, &exit) || exit.ExitCode() != 2 {
				t.Fatalf("--%s %s: %v (want exit 2 at once)\n%s", tc.flag, tc.value, err, out)
			}
			if !strings.Contains(string(out), "negative") {
				t.Fatalf("--%s %s: the error does not say what is wrong:\n%s", tc.flag, tc.value, out)
			}
		})
	}
}

// Every flag whose help says -1 (or -1s) switches it off starts a node
// with it, and the node serves.
func TestServeTakesMinusOneForEveryLimitThatCanBeSwitchedOff(t *testing.T) {
	n := startNode(t, "--max-conns", "-1", "--idle-timeout", "-1s", "--connects-per-ip", "-1", "--messages-per-minute", "-1",
		"--tcp-keepalive", "-1s", "--drain-time", "-1s", "--compression-min-bytes", "-1",
		"--auth", "http", "--auth-url", "http://127.0.0.1:1/never-asked", "--auth-cache-ttl", "-1s")
	c, err := rawDial(n.addr, "project=p1&channels[]=files")
	if err != nil {
		t.Fatal(err)
	}
	c.conn.Close()
}

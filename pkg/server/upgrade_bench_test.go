package server

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// BenchmarkUpgrade measures upgrades per second over loopback, each from
// the TCP connect to the `connected` message, with --proxy-protocol off
// (a bare upgrade request) and on (a v2 header, as HAProxy send-proxy-v2
// writes it, in front of the same request): what the header costs a node.
// Four clients per core keep the node busy; each connection ends with a
// reset, so that a long run does not fill the port range with TIME_WAIT.
//
// On a shared machine the rate drifts between runs by more than the
// header costs, so "interleaved" runs a node of each kind side by side and
// alternates every client's upgrades between them: both see the same load
// at the same time, and it reports each kind's rate (upgrades over the
// time clients spent in them, per client) and on/off, their ratio.
//
//	go test -run '^$' -bench BenchmarkUpgrade/ -benchtime 20000x -count 6 ./pkg/server/
func BenchmarkUpgrade(b *testing.B) {
	kinds := []struct {
		name   string
		on     bool
		prefix []byte
	}{{"proxy-protocol=off", false, nil}, {"proxy-protocol=on", true, proxyV2("192.0.2.1")}}
	const perCore = 4
	for _, k := range kinds {
		b.Run(k.name, func(b *testing.B) {
			s := testNode(b, func(c *Config) { c.ProxyProtocol = k.on })
			req := append(append([]byte(nil), k.prefix...), upgradeRequest...)
			b.SetParallelism(perCore)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				buf := make([]byte, 0, 4096)
				for pb.Next() {
					if err := upgradeOnce(s.Addr().String(), req, &buf); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "upgrades/s")
		})
	}
	b.Run("interleaved", func(b *testing.B) {
		var addrs [2]string
		var reqs [2][]byte
		for i, k := range kinds {
			s := testNode(b, func(c *Config) { c.ProxyProtocol = k.on })
			addrs[i], reqs[i] = s.Addr().String(), append(append([]byte(nil), k.prefix...), upgradeRequest...)
		}
		var spent [2]atomic.Int64 // nanoseconds clients spent in upgrades of each kind
		var done [2]atomic.Int64
		var clients atomic.Int64
		var turn atomic.Int64
		b.SetParallelism(perCore)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			clients.Add(1)
			buf := make([]byte, 0, 4096)
			for k := int(turn.Add(1) % 2); pb.Next(); k ^= 1 {
				start := time.Now()
				if err := upgradeOnce(addrs[k], reqs[k], &buf); err != nil {
					b.Error(err)
					return
				}
				spent[k].Add(int64(time.Since(start)))
				done[k].Add(1)
			}
		})
		var rate [2]float64
		for k := range rate {
			rate[k] = float64(done[k].Load()) / (time.Duration(spent[k].Load()).Seconds() / float64(clients.Load()))
		}
		b.ReportMetric(rate[0], "off-upgrades/s")
		b.ReportMetric(rate[1], "on-upgrades/s")
		b.ReportMetric(rate[1]/rate[0], "on/off")
	})
}

// upgradeOnce connects to addr, sends req, reads until `connected`, and
// resets the connection. buf is the caller's read buffer.
func upgradeOnce(addr string, req []byte, buf *[]byte) error {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(req); err != nil {
		return err
	}
	b := (*buf)[:0]
	for !bytes.Contains(b, connectedMsg) {
		n, err := conn.Read(b[len(b):cap(b)])
		if err != nil {
			return fmt.Errorf("after %q: %w", b, err)
		}
		b = b[:len(b)+n]
	}
	*buf = b
	return conn.(*net.TCPConn).SetLinger(0)
}

var connectedMsg = []byte(`"type":"connected"`)

// BenchmarkUpgradeReadPath is the node's own CPU for one upgrade, without
// the kernel or netpoll: the request (behind a v2 header when on) fed to a
// connection's read path, the 101 and `connected` written to /dev/null,
// and the connection closed. Loopback figures (BenchmarkUpgrade) swing by
// 20 % on a shared machine; this one shows what the header adds.
func BenchmarkUpgradeReadPath(b *testing.B) {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer devnull.Close()
	for _, tc := range []struct {
		name   string
		on     bool
		prefix []byte
	}{{"proxy-protocol=off", false, nil}, {"proxy-protocol=on", true, proxyV2("192.0.2.1")}} {
		b.Run(tc.name, func(b *testing.B) {
			s := offlineNode(b, Config{Broker: broker.NewMemory(1), ProxyProtocol: tc.on, ConnectsPerIP: Off})
			req := append(append([]byte(nil), tc.prefix...), upgradeRequest...)
			in := make([]byte, len(req))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				copy(in, req) // netpoll's buffer, which the read path may alter
				c := &conn{Context: context.Background(), srv: s, nc: &fakeNC{}, fd: int(devnull.Fd())}
				c.id = s.idx.Insert(c)
				c.feed(in)
				if !c.upgraded {
					b.Fatal("not upgraded")
				}
				c.onClosed(nil)
			}
		})
	}
}

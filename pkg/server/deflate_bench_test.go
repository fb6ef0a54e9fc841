package server

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"testing"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// The payloads of the compression benchmarks: a realistic Appwrite
// database document of 2 KB and one of 200 bytes (appwriteDocument).
var benchDocs = []struct {
	name string
	size int
}{{"doc=2KB", 2048}, {"doc=200B", 200}}

// BenchmarkDeflateFanout is BenchmarkFanout for one event to 19,000
// recipients, all without compression or all with it: the router's CPU per
// delivery (route, match, frame, queue; no socket) and the bytes each
// delivery puts on the wire (wire-B/delivery: the whole frame). With
// compression the event's shared part is compressed once per event, inside
// the timed route (deflates/event counts it).
func BenchmarkDeflateFanout(b *testing.B) {
	const n = 19000
	for _, d := range benchDocs {
		for _, deflate := range []bool{false, true} {
			name := d.name + "/plain"
			if deflate {
				name = d.name + "/deflate"
			}
			b.Run(name, func(b *testing.B) { benchDeflateFanout(b, n, d.size, deflate) })
		}
	}
}

// BenchmarkDeflateOncePerEvent routes one 2 KB event to 1 to 19,000
// recipients that all compress, next to the same without compression: the
// difference per event (compressed ns/op minus plain ns/op) is the
// compression's cost, and it does not grow with the recipients.
func BenchmarkDeflateOncePerEvent(b *testing.B) {
	for _, n := range []int{1, 100, 1000, 19000} {
		for _, deflate := range []bool{false, true} {
			name := fmt.Sprintf("recipients=%d/plain", n)
			if deflate {
				name = fmt.Sprintf("recipients=%d/deflate", n)
			}
			b.Run(name, func(b *testing.B) { benchDeflateFanout(b, n, 2048, deflate) })
		}
	}
}

func benchDeflateFanout(b *testing.B, n, docSize int, deflate bool) {
	var flags connFlags
	if deflate {
		flags = flagDeflate
	}
	s, conns := fanoutNode(b, Config{Broker: broker.NewMemory(1)}, n, true, nil, flags)
	msg := []byte(event("p1", []string{"any"}, []string{"files"}, appwriteDocument(docSize)))
	r := s.router
	r.route(msg) // one untimed round to read a queued frame's size
	wire := conns[0].q.frames[0].size()
	for range conns {
		c := <-s.pool.ch
		c.q = sendQueue{}
	}
	before := counterOf(b, s, "switchboard_deflate_events_total")
	routeRounds(b, s, conns, msg)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
	b.ReportMetric(float64(wire), "wire-B/delivery")
	b.ReportMetric((counterOf(b, s, "switchboard_deflate_events_total")-before)/float64(b.N), "deflates/event")
}

// counterOf is counterValue for benchmarks.
func counterOf(b *testing.B, s *Server, name string) float64 {
	v, err := metricSum(s, name)
	if err != nil {
		b.Fatal(err)
	}
	return v
}

// BenchmarkDeflateShared is the compression CPU of one event's shared part
// (the router pays it once per event): compress/flate at BestSpeed with a
// sync flush, reset per event.
func BenchmarkDeflateShared(b *testing.B) {
	for _, d := range benchDocs {
		b.Run(d.name, func(b *testing.B) {
			var z eventDeflater
			p := []byte(appwriteDocument(d.size))
			b.ReportAllocs()
			b.SetBytes(int64(len(p)))
			var out int
			for i := 0; i < b.N; i++ {
				out = len(z.deflateShared(p))
			}
			b.ReportMetric(float64(out), "deflated-B")
		})
	}
}

// BenchmarkInflate is what a compressed client message costs the node: a
// pooled inflater taken, the message inflated (bounded), the inflater given
// back. Client messages are small (subscribe, ping, presence); the 2 KB
// document stands for a large presence.
func BenchmarkInflate(b *testing.B) {
	msgs := []struct {
		name string
		p    []byte
	}{
		{"msg=subscribe", []byte(`{"type":"subscribe","data":[{"subscriptionId":"a1b2c3","channels":["databases.chat.collections.messages.documents"],"queries":[]}]}`)},
		{"msg=2KB", []byte(appwriteDocument(2048))},
	}
	for _, m := range msgs {
		b.Run(m.name, func(b *testing.B) {
			var pool inflaterPool
			z := deflated(b, m.p, false)
			b.ReportAllocs()
			b.SetBytes(int64(len(m.p)))
			for i := 0; i < b.N; i++ {
				in := pool.get()
				if _, err := in.Inflate(z, DefaultMaxMessageSize); err != nil {
					b.Fatal(err)
				}
				pool.put(in)
			}
		})
	}
}

// BenchmarkDeflateWriteFloor is BenchmarkLoopbackWriteFloor with the real
// frames of a 2 KB and a 200-byte event, plain and compressed: the kernel's
// share of a delivery, which shrinks with the bytes. Added to
// BenchmarkDeflateFanout's ns/delivery it gives the node's CPU per delivery
// (both ends of the sockets are in this process, so at most ~9,900
// sockets: the per-delivery cost is what scales to 19,000).
func BenchmarkDeflateWriteFloor(b *testing.B) {
	srv, cli := loopbackPairs(b)
	n := len(srv)
	for _, d := range benchDocs {
		for _, deflate := range []bool{false, true} {
			var flags connFlags
			name := d.name + "/plain"
			if deflate {
				flags, name = flagDeflate, d.name+"/deflate"
			}
			s, conns := fanoutNode(b, Config{Broker: broker.NewMemory(1)}, 1, true, nil, flags)
			s.router.route([]byte(event("p1", []string{"any"}, []string{"files"}, appwriteDocument(d.size))))
			frame := conns[0].q.frames[0]
			b.Run(fmt.Sprintf("%s/conns=%d/writers=2/readers=1", name, n), func(b *testing.B) {
				benchWriteFloor(b, srv, cli, frame, 2, 1)
				b.ReportMetric(float64(frame.size()), "wire-B/delivery")
			})
		}
	}
}

// BenchmarkIdleConnHeap is the heap an idle upgraded connection keeps
// (after a GC), for a client that offers nothing and for one that
// negotiated permessage-deflate: compression must cost an idle connection
// nothing (no compressor, no inflater, only its flagDeflate bit). Each
// iteration upgrades one connection through the read path, as
// BenchmarkUpgradeReadPath does, and keeps it open.
func BenchmarkIdleConnHeap(b *testing.B) {
	for _, tc := range []struct{ name, req string }{{"offer=none", upgradeRequest}, {"offer=permessage-deflate", upgradeRequestDeflate}} {
		b.Run(tc.name, func(b *testing.B) {
			s := offlineNode(b, Config{Broker: broker.NewMemory(1), ConnectsPerIP: Off})
			conns := idleConnHeap(b, s, func(int) []byte { return []byte(tc.req) })
			if tc.req == upgradeRequestDeflate && conns[0].flags&flagDeflate == 0 {
				b.Fatal("the offer was not agreed")
			}
		})
	}
}

// idleConnHeap opens b.N connections on s, each fed input(i) (its
// upgrade, and what it sends after), reports the heap they hold once idle
// per connection (heap-B/conn), and closes them when the benchmark ends.
// What input reads from was allocated before and stays alive to the end,
// so it is counted on neither side.
func idleConnHeap(b *testing.B, s *Server, input func(i int) []byte) []*conn {
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { devnull.Close() })
	conns := make([]*conn, 0, b.N)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c := &conn{Context: context.Background(), srv: s, nc: &fakeNC{}, fd: int(devnull.Fd())}
		c.id = s.idx.Insert(c)
		c.feed(input(i))
		conns = append(conns, c)
	}
	b.StopTimer()
	runtime.GC()
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(input)
	// The conns slice itself is the benchmark's, not the node's.
	b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc)-int64(cap(conns))*8)/float64(b.N), "heap-B/conn")
	b.Cleanup(func() {
		for _, c := range conns {
			c.onClosed(nil)
		}
	})
	return conns
}

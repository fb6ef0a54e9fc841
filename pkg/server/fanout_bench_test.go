package server

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/switchboard-rt/switchboard/pkg/broker"
	"github.com/switchboard-rt/switchboard/pkg/query"
)

// BenchmarkFanout measures the router's encode-once path for one event to
// every subscriber: parse the backbone message, resolve recipients, build
// one frame per distinct subscription-id list, queue it on each recipient.
// Sockets are left out (no write pool runs), so this is the cost per
// delivery that is not the write syscall.
func BenchmarkFanout(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		for _, shared := range []bool{true, false} {
			name := fmt.Sprintf("conns=%d/ids=unique", n)
			if shared {
				name = fmt.Sprintf("conns=%d/ids=shared", n)
			}
			b.Run(name, func(b *testing.B) { benchFanout(b, n, shared, nil) })
		}
	}
	// Every subscription with a two-query filter that the payload passes:
	// the cost of filters next to the query-free runs above.
	filter, err := query.Compile([]string{
		`{"method":"equal","attribute":"name","values":["report.pdf","other"]}`,
		`{"method":"greaterThan","attribute":"size","values":[1000]}`,
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("conns=10000/ids=shared/queries=2", func(b *testing.B) { benchFanout(b, 10000, true, filter) })
}

func benchFanout(b *testing.B, n int, shared bool, filter *query.Filter) {
	s, conns := fanoutNode(b, Config{Broker: broker.NewMemory(1)}, n, shared, filter, 0)
	msg := []byte(event("p1", []string{"any"}, []string{"files", "buckets.b1.files"}, `{"$id":"f1","name":"report.pdf","size":12345}`))
	routeRounds(b, s, conns, msg)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/delivery")
}

// fanoutNode builds an offline node with n live connections subscribed to
// "files" (one subscription id for all when shared), each with flags.
func fanoutNode(b testing.TB, cfg Config, n int, shared bool, filter *query.Filter, flags connFlags) (*Server, []*conn) {
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	s.pool = &writePool{ch: make(chan *conn, n)}
	conns := make([]*conn, n)
	for i := range conns {
		c := &conn{Context: context.Background(), srv: s, fd: -1, state: stateLive, flags: flags, project: "p1", roles: []string{"guests"}}
		id := "sub-shared"
		if !shared {
			id = fmt.Sprintf("sub-%d", i)
		}
		c.subs = []subscription{{id: id, channels: []string{"files"}, filter: filter}}
		c.id = s.idx.Insert(c)
		s.idx.Set(c.id, "p1", c.roles, c.subs[0].channels)
		conns[i] = c
	}
	return s, conns
}

// routeRounds routes msg b.N times; the queued frames and the write pool's
// channel are emptied between rounds, off the clock.
func routeRounds(b *testing.B, s *Server, conns []*conn, msg []byte) {
	r := s.router
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.route(msg)
		b.StopTimer()
		for range conns {
			c := <-s.pool.ch
			c.q = sendQueue{}
		}
		b.StartTimer()
	}
	b.StopTimer()
	runtime.KeepAlive(conns)
}

package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/pkg/loadgen"
)

// BenchmarkMessageCPUPerMiB measures the node's CPU (user + system of the
// serve process, from /proc) per MiB of client message, for messages of
// 64 KiB to 16 MiB sent whole over a socket and answered with a pong. The
// kernel cuts each into reads of at most 16 KiB, so a reader that copied
// the buffered bytes again on every read would cost time quadratic in the
// size; linear reassembly keeps node-cpu-ns/MiB flat across the sizes.
//
//	go test -run '^$' -bench MessageCPUPerMiB -benchtime 3s ./cmd/switchboard/
func BenchmarkMessageCPUPerMiB(b *testing.B) {
	n := startNode(b, "--max-message-size", fmt.Sprint(16<<20), "--messages-per-minute", "-1")
	for _, size := range []int{64 << 10, 1 << 20, 4 << 20, 16 << 20} {
		b.Run(fmt.Sprintf("size=%dKiB", size>>10), func(b *testing.B) {
			c, err := rawDial(n.addr, "project=p1")
			if err != nil {
				b.Fatal(err)
			}
			defer c.conn.Close()
			// The message is masked once here: the loop costs the client
			// one write per message, and the node all of its reading.
			payload := []byte(`{"type":"ping","pad":"` + strings.Repeat("x", size-24) + `"}`)
			f := ws.NewTextFrame(payload)
			f.Header.Masked, f.Header.Mask = true, [4]byte{9, 8, 7, 6}
			ws.Cipher(f.Payload, f.Header.Mask, 0)
			frame := ws.MustCompileFrame(f)
			pong := []byte(`{"type":"pong"}`)

			cpu0, err := loadgen.ProcessCPU(n.cmd.Process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			b.SetBytes(int64(size))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.conn.Write(frame); err != nil {
					b.Fatal(err)
				}
				if err := c.readUntil(pong); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			cpu1, err := loadgen.ProcessCPU(n.cmd.Process.Pid)
			if err != nil {
				b.Fatal(err)
			}
			mib := float64(size) * float64(b.N) / (1 << 20)
			b.ReportMetric(float64(cpu1-cpu0)/mib, "node-cpu-ns/MiB")
		})
	}
}

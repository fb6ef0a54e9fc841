package server

import (
	"bytes"
	"testing"

	"github.com/gobwas/ws"
)

// Headers produced by gobwas must parse to the same values with ours, and
// ours must be rejected as incomplete on every proper prefix.
func TestParseFrameHeaderMatchesGobwas(t *testing.T) {
	for _, h := range []ws.Header{
		{Fin: true, OpCode: ws.OpText, Length: 0, Masked: true, Mask: [4]byte{1, 2, 3, 4}},
		{Fin: true, OpCode: ws.OpText, Length: 125, Masked: true, Mask: [4]byte{9, 8, 7, 6}},
		{Fin: false, OpCode: ws.OpBinary, Length: 126, Masked: true},
		{Fin: true, OpCode: ws.OpContinuation, Length: 65535},
		{Fin: true, OpCode: ws.OpPing, Length: 70000, Rsv: 5, Masked: true, Mask: [4]byte{0xff, 0, 0xff, 0}},
		{Fin: true, OpCode: ws.OpClose, Length: 1 << 40},
	} {
		var buf bytes.Buffer
		if err := ws.WriteHeader(&buf, h); err != nil {
			t.Fatal(err)
		}
		b := buf.Bytes()
		got, n, ok := parseFrameHeader(b)
		if !ok || n != len(b) || got != h {
			t.Errorf("parse(%x) = %+v, %d, %v; want %+v, %d", b, got, n, ok, h, len(b))
		}
		for i := 0; i < len(b); i++ {
			if _, _, ok := parseFrameHeader(b[:i]); ok {
				t.Errorf("prefix %d of %x parsed as complete", i, b)
			}
		}
	}
}

func TestAppendFrameHeaderMatchesGobwas(t *testing.T) {
	for _, n := range []int{0, 1, 125, 126, 127, 65535, 65536, 1 << 20} {
		ours := appendFrameHeader(nil, ws.OpText, n)
		var buf bytes.Buffer
		if err := ws.WriteHeader(&buf, ws.Header{Fin: true, OpCode: ws.OpText, Length: int64(n)}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(ours, buf.Bytes()) {
			t.Errorf("length %d: ours %x, gobwas %x", n, ours, buf.Bytes())
		}
	}
}

func TestCloseFrameFitsControlLimit(t *testing.T) {
	f := closeFrame(ws.StatusPolicyViolation, string(bytes.Repeat([]byte("x"), 500)))
	h, n, ok := parseFrameHeader(f)
	if !ok || h.OpCode != ws.OpClose || h.Length > 125 || int(h.Length) != len(f)-n {
		t.Fatalf("close frame header %+v (size %d, ok %v, total %d)", h, n, ok, len(f))
	}
	code, _ := ws.ParseCloseFrameData(f[n:])
	if code != ws.StatusPolicyViolation {
		t.Fatalf("code = %d", code)
	}
}

func FuzzParseFrameHeader(f *testing.F) {
	f.Add([]byte{0x81, 0x85, 1, 2, 3, 4})
	f.Add([]byte{0x81, 0xfe, 0x01, 0x00, 1, 2, 3, 4})
	f.Add([]byte{0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, b []byte) {
		h, n, ok := parseFrameHeader(b)
		if !ok {
			return
		}
		if n < 2 || n > 14 || n > len(b) || h.Length < 0 {
			t.Fatalf("header %+v size %d from %x", h, n, b)
		}
		// Our result must agree with gobwas's reader on the same bytes.
		g, err := ws.ReadHeader(bytes.NewReader(b[:n]))
		// Lengths of 1<<62 and more are clamped to 1<<62 (still far over
		// any size limit), so gobwas is the reference only below that.
		if err == nil && h.Length < 1<<62 && g != h {
			t.Fatalf("ours %+v, gobwas %+v for %x", h, g, b[:n])
		}
		if err == nil && h.Length == 1<<62 && g.Length >= 0 && g.Length < 1<<62 {
			t.Fatalf("length %d clamped to 1<<62", g.Length)
		}
	})
}

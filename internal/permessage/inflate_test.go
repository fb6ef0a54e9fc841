package permessage

import (
	"bytes"
	"compress/flate"
	"errors"
	"testing"
)

// compress returns msg as RFC 7692 7.2.1 sends it: deflated, sync-flushed,
// the trailing Tail stripped.
func compress(t *testing.T, msg []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	fw, err := flate.NewWriter(&buf, flate.BestSpeed)
	if err != nil {
		t.Fatal(err)
	}
	fw.Write(msg)
	fw.Flush()
	if !bytes.HasSuffix(buf.Bytes(), Tail) {
		t.Fatalf("sync flush does not end in %x", Tail)
	}
	return buf.Bytes()[:buf.Len()-len(Tail)]
}

// RFC 7692 7.2.2: a message inflates whole, one Inflater serves message
// after message, a message cut inside a block is an error rather than a
// shorter message, and output past the limit stops inflation.
func TestRFC7692_7_2_2_Inflate(t *testing.T) {
	var z Inflater
	for _, n := range []int{0, 1, 2048, 100 << 10} {
		msg := bytes.Repeat([]byte(`{"sbseq":7,"sbts":1764412345678901234}`), n/38+1)[:n]
		out, err := z.Inflate(compress(t, msg), len(msg))
		if err != nil || !bytes.Equal(out, msg) {
			t.Fatalf("%d bytes: err %v, %d bytes out", n, err, len(out))
		}
	}
	msg := bytes.Repeat([]byte("a message of some length, "), 100)
	z8 := compress(t, msg)
	if _, err := z.Inflate(z8[:len(z8)/2], len(msg)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a message cut in half: %v, want ErrInvalid", err)
	}
	if _, err := z.Inflate(z8, len(msg)-1); !errors.Is(err, ErrTooBig) {
		t.Fatalf("one byte over the limit: %v, want ErrTooBig", err)
	}
	if out, err := z.Inflate(z8, len(msg)); err != nil || !bytes.Equal(out, msg) {
		t.Fatalf("after the errors: err %v, %d bytes out", err, len(out))
	}
}

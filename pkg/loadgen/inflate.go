package loadgen

import (
	"bytes"
	"compress/flate"
	"fmt"
	"io"
)

// inflater inflates compressed server messages (RFC 7692 7.2.2) for one
// loop, reusing its buffers and decompressor.
type inflater struct {
	in  []byte
	src bytes.Reader
	fr  io.ReadCloser
	out []byte
}

// messageEnd completes a message for inflation: the 00 00 ff ff RFC 7692
// 7.2.2 has the receiver append, then an empty final block, so that a
// whole message reads to io.EOF.
var messageEnd = []byte{0x00, 0x00, 0xff, 0xff, 0x03, 0x00}

// inflateStep is the most inflate reads between two looks at the output.
const inflateStep = 512

// inflate returns msg inflated, valid until the next call. When enough is
// not nil, inflation stops as soon as enough reports that the output so
// far holds all the caller reads: one
// process plays thousands of clients on the node's own cores, and the
// generator reads a message's type and stamps, which come first.
func (z *inflater) inflate(msg []byte, enough func([]byte) bool) ([]byte, error) {
	z.in = append(append(z.in[:0], msg...), messageEnd...)
	z.src.Reset(z.in)
	if z.fr == nil {
		z.fr = flate.NewReader(&z.src)
	} else if err := z.fr.(flate.Resetter).Reset(&z.src, nil); err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	z.out = z.out[:0]
	for {
		if len(z.out)+inflateStep > cap(z.out) {
			z.out = append(z.out, make([]byte, inflateStep)...)[:len(z.out)]
		}
		n, err := z.fr.Read(z.out[len(z.out) : len(z.out)+inflateStep])
		z.out = z.out[:len(z.out)+n]
		switch {
		case err == io.EOF:
			return z.out, nil
		case err != nil:
			return nil, fmt.Errorf("inflate: %w", err)
		case enough != nil && enough(z.out):
			return z.out, nil
		}
	}
}

// stampsRead reports whether msg, the start of a message, holds the
// generator's stamps whole: the send time (which follows the sequence
// number) and a byte after its digits, so that a number cut by the end of
// the output is never taken for the stamp.
func stampsRead(msg []byte) bool {
	i := bytes.Index(msg, keyTS)
	if i < 0 {
		return false
	}
	rest := msg[i+len(keyTS):]
	for j, c := range rest {
		if c < '0' || c > '9' {
			return j > 0
		}
	}
	return false
}

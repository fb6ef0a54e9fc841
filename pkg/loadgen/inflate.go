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
	out bytes.Buffer
}

// messageEnd completes a message for inflation: the 00 00 ff ff RFC 7692
// 7.2.2 has the receiver append, then an empty final block, so that a
// whole message reads to io.EOF.
var messageEnd = []byte{0x00, 0x00, 0xff, 0xff, 0x03, 0x00}

// inflate returns msg inflated; the result is valid until the next call.
func (z *inflater) inflate(msg []byte) ([]byte, error) {
	z.in = append(append(z.in[:0], msg...), messageEnd...)
	z.src.Reset(z.in)
	if z.fr == nil {
		z.fr = flate.NewReader(&z.src)
	} else if err := z.fr.(flate.Resetter).Reset(&z.src, nil); err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	z.out.Reset()
	if _, err := z.out.ReadFrom(z.fr); err != nil {
		return nil, fmt.Errorf("inflate: %w", err)
	}
	return z.out.Bytes(), nil
}

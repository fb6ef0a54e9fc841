// Package permessage inflates the messages of a permessage-deflate
// WebSocket connection (RFC 7692) that agreed on no context takeover: each
// message is a deflate stream of its own, so an Inflater carries nothing
// from one message to the next and may serve any connection. The node
// inflates client messages with it, the load generator server events.
package permessage

import (
	"compress/flate"
	"errors"
	"fmt"
	"io"
)

// Tail is the empty stored block that ends a sync flush: RFC 7692 7.2.1
// strips it from the end of a compressed message, and 7.2.2 has the
// receiver append it again to inflate.
var Tail = []byte{0x00, 0x00, 0xff, 0xff}

// end is what Inflate appends to a message: Tail, then an empty final
// block (fixed Huffman, just its end-of-block code). A message that ends
// where 7.2.1 says it must then reads to io.EOF, and one cut off inside a
// block runs into these bytes and fails, instead of passing as a shorter
// message. A message that ends in a final block of its own (7.2.3.4) never
// reads them.
var end = append(append([]byte(nil), Tail...), 0x03, 0x00)

// ErrTooBig reports a message whose inflation exceeds the caller's limit.
var ErrTooBig = errors.New("inflated message over the size limit")

// ErrInvalid reports compressed data that is not a valid message.
var ErrInvalid = errors.New("invalid compressed data")

// maxKeptBuffer bounds the output buffer an Inflater keeps for the next
// message: the rare large message should not pin its size for good.
const maxKeptBuffer = 64 << 10

// Inflater inflates one message at a time, reusing its decompressor and
// output buffer. The zero value is ready to use.
type Inflater struct {
	src source
	fr  io.ReadCloser
	out []byte
}

// Inflate returns msg inflated (RFC 7692 7.2.2), or ErrTooBig as soon as
// the output passes limit bytes, so a bomb costs at most limit bytes of
// work, or an error wrapping ErrInvalid. The result is valid until the
// next call.
func (z *Inflater) Inflate(msg []byte, limit int) ([]byte, error) {
	z.src = source{parts: [2][]byte{msg, end}}
	if z.fr == nil {
		z.fr = flate.NewReader(&z.src)
	} else if err := z.fr.(flate.Resetter).Reset(&z.src, nil); err != nil {
		return nil, err
	}
	out := z.out[:0]
	for {
		if len(out) == cap(out) {
			out = append(out, 0)[:len(out)]
		}
		n, err := z.fr.Read(out[len(out):min(cap(out), limit+1)])
		out = out[:len(out)+n]
		if len(out) > limit {
			z.keep(out)
			return nil, ErrTooBig
		}
		if err == io.EOF {
			z.keep(out)
			return out, nil
		}
		if err != nil {
			z.keep(out)
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
}

func (z *Inflater) keep(out []byte) {
	if cap(out) <= maxKeptBuffer {
		z.out = out[:0]
	} else {
		z.out = nil
	}
	z.src = source{}
}

// source reads a message and then end, as one flate.Reader (an
// io.ByteReader too, so flate does not wrap it in a bufio.Reader of its
// own), without copying the message.
type source struct {
	parts [2][]byte
}

func (s *source) Read(p []byte) (int, error) {
	for i := range s.parts {
		if len(s.parts[i]) > 0 {
			n := copy(p, s.parts[i])
			s.parts[i] = s.parts[i][n:]
			return n, nil
		}
	}
	return 0, io.EOF
}

func (s *source) ReadByte() (byte, error) {
	for i := range s.parts {
		if len(s.parts[i]) > 0 {
			b := s.parts[i][0]
			s.parts[i] = s.parts[i][1:]
			return b, nil
		}
	}
	return 0, io.EOF
}

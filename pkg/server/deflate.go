package server

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/gobwas/httphead"
)

// permessage-deflate (RFC 7692), shaped by fan-out: see COMPRESSION.md.
//
// Every agreement is server_no_context_takeover and client_no_context_takeover,
// so each message is a deflate stream of its own in both directions. That
// is what lets the router compress an event's shared part once for all its
// recipients (the same bytes are valid for any of them), and lets a
// connection hold no compressor or inflater between messages: inflaters are
// pooled, and an idle connection keeps only its flagDeflate bit.

// deflateExtension is the extension's token in Sec-WebSocket-Extensions.
const deflateExtension = "permessage-deflate"

var deflateExtensionBytes = []byte(deflateExtension)

// deflateOffer is what one permessage-deflate offer asked for, as far as the
// response depends on it.
type deflateOffer struct {
	serverMaxWindowBits int // 0: not offered
}

// parseDeflateOffer reads one offer's parameters (RFC 7692 7.1). ok is false
// when the server must decline the offer (RFC 7692 5): a parameter that is
// not defined for an offer, an invalid value, a parameter twice, or a
// configuration the server does not support (server_max_window_bits below
// 15: compress/flate always uses a 32 KiB window).
func parseDeflateOffer(opt httphead.Option) (o deflateOffer, ok bool) {
	var seen [4]bool
	ok = true
	opt.Parameters.ForEach(func(key, val []byte) bool {
		i := -1
		switch string(key) {
		case "server_no_context_takeover":
			i = 0
			ok = len(val) == 0 // 7.1.1.1: no value
		case "client_no_context_takeover":
			i = 1
			ok = len(val) == 0 // 7.1.1.2: no value
		case "server_max_window_bits":
			i = 2
			bits, valid := windowBits(val)
			// 7.1.2.1: a value is required. A smaller window than ours is
			// a configuration we cannot honour: decline.
			ok = valid && bits == 15
			o.serverMaxWindowBits = bits
		case "client_max_window_bits":
			i = 3
			// 7.1.2.2: no value, or 8 to 15. Any window inflates: the
			// response leaves it out, so the client may use up to its own.
			if len(val) > 0 {
				_, ok = windowBits(val)
			}
		default:
			ok = false
		}
		if ok && seen[i] {
			ok = false // RFC 7692 5: the same parameter twice
		}
		if ok {
			seen[i] = true
		}
		return ok
	})
	return o, ok
}

// windowBits parses an LZ77 window size in bits: an integer from 8 to 15
// without leading zeroes (RFC 7692 7.1.2.1), possibly sent as a quoted
// string, which the header scanner has unquoted already.
func windowBits(v []byte) (int, bool) {
	if len(v) == 1 && v[0] >= '8' && v[0] <= '9' {
		return int(v[0] - '0'), true
	}
	if len(v) == 2 && v[0] == '1' && v[1] >= '0' && v[1] <= '5' {
		return 10 + int(v[1]-'0'), true
	}
	return 0, false
}

// deflateResponse is the server's answer to an accepted offer: no context
// takeover either way, always (see the top of this file), and the
// server_max_window_bits the offer named, which 7.1.2.1 requires back.
func deflateResponse(o deflateOffer) httphead.Option {
	opt := httphead.Option{Name: []byte(deflateExtension)}
	opt.Parameters.Set([]byte("server_no_context_takeover"), nil)
	// 7.1.1.2: a server may answer client_no_context_takeover whether the
	// client offered it or not, and every client that offers the
	// extension must honour it.
	opt.Parameters.Set([]byte("client_no_context_takeover"), nil)
	if o.serverMaxWindowBits != 0 {
		opt.Parameters.Set([]byte("server_max_window_bits"), []byte(itoa(o.serverMaxWindowBits)))
	}
	return opt
}

// deflateTail is the empty stored block that ends a sync flush; RFC 7692
// 7.2.1 strips it from a message, and 7.2.2 appends it again to inflate.
var deflateTail = []byte{0x00, 0x00, 0xff, 0xff}

// compressLevel is the router's deflate level. BestSpeed resets in constant
// time; the other levels clear 640 KiB of hash tables per stream, which a
// fresh stream per event would pay every time.
const compressLevel = flate.BestSpeed

// eventDeflater compresses events' shared parts. It belongs to the router
// and runs on its goroutine.
type eventDeflater struct {
	w   *flate.Writer
	out bytes.Buffer
}

// deflateShared returns p compressed as the first blocks of a message that
// more blocks follow: a stream of its own (no context), ending in a sync
// flush with its 00 00 ff ff kept, so that it ends on a byte boundary. It
// returns a fresh slice, which frames keep referencing after the event.
func (d *eventDeflater) deflateShared(p []byte) []byte {
	d.out.Reset()
	if d.w == nil {
		d.w, _ = flate.NewWriter(&d.out, compressLevel) // only an invalid level fails
	} else {
		d.w.Reset(&d.out)
	}
	// Writes to a bytes.Buffer cannot fail.
	_, _ = d.w.Write(p)
	_ = d.w.Flush()
	return bytes.Clone(d.out.Bytes())
}

// appendStoredFinal appends p as deflate stored blocks that end a message
// begun by deflateShared, with the trailing empty stored block stripped
// (RFC 7692 7.2.1): each block is a 3-bit header (BFINAL 0, BTYPE 00) padded
// to the byte, LEN and NLEN, then the bytes (RFC 1951 3.2.4). Stored blocks
// need no compressor: the per-recipient tails cost a copy, not a deflate.
// The 00 left at the end is the header of the stripped empty block, which
// the receiver completes with 00 00 ff ff (7.2.2).
func appendStoredFinal(dst, p []byte) []byte {
	for len(p) > 0 {
		n := min(len(p), 0xffff)
		dst = append(dst, 0x00)
		dst = binary.LittleEndian.AppendUint16(dst, uint16(n))
		dst = binary.LittleEndian.AppendUint16(dst, ^uint16(n))
		dst = append(dst, p[:n]...)
		p = p[n:]
	}
	return append(dst, 0x00)
}

// storedFinalSize is the size of appendStoredFinal's output for n bytes.
func storedFinalSize(n int) int {
	return n + 5*((n+0xfffe)/0xffff) + 1
}

// storedRawSize is the inverse of storedFinalSize: the bytes that stored
// blocks of size s carry.
func storedRawSize(s int) int {
	blocks := (s - 1 + 0xffff + 5 - 1) / (0xffff + 5)
	return s - 1 - 5*blocks
}

// rsv1Bit is RSV1 in a frame's first byte: RFC 7692's "Per-Message
// Compressed" bit (6). ws.Header.Rsv holds it as rsv1Bit>>4.
const rsv1Bit = 0x40

// errInflatedTooBig reports a compressed message whose inflation exceeds
// the node's message size limit.
var errInflatedTooBig = errors.New("inflated message over the size limit")

// inflater inflates one client message. Connections hold none: one is
// taken from the node's pool for a message and given back at once (see the
// top of this file for why no state survives a message).
type inflater struct {
	src inflateSource
	fr  io.ReadCloser
	out []byte
}

// maxPooledInflateBuf bounds the output buffer an inflater keeps in the
// pool: the rare large message should not pin its size for good.
const maxPooledInflateBuf = 64 << 10

// inflateEnd is what inflate appends to a message: the 00 00 ff ff of RFC
// 7692 7.2.2, then an empty final block (fixed Huffman, just its
// end-of-block code). A message that ends where 7.2.1 says it must then
// reads to io.EOF, and one cut off inside a block runs into these bytes and
// fails, instead of passing as a shorter message. A message that ends in a
// final block of its own (7.2.3.4) never reads them.
var inflateEnd = append(append([]byte(nil), deflateTail...), 0x03, 0x00)

// errInflate reports compressed data that is not a valid message.
var errInflate = errors.New("invalid compressed data")

// inflate returns msg inflated (RFC 7692 7.2.2), or errInflatedTooBig as
// soon as the output passes limit bytes, so a bomb costs at most limit bytes
// of work, or errInflate. The result is valid until the inflater goes back
// to the pool.
func (z *inflater) inflate(msg []byte, limit int) ([]byte, error) {
	z.src = inflateSource{parts: [2][]byte{msg, inflateEnd}}
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
			return nil, errInflatedTooBig
		}
		if err == io.EOF {
			z.keep(out)
			return out, nil
		}
		if err != nil {
			z.keep(out)
			return nil, fmt.Errorf("%w: %w", errInflate, err)
		}
	}
}

func (z *inflater) keep(out []byte) {
	if cap(out) <= maxPooledInflateBuf {
		z.out = out[:0]
	} else {
		z.out = nil
	}
	z.src = inflateSource{}
}

// inflateSource reads a message and then the empty block's tail, as one
// flate.Reader (an io.ByteReader too, so flate does not wrap it in a
// bufio.Reader of its own).
type inflateSource struct {
	parts [2][]byte
}

func (s *inflateSource) Read(p []byte) (int, error) {
	for i := range s.parts {
		if len(s.parts[i]) > 0 {
			n := copy(p, s.parts[i])
			s.parts[i] = s.parts[i][n:]
			return n, nil
		}
	}
	return 0, io.EOF
}

func (s *inflateSource) ReadByte() (byte, error) {
	for i := range s.parts {
		if len(s.parts[i]) > 0 {
			b := s.parts[i][0]
			s.parts[i] = s.parts[i][1:]
			return b, nil
		}
	}
	return 0, io.EOF
}

// inflaterPool holds the node's idle inflaters.
type inflaterPool struct{ p sync.Pool }

func (p *inflaterPool) get() *inflater {
	if z, ok := p.p.Get().(*inflater); ok {
		return z
	}
	return new(inflater)
}

func (p *inflaterPool) put(z *inflater) { p.p.Put(z) }

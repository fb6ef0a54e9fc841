package server

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"sync"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/internal/permessage"
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

// deflateOffer is one permessage-deflate offer as its parameters arrive.
type deflateOffer struct {
	seen     [4]bool // each parameter at most once (RFC 7692 5)
	declined bool    // the server must decline it
	bits15   bool    // it offered server_max_window_bits=15, which the response repeats
}

// param takes one parameter of the offer (RFC 7692 7.1). The server must
// decline an offer (RFC 7692 5) with a parameter that is not defined for an
// offer, an invalid value, a parameter twice, or a configuration the server
// does not support: server_max_window_bits below 15, since compress/flate
// always uses a 32 KiB window.
func (o *deflateOffer) param(key, val []byte) {
	i, ok := -1, true
	switch string(key) {
	case "server_no_context_takeover":
		i, ok = 0, len(val) == 0 // 7.1.1.1: no value
	case "client_no_context_takeover":
		i, ok = 1, len(val) == 0 // 7.1.1.2: no value
	case "server_max_window_bits":
		// 7.1.2.1: a value is required. A smaller window than ours is a
		// configuration we cannot honour.
		bits, valid := windowBits(val)
		i, ok, o.bits15 = 2, valid && bits == 15, true
	case "client_max_window_bits":
		// 7.1.2.2: no value, or 8 to 15. Any window inflates: the
		// response leaves it out, so the client may use up to its own.
		i = 3
		if len(val) > 0 {
			_, ok = windowBits(val)
		}
	default:
		ok = false
	}
	if !ok || o.seen[i] {
		o.declined = true
		return
	}
	o.seen[i] = true
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

// deflateAgreement is the outcome of a handshake's offers.
type deflateAgreement uint8

const (
	deflateNone   deflateAgreement = iota // no acceptable offer
	deflateAgreed                         // agreed
	deflateBits15                         // agreed, and the offer named server_max_window_bits=15
)

// negotiate reads one Sec-WebSocket-Extensions header value and agrees to
// its first acceptable permessage-deflate offer, unless one was agreed
// already (offers come in the client's order of preference, also across
// headers). It reports false when the value is not the header's grammar.
// Declined offers and other extensions are passed over in silence: they
// never refuse the upgrade (RFC 7692 5).
func (a *deflateAgreement) negotiate(v []byte) bool {
	var o deflateOffer
	cur, isDeflate := -1, false
	settle := func() {
		if isDeflate && !o.declined && *a == deflateNone {
			*a = deflateAgreed
			if o.bits15 {
				*a = deflateBits15
			}
		}
	}
	ok := httphead.ScanOptions(v, func(i int, name, key, val []byte) httphead.Control {
		if i != cur {
			settle()
			cur, o, isDeflate = i, deflateOffer{}, string(name) == deflateExtension
		}
		if isDeflate && key != nil {
			o.param(key, val)
		}
		return httphead.ControlContinue
	})
	settle()
	return ok
}

// Responses to an accepted offer: no context takeover either way, always
// (see the top of this file); 7.1.1.2 lets a server answer
// client_no_context_takeover whether the client offered it or not, and
// every client that offers the extension must honour it. 7.1.2.1 has the
// server repeat server_max_window_bits when the offer named it. Interfaces
// made once, so that an upgrade that agrees allocates nothing for it.
var (
	deflateResponse       ws.HandshakeHeader = ws.HandshakeHeaderString("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n")
	deflateResponseBits15 ws.HandshakeHeader = ws.HandshakeHeaderString("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=15\r\n")
)

// header is the response header for the agreement; nil when none.
func (a deflateAgreement) header() ws.HandshakeHeader {
	switch a {
	case deflateAgreed:
		return deflateResponse
	case deflateBits15:
		return deflateResponseBits15
	}
	return nil
}

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

// inflaterPool holds the node's idle inflaters. Connections hold none: one
// is taken for a message and given back at once (see the top of this file
// for why no state survives a message).
type inflaterPool struct{ p sync.Pool }

func (p *inflaterPool) get() *permessage.Inflater {
	if z, ok := p.p.Get().(*permessage.Inflater); ok {
		return z
	}
	return new(permessage.Inflater)
}

func (p *inflaterPool) put(z *permessage.Inflater) { p.p.Put(z) }

package server

import (
	"encoding/binary"

	"github.com/gobwas/ws"
)

// parseFrameHeader decodes the WebSocket frame header at the start of b
// without copying or allocating (gobwas's ReadHeader wants an io.Reader,
// which would cost an allocation per frame on this path). It returns the
// header and its size in bytes, or ok=false while b holds only part of it.
func parseFrameHeader(b []byte) (h ws.Header, size int, ok bool) {
	if len(b) < 2 {
		return h, 0, false
	}
	h.Fin = b[0]&0x80 != 0
	h.Rsv = (b[0] & 0x70) >> 4
	h.OpCode = ws.OpCode(b[0] & 0x0f)
	h.Masked = b[1]&0x80 != 0
	size = 2
	switch n := b[1] & 0x7f; n {
	case 126:
		size += 2
	case 127:
		size += 8
	default:
		h.Length = int64(n)
	}
	if h.Masked {
		size += 4
	}
	if len(b) < size {
		return h, 0, false
	}
	switch b[1] & 0x7f {
	case 126:
		h.Length = int64(binary.BigEndian.Uint16(b[2:4]))
	case 127:
		// The top bit must be zero (RFC 6455 5.2); a negative length is
		// reported as huge so the size limit rejects it.
		l := binary.BigEndian.Uint64(b[2:10])
		if l > 1<<62 {
			l = 1 << 62
		}
		h.Length = int64(l)
	}
	if h.Masked {
		copy(h.Mask[:], b[size-4:size])
	}
	return h, size, true
}

// maxServerHeader is the largest header of a frame the server sends.
const maxServerHeader = 10

// appendFrameHeader appends the header of a final, unmasked server frame.
func appendFrameHeader(dst []byte, op ws.OpCode, length int) []byte {
	b0 := 0x80 | byte(op)
	switch {
	case length < 126:
		return append(dst, b0, byte(length))
	case length <= 0xffff:
		return append(dst, b0, 126, byte(length>>8), byte(length))
	default:
		return binary.BigEndian.AppendUint64(append(dst, b0, 127), uint64(length))
	}
}

// compileFrame returns one whole final server frame with payload p.
func compileFrame(op ws.OpCode, p []byte) []byte {
	b := make([]byte, 0, maxServerHeader+len(p))
	return append(appendFrameHeader(b, op, len(p)), p...)
}

package loadgen

import (
	"encoding/binary"
	"errors"
)

// WebSocket opcodes (RFC 6455 section 5.2).
const (
	opContinuation = 0x0
	opText         = 0x1
	opBinary       = 0x2
	opClose        = 0x8
	opPing         = 0x9
	opPong         = 0xA
)

var errMaskedServerFrame = errors.New("server frame is masked")

// frameHeader is a parsed server frame header.
type frameHeader struct {
	fin    bool
	rsv1   bool // RFC 7692: the first frame of a compressed message
	opcode byte
	length int // payload length
	size   int // header length
}

// parseFrameHeader reads a server frame header from b. ok is false when b
// does not hold the whole header yet. Server frames must not be masked.
func parseFrameHeader(b []byte) (h frameHeader, ok bool, err error) {
	if len(b) < 2 {
		return h, false, nil
	}
	h.fin = b[0]&0x80 != 0
	h.rsv1 = b[0]&0x40 != 0
	h.opcode = b[0] & 0x0F
	if b[1]&0x80 != 0 {
		return h, false, errMaskedServerFrame
	}
	switch n := b[1] & 0x7F; n {
	case 126:
		if len(b) < 4 {
			return h, false, nil
		}
		h.length, h.size = int(binary.BigEndian.Uint16(b[2:])), 4
	case 127:
		if len(b) < 10 {
			return h, false, nil
		}
		l := binary.BigEndian.Uint64(b[2:])
		if l > 1<<30 {
			return h, false, errors.New("server frame over 1 GiB")
		}
		h.length, h.size = int(l), 10
	default:
		h.length, h.size = int(n), 2
	}
	return h, true, nil
}

// appendClientFrame appends one final, masked client frame. RFC 6455
// requires clients to mask every frame; servers close on unmasked ones.
func appendClientFrame(dst []byte, opcode byte, payload []byte, mask [4]byte) []byte {
	dst = append(dst, 0x80|opcode)
	switch n := len(payload); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xFFFF:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, mask[:]...)
	for i, c := range payload {
		dst = append(dst, c^mask[i&3])
	}
	return dst
}

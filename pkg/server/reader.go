package server

import (
	"errors"
	"slices"
	"unicode/utf8"

	"github.com/cloudwego/netpoll"
	"github.com/gobwas/ws"

	"github.com/switchboard-rt/switchboard/internal/permessage"
)

// The read side of a connection: the upgrade request, then frames, parsed
// straight out of the read buffer (netpoll's during the handshake, then the
// reader pool's). A frame that is whole there and starts no multi-frame
// message is unmasked and handled in place, without a copy or an
// allocation; that is every message a browser sends. Anything longer than
// one read streams: its payload is unmasked and validated as each read
// delivers it, and copied once into the buffer that holds the message, so
// a message costs time linear in its size however it is cut into reads and
// frames, and invalid UTF-8 fails the connection as soon as it arrives
// (RFC 6455 8.1), not when the message ends.

// onRead consumes what netpoll has buffered for c.
func (c *conn) onRead(r netpoll.Reader) {
	n := r.Len()
	if n == 0 {
		return
	}
	buf, err := r.Peek(n)
	if err != nil {
		c.shut(closeReset)
		return
	}
	c.bytesIn.Add(uint64(n))
	c.feed(buf)
	_ = r.Skip(n)
	_ = r.Release()
}

// feed handles newly read bytes: the upgrade request until it is done,
// then frames (readFrames). Bytes are parsed in place in buf (netpoll's
// buffer or the pooled read buffer); only what a later read must complete
// is kept.
func (c *conn) feed(buf []byte) {
	if c.readClosed {
		return
	}
	if !c.upgraded || c.upgrading != nil {
		buf = c.feedHandshake(buf)
	}
	if len(buf) > 0 && !c.readClosed {
		c.readFrames(buf)
	}
}

// feedHandshake runs the upgrade once its request is whole and returns the
// bytes after it that can be read as frames now. An incomplete request
// (bounded by MaxHeaderBytes), and what follows an accepted one until the
// socket's hand-over sends the 101, wait in c.pend.
func (c *conn) feedHandshake(buf []byte) []byte {
	data := buf
	if c.pend != nil {
		c.pend = append(c.pend, buf...)
		data = c.pend
	}
	off := 0
	if !c.upgraded {
		off = c.upgrade(data)
	}
	switch {
	case c.readClosed:
		c.pend = nil
		return nil
	case c.upgraded && c.upgrading == nil:
		c.pend = nil
		return data[off:]
	case off == len(data):
		c.pend = nil
	case c.pend == nil:
		c.pend = append(make([]byte, 0, len(data)-off), data[off:]...)
	case off > 0:
		c.pend = append(c.pend[:0], data[off:]...)
	}
	return nil
}

// inbound is the state of a frame or message that spans reads. A
// connection holds one only while such a frame or message is in progress:
// between messages, an idle connection keeps nothing of its input.
type inbound struct {
	h    ws.Header // the frame whose payload is arriving; h.Length is its whole length
	left int64     // payload bytes of h still to come; 0 between frames
	ctrl []byte    // payload of a control frame so far (at most 125 bytes)

	msgOp      ws.OpCode  // opcode of the data message in progress; 0 when none
	compressed bool       // that message is compressed (RSV1 on its first frame): UTF-8 is checked once inflated
	msg        []byte     // that message so far, unmasked
	text       utf8Stream // validity of msg so far, when it is text and not compressed
}

// readFrames handles every frame in data, keeping what a frame or message
// needs from later reads.
func (c *conn) readFrames(data []byte) {
	for len(data) > 0 && !c.readClosed {
		if c.in != nil && c.in.left > 0 {
			data = c.readPayload(data)
			continue
		}
		h, hn, ok := c.nextHeader(data)
		if !ok {
			return // c.pend keeps the partial header
		}
		data = data[hn:]
		compressed, ok := c.checkHeader(&h)
		if !ok {
			return
		}
		if int64(len(data)) >= h.Length && (h.OpCode.IsControl() || (h.Fin && h.OpCode != ws.OpContinuation)) {
			// Whole, and a message of its own (or a control frame, which
			// may sit between a message's fragments): no copy.
			payload := data[:h.Length]
			data = data[h.Length:]
			ws.Cipher(payload, h.Mask, 0)
			c.stamp()
			if h.OpCode.IsControl() {
				c.handleControl(h.OpCode, payload)
				continue
			}
			if compressed {
				c.handleCompressed(h.OpCode, payload)
				continue
			}
			if h.OpCode == ws.OpText && !utf8.Valid(payload) {
				c.failUTF8()
				return
			}
			c.handleData(h.OpCode, payload)
			continue
		}
		c.beginFrame(h, compressed)
		if h.Length == 0 {
			c.endFrame()
		}
	}
}

// nextHeader returns the frame header at the start of data, completed from
// c.pend when the previous read ended inside one, and how many bytes of
// data it took. When data ends inside the header, ok is false and c.pend
// holds the part (at most 13 bytes, so copying it again is constant work).
func (c *conn) nextHeader(data []byte) (h ws.Header, n int, ok bool) {
	if c.pend == nil {
		h, n, ok = parseFrameHeader(data)
		if !ok {
			c.pend = append(make([]byte, 0, ws.MaxHeaderSize), data...)
		}
		return h, n, ok
	}
	had := len(c.pend)
	c.pend = append(c.pend, data[:min(len(data), ws.MaxHeaderSize-had)]...)
	h, size, ok := parseFrameHeader(c.pend)
	if !ok {
		return h, 0, false
	}
	c.pend = nil
	return h, size - had, true
}

// errCompressedBit is RFC 7692 6's rule: RSV1 only on the first frame of
// a data message, and only with the extension negotiated.
var errCompressedBit = ws.ProtocolError("RSV1 set on a control or continuation frame, or without permessage-deflate")

// checkHeader applies RFC 6455's rules for a frame in this place of the
// stream (and RFC 7692's for RSV1, which it clears from h) and the node's
// size limit, and fails the connection when they are broken. compressed
// reports RSV1 on the first frame of a data message. The size is judged
// from the header alone, so an oversized message is refused before its
// payload is read.
func (c *conn) checkHeader(h *ws.Header) (compressed, ok bool) {
	state := ws.StateServerSide
	if c.in != nil && c.in.msgOp != 0 {
		state = state.Set(ws.StateFragmented)
	}
	err := error(nil)
	if h.Rsv&(rsv1Bit>>4) != 0 {
		// RFC 7692 6: RSV1 marks a compressed message, on its first frame
		// only; anywhere else, or on a connection that did not negotiate
		// the extension, it fails the connection (and so does RSV2/3,
		// which CheckHeader still sees).
		if h.OpCode.IsControl() || h.OpCode == ws.OpContinuation || !c.deflates() {
			err = errCompressedBit
		}
		h.Rsv &^= rsv1Bit >> 4
		compressed = true
	}
	if err == nil {
		err = ws.CheckHeader(*h, state)
	}
	if err != nil {
		c.srv.metrics.protocolErrors.WithLabelValues("frame").Inc()
		c.closeWith(closeProtocolError, err.Error())
		return false, false
	}
	size := h.Length
	if h.OpCode == ws.OpContinuation {
		size += int64(len(c.in.msg)) // CheckHeader refused a continuation with no message
	}
	if size > int64(c.srv.cfg.MaxMessageSize) {
		c.srv.metrics.protocolErrors.WithLabelValues("too_big").Inc()
		c.closeWith(closeTooBig, "")
		return false, false
	}
	return compressed, true
}

// deflates reports whether c negotiated permessage-deflate. The bit is set
// before the connection's first frame and never changes, but its byte
// shares mu with bits that do.
func (c *conn) deflates() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.flags&flagDeflate != 0
}

// beginFrame starts a frame whose payload is not all in this read, or
// that belongs to a message of several frames.
func (c *conn) beginFrame(h ws.Header, compressed bool) {
	in := c.in
	if in == nil {
		in = new(inbound)
		c.in = in
	}
	in.h, in.left = h, h.Length
	switch h.OpCode {
	case ws.OpText, ws.OpBinary:
		in.msgOp, in.compressed = h.OpCode, compressed
		in.text = utf8Stream{}
		// A message of one frame gets a buffer of its exact size, so its
		// bytes are copied once. The fragments of a longer one are added
		// to a buffer that grows geometrically (bounded by the message
		// limit), which keeps the copying linear in the message's size.
		if h.Fin {
			in.msg = make([]byte, 0, h.Length)
		} else {
			in.msg = make([]byte, 0, min(max(2*h.Length, 4<<10), int64(c.srv.cfg.MaxMessageSize)))
		}
	case ws.OpContinuation:
		if need := len(in.msg) + int(h.Length); need > cap(in.msg) {
			in.msg = slices.Grow(in.msg, min(max(need, 2*cap(in.msg)), c.srv.cfg.MaxMessageSize)-len(in.msg))
		}
	default: // control
		in.ctrl = in.ctrl[:0]
	}
}

// readPayload takes what data holds of the current frame's payload and
// returns the rest of data.
func (c *conn) readPayload(data []byte) []byte {
	in := c.in
	n := int(min(in.left, int64(len(data))))
	chunk := data[:n]
	ws.Cipher(chunk, in.h.Mask, int(in.h.Length-in.left))
	in.left -= int64(n)
	if in.h.OpCode.IsControl() {
		in.ctrl = append(in.ctrl, chunk...)
	} else {
		if in.msgOp == ws.OpText && !in.compressed && !in.text.write(chunk) {
			c.failUTF8()
			return nil
		}
		in.msg = append(in.msg, chunk...)
	}
	if in.left == 0 {
		c.endFrame()
	}
	return data[n:]
}

// endFrame acts on the frame in c.in, whose payload is complete.
func (c *conn) endFrame() {
	in := c.in
	c.stamp()
	if in.h.OpCode.IsControl() {
		c.handleControl(in.h.OpCode, in.ctrl)
		in.ctrl = in.ctrl[:0]
	} else if in.h.Fin {
		if in.msgOp == ws.OpText && !in.compressed && !in.text.complete() {
			c.failUTF8() // the message ends inside a character
			return
		}
		op, msg, compressed := in.msgOp, in.msg, in.compressed
		in.msgOp, in.msg, in.compressed = 0, nil, false
		if compressed {
			c.handleCompressed(op, msg)
		} else {
			c.handleData(op, msg)
		}
	}
	if c.in == in && in.msgOp == 0 && in.left == 0 {
		c.in = nil // nothing in progress: an idle connection holds no input state
	}
}

// stamp records a complete client frame for the idle sweep.
func (c *conn) stamp() {
	if now := c.srv.clock.Load(); c.lastSeen.Load() != now {
		c.lastSeen.Store(now)
	}
}

// handleControl acts on one complete control frame. payload is only valid
// during the call.
func (c *conn) handleControl(op ws.OpCode, payload []byte) {
	switch op {
	case ws.OpPing:
		c.send(outFrame{head: compileFrame(ws.OpPong, payload)})
	case ws.OpPong:
	case ws.OpClose:
		switch code, text := closeReply(payload); code {
		case ws.StatusProtocolError:
			c.closeWith(closeProtocolError, text)
		case ws.StatusInvalidFramePayloadData:
			c.closeWith(closeInvalidPayload, text)
		default:
			c.closeEcho(code)
		}
	}
}

// closeReply is the close frame that answers a client's close frame with
// this payload (RFC 6455 5.5.1): its own code echoed, 1000 for an empty
// body, 1002 for a body of one byte or a code no endpoint may send (7.4),
// and 1007 for a reason that is not UTF-8 (8.1).
func closeReply(payload []byte) (ws.StatusCode, string) {
	switch {
	case len(payload) == 0:
		return ws.StatusNormalClosure, ""
	case len(payload) == 1:
		return ws.StatusProtocolError, ""
	}
	code, _ := ws.ParseCloseFrameData(payload)
	if ws.CheckCloseFrameData(code, "") != nil {
		return ws.StatusProtocolError, ""
	}
	if !utf8.Valid(payload[2:]) {
		return ws.StatusInvalidFramePayloadData, "invalid UTF-8 in close reason"
	}
	return code, ""
}

// failUTF8 fails the connection over text that is not UTF-8 (RFC 6455 8.1).
func (c *conn) failUTF8() {
	c.srv.metrics.protocolErrors.WithLabelValues("utf8").Inc()
	c.closeWith(closeInvalidPayload, "invalid UTF-8 in text frame")
}

// handleData hands one complete data message, already known to be valid
// UTF-8 when it is text, to the protocol.
func (c *conn) handleData(op ws.OpCode, msg []byte) {
	if op == ws.OpBinary {
		c.srv.metrics.messagesIn.WithLabelValues("binary").Inc()
		c.sendError(1003, "Binary messages are not supported.")
		return
	}
	c.handleMessage(msg)
}

// handleCompressed inflates a compressed data message (RFC 7692 7.2.2)
// with a pooled inflater and handles it. More than MaxMessageSize bytes of
// output closes with 1009 as soon as inflation passes it; data that does
// not inflate closes with 1007. Text is checked for UTF-8 once inflated
// (RFC 7692 makes the payload the compressed bytes, RFC 6455 8.1 the text
// the inflated ones).
func (c *conn) handleCompressed(op ws.OpCode, msg []byte) {
	s := c.srv
	z := s.inflaters.get()
	defer s.inflaters.put(z)
	plain, err := z.Inflate(msg, s.cfg.MaxMessageSize)
	switch {
	case errors.Is(err, permessage.ErrTooBig):
		s.metrics.protocolErrors.WithLabelValues("too_big").Inc()
		c.closeWith(closeTooBig, "message too big once inflated")
		return
	case err != nil:
		s.metrics.protocolErrors.WithLabelValues("deflate").Inc()
		c.closeWith(closeInvalidPayload, "invalid compressed data")
		return
	}
	s.metrics.deflateBytes.WithLabelValues("in", "deflated").Add(float64(len(msg)))
	s.metrics.deflateBytes.WithLabelValues("in", "plain").Add(float64(len(plain)))
	if op == ws.OpText && !utf8.Valid(plain) {
		c.failUTF8()
		return
	}
	c.handleData(op, plain)
}

// utf8Stream checks UTF-8 that arrives in pieces, carrying a character cut
// off at the end of one piece into the next, so that no byte is examined
// twice and the first byte that cannot be part of valid UTF-8 is reported
// at once, even inside an unfinished character.
type utf8Stream struct {
	part [utf8.UTFMax - 1]byte // the start of a character the last piece cut off
	n    uint8                 // bytes in part
}

// write checks p as the continuation of the pieces before it and reports
// whether everything so far can still be (the start of) valid UTF-8.
func (v *utf8Stream) write(p []byte) bool {
	if v.n > 0 {
		var buf [utf8.UTFMax]byte
		k := copy(buf[:], v.part[:v.n])
		take := min(seqLen(buf[0])-k, len(p))
		k += copy(buf[k:], p[:take])
		p = p[take:]
		if k < seqLen(buf[0]) {
			v.n = uint8(copy(v.part[:], buf[:k]))
			return validPrefix(buf[:k])
		}
		if r, size := utf8.DecodeRune(buf[:k]); r == utf8.RuneError && size <= 1 {
			return false
		}
		v.n = 0
	}
	cut := len(p) - incompleteTail(p)
	if !utf8.Valid(p[:cut]) {
		return false
	}
	v.n = uint8(copy(v.part[:], p[cut:]))
	return validPrefix(p[cut:])
}

// complete reports whether the pieces so far end on a character boundary.
func (v *utf8Stream) complete() bool { return v.n == 0 }

// seqLen is the length of the character that lead byte b starts, as far
// as its bit pattern says; 1 for a byte that cannot start one, which
// utf8.Valid then refuses.
func seqLen(b byte) int {
	switch {
	case b >= 0xc0 && b < 0xe0:
		return 2
	case b >= 0xe0 && b < 0xf0:
		return 3
	case b >= 0xf0 && b < 0xf8:
		return 4
	}
	return 1
}

// incompleteTail returns how many bytes at the end of p are a character
// that starts there but does not end (0 to 3).
func incompleteTail(p []byte) int {
	for i := len(p) - 1; i >= 0 && i >= len(p)-(utf8.UTFMax-1); i-- {
		switch b := p[i]; {
		case b < 0x80:
			return 0
		case b >= 0xc0:
			if len(p)-i < seqLen(b) {
				return len(p) - i
			}
			return 0
		}
	}
	return 0
}

// validPrefix reports whether p (shorter than the character its first byte
// starts) can begin a valid UTF-8 encoding: a lead byte that may start a
// character and continuation bytes in the ranges that rule out overlong
// forms, surrogates and code points above U+10FFFF (RFC 3629 4).
func validPrefix(p []byte) bool {
	if len(p) == 0 {
		return true
	}
	lo, hi := byte(0x80), byte(0xbf)
	switch b := p[0]; {
	case b < 0xc2 || b > 0xf4:
		return false
	case b == 0xe0:
		lo = 0xa0
	case b == 0xed:
		hi = 0x9f
	case b == 0xf0:
		lo = 0x90
	case b == 0xf4:
		hi = 0x8f
	}
	for i, b := range p[1:] {
		if i > 0 {
			lo, hi = 0x80, 0xbf
		}
		if b < lo || b > hi {
			return false
		}
	}
	return true
}

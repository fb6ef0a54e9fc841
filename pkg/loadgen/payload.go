package loadgen

import (
	"bytes"
	"strconv"
)

// The event payload the generator publishes is {"sbseq":N,"sbts":UNIXNANO}.
// Keys this unusual cannot collide with what the server adds around the
// payload, so a received frame is read by finding them instead of decoding
// the whole JSON (the frames are the generator's hottest path).
var (
	keySeq  = []byte(`"sbseq":`)
	keyTS   = []byte(`"sbts":`)
	typeKey = []byte(`"type":"`)
)

// appendPayload appends the payload of event seq sent at sentNanos. With
// size > 0 a filler string "sbpad" brings the payload to about size bytes;
// it comes after the two stamps, so the scan for them stops early.
func appendPayload(dst []byte, seq int, sentNanos int64, size int) []byte {
	start := len(dst)
	dst = append(dst, `{"sbseq":`...)
	dst = strconv.AppendInt(dst, int64(seq), 10)
	dst = append(dst, `,"sbts":`...)
	dst = strconv.AppendInt(dst, sentNanos, 10)
	const padKey = `,"sbpad":"`
	if fill := size - (len(dst) - start) - len(padKey) - 2; fill > 0 {
		dst = append(dst, padKey...)
		for range fill {
			dst = append(dst, 'x')
		}
		dst = append(dst, '"')
	}
	return append(dst, '}')
}

// messageType returns the value of the first "type" key of a server
// message: the server writes it first, so this is a prefix match in
// practice and never reaches into the payload.
func messageType(msg []byte) []byte {
	i := bytes.Index(msg, typeKey)
	if i < 0 {
		return nil
	}
	rest := msg[i+len(typeKey):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil
	}
	return rest[:j]
}

// eventStamp finds the sequence number and send time in an `event` frame.
// ok is false for events the generator did not publish.
func eventStamp(msg []byte) (seq int, sent int64, ok bool) {
	s, ok1 := intAfter(msg, keySeq)
	t, ok2 := intAfter(msg, keyTS)
	if !ok1 || !ok2 || s < 0 || s > 1<<31 {
		return 0, 0, false
	}
	return int(s), t, true
}

// intAfter parses the non-negative integer that follows key in b.
func intAfter(b, key []byte) (int64, bool) {
	i := bytes.Index(b, key)
	if i < 0 {
		return 0, false
	}
	b = b[i+len(key):]
	var n int64
	digits := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int64(c-'0')
		digits++
	}
	return n, digits > 0 && digits <= 19
}

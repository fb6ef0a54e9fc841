package server

import (
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"go.uber.org/zap"
)

// closeReason is why a connection ended. It is set once, by the move to
// closing (closeLocked): the first cause wins, so a slow consumer that then
// resets is a slow consumer. releaseLocked counts it in
// switchboard_connection_closes_total{reason} and logs it. Every close
// frame the node writes is built from one (frame, closeWith), so what a
// client is told and what the operator counts cannot disagree.
type closeReason uint8

const (
	// closeUnset is no reason yet; released with it, a connection counts
	// as "reset": only netpoll closing a socket it owned gets there.
	closeUnset closeReason = iota
	// closeClient: the client sent a close frame; the reply echoes its
	// code (RFC 6455 5.5.1).
	closeClient
	// closeReset: the peer left without a close frame, or the socket
	// failed (a read or write error).
	closeReset
	// closeHandshakeRefused: the upgrade request was answered with an
	// HTTP error.
	closeHandshakeRefused
	// closeHandshakeTimeout: no whole upgrade request within
	// --handshake-timeout.
	closeHandshakeTimeout
	// closeIdle: no frame within --idle-timeout.
	closeIdle
	// closeProtocolError: a frame RFC 6455 does not allow.
	closeProtocolError
	// closeInvalidPayload: text that is not UTF-8, or compressed data
	// that does not inflate (RFC 6455 8.1, RFC 7692).
	closeInvalidPayload
	// closeTooBig: a message over --max-message-size.
	closeTooBig
	// closeRateLimited: the client address is over --connects-per-minute.
	closeRateLimited
	// closePolicy: Appwrite's 1008 answers, with Appwrite's text: unknown
	// project, refused origin, a subscription that cannot be taken.
	closePolicy
	// closeAuthFailed: the credentials were refused (an invalid JWT).
	closeAuthFailed
	// closeAuthUnavailable: the resolver could not answer.
	closeAuthUnavailable
	// closeSlowConsumer: the send queue went over --max-queue-bytes.
	closeSlowConsumer
	// closeShutdown: the node is draining or shutting down.
	closeShutdown
	// closeHeldTooLong: more events arrived for a user than a permission
	// change may hold while its roles are re-resolved.
	closeHeldTooLong
	// closeInternalError: a handler panicked, or the input poller refused
	// the socket.
	closeInternalError

	numCloseReasons
)

// closeReasonInfo is what a reason means on the wire and in metrics.
type closeReasonInfo struct {
	label string        // switchboard_connection_closes_total's reason label
	code  ws.StatusCode // the close frame's code; 0: none is sent (the handshake's, a reset)
	text  string        // the close frame's reason, unless the caller gives one
	frame []byte        // the close frame with code and text, built once
}

var closeReasons = func() [numCloseReasons]closeReasonInfo {
	r := [numCloseReasons]closeReasonInfo{
		closeUnset:            {label: "reset"},
		closeClient:           {label: "client_close", code: ws.StatusNormalClosure},
		closeReset:            {label: "reset"},
		closeHandshakeRefused: {label: "handshake_refused"},
		closeHandshakeTimeout: {label: "handshake_timeout"},
		closeIdle:             {label: "idle", code: ws.StatusGoingAway, text: "idle timeout"},
		closeProtocolError:    {label: "protocol_error", code: ws.StatusProtocolError},
		closeInvalidPayload:   {label: "invalid_payload", code: ws.StatusInvalidFramePayloadData},
		closeTooBig:           {label: "too_big", code: ws.StatusMessageTooBig, text: "message too big"},
		closeRateLimited:      {label: "rate_limited", code: statusTryAgainLater, text: "Too many requests"},
		closePolicy:           {label: "policy", code: ws.StatusPolicyViolation},
		closeAuthFailed:       {label: "auth_failed", code: ws.StatusPolicyViolation},
		closeAuthUnavailable:  {label: "auth_unavailable", code: ws.StatusPolicyViolation},
		closeSlowConsumer:     {label: "slow_consumer", code: ws.StatusPolicyViolation, text: "slow consumer"},
		closeShutdown:         {label: "shutdown", code: ws.StatusGoingAway, text: "server shutting down"},
		closeHeldTooLong:      {label: "held_too_long", code: statusTryAgainLater, text: "permission change pending too long"},
		closeInternalError:    {label: "internal_error", code: ws.StatusInternalServerError, text: "internal error"},
	}
	for i := range r {
		if r[i].code != 0 {
			r[i].frame = closeFrame(r[i].code, r[i].text)
		}
	}
	return r
}()

func (r closeReason) info() *closeReasonInfo { return &closeReasons[r] }

// String is the reason's metric label.
func (r closeReason) String() string { return closeReasons[r].label }

// frame returns r's close frame with code (r's own when 0) and text as its
// reason (r's own when empty).
func (r closeReason) frame(code ws.StatusCode, text string) []byte {
	if code == 0 && text == "" {
		return r.info().frame
	}
	if code == 0 {
		code = r.info().code
	}
	return closeFrame(code, text)
}

// closeFrame returns a close frame with the given status code and reason.
// Only closeReasons and closeReason.frame build them. The reason is cut to
// fit the 125-byte control payload limit, at a character boundary: RFC
// 6455 5.5.1 wants it UTF-8.
func closeFrame(code ws.StatusCode, reason string) []byte {
	if len(reason) > 123 {
		n := 123
		for n > 0 && !utf8.RuneStart(reason[n]) {
			n--
		}
		reason = reason[:n]
	}
	return compileFrame(ws.OpClose, ws.NewCloseFrameBody(code, reason))
}

// closeLocked moves c to closing for reason r, unless it is closing
// already; code is the close code sent, 0 for none. The caller holds c.mu.
func (c *conn) closeLocked(r closeReason, code ws.StatusCode) {
	if c.state < stateClosing && c.reason == closeUnset {
		c.reason, c.closeCode = r, uint16(code)
	}
	c.setStateLocked(stateClosing)
}

// closeWith sends r's close frame, with text as its reason (r's own when
// empty), and closes the connection. Input that arrives afterwards is
// discarded. It runs on the read side.
func (c *conn) closeWith(r closeReason, text string) {
	c.readClosed = true
	c.sendLast(outFrame{head: r.frame(0, text)}, r, r.info().code)
}

// closeEcho answers the client's close frame with code (RFC 6455 5.5.1)
// and closes the connection.
func (c *conn) closeEcho(code ws.StatusCode) {
	c.readClosed = true
	c.sendLast(outFrame{head: closeClient.frame(code, "")}, closeClient, code)
}

// recordClose counts and logs a released connection's reason. The caller
// holds c.mu.
func (c *conn) recordClose() {
	s := c.srv
	s.metrics.closes[c.reason].Inc()
	ce := s.log.Check(zap.DebugLevel, "connection closed")
	if ce == nil {
		return
	}
	fields := []zap.Field{
		zap.Uint32("conn", uint32(c.id)),
		zap.String("reason", c.reason.String()),
		zap.Uint16("code", c.closeCode),
	}
	if c.project != "" {
		fields = append(fields, zap.String("project", c.project))
	}
	if c.userID != "" {
		fields = append(fields, zap.String("user", c.userID))
	}
	lifetime := time.Duration(s.clock.Load()-c.opened) * time.Second
	fields = append(fields,
		zap.Duration("lifetime", lifetime),
		zap.Uint64("bytes_in", c.bytesIn.Load()),
		zap.Uint64("bytes_out", c.bytesOut),
		zap.Uint32("messages_in", c.messagesIn.Load()),
		zap.Uint32("frames_out", c.framesOut),
	)
	ce.Write(fields...)
}

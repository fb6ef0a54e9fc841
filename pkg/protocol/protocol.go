// Package protocol parses and encodes the messages of the Appwrite Realtime
// protocol as Switchboard speaks it (see PROTOCOL.md): the handshake URL,
// client->server text frames, the event backbone message published by
// backends, and every server->client frame.
//
// Parsing uses encoding/json: client messages and events are decoded once
// and are not the hot path. Encoding appends to a caller-owned []byte
// without reflection, because the event frame is encoded for every event
// and its per-recipient tail for every recipient.
package protocol

import (
	"strconv"
	"unicode/utf8"
)

// Message type names on the wire.
const (
	// Server -> client.
	TypeConnected = "connected"
	TypeEvent     = "event"
	TypeResponse  = "response"
	TypePong      = "pong"
	TypeError     = "error"

	// Client -> server.
	TypePing           = "ping"
	TypeAuthentication = "authentication"
	TypeSubscribe      = "subscribe"
	TypeUnsubscribe    = "unsubscribe"
)

// Error codes of PROTOCOL.md. They reuse WebSocket close codes because
// Appwrite does, and its SDKs compare against them.
const (
	// CodeInvalidMessage answers a malformed or unsupported client message;
	// the connection stays open.
	CodeInvalidMessage = 1003
	// CodePolicyViolation precedes closing the connection.
	CodePolicyViolation = 1008
	// CodeTooManyRequests answers a client that exceeds a rate limit.
	CodeTooManyRequests = 1013
)

// Bounds on what one client may ask for. They keep a single handshake or
// subscribe message from costing the node an unbounded amount of memory in
// the subscription index.
const (
	// MaxChannels is the largest number of distinct channels one handshake
	// URL or one subscribe entry may name.
	MaxChannels = 100
	// MaxChannelLength is the longest channel name, in bytes.
	MaxChannelLength = 256
	// maxSlots bounds the URL subscription slots of one handshake.
	maxSlots = 100
)

// Error is a protocol error answered to the client as an `error` frame.
// Code is one of the Code* constants; Message is shown to the client
// verbatim, so it never carries server internals.
type Error struct {
	Code    int
	Message string
}

// Error implements the error interface.
func (e *Error) Error() string {
	return "protocol: " + e.Message + " (code " + strconv.Itoa(e.Code) + ")"
}

// invalid returns a CodeInvalidMessage error. A fresh value each time, so
// no caller can mutate another's error.
func invalid(message string) *Error {
	return &Error{Code: CodeInvalidMessage, Message: message}
}

// validName reports whether s is acceptable as a channel name or a role: 1..maxLen bytes of valid UTF-8 without control
// characters. Invalid UTF-8 is refused rather than repaired because the
// name is echoed back and compared against names published as JSON, where
// it could never match byte for byte.
func validName(s string, maxLen int) bool {
	if len(s) == 0 || len(s) > maxLen {
		return false
	}
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c < 0x20 || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			return false
		}
		if r >= 0x80 && r < 0xa0 { // C1 controls
			return false
		}
		i += size
	}
	return true
}

// MaxUIDLength is the longest id Appwrite's UID validator accepts
// (utopia-php/database's Database::MAX_UID_DEFAULT_LENGTH).
const MaxUIDLength = 36

// ValidUID reports whether id is a database id as Appwrite's UID validator
// (utopia-php/database, Validator/Key.php) takes it: 1 to 36 of a-z, A-Z,
// 0-9, period, hyphen and underscore, not starting with one of the last
// three. Subscription and presence ids must be: they are echoed in frames
// and presence ids become part of channel and event names.
func ValidUID(id string) bool {
	if id == "" || len(id) > MaxUIDLength {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || c != '.' && c != '-' && c != '_') {
			return false
		}
	}
	return true
}

// truncate shortens s to at most n bytes on a rune boundary, for quoting
// client input inside error messages without echoing megabytes back.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "..."
}

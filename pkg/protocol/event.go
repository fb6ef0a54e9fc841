package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// ErrInvalidEvent is wrapped by every error of ParseEvent and MarshalEvent,
// so consumers can count invalid backbone messages with errors.Is.
var ErrInvalidEvent = errors.New("invalid event")

// Event is the backbone message of PROTOCOL.md, as backends publish it on
// Redis or POST it to /v1/publish:
//
//	{"project":"P","roles":["any"],"permissionsChanged":false,"userId":null,
//	 "data":{"events":[...],"channels":[...],"timestamp":"...","payload":{...}}}
type Event struct {
	Project            string
	Roles              []string
	PermissionsChanged bool
	// UserID is "" when userId is null or absent.
	UserID string
	// Events are data.events.
	Events []string
	// Channels are data.channels.
	Channels []string
	// Timestamp is data.timestamp verbatim: Appwrite publishes a string,
	// older versions a Unix time number. null when absent.
	Timestamp json.RawMessage
	// Payload is data.payload verbatim; {} when absent.
	Payload json.RawMessage
}

// ParseEvent decodes and validates a backbone message. Invalid JSON, an
// empty project, empty roles or channels, or an empty role or channel name
// is an error wrapping ErrInvalidEvent. A permissionsChanged message with a
// userId may have empty roles and channels (it still needs a project): its
// job is to make nodes re-resolve that user's roles.
//
// Timestamp and Payload come out of the decoder, so they are valid JSON and
// can be copied into frames verbatim.
func ParseEvent(b []byte) (*Event, error) {
	var w struct {
		Project            string   `json:"project"`
		Roles              []string `json:"roles"`
		PermissionsChanged bool     `json:"permissionsChanged"`
		UserID             *string  `json:"userId"`
		Data               struct {
			Events    []string        `json:"events"`
			Channels  []string        `json:"channels"`
			Timestamp json.RawMessage `json:"timestamp"`
			Payload   json.RawMessage `json:"payload"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, fmt.Errorf("protocol: parse event: %w: %w", ErrInvalidEvent, err)
	}
	e := &Event{
		Project:            w.Project,
		Roles:              w.Roles,
		PermissionsChanged: w.PermissionsChanged,
		Events:             w.Data.Events,
		Channels:           w.Data.Channels,
		Timestamp:          w.Data.Timestamp,
		Payload:            w.Data.Payload,
	}
	if w.UserID != nil {
		e.UserID = *w.UserID
	}
	// The decoder hands RawMessage fields a literal null; absent leaves nil.
	if len(e.Timestamp) == 0 {
		e.Timestamp = json.RawMessage("null")
	}
	if len(e.Payload) == 0 {
		e.Payload = json.RawMessage("{}")
	}
	if err := validateEvent(e); err != nil {
		return nil, fmt.Errorf("protocol: parse event: %w", err)
	}
	return e, nil
}

// MarshalEvent encodes e as a backbone message, the inverse of ParseEvent
// (used by `switchboard publish` and tests). It refuses what ParseEvent
// would refuse, and a Timestamp or Payload that is not valid JSON, so a
// publisher learns of a bad event before every consumer does.
func MarshalEvent(e *Event) ([]byte, error) {
	if err := validateEvent(e); err != nil {
		return nil, fmt.Errorf("protocol: marshal event: %w", err)
	}
	if len(e.Timestamp) > 0 && !json.Valid(e.Timestamp) {
		return nil, fmt.Errorf("protocol: marshal event: %w: timestamp is not valid JSON", ErrInvalidEvent)
	}
	if len(e.Payload) > 0 && !json.Valid(e.Payload) {
		return nil, fmt.Errorf("protocol: marshal event: %w: payload is not valid JSON", ErrInvalidEvent)
	}
	b := make([]byte, 0, 128+len(e.Payload))
	b = append(b, `{"project":`...)
	b = appendJSONString(b, e.Project)
	b = append(b, `,"roles":`...)
	b = appendStringArray(b, e.Roles)
	b = append(b, `,"permissionsChanged":`...)
	b = strconv.AppendBool(b, e.PermissionsChanged)
	b = append(b, `,"userId":`...)
	if e.UserID == "" {
		b = append(b, "null"...)
	} else {
		b = appendJSONString(b, e.UserID)
	}
	b = append(b, `,"data":{"events":`...)
	b = appendStringArray(b, e.Events)
	b = append(b, `,"channels":`...)
	b = appendStringArray(b, e.Channels)
	b = append(b, `,"timestamp":`...)
	b = appendRaw(b, e.Timestamp, "null")
	b = append(b, `,"payload":`...)
	b = appendRaw(b, e.Payload, "{}")
	return append(b, "}}"...), nil
}

func validateEvent(e *Event) error {
	if e.Project == "" {
		return fmt.Errorf("%w: empty project", ErrInvalidEvent)
	}
	for _, r := range e.Roles {
		if r == "" {
			return fmt.Errorf("%w: empty role", ErrInvalidEvent)
		}
	}
	for _, c := range e.Channels {
		if c == "" {
			return fmt.Errorf("%w: empty channel", ErrInvalidEvent)
		}
	}
	if e.PermissionsChanged && e.UserID != "" {
		return nil
	}
	if len(e.Roles) == 0 {
		return fmt.Errorf("%w: no roles", ErrInvalidEvent)
	}
	if len(e.Channels) == 0 {
		return fmt.Errorf("%w: no channels", ErrInvalidEvent)
	}
	return nil
}

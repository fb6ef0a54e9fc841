package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// TypePresence is the client message that upserts the sender's presence
// (Web SDK 25.2+ `realtime.upsertPresence`).
const TypePresence = "presence"

// CodeUnauthorized answers a presence from a guest, or one granting a role
// the sender does not hold: Appwrite's USER_UNAUTHORIZED, whose code is
// the HTTP status. The connection stays open.
const CodeUnauthorized = 401

// Presence limits, Appwrite's: status is Text(2048), presenceId Text(36)
// and a database id, permissions at most APP_LIMIT_ARRAY_PARAMS_SIZE.
const (
	MaxPresenceStatus      = 2048
	MaxPresenceID          = 36
	MaxPresencePermissions = 100
)

// PresenceSource is the source field of a presence a connection upserted;
// a presence set through the admin API says PresenceSourceAPI.
const (
	PresenceSourceRealtime = "realtime"
	PresenceSourceAPI      = "api"
)

// PresenceLifetime is how long a presence lives without another upsert
// (its expiresAt), as in Appwrite.
const PresenceLifetime = 30 * 24 * time.Hour

// Error texts of the presence message. Where Appwrite has one (its
// dispatcher's "<param>: <validator description>", utopia's Text, UID and
// Permissions validators, the handler's own) it is kept word for word.
const (
	msgStatusRequired  = "Payload is not valid. Status is required"
	msgStatusInvalid   = "status: Value must be a valid string and at least 1 chars and no longer than 2048 chars"
	msgPresenceIDText  = "presenceId: Value must be a valid string and at least 1 chars and no longer than 36 chars"
	msgPresenceIDChars = "presenceId: UID must contain at most 36 chars. Valid chars are a-z, A-Z, 0-9, period, hyphen, and underscore. Can't start with a special char"
	msgPermsArray      = "permissions: Permissions must be an array of strings."
	msgPermsTooMany    = "permissions: You can only provide up to 100 permissions."
	msgUserRequired    = "User must be authorized"
)

// uniqueID is the presenceId value that asks the server for a fresh id,
// Appwrite's ID.unique().
const uniqueID = "unique()"

// PresenceRequest is a validated `presence` message (or an admin API
// upsert): what the sender asked for, before the store assigns the id.
type PresenceRequest struct {
	Status string
	// ID is the presenceId asked for; "" when the server picks one (absent,
	// null or "unique()"). A user's existing presence keeps its id anyway.
	ID string
	// Metadata is the metadata member, compacted; nil when absent or null.
	Metadata json.RawMessage
	// Permissions are the permission strings as sent (nil when absent, so
	// the default applies); see ExpandPermissions.
	Permissions []string
}

// ParsePresence validates the data of a `presence` message. Errors are
// *Error with code 1003 naming the field: data or status absent, a status
// that is not a string of 1 to 2048 characters, a presenceId that is not a
// database id of at most 36 characters, metadata over maxMetadata bytes
// (compacted JSON), or permissions that are not at most 100 well-formed
// read/update/delete/write permission strings. Whether the sender may
// grant those roles is checked by the caller (CheckPresenceRoles).
func ParsePresence(data json.RawMessage, maxMetadata int) (PresenceRequest, error) {
	var req PresenceRequest
	// Exact member names, as PHP's array keys.
	m, ok := objectMembers(data, "status", "presenceId", "metadata", "permissions")
	if !ok || m[0] == nil {
		return req, invalid(msgStatusRequired)
	}
	s, ok := rawString(m[0])
	if n := utf8.RuneCountInString(s); !ok || n == 0 || n > MaxPresenceStatus {
		return req, invalid(msgStatusInvalid)
	}
	req.Status = s
	if nonNull(m[1]) != nil {
		id, ok := rawString(m[1])
		if !ok || id == "" || utf8.RuneCountInString(id) > MaxPresenceID {
			return req, invalid(msgPresenceIDText)
		}
		if id != uniqueID {
			if !ValidUID(id) {
				return req, invalid(msgPresenceIDChars)
			}
			req.ID = id
		}
	}
	if meta := nonNull(m[2]); meta != nil {
		var buf bytes.Buffer
		if err := json.Compact(&buf, meta); err != nil {
			return req, invalid(msgFormatInvalid)
		}
		if buf.Len() > maxMetadata {
			return req, invalid(fmt.Sprintf("metadata: Value must be JSON of at most %d bytes.", maxMetadata))
		}
		req.Metadata = buf.Bytes()
	}
	if nonNull(m[3]) != nil {
		var perms []string
		if err := json.Unmarshal(m[3], &perms); err != nil {
			return req, invalid(msgPermsArray)
		}
		if len(perms) > MaxPresencePermissions {
			return req, invalid(msgPermsTooMany)
		}
		for _, p := range perms {
			if _, _, err := ParsePermission(p); err != nil {
				return req, invalid("permissions: " + err.Error())
			}
		}
		if perms == nil {
			perms = []string{} // [] is not absent: it grants nothing
		}
		req.Permissions = perms
	}
	return req, nil
}

// Permission actions a presence may carry; write stands for update and
// delete.
var presenceActions = []string{"read", "update", "delete", "write"}

// roleNames are the role kinds of Appwrite's permission model.
var roleNames = []string{"any", "guests", "users", "user", "team", "member", "label"}

// ParsePermission splits a permission string such as read("user:u1") into
// its action and role. The error text is Appwrite's validator's.
func ParsePermission(p string) (action, role string, err error) {
	open := strings.IndexByte(p, '(')
	if open < 0 || !strings.HasSuffix(p, `")`) || len(p) < open+4 || p[open+1] != '"' {
		return "", "", fmt.Errorf("Invalid permission string format: %q.", truncate(p, 64))
	}
	action, role = p[:open], p[open+2:len(p)-2]
	if !slices.Contains(presenceActions, action) {
		return "", "", fmt.Errorf("Permission %q is not allowed. Must be one of: %s.", truncate(action, 64), strings.Join(presenceActions, ", "))
	}
	kind, _, _ := strings.Cut(role, ":")
	kind, _, _ = strings.Cut(kind, "/")
	if role == "" || !slices.Contains(roleNames, kind) || !validName(role, MaxChannelLength) || strings.ContainsRune(role, '"') {
		return "", "", fmt.Errorf("Role %q is not allowed. Must be one of: %s.", truncate(role, 64), strings.Join(roleNames, ", "))
	}
	return action, role, nil
}

// ExpandPermissions turns a presence's requested permissions into the ones
// it is stored with, as Appwrite does: nil (absent) is read, update,
// delete and write for user uid; write becomes update and delete;
// duplicates go; the list is sorted. perms must have passed ParsePresence.
func ExpandPermissions(perms []string, uid string) []string {
	if perms == nil {
		role := `("user:` + uid + `")`
		perms = []string{"read" + role, "update" + role, "delete" + role, "write" + role}
	}
	out := make([]string, 0, len(perms)+1)
	for _, p := range perms {
		action, role, err := ParsePermission(p)
		if err != nil {
			continue
		}
		if action == "write" {
			out = append(out, `update("`+role+`")`, `delete("`+role+`")`)
			continue
		}
		out = append(out, p)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// ReadRoles returns the roles of the read permissions among perms, in
// order, without duplicates: the roles a presence event is published for.
func ReadRoles(perms []string) []string {
	var roles []string
	for _, p := range perms {
		if action, role, err := ParsePermission(p); err == nil && action == "read" && !slices.Contains(roles, role) {
			roles = append(roles, role)
		}
	}
	return roles
}

// CheckPresenceRoles answers whether a sender holding roles may grant
// perms: every role named must be one it holds ("any" is held by all).
// The error is an *Error with code 401 listing what it holds, Appwrite's
// "Permissions must be one of: (...)".
func CheckPresenceRoles(perms []string, roles []string) error {
	for _, p := range perms {
		_, role, err := ParsePermission(p)
		if err != nil {
			continue
		}
		if role != "any" && !slices.Contains(roles, role) {
			held := append([]string{"any"}, roles...)
			return &Error{Code: CodeUnauthorized, Message: "Permissions must be one of: (" + strings.Join(held, ", ") + ")"}
		}
	}
	return nil
}

// ErrGuestPresence is the error a guest's presence gets.
func ErrGuestPresence() *Error { return &Error{Code: CodeUnauthorized, Message: msgUserRequired} }

// PresenceDoc is a presence record as the response, events and the admin
// API show it.
type PresenceDoc struct {
	ID          string
	CreatedAt   time.Time
	UpdatedAt   time.Time
	Permissions []string
	UserID      string
	Status      string
	Source      string
	ExpiresAt   time.Time
	Metadata    json.RawMessage // nil: null
}

// TimeLayout is how Appwrite writes times: milliseconds and a numeric zone.
const TimeLayout = "2006-01-02T15:04:05.000-07:00"

// FormatTime writes t as Appwrite does, in UTC.
func FormatTime(t time.Time) string { return t.UTC().Format(TimeLayout) }

// AppendPresenceHead appends the start of a presence document, its id and
// creation time: {"$id":ID,"$createdAt":T,
// AppendPresenceTail completes it. The halves exist apart because the
// store decides the id and creation time (a user's existing presence keeps
// both) while the rest is the request's.
func AppendPresenceHead(dst []byte, id, createdAt string) []byte {
	dst = append(dst, `{"$id":`...)
	dst = appendJSONString(dst, id)
	dst = append(dst, `,"$createdAt":`...)
	dst = appendJSONString(dst, createdAt)
	return append(dst, ',')
}

// AppendPresenceTail appends the rest of a presence document after
// AppendPresenceHead:
//
//	"$updatedAt":T,"$permissions":[...],"userId":U,"status":S,"source":SRC,"expiresAt":T,"metadata":M}
func AppendPresenceTail(dst []byte, d *PresenceDoc) []byte {
	dst = append(dst, `"$updatedAt":`...)
	dst = appendJSONString(dst, FormatTime(d.UpdatedAt))
	dst = append(dst, `,"$permissions":`...)
	dst = appendStringArray(dst, d.Permissions)
	dst = append(dst, `,"userId":`...)
	dst = appendJSONString(dst, d.UserID)
	dst = append(dst, `,"status":`...)
	dst = appendJSONString(dst, d.Status)
	dst = append(dst, `,"source":`...)
	dst = appendJSONString(dst, d.Source)
	dst = append(dst, `,"expiresAt":`...)
	dst = appendJSONString(dst, FormatTime(d.ExpiresAt))
	dst = append(dst, `,"metadata":`...)
	dst = appendRaw(dst, d.Metadata, "null")
	return append(dst, '}')
}

// AppendPresenceDoc appends the whole document d.
func AppendPresenceDoc(dst []byte, d *PresenceDoc) []byte {
	dst = AppendPresenceHead(dst, d.ID, FormatTime(d.CreatedAt))
	return AppendPresenceTail(dst, d)
}

// PresenceInfo is what a stored presence document says about routing its
// events.
type PresenceInfo struct {
	ID          string   `json:"$id"`
	UserID      string   `json:"userId"`
	Permissions []string `json:"$permissions"`
	ExpiresAt   string   `json:"expiresAt"`
}

// ParsePresenceInfo reads the routing fields out of a stored document.
func ParsePresenceInfo(doc []byte) (PresenceInfo, error) {
	var info PresenceInfo
	if err := json.Unmarshal(doc, &info); err != nil {
		return info, fmt.Errorf("protocol: presence document: %w", err)
	}
	if info.ID == "" {
		return info, errors.New("protocol: presence document has no $id")
	}
	return info, nil
}

// AppendPresenceResponse appends the answer to a `presence` message:
//
//	{"type":"response","data":{"to":"presence","presence":DOC}}
func AppendPresenceResponse(dst []byte, doc json.RawMessage) []byte {
	dst = append(dst, `{"type":"response","data":{"to":"presence","presence":`...)
	dst = appendRaw(dst, doc, "{}")
	return append(dst, "}}"...)
}

// Presence event actions.
const (
	PresenceUpsert = "upsert"
	PresenceDelete = "delete"
)

// PresenceEvent builds the backbone message announcing that presence doc
// (id, permissions perms) of project was upserted or deleted (action):
// events presences.<id>.<action>, presences.*.<action>, presences.<id>,
// presences.*; channels presences, presences.<id>, presences.<action>,
// presences.<id>.<action>; roles the read roles of perms. It returns nil
// when perms grant no read role: nobody may see the event.
func PresenceEvent(project, id string, perms []string, action string, doc json.RawMessage, now time.Time) *Event {
	roles := ReadRoles(perms)
	if len(roles) == 0 {
		return nil
	}
	one := "presences." + id
	return &Event{
		Project:   project,
		Roles:     roles,
		Events:    []string{one + "." + action, "presences.*." + action, one, "presences.*"},
		Channels:  []string{"presences", one, "presences." + action, one + "." + action},
		Timestamp: json.RawMessage(`"` + FormatTime(now) + `"`),
		Payload:   doc,
	}
}

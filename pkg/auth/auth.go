// Package auth turns what a client presents (an Appwrite session or a JWT)
// into a user id and the roles the subscription index matches events against.
package auth

import (
	"context"
	"encoding/json"
	"errors"
)

// ErrUnauthorized means the credentials were presented but are not valid.
// Callers answer it with the protocol's error frames; it never grants roles.
var ErrUnauthorized = errors.New("auth: credentials are not valid")

// Credentials are what a client presented for one project.
type Credentials struct {
	Project string
	Session string // Appwrite session value (cookie, header or authentication message)
	JWT     string // token from the jwt query parameter or x-appwrite-jwt header
}

// Empty reports whether no credential was presented at all.
func (c Credentials) Empty() bool { return c.Session == "" && c.JWT == "" }

// Identity is who a connection is: its user id ("" for a guest), the roles
// it holds and the account object sent back to the client.
type Identity struct {
	UserID string
	Roles  []string
	User   json.RawMessage // nil for a guest
}

// Guest is the identity of an anonymous connection.
func Guest() Identity { return Identity{Roles: []string{RoleGuests}} }

// Role names of Appwrite's permission model.
const (
	RoleAny    = "any" // an event-side wildcard only, never a connection's role
	RoleGuests = "guests"
	RoleUsers  = "users"
)

// UserRole returns the role naming one user.
func UserRole(uid string) string { return "user:" + uid }

// Resolver resolves credentials into an identity. Empty credentials resolve
// to Guest. Invalid credentials return an error wrapping ErrUnauthorized;
// any other error means the resolver could not decide (and grants nothing).
type Resolver interface {
	Resolve(ctx context.Context, c Credentials) (Identity, error)
}

// None is the resolver for deployments without authentication: every
// connection is a guest, whatever it presents.
type None struct{}

// Resolve implements Resolver.
func (None) Resolve(context.Context, Credentials) (Identity, error) { return Guest(), nil }

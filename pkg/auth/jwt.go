package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/golang-jwt/jwt/v5"
)

// JWT resolves HS256 tokens signed with a shared secret. Claims: `sub` or
// `userId` is the user id (required); `roles` lists extra roles (team:T,
// label:L, ...); `project`, when present, must equal the connection's
// project so a token for one project never opens another. A session string
// (from the authentication message) is treated as a token too, which is how
// a browser that cannot set headers authenticates.
type JWT struct {
	secret []byte
	parser *jwt.Parser
}

// NewJWT returns a JWT resolver for the given secret.
func NewJWT(secret []byte) (*JWT, error) {
	if len(secret) == 0 {
		return nil, errors.New("auth: jwt resolver needs a non-empty secret")
	}
	return &JWT{
		secret: secret,
		parser: jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired()),
	}, nil
}

type claims struct {
	jwt.RegisteredClaims
	UserID  string          `json:"userId"`
	Roles   []string        `json:"roles"`
	Project string          `json:"project"`
	User    json.RawMessage `json:"user"`
}

// Resolve implements Resolver.
func (j *JWT) Resolve(_ context.Context, c Credentials) (Identity, error) {
	token := c.JWT
	if token == "" {
		token = c.Session
	}
	if token == "" {
		return Guest(), nil
	}
	var cl claims
	if _, err := j.parser.ParseWithClaims(token, &cl, func(*jwt.Token) (any, error) { return j.secret, nil }); err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrUnauthorized, err)
	}
	uid := cl.UserID
	if uid == "" {
		uid = cl.Subject
	}
	if uid == "" {
		return Identity{}, fmt.Errorf("%w: token names no user (sub or userId)", ErrUnauthorized)
	}
	if cl.Project != "" && cl.Project != c.Project {
		return Identity{}, fmt.Errorf("%w: token is for another project", ErrUnauthorized)
	}
	roles := UserRoles(uid, cl.Roles)
	user := cl.User
	if len(user) == 0 || string(user) == "null" {
		user, _ = json.Marshal(map[string]string{"$id": uid})
	}
	return Identity{UserID: uid, Roles: roles, User: user}, nil
}

// UserRoles returns the roles of signed-in user uid: users, user:uid, then
// extra without duplicates. Roles that only an event may carry (any) or
// that contradict being signed in (guests) are dropped.
func UserRoles(uid string, extra []string) []string {
	roles := make([]string, 0, 2+len(extra))
	roles = append(roles, RoleUsers, UserRole(uid))
	for _, r := range extra {
		r = strings.TrimSpace(r)
		if r == "" || r == RoleAny || r == RoleGuests || contains(roles, r) {
			continue
		}
		roles = append(roles, r)
	}
	return roles
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

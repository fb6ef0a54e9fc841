package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"testing"
)

// signedToken signs claims (any bytes) as an HS256 JWT with secret, so the
// fuzzer reaches the claims decoding behind the signature check.
func signedToken(secret []byte, header, claims []byte) string {
	enc := base64.RawURLEncoding
	s := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(s))
	return s + "." + enc.EncodeToString(mac.Sum(nil))
}

// FuzzJWTResolve feeds the JWT resolver tokens a client controls: raw
// strings (forged, truncated, other algorithms) and correctly signed tokens
// whose claims are arbitrary bytes. It must never panic, and whatever it
// accepts must name a user and never grant the roles only events carry.
func FuzzJWTResolve(f *testing.F) {
	secret := []byte("fuzz-secret")
	hs256 := []byte(`{"alg":"HS256","typ":"JWT"}`)
	for _, c := range []struct{ raw, header, claims string }{
		{"", string(hs256), `{"sub":"u1","exp":4102444800}`},
		{"", string(hs256), `{"userId":"u2","exp":4102444800,"roles":["team:t1","team:t1/owner","any","guests"," users "],"project":"p1","user":{"$id":"u2","name":"Ann"}}`},
		{"", string(hs256), `{"sub":"u1","exp":1}`},
		{"", string(hs256), `{"sub":"","userId":"","exp":4102444800}`},
		{"", string(hs256), `{"sub":"u1","exp":4102444800,"roles":"team:t1"}`},
		{"", string(hs256), `{"sub":"u1","exp":4102444800,"user":null}`},
		{"", string(hs256), `{"sub":"u1","exp":"soon"}`},
		{"", `{"alg":"none"}`, `{"sub":"u1","exp":4102444800}`},
		{"", `{"alg":"HS512","typ":"JWT"}`, `{"sub":"u1","exp":4102444800}`},
		{"eyJhbGciOiJIUzI1NiJ9.e30.", "", ""},
		{"forged", "", ""},
		{"a.b.c", "", ""},
		{"...", "", ""},
	} {
		f.Add(c.raw, []byte(c.header), []byte(c.claims), "p1")
	}
	r, err := NewJWT(secret)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, raw string, header, claims []byte, project string) {
		for _, tok := range []string{raw, signedToken(secret, header, claims)} {
			for _, c := range []Credentials{{Project: project, JWT: tok}, {Project: project, Session: tok}} {
				id, err := r.Resolve(context.Background(), c)
				if tok == "" {
					if err != nil || id.UserID != "" {
						t.Fatalf("no token: %+v, %v", id, err)
					}
					continue
				}
				if err != nil {
					if !errors.Is(err, ErrUnauthorized) {
						t.Fatalf("token %q: error %v is not ErrUnauthorized", tok, err)
					}
					continue
				}
				if id.UserID == "" || len(id.Roles) < 2 || id.Roles[0] != RoleUsers || id.Roles[1] != UserRole(id.UserID) {
					t.Fatalf("token %q: identity %+v", tok, id)
				}
				for _, role := range id.Roles {
					if role == RoleAny || role == RoleGuests || role == "" {
						t.Fatalf("token %q granted role %q", tok, role)
					}
				}
				if !json.Valid(id.User) {
					t.Fatalf("token %q: user %q is not JSON", tok, id.User)
				}
			}
		}
	})
}

package auth

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
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

// FuzzAppwriteDecode feeds the Appwrite resolver's decoders the bodies
// Appwrite (or whatever answers in its place) sends: an account and a page
// of memberships. They must never panic; whatever they accept must name a
// valid user, grant roles built only from valid ids (no ':' or '/' smuggled
// into a role), never `any` or `guests`, only confirmed memberships of
// that user, and an account that is a JSON object without password fields.
func FuzzAppwriteDecode(f *testing.F) {
	f.Add([]byte(`{"$id":"ann","emailVerification":true,"labels":["vip"],"status":true,"password":"x","hash":"argon2"}`),
		[]byte(`{"total":2,"memberships":[{"$id":"m1","userId":"ann","teamId":"t1","confirm":true,"roles":["owner"]},{"$id":"m2","userId":"ann","teamId":"t2","confirm":false,"roles":["admin"]}]}`))
	f.Add([]byte(`{"$id":"a:b","labels":[]}`), []byte(`{"total":0,"memberships":[]}`))
	f.Add([]byte(`{"$id":"ann","labels":"vip"}`), []byte(`{"total":1,"memberships":[{"$id":"m1","userId":"bob","teamId":"t1","confirm":true}]}`))
	f.Add([]byte(`null`), []byte(`{"memberships":null}`))
	f.Add([]byte(`[]`), []byte(`{"total":1,"memberships":[{"$id":"m1","userId":"ann","teamId":"t1/x","confirm":"yes"}]}`))
	f.Fuzz(func(t *testing.T, account, memberships []byte) {
		u, acct, err := decodeAccount(account)
		if err != nil {
			return
		}
		if !validID(u.ID) || !json.Valid(acct) || len(acct) == 0 || acct[0] != '{' {
			t.Fatalf("accepted account %q as %+v %s", account, u, acct)
		}
		var fields map[string]json.RawMessage
		if json.Unmarshal(acct, &fields) != nil {
			t.Fatalf("account %s is not an object", acct)
		}
		for _, k := range accountOnly {
			if _, ok := fields[k]; ok {
				t.Fatalf("account %s shows %q", acct, k)
			}
		}
		ms, _, err := decodeMemberships(memberships, u.ID)
		if err != nil {
			ms = nil
		}
		confirmed := map[string]bool{}
		for _, m := range ms {
			if m.Confirm && m.UserID == u.ID {
				confirmed["team:"+m.TeamID] = true
				confirmed["member:"+m.ID] = true
				for _, r := range m.Roles {
					confirmed["team:"+m.TeamID+"/"+r] = true
				}
			}
		}
		for i, r := range appwriteRoles(u, ms) {
			kind, rest, _ := strings.Cut(r, ":")
			switch {
			case r == RoleAny || r == RoleGuests || r == "":
				t.Fatalf("granted %q", r)
			case i < 4:
				// user:U, users and the verification pair, in getRoles' order.
			case kind == "label":
				if !validID(rest) {
					t.Fatalf("label role %q", r)
				}
			case !confirmed[r]:
				t.Fatalf("role %q from no confirmed membership of %q (%s)", r, u.ID, memberships)
			}
		}
	})
}

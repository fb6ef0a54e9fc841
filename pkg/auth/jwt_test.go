package auth

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func sign(t *testing.T, secret string, method jwt.SigningMethod, c jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, c).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestJWTResolve(t *testing.T) {
	r, err := NewJWT([]byte("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Hour).Unix()
	ctx := context.Background()

	good := sign(t, "s3cret", jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp, "roles": []string{"team:t1", "any", "guests", "users", "team:t1"}})
	id, err := r.Resolve(ctx, Credentials{Project: "p1", JWT: good})
	if err != nil {
		t.Fatalf("valid token: %v", err)
	}
	if id.UserID != "u1" || !reflect.DeepEqual(id.Roles, []string{"users", "user:u1", "team:t1"}) {
		t.Fatalf("identity = %+v", id)
	}
	if string(id.User) != `{"$id":"u1"}` {
		t.Fatalf("user = %s", id.User)
	}

	// The session string of the authentication message carries the token too.
	viaSession := sign(t, "s3cret", jwt.SigningMethodHS256, jwt.MapClaims{"userId": "u2", "exp": exp})
	if id, err := r.Resolve(ctx, Credentials{Session: viaSession}); err != nil || id.UserID != "u2" {
		t.Fatalf("session token: %+v, %v", id, err)
	}

	if id, err := r.Resolve(ctx, Credentials{Project: "p1"}); err != nil || !reflect.DeepEqual(id, Guest()) {
		t.Fatalf("no credentials: %+v, %v", id, err)
	}

	bad := map[string]string{
		"wrong secret":  sign(t, "other", jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp}),
		"expired":       sign(t, "s3cret", jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": time.Now().Add(-time.Hour).Unix()}),
		"no exp":        sign(t, "s3cret", jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1"}),
		"no user":       sign(t, "s3cret", jwt.SigningMethodHS256, jwt.MapClaims{"exp": exp}),
		"other project": sign(t, "s3cret", jwt.SigningMethodHS256, jwt.MapClaims{"sub": "u1", "exp": exp, "project": "p2"}),
		"HS512":         sign(t, "s3cret", jwt.SigningMethodHS512, jwt.MapClaims{"sub": "u1", "exp": exp}),
		"garbage":       "not.a.token",
	}
	for name, tok := range bad {
		if id, err := r.Resolve(ctx, Credentials{Project: "p1", JWT: tok}); !errors.Is(err, ErrUnauthorized) {
			t.Errorf("%s: got %+v, %v; want ErrUnauthorized", name, id, err)
		}
	}
}

func TestNewJWTNeedsSecret(t *testing.T) {
	if _, err := NewJWT(nil); err == nil {
		t.Fatal("NewJWT(nil) succeeded")
	}
}

func TestNoneIsAlwaysGuest(t *testing.T) {
	id, err := None{}.Resolve(context.Background(), Credentials{Project: "p", Session: "anything"})
	if err != nil || !reflect.DeepEqual(id, Guest()) {
		t.Fatalf("None = %+v, %v", id, err)
	}
}

package server

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestSessionFromHandshakeOrder(t *testing.T) {
	cases := []struct {
		name string
		h    handshake
		want string
	}{
		{"cookie", handshake{cookie: "x=1; a_session_p1=abc; a_session_p1_legacy=old", session: "hdr"}, "abc"},
		{"legacy cookie", handshake{cookie: "a_session_p1_legacy=old", session: "hdr"}, "old"},
		{"url-encoded cookie", handshake{cookie: `a_session_p1="a%3Db"`}, "a=b"},
		{"other project's cookie", handshake{cookie: "a_session_p2=zzz", session: "hdr"}, "hdr"},
		{"header", handshake{session: "hdr", fallback: `{"a_session_p1":"fb"}`}, "hdr"},
		{"fallback cookies", handshake{fallback: `{"a_session_p1":"fb"}`}, "fb"},
		{"fallback not json", handshake{fallback: `{oops`}, ""},
		{"fallback wrong type", handshake{fallback: `{"a_session_p1":5}`}, ""},
		{"none", handshake{}, ""},
	}
	for _, tc := range cases {
		if got := sessionFromHandshake("p1", &tc.h); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func FuzzSessionFromHandshake(f *testing.F) {
	f.Add("p1", "a_session_p1=abc; b=c", "", `{"a_session_p1":"x"}`)
	f.Add("p", `a_session_p="%zz"`, "h", `[]`)
	f.Fuzz(func(t *testing.T, project, cookie, session, fallback string) {
		h := handshake{cookie: cookie, session: session, fallback: fallback}
		got := sessionFromHandshake(project, &h)
		// Whatever the bytes, a session is only ever taken from what the
		// client sent: never invented.
		if got != "" && got != session && len(got) > len(cookie)+len(fallback) {
			t.Fatalf("session %q from cookie %q, header %q, fallback %q", got, cookie, session, fallback)
		}
		// And only from this project's cookie or fallback entry: a cookie
		// header without a_session_<project> never yields a session other
		// than the header's or the fallback object's.
		name := "a_session_" + project
		if got != "" && got != session && !strings.Contains(cookie, name) {
			var m map[string]any
			if json.Unmarshal([]byte(fallback), &m) != nil || m[name] != got {
				t.Fatalf("session %q from neither a %s cookie, the header %q nor the fallback %q", got, name, session, fallback)
			}
		}
		// The cookie, when present, wins over header and fallback.
		if v := cookieValue(cookie, name); v != "" && got != v {
			t.Fatalf("cookie %s=%q lost to %q", name, v, got)
		}
	})
}

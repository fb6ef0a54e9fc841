package protocol

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestParsePresenceAcceptsWhatTheSDKSends(t *testing.T) {
	req, err := ParsePresence(json.RawMessage(`{"status":"online","presenceId":"p1","metadata":{ "a" : [1, 2] },"permissions":["read(\"any\")","write(\"user:u1\")"]}`), 4096)
	if err != nil {
		t.Fatal(err)
	}
	if req.Status != "online" || req.ID != "p1" || string(req.Metadata) != `{"a":[1,2]}` || len(req.Permissions) != 2 {
		t.Fatalf("got %+v", req)
	}
	for _, data := range []string{`{"status":"x"}`, `{"status":"x","presenceId":null}`, `{"status":"x","presenceId":"unique()"}`} {
		req, err := ParsePresence(json.RawMessage(data), 4096)
		if err != nil || req.ID != "" || req.Permissions != nil || req.Metadata != nil {
			t.Fatalf("%s: %+v %v", data, req, err)
		}
	}
	req, err = ParsePresence(json.RawMessage(`{"status":"x","permissions":[]}`), 4096)
	if err != nil || req.Permissions == nil || len(req.Permissions) != 0 {
		t.Fatalf("empty permissions: %+v %v", req, err)
	}
	// 2048 characters, not bytes.
	if _, err := ParsePresence(json.RawMessage(`{"status":"`+strings.Repeat("é", 2048)+`"}`), 4096); err != nil {
		t.Fatal(err)
	}
}

func TestParsePresenceNamesTheField(t *testing.T) {
	for _, tc := range []struct{ data, want string }{
		{``, msgStatusRequired},
		{`[]`, msgStatusRequired},
		{`{}`, msgStatusRequired},
		{`{"Status":"x"}`, msgStatusRequired}, // keys are case-sensitive, as PHP's
		{`{"status":"x","PresenceId":"_a","presenceID":"_a"}`, ""},
		{`{"status":""}`, msgStatusInvalid},
		{`{"status":null}`, msgStatusInvalid},
		{`{"status":7}`, msgStatusInvalid},
		{`{"status":"` + strings.Repeat("a", 2049) + `"}`, msgStatusInvalid},
		{`{"status":"x","presenceId":""}`, msgPresenceIDText},
		{`{"status":"x","presenceId":5}`, msgPresenceIDText},
		{`{"status":"x","presenceId":"` + strings.Repeat("a", 37) + `"}`, msgPresenceIDText},
		{`{"status":"x","presenceId":"_a"}`, msgPresenceIDChars},
		{`{"status":"x","presenceId":"a b"}`, msgPresenceIDChars},
		{`{"status":"x","presenceId":"a\nb"}`, msgPresenceIDChars},
		{`{"status":"x","metadata":"` + strings.Repeat("a", 20) + `"}`, "metadata: Value must be JSON of at most 16 bytes."},
		{`{"status":"x","permissions":"read(\"any\")"}`, msgPermsArray},
		{`{"status":"x","permissions":[1]}`, msgPermsArray},
		{`{"status":"x","permissions":[` + strings.Repeat(`"read(\"any\")",`, 100) + `"read(\"any\")"]}`, msgPermsTooMany},
		{`{"status":"x","permissions":["create(\"any\")"]}`, `permissions: Permission "create" is not allowed. Must be one of: read, update, delete, write.`},
		{`{"status":"x","permissions":["read(any)"]}`, `permissions: Invalid permission string format: "read(any)".`},
		{`{"status":"x","permissions":["read(\"nobody\")"]}`, `permissions: Role "nobody" is not allowed. Must be one of: any, guests, users, user, team, member, label.`},
	} {
		_, err := ParsePresence(json.RawMessage(tc.data), 16)
		if tc.want == "" {
			if err != nil {
				t.Errorf("%.60s: %v, want no error", tc.data, err)
			}
			continue
		}
		var pe *Error
		if !errors.As(err, &pe) || pe.Code != CodeInvalidMessage || pe.Message != tc.want {
			t.Errorf("%.60s: got %v, want 1003 %q", tc.data, err, tc.want)
		}
	}
}

func TestExpandPermissionsAsAppwrite(t *testing.T) {
	got := ExpandPermissions(nil, "u1")
	want := []string{`delete("user:u1")`, `read("user:u1")`, `update("user:u1")`}
	if !slices.Equal(got, want) {
		t.Fatalf("default: %v, want %v", got, want)
	}
	got = ExpandPermissions([]string{`write("team:t")`, `read("any")`, `update("team:t")`}, "u1")
	want = []string{`delete("team:t")`, `read("any")`, `update("team:t")`}
	if !slices.Equal(got, want) {
		t.Fatalf("write: %v, want %v", got, want)
	}
	if got := ReadRoles([]string{`read("any")`, `update("x")`, `read("team:t/owner")`, `read("any")`}); !slices.Equal(got, []string{"any", "team:t/owner"}) {
		t.Fatalf("read roles %v", got)
	}
}

func TestCheckPresenceRoles(t *testing.T) {
	roles := []string{"users", "user:u1"}
	if err := CheckPresenceRoles([]string{`read("any")`, `read("users")`, `write("user:u1")`}, roles); err != nil {
		t.Fatal(err)
	}
	err := CheckPresenceRoles([]string{`read("team:t1")`}, roles)
	var pe *Error
	if !errors.As(err, &pe) || pe.Code != 401 || pe.Message != "Permissions must be one of: (any, users, user:u1)" {
		t.Fatalf("got %v", err)
	}
}

func TestPresenceDocAndEvent(t *testing.T) {
	now := time.Date(2026, 5, 25, 12, 0, 0, 0, time.UTC)
	d := &PresenceDoc{ID: "p1", CreatedAt: now, UpdatedAt: now, Permissions: []string{`read("any")`}, UserID: "u1",
		Status: "online", Source: PresenceSourceRealtime, ExpiresAt: now.Add(PresenceLifetime)}
	doc := AppendPresenceDoc(nil, d)
	want := `{"$id":"p1","$createdAt":"2026-05-25T12:00:00.000+00:00","$updatedAt":"2026-05-25T12:00:00.000+00:00",` +
		`"$permissions":["read(\"any\")"],"userId":"u1","status":"online","source":"realtime","expiresAt":"2026-06-24T12:00:00.000+00:00","metadata":null}`
	if string(doc) != want {
		t.Fatalf("doc\n%s\nwant\n%s", doc, want)
	}
	if r := AppendPresenceResponse(nil, doc); string(r) != `{"type":"response","data":{"to":"presence","presence":`+want+`}}` {
		t.Fatalf("response %s", r)
	}
	info, err := ParsePresenceInfo(doc)
	if err != nil || info.ID != "p1" || info.UserID != "u1" || len(info.Permissions) != 1 {
		t.Fatalf("info %+v %v", info, err)
	}
	ev := PresenceEvent("pr", "p1", d.Permissions, PresenceDelete, doc, now)
	if !slices.Equal(ev.Events, []string{"presences.p1.delete", "presences.*.delete", "presences.p1", "presences.*"}) ||
		!slices.Equal(ev.Channels, []string{"presences", "presences.p1", "presences.delete", "presences.p1.delete"}) ||
		!slices.Equal(ev.Roles, []string{"any"}) {
		t.Fatalf("event %+v", ev)
	}
	if _, err := MarshalEvent(ev); err != nil {
		t.Fatal(err)
	}
	if PresenceEvent("pr", "p1", []string{`update("any")`}, PresenceUpsert, doc, now) != nil {
		t.Fatal("an event without read roles")
	}
}

// FuzzParsePresence: whatever the data, the parser answers a 1003 *Error or
// a request whose document and event encode into valid JSON and whose
// fields keep their bounds.
func FuzzParsePresence(f *testing.F) {
	for _, s := range []string{
		`{"status":"online","presenceId":"p1"}`,
		`{"status":"online","presenceId":"unique()","metadata":{"a":[1,"b",null]},"permissions":["read(\"any\")","write(\"user:u1\")"]}`,
		`{"status":"x","permissions":[]}`, `{"status":""}`, `{"status":"x","presenceId":"-a"}`,
		`{"status":"x","permissions":["read(\"team:t/owner\")","delete(\"label:l\")"]}`,
		`{"status":"x","metadata":"\u0000\ud800"}`, `null`, `[]`, `{"status":"\xff"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			return // ParseClientMessage refuses it before
		}
		req, err := ParsePresence(b, 64)
		if err != nil {
			var pe *Error
			if !errors.As(err, &pe) || pe.Code != CodeInvalidMessage {
				t.Fatalf("error %v is not a 1003 *Error", err)
			}
			return
		}
		if req.Status == "" || (req.ID != "" && !ValidUID(req.ID)) || len(req.Metadata) > 64 || len(req.Permissions) > MaxPresencePermissions {
			t.Fatalf("accepted %+v", req)
		}
		perms := ExpandPermissions(req.Permissions, "u1")
		d := &PresenceDoc{ID: "p", Permissions: perms, UserID: "u1", Status: req.Status, Metadata: req.Metadata}
		doc := AppendPresenceDoc(nil, d)
		if !json.Valid(doc) {
			t.Fatalf("invalid document %s", doc)
		}
		if ev := PresenceEvent("pr", "p", perms, PresenceUpsert, doc, time.Now()); ev != nil {
			if _, err := MarshalEvent(ev); err != nil {
				t.Fatalf("event: %v", err)
			}
		}
	})
}

package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"testing"
)

func TestParseEvent(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want *Event
	}{
		{
			name: "appwrite publish",
			in: `{"project":"P","roles":["any"],"permissionsChanged":false,"userId":null,
			      "data":{"events":["buckets.B.files.F.create","buckets.B.files.F"],
			              "channels":["files","buckets.B.files","buckets.B.files.F","files.create"],
			              "timestamp":"2026-01-01T12:00:00.000+00:00","payload":{"$id":"F"}}}`,
			want: &Event{
				Project:   "P",
				Roles:     []string{"any"},
				Events:    []string{"buckets.B.files.F.create", "buckets.B.files.F"},
				Channels:  []string{"files", "buckets.B.files", "buckets.B.files.F", "files.create"},
				Timestamp: json.RawMessage(`"2026-01-01T12:00:00.000+00:00"`),
				Payload:   json.RawMessage(`{"$id":"F"}`),
			},
		},
		{
			name: "defaults and numeric timestamp",
			in:   `{"project":"P","roles":["team:T","user:U"],"userId":"U","data":{"channels":["teams.T"],"timestamp":1700000000}}`,
			want: &Event{
				Project:   "P",
				Roles:     []string{"team:T", "user:U"},
				UserID:    "U",
				Channels:  []string{"teams.T"},
				Timestamp: json.RawMessage(`1700000000`),
				Payload:   json.RawMessage(`{}`),
			},
		},
		{
			name: "null timestamp and payload",
			in:   `{"project":"P","roles":["any"],"data":{"channels":["c"],"timestamp":null,"payload":null}}`,
			want: &Event{
				Project:   "P",
				Roles:     []string{"any"},
				Channels:  []string{"c"},
				Timestamp: json.RawMessage(`null`),
				Payload:   json.RawMessage(`null`),
			},
		},
		{
			name: "permissions change needs no roles or channels",
			in:   `{"project":"P","roles":[],"permissionsChanged":true,"userId":"U","data":{}}`,
			want: &Event{
				Project:            "P",
				Roles:              []string{},
				PermissionsChanged: true,
				UserID:             "U",
				Timestamp:          json.RawMessage(`null`),
				Payload:            json.RawMessage(`{}`),
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseEvent([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseEvent: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %#v\nwant %#v", got, tt.want)
			}

			// MarshalEvent is the inverse.
			b, err := MarshalEvent(got)
			if err != nil {
				t.Fatalf("MarshalEvent: %v", err)
			}
			again, err := ParseEvent(b)
			if err != nil {
				t.Fatalf("ParseEvent(MarshalEvent): %v\n%s", err, b)
			}
			if !sameEvent(again, got) {
				t.Errorf("round trip\n got  %#v\nwant %#v", again, got)
			}
		})
	}
}

// sameEvent compares events treating nil and empty lists alike, since
// MarshalEvent writes both as [].
func sameEvent(a, b *Event) bool {
	return a.Project == b.Project && a.PermissionsChanged == b.PermissionsChanged && a.UserID == b.UserID &&
		slices.Equal(a.Roles, b.Roles) && slices.Equal(a.Events, b.Events) && slices.Equal(a.Channels, b.Channels) &&
		bytes.Equal(a.Timestamp, b.Timestamp) && bytes.Equal(a.Payload, b.Payload)
}

func TestParseEventErrors(t *testing.T) {
	for _, in := range []string{
		``,
		`not json`,
		`[]`,
		`{"project":"P","roles":["any"],"data":{"channels":["c"]}`,
		`{"roles":["any"],"data":{"channels":["c"]}}`,
		`{"project":"","roles":["any"],"data":{"channels":["c"]}}`,
		`{"project":"P","data":{"channels":["c"]}}`,
		`{"project":"P","roles":[],"data":{"channels":["c"]}}`,
		`{"project":"P","roles":["any"],"data":{}}`,
		`{"project":"P","roles":["any"],"data":{"channels":[]}}`,
		`{"project":"P","roles":[""],"data":{"channels":["c"]}}`,
		`{"project":"P","roles":["any"],"data":{"channels":["c",""]}}`,
		`{"project":"P","roles":["any",1],"data":{"channels":["c"]}}`,
		`{"project":"P","roles":"any","data":{"channels":["c"]}}`,
		`{"project":"P","roles":["any"],"userId":5,"data":{"channels":["c"]}}`,
		`{"project":"P","roles":["any"],"permissionsChanged":"yes","data":{"channels":["c"]}}`,
		// A permissions change without a user is an ordinary event.
		`{"project":"P","permissionsChanged":true,"data":{}}`,
		// ... and it still needs a project.
		`{"permissionsChanged":true,"userId":"U","data":{}}`,
	} {
		t.Run(in, func(t *testing.T) {
			e, err := ParseEvent([]byte(in))
			if err == nil {
				t.Fatalf("ParseEvent accepted %#v", e)
			}
			if !errors.Is(err, ErrInvalidEvent) {
				t.Errorf("error %v does not wrap ErrInvalidEvent", err)
			}
		})
	}
}

func TestMarshalEventErrors(t *testing.T) {
	for name, e := range map[string]*Event{
		"no project":    {Roles: []string{"any"}, Channels: []string{"c"}},
		"no roles":      {Project: "P", Channels: []string{"c"}},
		"bad payload":   {Project: "P", Roles: []string{"any"}, Channels: []string{"c"}, Payload: json.RawMessage(`{`)},
		"bad timestamp": {Project: "P", Roles: []string{"any"}, Channels: []string{"c"}, Timestamp: json.RawMessage(`2026-01-01`)},
	} {
		if _, err := MarshalEvent(e); !errors.Is(err, ErrInvalidEvent) {
			t.Errorf("%s: MarshalEvent error = %v, want ErrInvalidEvent", name, err)
		}
	}

	b, err := MarshalEvent(&Event{Project: "P\"", Roles: []string{"any"}, Channels: []string{"c"}})
	if err != nil {
		t.Fatal(err)
	}
	jsonEqual(t, b, `{"project":"P\"","roles":["any"],"permissionsChanged":false,"userId":null,
		"data":{"events":[],"channels":["c"],"timestamp":null,"payload":{}}}`)
}

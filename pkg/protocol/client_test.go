package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

// wantError fails t unless err is an *Error with the code and, when msg is
// not empty, the message.
func wantError(t *testing.T, err error, code int, msg string) {
	t.Helper()
	var pe *Error
	if !errors.As(err, &pe) {
		t.Fatalf("error = %v, want *Error", err)
	}
	if pe.Code != code || (msg != "" && pe.Message != msg) {
		t.Errorf("error = {%d %q}, want {%d %q}", pe.Code, pe.Message, code, msg)
	}
}

func TestParseClientMessage(t *testing.T) {
	tests := []struct {
		in       string
		wantType string
		wantData string // "" means nil
	}{
		{`{"type":"ping"}`, TypePing, ""},
		{`{"type":"ping","data":null}`, TypePing, ""},
		{`{"type":"authentication","data":{"session":"abc"}}`, TypeAuthentication, `{"session":"abc"}`},
		{`{"type":"subscribe","data":[{"channels":["files"]}]}`, TypeSubscribe, `[{"channels":["files"]}]`},
		{` {"data":[1], "type":"unsubscribe"} `, TypeUnsubscribe, `[1]`},
		{`{"type":"sub\u0073cribe"}`, TypeSubscribe, ""},
		{`{"type":"whatever"}`, "whatever", ""}, // unknown types are the server's call
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			m, err := ParseClientMessage([]byte(tt.in))
			if err != nil {
				t.Fatalf("ParseClientMessage: %v", err)
			}
			if m.Type != tt.wantType {
				t.Errorf("Type = %q, want %q", m.Type, tt.wantType)
			}
			if string(m.Data) != tt.wantData {
				t.Errorf("Data = %q, want %q", m.Data, tt.wantData)
			}
		})
	}
}

// TestParseClientMessageErrors follows Appwrite's onMessage
// (app/realtime.php): JSON that does not decode, or has neither a "type"
// nor a "data" key, is "Message format is not valid."; anything else goes
// on to the type, where a type that is no handler's is "Message type is not
// valid." (the server's answer to Type "").
func TestParseClientMessageErrors(t *testing.T) {
	for _, in := range []string{
		``, `not json`, `{"type":"ping"`, `null`, `[]`, `"ping"`, `42`,
		`{}`, `{"test":"123"}`, `{"type":"ping"} trailing`, `{"TYPE":"ping"}`, `{"Data":{}}`,
	} {
		t.Run(in, func(t *testing.T) {
			_, err := ParseClientMessage([]byte(in))
			wantError(t, err, CodeInvalidMessage, "Message format is not valid.")
		})
	}
	for _, in := range []string{
		`{"data":{}}`, `{"data":null}`, `{"type":""}`, `{"type":null}`, `{"type":42}`, `{"type":123}`,
		`{"type":["ping"]}`, `{"type":{"a":1}}`, `{"TYPE":"ping","data":{}}`,
	} {
		t.Run(in, func(t *testing.T) {
			m, err := ParseClientMessage([]byte(in))
			if err != nil || m.Type != "" {
				t.Fatalf("ParseClientMessage(%s) = %+v, %v; want type \"\" (an unknown type) and no error", in, m, err)
			}
		})
	}
}

func TestParseAuthentication(t *testing.T) {
	s, err := ParseAuthentication(json.RawMessage(`{"session":"eyJpZCI6InUxIn0="}`))
	if err != nil || s != "eyJpZCI6InUxIn0=" {
		t.Fatalf("ParseAuthentication = %q, %v", s, err)
	}

	const required = "Payload is not valid. Session is required"
	for _, in := range []string{``, `null`, `{}`, `[]`, `"s"`, `{"other":"x"}`, `{"Session":"s"}`, `{"session":"s"`} {
		_, err := ParseAuthentication(json.RawMessage(in))
		wantError(t, err, CodeInvalidMessage, required)
	}
	const invalidSession = "session: Value must be a valid string and at least 1 chars and no longer than 2048 chars"
	for _, in := range []string{`{"session":null}`, `{"session":""}`, `{"session":42}`, `{"session":{"id":"u"}}`, `{"session":"` + strings.Repeat("a", 2049) + `"}`} {
		_, err := ParseAuthentication(json.RawMessage(in))
		wantError(t, err, CodeInvalidMessage, invalidSession)
	}
	if s, err := ParseAuthentication(json.RawMessage(`{"session":"` + strings.Repeat("a", 2048) + `"}`)); err != nil || len(s) != 2048 {
		t.Errorf("2048-byte session refused: %v", err)
	}
	// Text(2048) counts characters (mb_strlen), not bytes.
	if _, err := ParseAuthentication(json.RawMessage(`{"session":"` + strings.Repeat("é", 2048) + `"}`)); err != nil {
		t.Errorf("2048-character session refused: %v", err)
	}
	_, err = ParseAuthentication(json.RawMessage(`{"session":"` + strings.Repeat("é", 2049) + `"}`))
	wantError(t, err, CodeInvalidMessage, invalidSession)
}

func TestParseSubscribe(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []Subscription
	}{
		{
			name: "web sdk v28",
			in: `[{"subscriptionId":"6a0f3c2e9b1d4f7a8c5e","channels":["databases.db.collections.col.documents"],` +
				`"queries":["{\"method\":\"equal\",\"attribute\":\"status\",\"values\":[\"active\"]}"]}]`,
			want: []Subscription{{
				ID:       "6a0f3c2e9b1d4f7a8c5e",
				Channels: []string{"databases.db.collections.col.documents"},
				Queries:  []string{`{"method":"equal","attribute":"status","values":["active"]}`},
			}},
		},
		{
			name: "object queries keep their raw text",
			in:   `[{"subscriptionId":"a","channels":["files"],"queries":[ {"method":"select", "values":["*"]} ]}]`,
			want: []Subscription{{ID: "a", Channels: []string{"files"}, Queries: []string{`{"method":"select", "values":["*"]}`}}},
		},
		{
			name: "missing id, queries and duplicate channels",
			in:   `[{"channels":["files","documents","files"]},{"channels":["rows"],"queries":[]}]`,
			want: []Subscription{
				{Channels: []string{"files", "documents"}},
				{Channels: []string{"rows"}},
			},
		},
		{
			// Appwrite's UID validator: 36 characters, and ., - and _
			// after the first.
			name: "ids Appwrite takes",
			in:   `[{"subscriptionId":"` + strings.Repeat("a", 36) + `","channels":["a"]},{"subscriptionId":"A.b-c_9","channels":["b"]}]`,
			want: []Subscription{
				{ID: strings.Repeat("a", 36), Channels: []string{"a"}},
				{ID: "A.b-c_9", Channels: []string{"b"}},
			},
		},
		{
			// PHP's keys are case-sensitive: these are not the members.
			name: "members in another case are not the members",
			in:   `[{"channels":["files"],"SubscriptionId":"!bad","Channels":[1],"QUERIES":"x"}]`,
			want: []Subscription{{Channels: []string{"files"}}},
		},
		{
			name: "an empty list is no subscription",
			in:   `[]`,
			want: []Subscription{},
		},
		{
			name: "empty channels accepted like Appwrite",
			in:   `[{"subscriptionId":"x","channels":[]}]`,
			want: []Subscription{{ID: "x", Channels: []string{}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSubscribe(json.RawMessage(tt.in))
			if err != nil {
				t.Fatalf("ParseSubscribe: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got  %#v\nwant %#v", got, tt.want)
			}
		})
	}
}

func TestParseSubscribeErrors(t *testing.T) {
	many := make([]string, MaxChannels+1)
	for i := range many {
		many[i] = `"c` + strings.Repeat("x", i) + `"`
	}
	tests := []struct {
		in, msg string
	}{
		{``, "Payload is not valid. Items is required"},
		{`null`, "Payload is not valid. Items is required"},
		{`{"channels":["files"]}`, "items: Payload is not valid."},
		{`"files"`, "items: Payload is not valid."},
		{`["files"]`, "items: Each subscribe payload must be an object."},
		{`[{"queries":[]}]`, "items: channels is not present in payload."},
		{`[{"Channels":["files"]}]`, "items: channels is not present in payload."},
		{`[{"channels":null}]`, "items: channels is not a valid array."},
		{`[{"channels":"files"}]`, "items: channels is not a valid array."},
		{`[{"channels":[1]}]`, "items: channels must contain only strings."},
		{`[{"channels":["files",null]}]`, "items: channels must contain only strings."},
		{`[{"channels":["files"],"queries":"x"}]`, "items: queries is not a valid array."},
		{`[{"channels":["files"],"queries":null}]`, "items: queries is not a valid array."},
		{`[{"channels":["files"],"queries":[1]}]`, "items: queries is not a valid array."},
		{`[{"channels":["files"],"subscriptionId":7}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":["files"],"subscriptionId":null}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":["files"],"subscriptionId":""}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":["files"],"subscriptionId":"!bad id"}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":["files"],"subscriptionId":"a\nb"}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":["files"],"subscriptionId":"_a"}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":["files"],"subscriptionId":".a"}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":["files"],"subscriptionId":"-a"}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":["files"],"subscriptionId":"é"}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":["files"],"subscriptionId":"` + strings.Repeat("a", 37) + `"}]`, "items: subscriptionId is not a valid id."},
		// SubscribePayload's order within an entry: channels, then
		// queries, then the id (the order for the two new checks).
		{`[{"subscriptionId":"!","queries":"x","channels":[1]}]`, "items: channels must contain only strings."},
		{`[{"subscriptionId":"!","queries":"x","channels":["a"]}]`, "items: queries is not a valid array."},
		// Every entry passes Appwrite's checks before Switchboard's own
		// bounds are applied to any.
		{`[{"channels":[""]},{"channels":"x"}]`, "items: channels is not a valid array."},
		{`[{"channels":["ok"],"queries":[1]},{"channels":["ok"],"subscriptionId":"!"}]`, "items: subscriptionId is not a valid id."},
		{`[{"channels":[""]}]`, ""},
		{`[{"channels":["a\u0000b"]}]`, ""},
		{`[{"channels":["` + strings.Repeat("x", MaxChannelLength+1) + `"]}]`, ""},
		{`[{"channels":[` + strings.Join(many, ",") + `]}]`, "items: too many channels, at most 100 are allowed."},
		{`[{"channels":["ok"]}, {"channels":["files"],"queries":{}}]`, "items: queries is not a valid array."},
	}
	for _, tt := range tests {
		t.Run(truncate(tt.in, 60), func(t *testing.T) {
			_, err := ParseSubscribe(json.RawMessage(tt.in))
			wantError(t, err, CodeInvalidMessage, tt.msg)
		})
	}
}

func TestParseUnsubscribe(t *testing.T) {
	ids, err := ParseUnsubscribe(json.RawMessage(`[{"subscriptionId":"a"},{"subscriptionId":"b","extra":1}]`))
	if err != nil || !reflect.DeepEqual(ids, []string{"a", "b"}) {
		t.Fatalf("ParseUnsubscribe = %v, %v", ids, err)
	}
	// Appwrite's UnsubscribePayload takes an empty list.
	if ids, err := ParseUnsubscribe(json.RawMessage(`[]`)); err != nil || ids == nil || len(ids) != 0 {
		t.Fatalf("ParseUnsubscribe([]) = %#v, %v; want no ids and no error", ids, err)
	}
	for in, msg := range map[string]string{
		``:                           "Payload is not valid. Items is required",
		`{"subscriptionId":"a"}`:     "items: Payload is not valid.",
		`[{"SubscriptionId":"a"}]`:   "items: Each unsubscribe payload must include a non-empty subscriptionId.",
		`["a"]`:                      "items: Each unsubscribe payload must include a non-empty subscriptionId.",
		`[{}]`:                       "items: Each unsubscribe payload must include a non-empty subscriptionId.",
		`[{"subscriptionId":""}]`:    "items: Each unsubscribe payload must include a non-empty subscriptionId.",
		`[{"subscriptionId":1}]`:     "items: Each unsubscribe payload must include a non-empty subscriptionId.",
		`[{"subscriptionId":"a"},1]`: "items: Each unsubscribe payload must include a non-empty subscriptionId.",
	} {
		_, err := ParseUnsubscribe(json.RawMessage(in))
		wantError(t, err, CodeInvalidMessage, msg)
	}
}

func TestErrorString(t *testing.T) {
	err := error(&Error{Code: CodeInvalidMessage, Message: "Message format is not valid."})
	if got, want := err.Error(), "protocol: Message format is not valid. (code 1003)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// A key in another case beside the real one is not the real one (PHP's
// arrays are case-sensitive), whichever comes first.
func TestParseClientMessageKeysAreCaseSensitive(t *testing.T) {
	for _, in := range []string{`{"type":"ping","TYPE":"subscribe"}`, `{"TYPE":"subscribe","type":"ping","Data":[1]}`} {
		m, err := ParseClientMessage([]byte(in))
		if err != nil || m.Type != "ping" || m.Data != nil {
			t.Errorf("ParseClientMessage(%s) = %+v, %v; want a ping without data", in, m, err)
		}
	}
}

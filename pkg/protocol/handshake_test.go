package protocol

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// encodeURIComponent mirrors JavaScript's, which the Web SDK uses to build
// the realtime URL: it leaves A-Z a-z 0-9 - _ . ! ~ * ' ( ) alone.
func encodeURIComponent(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.!~*'()", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

const (
	selectAll   = `{"method":"select","values":["*"]}`
	equalActive = `{"method":"equal","attribute":"status","values":["active"]}`
)

// sdk24URL builds the query string the way Web SDK 22.x-24.x createSocket
// does: channels[] for every channel, then per slot, per channel, per query
// "&" + encodeURIComponent(channel) + "[" + slot + "][]=" + encodeURIComponent(query),
// with select-all standing in for a subscription without queries.
func sdk24URL(project string, channels []string, slots []int, subs []Subscription) string {
	q := "project=" + encodeURIComponent(project)
	for _, c := range channels {
		q += "&channels[]=" + encodeURIComponent(c)
	}
	for i, sub := range subs {
		queries := sub.Queries
		if len(queries) == 0 {
			queries = []string{selectAll}
		}
		for _, c := range sub.Channels {
			for _, query := range queries {
				q += "&" + encodeURIComponent(c) + "[" + fmt.Sprint(slots[i]) + "][]=" + encodeURIComponent(query)
			}
		}
	}
	return q
}

func TestParseHandshakeQuery(t *testing.T) {
	tests := []struct {
		name  string
		query string
		want  Handshake
	}{
		{
			name:  "message mode (Web SDK 25+)",
			query: "project=p1&jwt=eyJ.a-b_c",
			want:  Handshake{Project: "p1", JWT: "eyJ.a-b_c"},
		},
		{
			name:  "pre-1.9.0 channels only",
			query: "project=p1&channels[]=files&channels[]=documents",
			want: Handshake{
				Project:     "p1",
				Channels:    []string{"files", "documents"},
				Slots:       []Subscription{{Channels: []string{"files", "documents"}}},
				SlotIndexes: []int{0},
			},
		},
		{
			name:  "percent-encoded brackets and names, duplicates dropped",
			query: "project=p%201&channels%5B%5D=databases.db.collections.c%3A1.documents&channels[]=files&channels[]=files",
			want: Handshake{
				Project:     "p 1",
				Channels:    []string{"databases.db.collections.c:1.documents", "files"},
				Slots:       []Subscription{{Channels: []string{"databases.db.collections.c:1.documents", "files"}}},
				SlotIndexes: []int{0},
			},
		},
		{
			name: "Web SDK 24 Realtime service (slots from 1)",
			query: sdk24URL("p1",
				[]string{"databases.db.collections.col.documents", "files", "account"},
				[]int{1, 2},
				[]Subscription{
					{Channels: []string{"databases.db.collections.col.documents", "files"}, Queries: []string{equalActive}},
					{Channels: []string{"account"}},
				}),
			want: Handshake{
				Project:  "p1",
				Channels: []string{"databases.db.collections.col.documents", "files", "account"},
				Slots: []Subscription{
					{Channels: []string{"databases.db.collections.col.documents", "files"}, Queries: []string{equalActive}},
					{Channels: []string{"account"}, Queries: []string{selectAll}},
				},
				SlotIndexes: []int{1, 2},
			},
		},
		{
			name: "Web SDK 24 Client.subscribe (slots from 0), a channel in two slots",
			query: sdk24URL("p1",
				[]string{"files", "documents"},
				[]int{0, 1},
				[]Subscription{
					{Channels: []string{"files"}},
					{Channels: []string{"files", "documents"}, Queries: []string{equalActive, selectAll}},
				}),
			want: Handshake{
				Project:  "p1",
				Channels: []string{"files", "documents"},
				Slots: []Subscription{
					{Channels: []string{"files"}, Queries: []string{selectAll}},
					{Channels: []string{"files", "documents"}, Queries: []string{equalActive, selectAll}},
				},
				SlotIndexes: []int{0, 1},
			},
		},
		{
			name:  "slot parameter under the PHP-mangled name",
			query: "channels[]=a.b&a_b[3][]=" + encodeURIComponent(equalActive),
			want: Handshake{
				Channels:    []string{"a.b"},
				Slots:       []Subscription{{Channels: []string{"a.b"}, Queries: []string{equalActive}}},
				SlotIndexes: []int{3},
			},
		},
		{
			name:  "channel without slot joins slot 0 and decides its queries first",
			query: "channels[]=x&channels[]=y&y[0][]=q",
			want: Handshake{
				Channels:    []string{"x", "y"},
				Slots:       []Subscription{{Channels: []string{"x", "y"}}},
				SlotIndexes: []int{0},
			},
		},
		{
			name:  "first channel of a slot decides its queries",
			query: "channels[]=y&channels[]=x&channels[]=z&y[0][]=q1&z[0][]=q2",
			want: Handshake{
				Channels:    []string{"y", "x", "z"},
				Slots:       []Subscription{{Channels: []string{"y", "x", "z"}, Queries: []string{"q1"}}},
				SlotIndexes: []int{0},
			},
		},
		{
			name:  "slots sorted, interleaved queries grouped, strangers and string slots ignored",
			query: "channels[]=files&files[7][]=a&files[2][]=b&files[7][]=c&other[1][]=z&files[x][]=bad&files[99999999999999999999][]=huge&v=1",
			want: Handshake{
				Channels: []string{"files"},
				Slots: []Subscription{
					{Channels: []string{"files"}, Queries: []string{"b"}},
					{Channels: []string{"files"}, Queries: []string{"a", "c"}},
				},
				SlotIndexes: []int{2, 7},
			},
		},
		{
			// http_build_query(['project' => 'p1', 'channels' => ['documents', 'account']]),
			// as Appwrite's tests/e2e/Services/Realtime/RealtimeBase.php getWebsocket builds it.
			name:  "indexed channels, percent-encoded (http_build_query)",
			query: "project=p1&channels%5B0%5D=documents&channels%5B1%5D=account",
			want: Handshake{
				Project:     "p1",
				Channels:    []string{"documents", "account"},
				Slots:       []Subscription{{Channels: []string{"documents", "account"}}},
				SlotIndexes: []int{0},
			},
		},
		{
			name:  "channels in PHP array order: a later index overwrites in place, arrays skipped",
			query: "channels[]=a&channels[5]=b&channels[0]=c&channels[]=d&channels[7][]=nested&channels[ ]=e",
			want: Handshake{
				Channels:    []string{"c", "b", "d", "e"},
				Slots:       []Subscription{{Channels: []string{"c", "b", "d", "e"}}},
				SlotIndexes: []int{0},
			},
		},
		{
			name:  "a later plain channels string is replaced by a later array",
			query: "channels=x&channels[]=files",
			want: Handshake{
				Channels:    []string{"files"},
				Slots:       []Subscription{{Channels: []string{"files"}}},
				SlotIndexes: []int{0},
			},
		},
		{
			// Realtime::constructSubscriptions: a string is [$value] at index 0,
			// a slot's string is one query, and http_build_query writes lists
			// with indexes: documents[1][0]=q.
			name:  "slot forms: name=q, name[N]=q, name[N][M]=q, name[N][]=q, -N",
			query: "channels%5B0%5D=documents&channels%5B1%5D=files&channels[2]=teams&channels[3]=rows&documents%5B1%5D%5B0%5D=q1&documents%5B1%5D%5B1%5D=q2&files=q3&teams[4]=q4&rows[-1][]=q5",
			want: Handshake{
				Channels: []string{"documents", "files", "teams", "rows"},
				Slots: []Subscription{
					{Channels: []string{"rows"}, Queries: []string{"q5"}},
					{Channels: []string{"files"}, Queries: []string{"q3"}},
					{Channels: []string{"documents"}, Queries: []string{"q1", "q2"}},
					{Channels: []string{"teams"}, Queries: []string{"q4"}},
				},
				SlotIndexes: []int{-1, 0, 1, 4},
			},
		},
		{
			name:  "a channel named like a parameter Appwrite reads",
			query: "project=p1&channels[]=project&channels[]=jwt",
			want: Handshake{
				Project:     "p1",
				Channels:    []string{"project", "jwt"},
				Slots:       []Subscription{{Channels: []string{"project", "jwt"}, Queries: []string{"p1"}}},
				SlotIndexes: []int{0},
			},
		},
		{
			name:  "empty query",
			query: "",
			want:  Handshake{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseHandshakeQuery(tt.query)
			if err != nil {
				t.Fatalf("ParseHandshakeQuery(%q): %v", tt.query, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseHandshakeQuery(%q)\n got  %#v\n want %#v", tt.query, got, tt.want)
			}
		})
	}
}

func TestParseHandshakeQueryErrors(t *testing.T) {
	var many, manySlots strings.Builder
	for i := range MaxChannels + 1 {
		fmt.Fprintf(&many, "&channels[]=c%d", i)
	}
	manySlots.WriteString("channels[]=f")
	for i := range maxSlots + 1 {
		fmt.Fprintf(&manySlots, "&f[%d][]=q", i)
	}
	tests := []struct {
		name, query string
	}{
		{"too many channels", many.String()},
		{"too many slots", manySlots.String()},
		{"empty channel", "channels[]="},
		{"control character", "channels[]=a%00b"},
		{"DEL", "channels[]=a%7Fb"},
		{"invalid UTF-8", "channels[]=a%FFb"},
		{"too long", "channels[]=" + strings.Repeat("x", MaxChannelLength+1)},
		{"bad escape in value", "project=%zz"},
		{"bad escape in key", "chan%nels[]=x"},
		{"bad escape in an unknown value", "channels[]=x&other=%g0"},
		{"channels not a list", "channels=files"},
		{"channels overwritten by a string", "channels[]=files&channels=x"},
		{"a slot query that is a list", "channels[]=files&files[1][0][]=q"},
		{"too many channels, indexed", strings.ReplaceAll(many.String(), "channels[]", "channels%5B%5D")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseHandshakeQuery(tt.query)
			wantError(t, err, CodeInvalidMessage, "")
		})
	}

	// The bounds themselves are allowed.
	var exact strings.Builder
	for i := range MaxChannels {
		fmt.Fprintf(&exact, "&channels[]=c%d", i)
	}
	exact.WriteString("&channels[]=c0&channels[]=" + strings.Repeat("y", MaxChannelLength))
	if _, err := ParseHandshakeQuery(exact.String()); err == nil {
		t.Errorf("101 distinct channels accepted")
	}
	h, err := ParseHandshakeQuery(strings.TrimPrefix(exact.String()[:strings.LastIndex(exact.String(), "&")], "&"))
	if err != nil || len(h.Channels) != MaxChannels {
		t.Errorf("exactly %d channels (one repeated): %d, %v", MaxChannels, len(h.Channels), err)
	}
}

func TestConvertAccountChannels(t *testing.T) {
	tests := []struct {
		name     string
		channels []string
		uid      string
		want     []string
	}{
		// Cases from Appwrite's tests/unit/Messaging/MessagingChannelsTest.php.
		{"guest", []string{"files", "documents", "documents.789", "account", "account.456"}, "",
			[]string{"files", "documents", "documents.789", "account"}},
		{"user", []string{"files", "documents", "documents.789", "account", "account.456"}, "123",
			[]string{"files", "documents", "documents.789", "account", "account.123"}},
		{"user actions", []string{"account.create", "account.update", "account.upsert", "account.delete"}, "123",
			[]string{"account.123.create", "account.123.update", "account.123.upsert", "account.123.delete"}},
		{"explicit ids and unknown suffixes dropped", []string{"account.other_id", "account.bogus", "account.123", "account.create"}, "123",
			[]string{"account.123.create"}},
		{"guest keeps literal actions", []string{"account.create", "account.update", "account.upsert", "account.delete", "account"}, "",
			[]string{"account.create", "account.update", "account.upsert", "account.delete", "account"}},
		{"explicit scoped action dropped", []string{"account.123.create", "account."}, "123", []string{}},
		{"duplicates removed", []string{"account", "files", "account", "account.create", "account.create"}, "u",
			[]string{"account", "account.u", "files", "account.u.create"}},
		{"not an account channel", []string{"accounts", "accountX.create", "xaccount.create"}, "u",
			[]string{"accounts", "accountX.create", "xaccount.create"}},
		{"nil", nil, "u", []string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]string(nil), tt.channels...)
			got := ConvertAccountChannels(tt.channels, tt.uid)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ConvertAccountChannels(%q, %q) = %q, want %q", tt.channels, tt.uid, got, tt.want)
			}
			if !reflect.DeepEqual(in, tt.channels) {
				t.Errorf("input modified: %q", tt.channels)
			}
		})
	}

	// Long lists take the map path; the result must be the same.
	long := []string{"account", "account.create"}
	for i := range 40 {
		long = append(long, fmt.Sprintf("c%d", i%20), "account")
	}
	got := ConvertAccountChannels(long, "u")
	if len(got) != 23 || got[0] != "account" || got[1] != "account.u" || got[2] != "account.u.create" || got[22] != "c19" {
		t.Errorf("long list: %q", got)
	}
}

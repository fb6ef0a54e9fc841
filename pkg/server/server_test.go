package server

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"reflect"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gobwas/ws"
	"github.com/golang-jwt/jwt/v5"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/broker"
)

func TestEventReachesExactlyMatchingClients(t *testing.T) {
	s := testNode(t, nil)
	files := dial(t, s, "project=p1&channels[]=files", nil)
	otherProject := dial(t, s, "project=p2&channels[]=files", nil)
	otherChannel := dial(t, s, "project=p1&channels[]=documents", nil)
	for _, c := range []*client{files, otherProject, otherChannel} {
		c.expect("connected")
	}

	publish(t, s, event("p1", []string{"any"}, []string{"files", "buckets.b1.files"}, `{"$id":"f1"}`))
	d := files.expectPayload(`{"$id":"f1"}`)
	if !reflect.DeepEqual(d.Events, []string{"buckets.b1.files.f1.create"}) ||
		!reflect.DeepEqual(d.Channels, []string{"files", "buckets.b1.files"}) ||
		d.Timestamp != "2026-01-01T12:00:00.000+00:00" || len(d.Subscriptions) != 1 {
		t.Fatalf("event data = %+v", d)
	}

	// Roles that no guest holds: nobody may receive it.
	publish(t, s, event("p1", []string{"user:u9", "team:t1"}, []string{"files"}, `{"leak":true}`))
	// Markers, one per client, published after the events they must not see.
	publish(t, s, event("p1", []string{"guests"}, []string{"files"}, `{"marker":1}`))
	publish(t, s, event("p2", []string{"any"}, []string{"files"}, `{"marker":2}`))
	publish(t, s, event("p1", []string{"any"}, []string{"documents"}, `{"marker":3}`))
	files.expectPayload(`{"marker":1}`)
	otherProject.expectPayload(`{"marker":2}`)
	otherChannel.expectPayload(`{"marker":3}`)
}

func TestConnectedMessage(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1&channels[]=files&channels[]=documents", nil)
	m := c.expect("connected")
	var d struct {
		Channels      []string          `json:"channels"`
		Subscriptions map[string]string `json:"subscriptions"`
		User          json.RawMessage   `json:"user"`
	}
	if err := json.Unmarshal(m.Data, &d); err != nil {
		t.Fatalf("connected data %s: %v", m.Data, err)
	}
	if !reflect.DeepEqual(d.Channels, []string{"files", "documents"}) || len(d.Subscriptions) != 1 || d.Subscriptions["0"] == "" || string(d.User) != "null" {
		t.Fatalf("connected = %s", m.Data)
	}
	// The event names the subscription id the client was given.
	publish(t, s, event("p1", []string{"any"}, []string{"documents"}, `{}`))
	if ev := c.expectEvent(); !reflect.DeepEqual(ev.Subscriptions, []string{d.Subscriptions["0"]}) {
		t.Fatalf("event subscriptions %v, want [%s]", ev.Subscriptions, d.Subscriptions["0"])
	}
}

func TestMessageModeSubscribeUnsubscribe(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")

	c.send(`{"type":"subscribe","data":[{"subscriptionId":"s1","channels":["files"],"queries":["{\"method\":\"select\",\"values\":[\"*\"]}"]}]}`)
	m := c.expect("response")
	var resp struct {
		To            string `json:"to"`
		Success       bool   `json:"success"`
		Subscriptions []struct {
			SubscriptionID string   `json:"subscriptionId"`
			Channels       []string `json:"channels"`
		} `json:"subscriptions"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil || resp.To != "subscribe" || !resp.Success ||
		len(resp.Subscriptions) != 1 || resp.Subscriptions[0].SubscriptionID != "s1" {
		t.Fatalf("subscribe response %s (%v)", m.Data, err)
	}

	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"n":1}`))
	if d := c.expectPayload(`{"n":1}`); !reflect.DeepEqual(d.Subscriptions, []string{"s1"}) {
		t.Fatalf("subscriptions = %v", d.Subscriptions)
	}

	// A second subscription without an id gets one from the server.
	c.send(`{"type":"subscribe","data":[{"channels":["documents"]}]}`)
	m = c.expect("response")
	if err := json.Unmarshal(m.Data, &resp); err != nil || resp.Subscriptions[0].SubscriptionID == "" {
		t.Fatalf("subscribe response %s", m.Data)
	}
	s2 := resp.Subscriptions[0].SubscriptionID

	c.send(`{"type":"unsubscribe","data":[{"subscriptionId":"s1"},{"subscriptionId":"nope"}]}`)
	m = c.expect("response")
	var un struct {
		To            string `json:"to"`
		Subscriptions []struct {
			SubscriptionID string `json:"subscriptionId"`
			Removed        bool   `json:"removed"`
		} `json:"subscriptions"`
	}
	if err := json.Unmarshal(m.Data, &un); err != nil || un.To != "unsubscribe" || len(un.Subscriptions) != 2 ||
		!un.Subscriptions[0].Removed || un.Subscriptions[1].Removed {
		t.Fatalf("unsubscribe response %s", m.Data)
	}

	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"n":2}`))
	publish(t, s, event("p1", []string{"any"}, []string{"documents"}, `{"n":3}`))
	if d := c.expectPayload(`{"n":3}`); !reflect.DeepEqual(d.Subscriptions, []string{s2}) {
		t.Fatalf("subscriptions = %v, want [%s]", d.Subscriptions, s2)
	}
}

func TestPingAndBadMessagesKeepConnectionOpen(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1&channels[]=files", nil)
	c.expect("connected")
	c.send(`{"type":"ping"}`)
	c.expect("pong")

	for _, bad := range []string{`{not json`, `[]`, `{"data":{}}`, `{"type":"dance"}`, `{"type":"authentication","data":{}}`} {
		c.send(bad)
		m := c.expect("error")
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(m.Data, &e); err != nil || e.Code != 1003 || e.Message == "" {
			t.Fatalf("%s -> %s", bad, m.Data)
		}
	}
	// Still open and still subscribed.
	c.send(`{"type":"ping"}`)
	c.expect("pong")
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"ok":1}`))
	c.expectPayload(`{"ok":1}`)
}

func TestFragmentedMessageIsReassembled(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	msg := []byte(`{"type":"ping"}`)
	parts := [][]byte{msg[:3], msg[3:9], msg[9:]}
	for i, p := range parts {
		op := ws.OpContinuation
		if i == 0 {
			op = ws.OpText
		}
		f := ws.MaskFrame(ws.NewFrame(op, i == len(parts)-1, p))
		if err := ws.WriteFrame(c.conn, f); err != nil {
			t.Fatal(err)
		}
		// A control frame in the middle of a fragmented message is legal.
		if i == 1 {
			if err := ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewPingFrame([]byte("hi")))); err != nil {
				t.Fatal(err)
			}
		}
	}
	c.expect("pong")
}

func TestUnknownProjectIsRefused(t *testing.T) {
	s := testNode(t, func(c *Config) { c.Projects = []string{"p1"} })
	for _, q := range []string{"project=p2&channels[]=files", "channels[]=files"} {
		c := dial(t, s, q, nil)
		code, msgs := c.expectClose()
		if code != ws.StatusPolicyViolation || len(msgs) != 1 || msgs[0].Type != "error" ||
			!strings.Contains(string(msgs[0].Data), `"code":1008`) || !strings.Contains(string(msgs[0].Data), "project") {
			t.Fatalf("%s: close %d after %v", q, code, msgs)
		}
	}
	// The header wins over the query parameter.
	c := dial(t, s, "project=p2", http.Header{"X-Appwrite-Project": {"p1"}})
	c.expect("connected")
}

func TestProtocolViolationsCloseOnlyTheOffender(t *testing.T) {
	s := testNode(t, func(c *Config) { c.MaxMessageSize = 1024 })
	bystander := dial(t, s, "project=p1&channels[]=files", nil)
	bystander.expect("connected")

	cases := []struct {
		name  string
		frame ws.Frame
		want  ws.StatusCode
	}{
		{"unmasked", ws.NewTextFrame([]byte(`{"type":"ping"}`)), ws.StatusProtocolError},
		{"too big", ws.MaskFrame(ws.NewTextFrame(make([]byte, 2048))), ws.StatusMessageTooBig},
		{"reserved bits", ws.MaskFrame(ws.Frame{Header: ws.Header{Fin: true, Rsv: 4, OpCode: ws.OpText, Length: 2}, Payload: []byte("{}")}), ws.StatusProtocolError},
		{"bad utf-8", ws.MaskFrame(ws.NewTextFrame([]byte{0xff, 0xfe})), ws.StatusInvalidFramePayloadData},
		{"fragmented control", ws.MaskFrame(ws.NewFrame(ws.OpPing, false, []byte("x"))), ws.StatusProtocolError},
		{"stray continuation", ws.MaskFrame(ws.NewFrame(ws.OpContinuation, true, []byte("x"))), ws.StatusProtocolError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, s, "project=p1&channels[]=files", nil)
			c.expect("connected")
			if err := ws.WriteFrame(c.conn, tc.frame); err != nil {
				t.Fatal(err)
			}
			if code, _ := c.expectClose(); code != tc.want {
				t.Fatalf("close code %d, want %d", code, tc.want)
			}
		})
	}
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"still":"here"}`))
	bystander.expectPayload(`{"still":"here"}`)
}

func TestClientCloseIsEchoed(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	if err := ws.WriteFrame(c.conn, ws.MaskFrame(ws.NewCloseFrame(ws.NewCloseFrameBody(ws.StatusNormalClosure, "bye")))); err != nil {
		t.Fatal(err)
	}
	if code, _ := c.expectClose(); code != ws.StatusNormalClosure {
		t.Fatalf("close code %d", code)
	}
}

func TestNonUpgradeRequestsGetHTTPErrors(t *testing.T) {
	s := testNode(t, nil)
	resp, err := http.Get("http://" + s.Addr().String() + "/v1/realtime?project=p1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 4 {
		t.Fatalf("plain GET: %d", resp.StatusCode)
	}
	d := ws.Dialer{Timeout: 5 * time.Second}
	if _, _, _, err := d.Dial(t.Context(), "ws://"+s.Addr().String()+"/elsewhere"); err == nil {
		t.Fatal("upgrade on an unknown path succeeded")
	}
}

func jwtFor(t *testing.T, secret string, claims jwt.MapClaims) string {
	t.Helper()
	claims["exp"] = time.Now().Add(time.Hour).Unix()
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func TestJWTRolesDecideDelivery(t *testing.T) {
	r, err := auth.NewJWT([]byte("k"))
	if err != nil {
		t.Fatal(err)
	}
	s := testNode(t, func(c *Config) { c.Resolver = r })

	u1 := dial(t, s, "project=p1&channels[]=files&jwt="+jwtFor(t, "k", jwt.MapClaims{"sub": "u1", "roles": []string{"team:t1"}}), nil)
	m := u1.expect("connected")
	if !strings.Contains(string(m.Data), `"$id":"u1"`) {
		t.Fatalf("connected user: %s", m.Data)
	}
	u2 := dial(t, s, "project=p1&channels[]=files", http.Header{"X-Appwrite-Jwt": {jwtFor(t, "k", jwt.MapClaims{"userId": "u2"})}})
	u2.expect("connected")
	guest := dial(t, s, "project=p1&channels[]=files", nil)
	guest.expect("connected")

	publish(t, s, event("p1", []string{"user:u1"}, []string{"files"}, `{"for":"u1"}`))
	publish(t, s, event("p1", []string{"team:t1", "user:u2"}, []string{"files"}, `{"for":"t1,u2"}`))
	publish(t, s, event("p1", []string{"users"}, []string{"files"}, `{"for":"users"}`))
	publish(t, s, event("p1", []string{"guests"}, []string{"files"}, `{"for":"guests"}`))
	u1.expectPayload(`{"for":"u1"}`)
	u1.expectPayload(`{"for":"t1,u2"}`)
	u1.expectPayload(`{"for":"users"}`)
	u2.expectPayload(`{"for":"t1,u2"}`)
	u2.expectPayload(`{"for":"users"}`)
	guest.expectPayload(`{"for":"guests"}`)

	// A guest that authenticates afterwards gets the user's roles.
	guest.send(`{"type":"authentication","data":{"session":"` + jwtFor(t, "k", jwt.MapClaims{"sub": "u3"}) + `"}}`)
	if m := guest.expect("response"); !strings.Contains(string(m.Data), `"to":"authentication"`) || !strings.Contains(string(m.Data), `"u3"`) {
		t.Fatalf("authentication response %s", m.Data)
	}
	publish(t, s, event("p1", []string{"guests"}, []string{"files"}, `{"for":"guests again"}`))
	publish(t, s, event("p1", []string{"user:u3"}, []string{"files"}, `{"for":"u3"}`))
	guest.expectPayload(`{"for":"u3"}`)

	guest.send(`{"type":"authentication","data":{"session":"forged"}}`)
	if m := guest.expect("error"); !strings.Contains(string(m.Data), "Session is not valid") {
		t.Fatalf("bad session: %s", m.Data)
	}

	bad := dial(t, s, "project=p1&channels[]=files&jwt=forged", nil)
	code, msgs := bad.expectClose()
	if code != ws.StatusPolicyViolation || len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), `"code":401`) {
		t.Fatalf("bad jwt: close %d after %v", code, msgs)
	}
	both := dial(t, s, "project=p1&jwt="+jwtFor(t, "k", jwt.MapClaims{"sub": "u1"}), http.Header{"Cookie": {"a_session_p1=abc"}})
	code, msgs = both.expectClose()
	if code != ws.StatusPolicyViolation || len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), `"code":403`) {
		t.Fatalf("jwt and session: close %d after %v", code, msgs)
	}
}

// TestSlowConsumerIsClosedOthersUnharmed: a client that stops reading is
// cut off once its queue passes MaxQueueBytes, while a client that reads
// every batch as it comes gets every event.
//
// What the kernel absorbs for the slow client is bounded by the test, not
// by the host: the server's sockets get a small send buffer and the slow
// client a fixed receive buffer, so its queue overflows after about 20 of
// the 200 events whatever tcp_wmem says (stock, the server's send buffer
// alone holds 3.9 MB). It used to shrink the client's receive buffer to
// 4 KiB instead, a window below the loopback MSS.
func TestSlowConsumerIsClosedOthersUnharmed(t *testing.T) {
	const maxQueue = 256 << 10
	s := testNodeSendBuffer(t, 64<<10, func(c *Config) { // 128 KiB once the kernel doubles it
		c.MaxQueueBytes = maxQueue
	})
	slow := dialReadBuffer(t, s, "project=p1&channels[]=files", testClientReadBuffer)
	slow.expect("connected")
	fast := dial(t, s, "project=p1&channels[]=files", nil)
	fast.expect("connected")

	big := `{"blob":"` + strings.Repeat("x", 32<<10) + `"}`
	// 200 x 32 KiB: far more than the slow client's buffers and queue. A
	// batch (~130 KiB) is about half the queue limit, so the healthy client
	// is never cut, even when the write pool gets to it only after the whole
	// batch is queued (a loaded machine): with 10 per batch (320 KiB) it
	// was, once in 20 runs beside two busy loops.
	const batches, perBatch = 50, 4
	for b := 0; b < batches; b++ {
		for i := 0; i < perBatch; i++ {
			publish(t, s, event("p1", []string{"any"}, []string{"files"}, big))
		}
		// The healthy client keeps up: it reads each batch before the next.
		for i := 0; i < perBatch; i++ {
			fast.expect("event")
		}
	}
	if got := counterValue(t, s, "switchboard_slow_consumer_closes_total"); got != 1 {
		t.Fatalf("slow consumer closes = %v, want 1", got)
	}
	// The slow client, reading at last, finds its connection cut: it gets
	// fewer events than were published, then the end of the stream.
	got := 0
	for {
		m, err := slow.tryRead(10 * time.Second)
		if isTimeout(err) {
			t.Fatalf("slow client's stream still open after %d events: %v", got, err)
		}
		if err != nil {
			break
		}
		if m.Type == "event" {
			got++
		}
	}
	if got >= batches*perBatch {
		t.Fatalf("slow client received all %d events", got)
	}
	t.Logf("slow client received %d of %d events before it was cut off", got, batches*perBatch)
}

func TestSubscriptionLimit(t *testing.T) {
	s := testNode(t, func(c *Config) { c.MaxSubscriptions = 3 })
	c := dial(t, s, "project=p1&channels[]=files", nil)
	c.expect("connected")
	c.send(`{"type":"subscribe","data":[{"subscriptionId":"a","channels":["x"]},{"subscriptionId":"b","channels":["y"]}]}`)
	c.expect("response")
	// Replacing an existing id does not count twice.
	c.send(`{"type":"subscribe","data":[{"subscriptionId":"b","channels":["z"]}]}`)
	c.expect("response")
	c.send(`{"type":"subscribe","data":[{"subscriptionId":"c","channels":["w"]}]}`)
	if m := c.expect("error"); !strings.Contains(string(m.Data), "Too many subscriptions") {
		t.Fatalf("error = %s", m.Data)
	}
	// The refused subscription changed nothing; the others still deliver.
	publish(t, s, event("p1", []string{"any"}, []string{"w"}, `{"to":"w"}`))
	publish(t, s, event("p1", []string{"any"}, []string{"z"}, `{"to":"z"}`))
	if d := c.expectPayload(`{"to":"z"}`); !reflect.DeepEqual(d.Subscriptions, []string{"b"}) {
		t.Fatalf("subscriptions = %v", d.Subscriptions)
	}
}

func TestHTTPResolverSessionsFromEveryPlace(t *testing.T) {
	backend := &mutableBackend{roles: map[string][]string{}}
	backend.set("u1", "team:t1")
	for _, u := range []string{"u2", "u3", "u4"} {
		backend.set(u)
	}
	r := newHTTPResolver(t, backend.start(t))
	s := testNode(t, func(c *Config) { c.Resolver = r })
	cookie := dial(t, s, "project=p1&channels[]=files", http.Header{"Cookie": {"a=b; a_session_p1=s-u1"}})
	legacy := dial(t, s, "project=p1&channels[]=files", http.Header{"Cookie": {"a_session_p1_legacy=s-u2"}})
	header := dial(t, s, "project=p1&channels[]=files", http.Header{"X-Appwrite-Session": {"s-u3"}})
	fallback := dial(t, s, "project=p1&channels[]=files", http.Header{"X-Fallback-Cookies": {`{"a_session_p1":"s-u4"}`}})
	invalid := dial(t, s, "project=p1&channels[]=files", http.Header{"Cookie": {"a_session_p1=s-nobody"}})
	for i, c := range []*client{cookie, legacy, header, fallback} {
		if m := c.expect("connected"); !strings.Contains(string(m.Data), fmt.Sprintf(`"$id":"u%d"`, i+1)) {
			t.Fatalf("client %d connected as %s", i+1, m.Data)
		}
	}
	// An invalid session leaves the client a guest, as in Appwrite.
	if m := invalid.expect("connected"); !strings.Contains(string(m.Data), `"user":null`) {
		t.Fatalf("invalid session connected as %s", m.Data)
	}
	publish(t, s, event("p1", []string{"team:t1"}, []string{"files"}, `{"to":"t1"}`))
	publish(t, s, event("p1", []string{"user:u2", "user:u3", "user:u4"}, []string{"files"}, `{"to":"u2-4"}`))
	publish(t, s, event("p1", []string{"guests"}, []string{"files"}, `{"to":"guests"}`))
	cookie.expectPayload(`{"to":"t1"}`)
	legacy.expectPayload(`{"to":"u2-4"}`)
	header.expectPayload(`{"to":"u2-4"}`)
	fallback.expectPayload(`{"to":"u2-4"}`)
	invalid.expectPayload(`{"to":"guests"}`)

	// The authentication message works on its own (browsers drop cookies).
	invalid.send(`{"type":"authentication","data":{"session":"s-u1"}}`)
	invalid.expect("response")
	publish(t, s, event("p1", []string{"team:t1"}, []string{"files"}, `{"to":"t1 again"}`))
	invalid.expectPayload(`{"to":"t1 again"}`)

	// A backend that cannot answer grants nothing and says so.
	down := dial(t, s, "project=p1&channels[]=files", http.Header{"X-Appwrite-Session": {"down"}})
	code, msgs := down.expectClose()
	if code != ws.StatusPolicyViolation || len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "unavailable") {
		t.Fatalf("backend down: close %d after %v", code, msgs)
	}
}

func TestAbuseLimits(t *testing.T) {
	s := testNode(t, func(c *Config) {
		c.ConnectsPerIP = 3
		c.MessagesPerMinute = 4
		c.AllowedOrigins = []string{"https://app.example.com", "*.example.org"}
	})
	var open []*client
	for i := 0; i < 3; i++ {
		c := dial(t, s, "project=p1", nil)
		c.expect("connected")
		open = append(open, c)
	}
	over := dial(t, s, "project=p1", nil)
	code, msgs := over.expectClose()
	if code != 1013 || len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), `"code":1013`) {
		t.Fatalf("4th connect: close %d after %v", code, msgs)
	}

	c := open[0]
	for i := 0; i < 4; i++ {
		c.send(`{"type":"ping"}`)
		c.expect("pong")
	}
	c.send(`{"type":"ping"}`)
	if m := c.expect("error"); !strings.Contains(string(m.Data), `"code":1013`) {
		t.Fatalf("5th message: %s", m.Data)
	}
	// Over the message limit, still open: events keep coming.
	c.send(`{"type":"subscribe","data":[{"channels":["files"]}]}`)
	c.expect("error")

	s2 := testNode(t, func(c *Config) { c.AllowedOrigins = []string{"https://app.example.com", "*.example.org"} })
	for origin, ok := range map[string]bool{
		"https://app.example.com": true, "https://APP.example.com/": true, "https://x.example.org": true,
		"": true, "https://evil.com": false, "https://app.example.com.evil.com": false,
	} {
		h := http.Header{}
		if origin != "" {
			h.Set("Origin", origin)
		}
		c := dial(t, s2, "project=p1", h)
		if ok {
			c.expect("connected")
			continue
		}
		code, msgs := c.expectClose()
		if code != ws.StatusPolicyViolation || len(msgs) != 1 || !strings.Contains(string(msgs[0].Data), "Invalid Origin") {
			t.Fatalf("origin %q: close %d after %v", origin, code, msgs)
		}
	}

	// Appwrite's own words for a refused origin, byte for byte, as
	// RealtimeCustomClientTest::testConnectionPlatform (appwrite/appwrite
	// tests/e2e/Services/Realtime) expects them: the host alone, and the
	// platform its scheme registers as (Origin.php, getDescription).
	unknown := dial(t, s2, "project=p1", http.Header{"Origin": {"http://appwrite.unknown"}})
	code, msgs = unknown.expectClose()
	want := `{"code":1008,"message":"Invalid Origin. Register your new client (appwrite.unknown) as a new Web platform on your project console dashboard"}`
	if code != ws.StatusPolicyViolation || len(msgs) != 1 || msgs[0].Type != "error" || string(msgs[0].Data) != want {
		t.Fatalf("origin http://appwrite.unknown: close %d after %v, want the error %s", code, msgs, want)
	}
}

func TestInvalidOriginIsAppwritesText(t *testing.T) {
	for origin, want := range map[string]string{
		"http://appwrite.unknown":        "Invalid Origin. Register your new client (appwrite.unknown) as a new Web platform on your project console dashboard",
		"https://evil.com:8443/":         "Invalid Origin. Register your new client (evil.com) as a new Web platform on your project console dashboard",
		"HTTPS://Evil.com":               "Invalid Origin. Register your new client (Evil.com) as a new Web platform on your project console dashboard",
		"appwrite-android://com.example": "Invalid Origin. Register your new client (com.example) as a new Android platform on your project console dashboard",
		"appwrite-ios://com.example.app": "Invalid Origin. Register your new client (com.example.app) as a new iOS platform on your project console dashboard",
		"chrome-extension://abcdef":      "Unsupported platform",
		"evil.com":                       "Unsupported platform",
	} {
		if got := invalidOrigin(origin); got != want {
			t.Errorf("invalidOrigin(%q) = %q, want %q", origin, got, want)
		}
	}
}

// A Start that fails part-way leaves nothing behind: its listener, pollers
// and write pool are gone (descriptors and goroutines back where they
// were), and the WebSocket address can be bound again.
func TestFailedStartUndoesItsSteps(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	free, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := free.Addr().String()
	free.Close()

	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	goroutines, files := runtime.NumGoroutine(), fds()
	s, err := New(Config{Listen: addr, AdminListen: taken.Addr().String(), Broker: broker.NewMemory(1)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(); err == nil || !strings.Contains(err.Error(), "admin listen") {
		t.Fatalf("Start with the admin address taken: %v", err)
	}
	if got := fds(); got != files {
		t.Fatalf("%d descriptors open after the failed Start, %d before", got, files)
	}
	// Stopped goroutines may take a moment to leave the count.
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after the failed Start, %d before", runtime.NumGoroutine(), goroutines)
		}
		time.Sleep(10 * time.Millisecond)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("WebSocket address still held: %v", err)
	}
	ln.Close()
}

// TestDefaultMessageLimitIsAppwrites: by default a client message of
// 64,000 bytes is answered and one byte more closes the connection
// (1009), Appwrite's limit (app/realtime.php, setPackageMaxLength(64000)).
func TestDefaultMessageLimitIsAppwrites(t *testing.T) {
	s := testNode(t, nil)
	ping := func(size int) string {
		const head, tail = `{"type":"ping","pad":"`, `"}`
		return head + strings.Repeat("x", size-len(head)-len(tail)) + tail
	}
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	c.send(ping(64000))
	c.expect("pong")
	c.send(ping(64001))
	if code, _ := c.expectClose(); code != ws.StatusMessageTooBig {
		t.Fatalf("a 64,001-byte message: close %d, want %d", code, ws.StatusMessageTooBig)
	}
}

// TestMessageFormatAndTypeErrorsAreAppwrites follows Appwrite's onMessage
// (app/realtime.php) and the assertions of RealtimeCustomClientTest
// (tests/e2e/Services/Realtime) on {"test":"123"}: a message with neither "type" nor "data"
// is "Message format is not valid."; one with either, whose type is no
// message type Appwrite has (a number, missing, or another case), is
// "Message type is not valid." Both are 1003, and the connection stays.
func TestMessageFormatAndTypeErrorsAreAppwrites(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	for msg, want := range map[string]string{
		`{"test":"123"}`:  `{"code":1003,"message":"Message format is not valid."}`,
		`{"TYPE":"ping"}`: `{"code":1003,"message":"Message format is not valid."}`,
		`{"type":123}`:    `{"code":1003,"message":"Message type is not valid."}`,
		`{"data":{}}`:     `{"code":1003,"message":"Message type is not valid."}`,
		`{"type":"pong"}`: `{"code":1003,"message":"Message type is not valid."}`,
		`{"type":null}`:   `{"code":1003,"message":"Message type is not valid."}`,
	} {
		c.send(msg)
		if m := c.expect("error"); string(m.Data) != want {
			t.Errorf("%s: error %s, want %s", msg, m.Data, want)
		}
	}
	c.send(`{"type":"ping"}`)
	c.expect("pong")
}

// TestSubscribeValidationIsAppwrites follows Appwrite's SubscribePayload
// and UnsubscribePayload validators (src/Appwrite/Realtime/Message/
// Validators, isValid), whose descriptions the Dispatcher (Dispatcher.php,
// resolveArgs) sends as "items: <description>", with the two checks issue
// 26 quotes from snapshot 0cefd06: a channel that is not a string, and a
// subscriptionId that is there but is not what utopia's UID validator
// (utopia-php/database Validator/Key.php, isValid) takes. An empty list
// passes both validators, and their handlers (Handlers/Subscribe.php and
// Unsubscribe.php, action) answer it with an empty one. A refused
// subscribe subscribes nothing. One subtest, on its own connection, per
// answer.
func TestSubscribeValidationIsAppwrites(t *testing.T) {
	s := testNode(t, nil)
	for _, tc := range []struct{ name, msg, typ, want string }{
		{"channel not a string", `{"type":"subscribe","data":[{"channels":["files",1]}]}`,
			"error", `{"code":1003,"message":"items: channels must contain only strings."}`},
		{"subscriptionId not a UID", `{"type":"subscribe","data":[{"subscriptionId":"!bad id","channels":["files"]}]}`,
			"error", `{"code":1003,"message":"items: subscriptionId is not a valid id."}`},
		{"subscriptionId null", `{"type":"subscribe","data":[{"subscriptionId":null,"channels":["files"]}]}`,
			"error", `{"code":1003,"message":"items: subscriptionId is not a valid id."}`},
		{"subscribe to none", `{"type":"subscribe","data":[]}`,
			"response", `{"to":"subscribe","success":true,"subscriptions":[]}`},
		{"unsubscribe from none", `{"type":"unsubscribe","data":[]}`,
			"response", `{"to":"unsubscribe","success":true,"subscriptions":[]}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, s, "project=p1", nil)
			c.expect("connected")
			c.send(tc.msg)
			if m := c.expect(tc.typ); string(m.Data) != tc.want {
				t.Fatalf("%s %s, want %s", m.Type, m.Data, tc.want)
			}
			// Nothing of it holds files: the marker on documents, which an
			// id as the Web SDK makes them (ID.unique(), 20 hex digits)
			// subscribes, comes first.
			c.send(`{"type":"subscribe","data":[{"subscriptionId":"68f2a1b3c4d5e6f70819","channels":["documents"]}]}`)
			c.expect("response")
			publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"to":"files"}`))
			publish(t, s, event("p1", []string{"any"}, []string{"documents"}, `{"to":"documents"}`))
			if d := c.expectPayload(`{"to":"documents"}`); !reflect.DeepEqual(d.Subscriptions, []string{"68f2a1b3c4d5e6f70819"}) {
				t.Fatalf("subscriptions = %v", d.Subscriptions)
			}
		})
	}
}

// TestClientMessageKeysAreCaseSensitive: Appwrite reads a message with
// json_decode into PHP arrays, whose keys are case-sensitive, so the
// Dispatcher (Dispatcher.php, resolveArgs: array_key_exists) and the
// validators beside it (Validators/SubscribePayload.php and
// UnsubscribePayload.php, isValid) find no "channels" in {"Channels":...},
// and utopia's Query::parseQuery no method in {"METHOD":...}. Every member
// of every message is matched as written.
func TestClientMessageKeysAreCaseSensitive(t *testing.T) {
	s := testNode(t, nil)
	for _, tc := range []struct{ name, msg, want string }{
		{"channels", `{"type":"subscribe","data":[{"Channels":["files"]}]}`,
			`{"code":1003,"message":"items: channels is not present in payload."}`},
		{"unsubscribe id", `{"type":"unsubscribe","data":[{"SubscriptionId":"a"}]}`,
			`{"code":1003,"message":"items: Each unsubscribe payload must include a non-empty subscriptionId."}`},
		{"session", `{"type":"authentication","data":{"Session":"s"}}`,
			`{"code":1003,"message":"Payload is not valid. Session is required"}`},
		{"status", `{"type":"presence","data":{"Status":"online"}}`,
			`{"code":1003,"message":"Payload is not valid. Status is required"}`},
		// Switchboard's own text for a query (README: where Switchboard
		// differs); what matters here is that it is refused.
		{"query method", `{"type":"subscribe","data":[{"channels":["files"],"queries":["{\"METHOD\":\"equal\",\"attribute\":\"n\",\"values\":[1]}"]}]}`, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, s, "project=p1", nil)
			c.expect("connected")
			c.send(tc.msg)
			m := c.expect("error")
			if tc.want != "" && string(m.Data) != tc.want {
				t.Fatalf("error %s, want %s", m.Data, tc.want)
			}
			if tc.want == "" && !strings.HasPrefix(string(m.Data), `{"code":1003,"message":"Invalid query`) {
				t.Fatalf("error %s, want 1003 Invalid query", m.Data)
			}
		})
	}
	// A subscriptionId in another case is no id: the server makes one.
	t.Run("subscribe id", func(t *testing.T) {
		c := dial(t, s, "project=p1", nil)
		c.expect("connected")
		c.send(`{"type":"subscribe","data":[{"SubscriptionId":"mine","channels":["files"]}]}`)
		m := c.expect("response")
		var resp struct {
			Subscriptions []struct {
				SubscriptionID string `json:"subscriptionId"`
			} `json:"subscriptions"`
		}
		if err := json.Unmarshal(m.Data, &resp); err != nil || len(resp.Subscriptions) != 1 ||
			resp.Subscriptions[0].SubscriptionID == "" || resp.Subscriptions[0].SubscriptionID == "mine" {
			t.Fatalf("subscribe response %s", m.Data)
		}
	})
}

// TestConsoleTailIsConsoleOnly follows Appwrite's subscribe handler
// (src/Appwrite/Realtime/Message/Handlers/Subscribe.php, action): after
// every entry's queries, and before any subscription changes, a
// console.tail.<project> channel (EventTailRegistry::projectFromChannel)
// on a connection to any project but console is a policy violation, which
// onMessage (app/realtime.php) answers with the error and then a close
// with 1008. The handshake's channels (onOpen) have no such check.
func TestConsoleTailIsConsoleOnly(t *testing.T) {
	s := testNode(t, nil)
	const refused = `{"code":1008,"message":"Console live tail is only available on the console connection."}`

	t.Run("project connection", func(t *testing.T) {
		c := dial(t, s, "project=p1", nil)
		c.expect("connected")
		c.send(`{"type":"subscribe","data":[{"subscriptionId":"a","channels":["files"]},{"subscriptionId":"b","channels":["console.tail.p2"]}]}`)
		code, msgs := c.expectClose()
		if code != ws.StatusPolicyViolation || len(msgs) != 1 || msgs[0].Type != "error" || string(msgs[0].Data) != refused {
			t.Fatalf("close %d after %v, want the error %s and 1008", code, msgs, refused)
		}
	})
	t.Run("queries first", func(t *testing.T) {
		c := dial(t, s, "project=p1", nil)
		c.expect("connected")
		c.send(`{"type":"subscribe","data":[{"channels":["console.tail.p2"]},{"channels":["files"],"queries":["{\"method\":\"search\"}"]}]}`)
		if m := c.expect("error"); !strings.HasPrefix(string(m.Data), `{"code":1003,"message":"Invalid query`) {
			t.Fatalf("error %s, want the invalid query first", m.Data)
		}
		c.send(`{"type":"ping"}`)
		c.expect("pong")
	})
	t.Run("not a tail channel", func(t *testing.T) {
		c := dial(t, s, "project=p1", nil)
		c.expect("connected")
		c.send(`{"type":"subscribe","data":[{"channels":["console.tail."]}]}`)
		c.expect("response")
	})
	t.Run("console connection", func(t *testing.T) {
		c := dial(t, s, "project=console", nil)
		c.expect("connected")
		c.send(`{"type":"subscribe","data":[{"channels":["console.tail.p2"]}]}`)
		c.expect("response")
	})
	t.Run("handshake channels", func(t *testing.T) {
		c := dial(t, s, "project=p1&channels[]=console.tail.p2", nil)
		c.expect("connected")
	})
}

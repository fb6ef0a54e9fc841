package server

import (
	"encoding/json"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// qtext is a query's JSON text as the SDKs' Query helpers produce it.
func qtext(method, attr string, values ...any) string {
	b, _ := json.Marshal(map[string]any{"method": method, "attribute": attr, "values": values})
	return string(b)
}

func subscribeMsg(t *testing.T, id string, channels []string, queries ...string) string {
	t.Helper()
	if queries == nil {
		queries = []string{} // as the SDK sends it: Appwrite refuses null
	}
	b, err := json.Marshal(map[string]any{"type": "subscribe", "data": []map[string]any{
		{"subscriptionId": id, "channels": channels, "queries": queries},
	}})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func sorted(ids []string) []string {
	out := append([]string(nil), ids...)
	sort.Strings(out)
	return out
}

func TestQueryFiltersSelectEvents(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	c.send(subscribeMsg(t, "done", []string{"files"}, qtext("equal", "status", "done")))
	c.expect("response")
	c.send(subscribeMsg(t, "big", []string{"files"}, qtext("greaterThan", "size", 100), qtext("isNotNull", "name")))
	c.expect("response")
	c.send(subscribeMsg(t, "all", []string{"documents"}))
	c.expect("response")
	plain := dial(t, s, "project=p1&channels[]=files", nil)
	plain.expect("connected")

	cases := []struct {
		payload string
		want    []string // ids c's frame lists; nil: c gets no frame
	}{
		{`{"status":"done","size":50,"name":"a"}`, []string{"done"}},
		{`{"status":"open","size":500,"name":"b"}`, []string{"big"}},
		{`{"status":"done","size":500,"name":"c"}`, []string{"big", "done"}},
		{`{"status":"open","size":500,"name":null}`, nil},
		{`{"status":"done ","size":"500"}`, nil},
		{`[1,2]`, nil},
	}
	for _, tc := range cases {
		publish(t, s, event("p1", []string{"any"}, []string{"files"}, tc.payload))
		// The plain subscriber receives everything, in publish order.
		plain.expectPayload(tc.payload)
	}
	// A marker on the query-free subscription proves what c did not get.
	const marker = `{"marker":true}`
	publish(t, s, event("p1", []string{"any"}, []string{"documents"}, marker))
	for _, tc := range cases {
		if tc.want == nil {
			continue
		}
		d := c.expectPayload(tc.payload)
		if got := sorted(d.Subscriptions); !reflect.DeepEqual(got, tc.want) {
			t.Fatalf("payload %s: subscriptions %v, want %v", tc.payload, got, tc.want)
		}
	}
	if d := c.expectPayload(marker); !reflect.DeepEqual(d.Subscriptions, []string{"all"}) {
		t.Fatalf("marker subscriptions %v", d.Subscriptions)
	}
}

func TestQueryFiltersAndOrOverTheWire(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	or := `{"method":"or","values":[` + qtext("lessThan", "n", 0) + `,` + qtext("greaterThanEqual", "n", 10) + `]}`
	and := `{"method":"and","values":[` + qtext("notEqual", "kind", "tmp") + `,` + or + `]}`
	c.send(subscribeMsg(t, "s", []string{"files"}, and))
	c.expect("response")
	for _, p := range []string{`{"n":5,"kind":"a"}`, `{"n":-1,"kind":"tmp"}`, `{"n":-1,"kind":"a"}`, `{"n":10}`, `{"n":10,"kind":"x"}`} {
		publish(t, s, event("p1", []string{"any"}, []string{"files"}, p))
	}
	c.expectPayload(`{"n":-1,"kind":"a"}`)
	c.expectPayload(`{"n":10,"kind":"x"}`)
	if m, err := c.tryRead(300 * 1e6); err == nil {
		t.Fatalf("unexpected frame %s %s", m.Type, m.Data)
	}
}

func TestInvalidQueryIsNamedAndHarmsNothing(t *testing.T) {
	s := testNode(t, nil)
	c := dial(t, s, "project=p1", nil)
	c.expect("connected")
	c.send(subscribeMsg(t, "ok", []string{"files"}, qtext("equal", "a", 1)))
	c.expect("response")
	for _, bad := range []string{
		qtext("contains", "a", "x"),
		qtext("lessThan", "a", true),
		`{"method":"select","values":["a"]}`,
		`{"method":"equal"`,
	} {
		c.send(subscribeMsg(t, "ok", []string{"documents"}, bad))
		m := c.expect("error")
		var e struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal(m.Data, &e); err != nil || e.Code != 1003 || !strings.Contains(e.Message, bad) {
			t.Fatalf("error for %s = %s", bad, m.Data)
		}
	}
	// The refused replacements left subscription "ok" as it was.
	publish(t, s, event("p1", []string{"any"}, []string{"documents"}, `{"a":1}`))
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"a":1}`))
	if d := c.expectPayload(`{"a":1}`); d.Channels[0] != "files" {
		t.Fatalf("delivered on %v", d.Channels)
	}
}

func TestQueryFiltersInURLSlots(t *testing.T) {
	s := testNode(t, nil)
	// What Web SDK 24 sends: slot 1 filtered, slot 0 plain.
	q := "project=p1&channels[]=files&channels[]=documents" +
		"&files[1][]=" + url.QueryEscape(qtext("equal", "status", "done")) +
		"&documents[0][]=" + url.QueryEscape(`{"method":"select","values":["*"]}`)
	c := dial(t, s, q, nil)
	m := c.expect("connected")
	var conn struct {
		Subscriptions map[string]string `json:"subscriptions"`
	}
	if err := json.Unmarshal(m.Data, &conn); err != nil || len(conn.Subscriptions) != 2 {
		t.Fatalf("connected %s", m.Data)
	}
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"status":"open"}`))
	publish(t, s, event("p1", []string{"any"}, []string{"files"}, `{"status":"done"}`))
	if d := c.expectPayload(`{"status":"done"}`); !reflect.DeepEqual(d.Subscriptions, []string{conn.Subscriptions["1"]}) {
		t.Fatalf("subscriptions %v, want slot 1's %s", d.Subscriptions, conn.Subscriptions["1"])
	}

	// An invalid query in the URL is named, then the connection closes.
	bad := dial(t, s, "project=p1&channels[]=files&files[0][]="+url.QueryEscape(qtext("contains", "a", "x")), nil)
	m = bad.expect("error")
	if !strings.Contains(string(m.Data), "contains") {
		t.Fatalf("error %s", m.Data)
	}
	if code, _ := bad.expectClose(); code != 1008 {
		t.Fatalf("close code %d", code)
	}
}

package protocol

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func TestParseQuery(t *testing.T) {
	tests := []struct {
		in        string
		want      Query
		selectAll bool
	}{
		{`{"method":"select","values":["*"]}`, Query{Method: "select", Values: []json.RawMessage{json.RawMessage(`"*"`)}}, true},
		{`{"method":"select","values":["\u002a"]}`, Query{Method: "select", Values: []json.RawMessage{json.RawMessage(`"\u002a"`)}}, true},
		{`{"method":"equal","attribute":"status","values":["active","done"]}`,
			Query{Method: "equal", Attribute: "status", Values: []json.RawMessage{json.RawMessage(`"active"`), json.RawMessage(`"done"`)}}, false},
		{`{"method":"greaterThan","attribute":"n","values":[5]}`,
			Query{Method: "greaterThan", Attribute: "n", Values: []json.RawMessage{json.RawMessage(`5`)}}, false},
		{`{"method":"isNull","attribute":"deletedAt"}`, Query{Method: "isNull", Attribute: "deletedAt"}, false},
		{`{"method":"or","values":[{"method":"equal","attribute":"a","values":[1]},{"method":"and","values":[{"method":"isNotNull","attribute":"b"}]}]}`,
			Query{Method: "or", Values: []json.RawMessage{
				json.RawMessage(`{"method":"equal","attribute":"a","values":[1]}`),
				json.RawMessage(`{"method":"and","values":[{"method":"isNotNull","attribute":"b"}]}`),
			}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			q, err := ParseQuery(tt.in)
			if err != nil {
				t.Fatalf("ParseQuery: %v", err)
			}
			if !reflect.DeepEqual(q, tt.want) {
				t.Errorf("got %#v, want %#v", q, tt.want)
			}
			if q.IsSelectAll() != tt.selectAll {
				t.Errorf("IsSelectAll() = %v, want %v", q.IsSelectAll(), tt.selectAll)
			}
		})
	}
}

func TestParseQueryErrors(t *testing.T) {
	deep := `{"method":"isNull","attribute":"a"}`
	for range maxQueryDepth + 1 {
		deep = `{"method":"and","values":[` + deep + `]}`
	}
	tests := []struct {
		in, contains string
	}{
		{`not json`, "must be a JSON object"},
		{`"select"`, "must be a JSON object"},
		{`{"method":"search","attribute":"a","values":["x"]}`, "Query method 'search' is not supported"},
		{`{"attribute":"a"}`, "Query method '' is not supported"},
		// PHP's keys are case-sensitive: this query has no method.
		{`{"METHOD":"equal","attribute":"a","values":[1]}`, "Query method '' is not supported"},
		{`{"method":"equal","attribute":"a","values":[1]`, `{"method":string`},
		{`{"method":7}`, `{"method":string`},
		{`{"method":"equal","values":"x"}`, `{"method":string`},
		{`{"method":"select","values":["title"]}`, `Only select("*") is allowed`},
		{`{"method":"select","values":["*","x"]}`, `Only select("*") is allowed`},
		{`{"method":"or","values":["{\"method\":\"equal\"}"]}`, "must be a JSON object"},
		{`{"method":"and","values":[{"method":"regex","attribute":"a","values":["x"]}]}`, "Query method 'regex' is not supported"},
		{deep, "nested too deeply"},
	}
	for _, tt := range tests {
		t.Run(truncate(tt.in, 60), func(t *testing.T) {
			_, err := ParseQuery(tt.in)
			wantError(t, err, CodeInvalidMessage, "")
			if msg := err.(*Error).Message; !strings.Contains(msg, tt.contains) || !strings.HasPrefix(msg, "Invalid query "+truncate(tt.in, 128)) {
				t.Errorf("message %q does not name the query or lacks %q", msg, tt.contains)
			}
		})
	}
}

func TestIsSelectAll(t *testing.T) {
	for _, tt := range []struct {
		q    Query
		want bool
	}{
		{Query{Method: "select", Values: []json.RawMessage{json.RawMessage(`"*"`)}}, true},
		{Query{Method: "select", Values: []json.RawMessage{json.RawMessage(` "*" `)}}, true},
		{Query{Method: "select"}, false},
		{Query{Method: "select", Values: []json.RawMessage{json.RawMessage(`"**"`)}}, false},
		{Query{Method: "select", Values: []json.RawMessage{json.RawMessage(`["*"]`)}}, false},
		{Query{Method: "equal", Values: []json.RawMessage{json.RawMessage(`"*"`)}}, false},
	} {
		if got := tt.q.IsSelectAll(); got != tt.want {
			t.Errorf("%+v.IsSelectAll() = %v, want %v", tt.q, got, tt.want)
		}
	}
}

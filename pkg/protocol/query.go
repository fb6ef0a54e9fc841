package protocol

import "encoding/json"

// Query methods Appwrite allows in realtime queries
// (RuntimeQuery::ALLOWED_QUERIES).
const (
	MethodEqual            = "equal"
	MethodNotEqual         = "notEqual"
	MethodLessThan         = "lessThan"
	MethodLessThanEqual    = "lessThanEqual"
	MethodGreaterThan      = "greaterThan"
	MethodGreaterThanEqual = "greaterThanEqual"
	MethodIsNull           = "isNull"
	MethodIsNotNull        = "isNotNull"
	MethodAnd              = "and"
	MethodOr               = "or"
	MethodSelect           = "select"
)

const allowedMethods = "equal, notEqual, lessThan, lessThanEqual, greaterThan, greaterThanEqual, isNull, isNotNull, and, or, select"

// maxQueryDepth bounds the nesting of and/or. Each level is decoded again
// from its raw text, so without a bound a deeply nested query would cost
// time quadratic in its size.
const maxQueryDepth = 8

// Query is a parsed realtime query.
type Query struct {
	Method    string
	Attribute string
	// Values are the raw JSON values; for and/or each is a nested query
	// object, already validated.
	Values []json.RawMessage
}

// ParseQuery parses one query's JSON text,
// {"method":M,"attribute":A,"values":[...]}, as the SDKs' Query helpers
// produce it (attribute and values may be absent). An unknown method, a
// select other than select(["*"]), invalid nested and/or queries or bad JSON
// is an *Error with code 1003 that quotes the query.
func ParseQuery(s string) (Query, error) {
	q, reason := parseQuery([]byte(s), 0)
	if reason != "" {
		return Query{}, invalid("Invalid query " + truncate(s, 128) + ": " + reason)
	}
	return q, nil
}

// optionalString decodes an absent or null member as "" and a string as
// itself; ok is false for any other value.
func optionalString(raw json.RawMessage) (s string, ok bool) {
	if nonNull(raw) == nil {
		return "", true
	}
	return rawString(raw)
}

// IsSelectAll reports whether q is select(["*"]), which means "every event".
func (q Query) IsSelectAll() bool {
	if q.Method != MethodSelect || len(q.Values) != 1 {
		return false
	}
	s, ok := rawString(q.Values[0])
	return ok && s == "*"
}

// parseQuery returns the query or, on failure, the reason.
func parseQuery(b []byte, depth int) (Query, string) {
	if depth > maxQueryDepth {
		return Query{}, "queries are nested too deeply."
	}
	if !isObject(b) {
		return Query{}, "a query must be a JSON object."
	}
	// Exact member names, as PHP's array keys: {"METHOD":"equal"} has no
	// method. The values are cut out of b, not copied.
	const shape = "a query is {\"method\":string,\"attribute\":string,\"values\":array}."
	m, ok := objectMembers(b, "method", "attribute", "values")
	if !ok {
		return Query{}, shape
	}
	var q Query
	var okM, okA bool
	q.Method, okM = optionalString(m[0])
	q.Attribute, okA = optionalString(m[1])
	if nonNull(m[2]) != nil {
		if q.Values, ok = arrayElements(m[2]); !ok {
			return Query{}, shape
		}
	}
	if !okM || !okA {
		return Query{}, shape
	}
	switch q.Method {
	case MethodEqual, MethodNotEqual, MethodLessThan, MethodLessThanEqual,
		MethodGreaterThan, MethodGreaterThanEqual, MethodIsNull, MethodIsNotNull:
	case MethodAnd, MethodOr:
		for _, v := range q.Values {
			if _, reason := parseQuery(v, depth+1); reason != "" {
				return Query{}, reason
			}
		}
	case MethodSelect:
		if !q.IsSelectAll() {
			return Query{}, `Only select("*") is allowed in Realtime queries. select("*") means "listen to all events".`
		}
	default:
		return Query{}, "Query method '" + truncate(q.Method, 64) + "' is not supported in Realtime queries. Allowed query methods are: " + allowedMethods
	}
	return q, ""
}

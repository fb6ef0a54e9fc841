// Package query compiles the query filters of Appwrite Realtime
// subscriptions and evaluates them against event payloads.
//
// A subscription's queries are compiled once, when it is made; an event's
// payload is decoded at most once, and only if some recipient has a filter.
// The semantics follow Appwrite's RuntimeQuery: every query of a
// subscription must match; a query names a top-level attribute of the
// payload, and an attribute the payload lacks matches nothing (not even
// notEqual or isNull); equal and the comparisons match when any of their
// values does; select(["*"]) anywhere in the list matches every payload.
//
// Values are compared strictly by JSON type: a string never equals a number
// and is never less than one. Numbers compare by value (1 equals 1.0, as in
// JSON), strings byte-wise (ISO 8601 timestamps sort correctly), and arrays
// or objects in a payload match only isNotNull.
package query

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"unicode/utf8"

	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// Filter is the compiled query list of one subscription. A nil *Filter
// matches every payload: it is what a list without queries, or with
// select(["*"]), compiles to, so that subscriptions without filters cost
// one nil check per event.
type Filter struct {
	all []cond
}

type op uint8

const (
	opEqual op = iota
	opNotEqual
	opLess
	opLessEqual
	opGreater
	opGreaterEqual
	opIsNull
	opIsNotNull
	opAnd
	opOr
)

// cond is one compiled query.
type cond struct {
	op   op
	attr string
	vals []value // equal, notEqual and the comparisons
	kids []cond  // and, or
}

// Compile compiles the queries of one subscription, each the JSON text the
// SDKs' Query helpers produce. An invalid query is a *protocol.Error with
// code 1003 that quotes it.
func Compile(queries []string) (*Filter, error) {
	var f Filter
	selectAll := false
	for _, text := range queries {
		q, err := protocol.ParseQuery(text)
		if err != nil {
			return nil, err
		}
		if q.IsSelectAll() {
			selectAll = true
			continue
		}
		c, reason := compile(q)
		if reason != "" {
			return nil, invalid(text, reason)
		}
		f.all = append(f.all, c)
	}
	if selectAll || len(f.all) == 0 {
		return nil, nil
	}
	return &f, nil
}

func invalid(text, reason string) error {
	if len(text) > 128 {
		n := 128
		for n > 0 && !utf8.RuneStart(text[n]) {
			n--
		}
		text = text[:n] + "..."
	}
	return &protocol.Error{Code: protocol.CodeInvalidMessage, Message: "Invalid query " + text + ": " + reason}
}

// compile turns a parsed query into a cond or gives the reason it cannot.
// protocol.ParseQuery has checked the method names and bounded the nesting.
func compile(q protocol.Query) (cond, string) {
	var c cond
	switch q.Method {
	case protocol.MethodAnd, protocol.MethodOr:
		c.op = opAnd
		if q.Method == protocol.MethodOr {
			c.op = opOr
		}
		if len(q.Values) == 0 {
			return cond{}, q.Method + " needs at least one query."
		}
		for _, raw := range q.Values {
			sub, err := protocol.ParseQuery(string(raw))
			if err != nil {
				return cond{}, "invalid nested query."
			}
			if sub.Method == protocol.MethodSelect {
				return cond{}, "select is only allowed at the top level."
			}
			k, reason := compile(sub)
			if reason != "" {
				return cond{}, reason
			}
			c.kids = append(c.kids, k)
		}
		return c, ""
	case protocol.MethodSelect:
		return cond{}, "select is only allowed at the top level."
	}
	if q.Attribute == "" {
		return cond{}, q.Method + " needs an attribute."
	}
	c.attr = q.Attribute
	switch q.Method {
	case protocol.MethodIsNull:
		c.op = opIsNull
		return c, ""
	case protocol.MethodIsNotNull:
		c.op = opIsNotNull
		return c, ""
	case protocol.MethodEqual:
		c.op = opEqual
	case protocol.MethodNotEqual:
		c.op = opNotEqual
	case protocol.MethodLessThan:
		c.op = opLess
	case protocol.MethodLessThanEqual:
		c.op = opLessEqual
	case protocol.MethodGreaterThan:
		c.op = opGreater
	case protocol.MethodGreaterThanEqual:
		c.op = opGreaterEqual
	default:
		return cond{}, "unsupported method " + q.Method + "."
	}
	if len(q.Values) == 0 {
		return cond{}, q.Method + " needs at least one value."
	}
	ordered := c.op != opEqual && c.op != opNotEqual
	for _, raw := range q.Values {
		v := parseValue(raw)
		switch {
		case v.kind == kindOther:
			return cond{}, "values must be strings, numbers, booleans or null."
		case ordered && v.kind != kindNumber && v.kind != kindString:
			return cond{}, q.Method + " compares strings or numbers only."
		}
		c.vals = append(c.vals, v)
	}
	return c, ""
}

// Match reports whether the payload of d passes every query of f. A nil f
// matches without decoding anything.
func (f *Filter) Match(d *Document) bool {
	if f == nil {
		return true
	}
	d.decode()
	for i := range f.all {
		if !f.all[i].match(d) {
			return false
		}
	}
	return true
}

func (c *cond) match(d *Document) bool {
	switch c.op {
	case opAnd:
		for i := range c.kids {
			if !c.kids[i].match(d) {
				return false
			}
		}
		return true
	case opOr:
		for i := range c.kids {
			if c.kids[i].match(d) {
				return true
			}
		}
		return false
	}
	x, ok := d.fields[c.attr]
	if !ok {
		return false
	}
	switch c.op {
	case opIsNull:
		return x.kind == kindNull
	case opIsNotNull:
		return x.kind != kindNull
	case opNotEqual:
		for _, v := range c.vals {
			if equal(x, v) {
				return false
			}
		}
		return true
	}
	for _, v := range c.vals {
		if c.compare(x, v) {
			return true
		}
	}
	return false
}

// compare applies an equal or ordering cond to the payload value x and one
// query value v.
func (c *cond) compare(x, v value) bool {
	if c.op == opEqual {
		return equal(x, v)
	}
	if x.kind != v.kind {
		return false
	}
	var r int // x compared to v
	switch x.kind {
	case kindNumber:
		switch {
		case x.num < v.num:
			r = -1
		case x.num > v.num:
			r = 1
		}
	case kindString:
		r = bytes.Compare([]byte(x.str), []byte(v.str))
	default:
		return false
	}
	switch c.op {
	case opLess:
		return r < 0
	case opLessEqual:
		return r <= 0
	case opGreater:
		return r > 0
	default: // opGreaterEqual
		return r >= 0
	}
}

func equal(x, v value) bool {
	if x.kind != v.kind {
		return false
	}
	switch x.kind {
	case kindNull:
		return true
	case kindBool:
		return x.b == v.b
	case kindNumber:
		return x.num == v.num
	case kindString:
		return x.str == v.str
	}
	return false
}

type kind uint8

const (
	kindNull kind = iota + 1
	kindBool
	kindNumber
	kindString
	kindOther // array, object, or text that is not JSON
)

// value is one decoded JSON scalar.
type value struct {
	kind kind
	b    bool
	num  float64
	str  string
}

// parseValue decodes one JSON value that the caller got from
// encoding/json, so it is well-formed.
func parseValue(raw []byte) value {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return value{kind: kindOther}
	}
	switch raw[0] {
	case 'n':
		return value{kind: kindNull}
	case 't':
		return value{kind: kindBool, b: true}
	case 'f':
		return value{kind: kindBool}
	case '"':
		var s string
		if json.Unmarshal(raw, &s) != nil {
			return value{kind: kindOther}
		}
		return value{kind: kindString, str: s}
	case '{', '[':
		return value{kind: kindOther}
	}
	// A number out of float64's range parses as ±Inf or 0, which still
	// order; JSON has no other number syntax errors left at this point.
	n, err := strconv.ParseFloat(string(raw), 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return value{kind: kindOther}
	}
	return value{kind: kindNumber, num: n}
}

// Document is one event payload as the filters see it: its top-level
// attributes, decoded on the first Match that needs them and then reused
// for every other recipient of the event.
type Document struct {
	raw     []byte
	decoded bool
	fields  map[string]value
	scratch map[string]json.RawMessage
}

// Reset makes d stand for payload (the event's payload JSON) without
// decoding it. The maps of the previous payload are reused.
func (d *Document) Reset(payload []byte) {
	d.raw = payload
	d.decoded = false
	clear(d.fields)
}

func (d *Document) decode() {
	if d.decoded {
		return
	}
	d.decoded = true
	if d.fields == nil {
		d.fields = make(map[string]value)
	}
	if d.scratch == nil {
		d.scratch = make(map[string]json.RawMessage)
	}
	clear(d.scratch)
	// A payload that is not an object has no attributes: every filter
	// fails on it, which is the safe answer.
	if json.Unmarshal(d.raw, &d.scratch) != nil {
		return
	}
	for k, raw := range d.scratch {
		d.fields[k] = parseValue(raw)
	}
	clear(d.scratch)
}

// Miss says which query of a filter a payload failed first, and why.
type Miss struct {
	// Query is the failed query's position in the list given to Compile.
	// A non-nil Filter was compiled from a list without select (select
	// makes it nil), so every query has a compiled counterpart and the
	// positions are the same.
	Query int
	// Detail names the condition that failed, in words: for and/or the
	// nested query too.
	Detail string
}

// Explain is Match that, when the payload fails, says which query failed
// first and how (the admin API's explain). It is apart from Match so that
// the router's path carries none of its cost; for the answer it repeats
// Match, query by query. A nil f matches.
func (f *Filter) Explain(d *Document) (Miss, bool) {
	if f == nil {
		return Miss{}, true
	}
	d.decode()
	for i := range f.all {
		if !f.all[i].match(d) {
			return Miss{Query: i, Detail: f.all[i].why(d)}, false
		}
	}
	return Miss{}, true
}

// why describes how c fails on d; c.match(d) is false.
func (c *cond) why(d *Document) string {
	switch c.op {
	case opAnd:
		for i := range c.kids {
			if !c.kids[i].match(d) {
				return "and: query " + strconv.Itoa(i) + ": " + c.kids[i].why(d)
			}
		}
		return "and: matched" // not reached while match is false
	case opOr:
		return "or: none of its " + strconv.Itoa(len(c.kids)) + " queries matched"
	}
	x, ok := d.fields[c.attr]
	if !ok {
		return strconv.Quote(c.attr) + " is not in the payload"
	}
	subject := strconv.Quote(c.attr) + " is " + x.String()
	switch c.op {
	case opIsNull:
		return subject + ", not null"
	case opIsNotNull:
		return subject
	case opNotEqual:
		return subject + ", which notEqual excludes"
	}
	return subject + ", and " + c.op.String() + " " + valuesString(c.vals) + " is false"
}

func (o op) String() string {
	switch o {
	case opEqual:
		return "equal"
	case opNotEqual:
		return "notEqual"
	case opLess:
		return "lessThan"
	case opLessEqual:
		return "lessThanEqual"
	case opGreater:
		return "greaterThan"
	case opGreaterEqual:
		return "greaterThanEqual"
	case opIsNull:
		return "isNull"
	case opIsNotNull:
		return "isNotNull"
	case opAnd:
		return "and"
	case opOr:
		return "or"
	}
	return "op(" + strconv.Itoa(int(o)) + ")"
}

// String is v as JSON would write it; arrays and objects are not kept, so
// they are named.
func (v value) String() string {
	switch v.kind {
	case kindNull:
		return "null"
	case kindBool:
		return strconv.FormatBool(v.b)
	case kindNumber:
		return strconv.FormatFloat(v.num, 'g', -1, 64)
	case kindString:
		return strconv.Quote(v.str)
	}
	return "an array or object"
}

func valuesString(vals []value) string {
	b := []byte{'['}
	for i, v := range vals {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, v.String()...)
	}
	return string(append(b, ']'))
}

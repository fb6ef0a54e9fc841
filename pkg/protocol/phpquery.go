package protocol

import (
	"math"
	"net/url"
	"strconv"
	"strings"
)

// PHP's query-string rules, as Appwrite's realtime worker sees them.
//
// Swoole parses the upgrade URL's query with PHP's own treat_data (into
// $request->get, which Utopia's getQuery reads), so a parameter means what
// it means in $_GET. What decides it (main/php_variables.c,
// php_default_treat_data and php_register_variable_ex; the manual's
// "Variables From External Sources" and parse_str pages):
//
//   - parameters are split on '&'; empty ones are skipped; only the first
//     max_input_vars (1000) count, the rest are dropped;
//   - a name ends at its first NUL once decoded, and loses its leading
//     spaces;
//   - in the top-level name (before the first '['), '.' and ' ' become '_';
//     a '[' with no ']' after it becomes '_' too, and so do the '.', ' '
//     and '[' after it: "a[b.c" is "a_b_c";
//   - "name[k1][k2]..." nests arrays, "[]" (or "[ ]") appends at the next
//     integer key; keys inside brackets are not mangled, and whatever follows
//     a "]" that is not "[" is dropped;
//   - a key that is a decimal integer in canonical form ("0", "7", "-3", not
//     "07" or "-0") that fits a 64-bit integer is an integer key; any other
//     key, including "99999999999999999999", is a string key;
//   - a repeated key overwrites the value in place (PHP arrays keep insertion
//     order); descending through a key that holds a string replaces it with
//     an empty array; an append after a negative key n uses n+1 (PHP 8.3+);
//   - more than max_input_nesting_level (64) bracket groups delete the whole
//     top-level parameter.

const (
	// phpMaxInputVars is PHP's default max_input_vars: parameters after
	// the 1000th are dropped. It also bounds a hostile query's work.
	phpMaxInputVars = 1000
	// phpMaxNestingLevel is PHP's default max_input_nesting_level.
	phpMaxNestingLevel = 64
	// phpKeptDepth is the first array depth whose contents are not kept.
	// Appwrite reads $_GET[name][k1][k2] at most (a slot's query list) and
	// only asks whether what lies below is an array; keeping no more bounds
	// the memory of "a[][][]...[]=x" repeated to a handful of nodes per
	// parameter.
	phpKeptDepth = 3
)

// phpKey is a PHP array key: an integer or a string.
type phpKey struct {
	str   string
	n     int64
	isInt bool
}

// phpKeyOf converts a key the way PHP's symbol tables do
// (ZEND_HANDLE_NUMERIC_STR): canonical decimal integers become integer
// keys.
func phpKeyOf(s string) phpKey {
	if n, ok := phpIntKey(s); ok {
		return phpKey{n: n, isInt: true}
	}
	return phpKey{str: s}
}

func phpIntKey(s string) (int64, bool) {
	d := s
	if len(d) > 0 && d[0] == '-' {
		d = d[1:]
	}
	if len(d) == 0 || len(d) > 19 || d[0] < '0' || d[0] > '9' || (d[0] == '0' && len(s) > 1) {
		return 0, false // empty, too long for int64, not a digit, or a leading zero (also "-0")
	}
	for i := 1; i < len(d); i++ {
		if d[i] < '0' || d[i] > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil // err: out of range, which PHP keeps as a string key
}

type phpKind uint8

const (
	phpString phpKind = iota
	phpArrayKind
	// phpOpaqueArray is an array deeper than phpKeptDepth: its contents
	// are not kept.
	phpOpaqueArray
)

// phpValue is a $_GET value: a string or an array.
type phpValue struct {
	str  string
	arr  *phpArray // set when kind is phpArrayKind
	kind phpKind
}

func (v phpValue) isArray() bool { return v.kind != phpString }

type phpEntry struct {
	key phpKey
	val phpValue
}

// phpArray is an ordered PHP array.
type phpArray struct {
	entries []phpEntry
	// index is built once entries outgrow a linear scan, so that a query
	// of a thousand distinct keys costs a thousand lookups, not a million
	// comparisons.
	index map[phpKey]int
	// next is PHP's nNextFreeElement; hasNext is false while it is still
	// ZEND_LONG_MIN (no integer key yet), when an append uses 0.
	next    int64
	hasNext bool
	depth   int
	// limit is the first depth whose arrays are opaque (phpKeptDepth for
	// a handshake); children inherit it.
	limit int
}

const phpIndexAt = 16

func (a *phpArray) find(k phpKey) int {
	if a.index != nil {
		if i, ok := a.index[k]; ok {
			return i
		}
		return -1
	}
	for i := range a.entries {
		if a.entries[i].key == k {
			return i
		}
	}
	return -1
}

func (a *phpArray) get(k phpKey) (phpValue, bool) {
	if i := a.find(k); i >= 0 {
		return a.entries[i].val, true
	}
	return phpValue{}, false
}

// insert adds a key that find did not find.
func (a *phpArray) insert(k phpKey, v phpValue) *phpValue {
	if k.isInt && (!a.hasNext || k.n >= a.next) {
		a.next, a.hasNext = k.n, true
		if k.n < math.MaxInt64 {
			a.next++
		}
	}
	a.entries = append(a.entries, phpEntry{key: k, val: v})
	if a.index != nil {
		a.index[k] = len(a.entries) - 1
	} else if len(a.entries) > phpIndexAt {
		a.index = make(map[phpKey]int, 2*len(a.entries))
		for i, e := range a.entries {
			a.index[e.key] = i
		}
	}
	return &a.entries[len(a.entries)-1].val
}

// set is PHP's symtable update: an existing key keeps its place.
func (a *phpArray) set(k phpKey, v phpValue) *phpValue {
	if i := a.find(k); i >= 0 {
		a.entries[i].val = v
		return &a.entries[i].val
	}
	return a.insert(k, v)
}

// push is PHP's next_index_insert; it fails, as PHP's does, when the next
// key is taken (after a key of math.MaxInt64).
func (a *phpArray) push(v phpValue) *phpValue {
	k := phpKey{isInt: true}
	if a.hasNext {
		k.n = a.next
	}
	if a.find(k) >= 0 {
		return nil
	}
	return a.insert(k, v)
}

func (a *phpArray) remove(k phpKey) {
	i := a.find(k)
	if i < 0 {
		return
	}
	a.entries = append(a.entries[:i], a.entries[i+1:]...)
	if a.index != nil {
		delete(a.index, k)
		for j := i; j < len(a.entries); j++ {
			a.index[a.entries[j].key] = j
		}
	}
}

// phpArrayAlloc is an array and room for its first entries, allocated
// together: a handshake's channels array is then one allocation, not four.
type phpArrayAlloc struct {
	a   phpArray
	buf [4]phpEntry
}

// newChild is the value of a fresh array one level below a.
func (a *phpArray) newChild() phpValue {
	if a.depth+1 >= a.limit {
		return phpValue{kind: phpOpaqueArray}
	}
	c := &phpArrayAlloc{a: phpArray{depth: a.depth + 1, limit: a.limit}}
	c.a.entries = c.buf[:0]
	return phpValue{kind: phpArrayKind, arr: &c.a}
}

// phpQuery reads a raw query string's parameters as PHP does, one at a
// time; the caller registers those whose top-level names it keeps.
type phpQuery struct {
	rest  string
	count int
}

func newPHPQuery(raw string) phpQuery {
	if i := strings.IndexByte(raw, 0); i >= 0 {
		raw = raw[:i] // PHP's strtok reads the query as a C string
	}
	return phpQuery{rest: raw}
}

// phpParam is one parameter: its decoded name (NUL-truncated, leading
// spaces trimmed), its top-level $_GET name, and its raw value.
type phpParam struct {
	name     string
	top      string // mangled
	brackets int    // index in name of the first '[' that nests, or -1
	rawValue string
}

// next returns the next parameter PHP reads, ok false after the last. A
// malformed percent-escape in a name, or in a value when validate is set
// (the caller's first pass), is an error; PHP itself would keep the bytes.
func (q *phpQuery) next(validate bool) (p phpParam, ok bool, err error) {
	for q.rest != "" {
		var pair string
		pair, q.rest, _ = strings.Cut(q.rest, "&")
		if pair == "" {
			continue
		}
		if q.count++; q.count > phpMaxInputVars {
			q.rest = ""
			break
		}
		k, v, _ := strings.Cut(pair, "=")
		name, err := url.QueryUnescape(k)
		if err != nil || (validate && !validEscapes(v)) {
			return phpParam{}, false, errMalformed()
		}
		if len(name) != len(k) { // decoded: a %00 may end it
			if i := strings.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
		}
		if name != "" && name[0] == ' ' {
			name = strings.TrimLeft(name, " ")
		}
		p := phpParam{name: name, brackets: -1, rawValue: v}
		i := strings.IndexByte(name, '[')
		switch {
		case i == 0:
			// An empty top-level name: PHP drops the parameter. Its value
			// is still checked, which no caller will do (FuzzPHPQuery
			// found "=%" accepted).
			if !validEscapes(v) {
				return phpParam{}, false, errMalformed()
			}
			continue
		case i < 0:
			p.top = phpMangle(name, false)
		case strings.IndexByte(name[i+1:], ']') < 0:
			// No ']' closes it: not an index, and the rest joins the name.
			p.top = phpMangle(name[:i], false) + "_" + phpMangle(name[i+1:], true)
		default:
			p.top, p.brackets = phpMangle(name[:i], false), i
		}
		if p.top == "" { // an empty name, or spaces only: as above
			if !validEscapes(v) {
				return phpParam{}, false, errMalformed()
			}
			continue
		}
		return p, true, nil
	}
	return phpParam{}, false, nil
}

func errMalformed() *Error {
	return invalid("Query string is not valid: malformed percent-encoding.")
}

// value decodes a parameter's value, which next has validated.
func (p *phpParam) value() string {
	v, err := url.QueryUnescape(p.rawValue)
	if err != nil {
		return p.rawValue // unreachable after validation; PHP keeps the bytes
	}
	return v
}

// register stores the parameter into get ($_GET), as
// php_register_variable_ex does.
func (p *phpParam) register(get *phpArray) {
	topKey := phpKeyOf(p.top)
	if p.brackets < 0 {
		get.set(topKey, phpValue{str: p.value()})
		return
	}
	name := p.name
	// cur is the array being descended into and key (or an append, when
	// appendKey) the key within it that the next step creates or reads.
	// cur is nil inside an array whose contents are not kept: the name
	// is still read to the end for the nesting limit.
	cur, key, appendKey := get, topKey, false
	pos := p.brackets
	for level := 1; ; level++ {
		if level > phpMaxNestingLevel {
			get.remove(topKey)
			return
		}
		start := pos + 1
		ip := start
		if ip < len(name) && name[ip] == ' ' {
			ip++
		}
		var seg string
		segAppend := false
		closeAt := ip
		if ip < len(name) && name[ip] == ']' {
			segAppend = true
		} else {
			j := strings.IndexByte(name[ip:], ']')
			if j < 0 {
				// Not an index (level 1 was settled in next): what the
				// previous bracket named gets the value.
				break
			}
			closeAt = ip + j
			seg = name[start:closeAt] // PHP keeps a leading space here
		}
		if cur != nil {
			cur = descend(cur, key, appendKey)
		}
		key, appendKey = phpKey{}, segAppend
		if !segAppend {
			key = phpKeyOf(seg)
		}
		if next := closeAt + 1; next < len(name) && name[next] == '[' {
			pos = next
			continue
		}
		break
	}
	if cur == nil {
		return
	}
	v := phpValue{str: p.value()}
	if appendKey {
		cur.push(v)
	} else {
		cur.set(key, v)
	}
}

// descend returns the array under key in cur, creating it or replacing a
// string there; nil when its contents are not kept or an append fails.
func descend(cur *phpArray, key phpKey, appendKey bool) *phpArray {
	var slot *phpValue
	if appendKey {
		slot = cur.push(cur.newChild())
	} else if i := cur.find(key); i < 0 {
		slot = cur.insert(key, cur.newChild())
	} else {
		slot = &cur.entries[i].val
		if !slot.isArray() {
			*slot = cur.newChild()
		}
	}
	if slot == nil {
		return nil
	}
	return slot.arr
}

// phpMangle applies PHP's renaming of a top-level parameter name: '.' and
// ' ' become '_', and '[' too in what follows an unclosed bracket.
func phpMangle(s string, bracket bool) string {
	// A byte loop: strings.ContainsAny was a seventh of a handshake's parse.
	i := 0
	for ; i < len(s); i++ {
		if c := s[i]; c == '.' || c == ' ' || (bracket && c == '[') {
			break
		}
	}
	if i == len(s) {
		return s
	}
	b := []byte(s)
	for i, c := range b {
		if c == '.' || c == ' ' || (bracket && c == '[') {
			b[i] = '_'
		}
	}
	return string(b)
}

// validEscapes reports whether every '%' in s starts a two-digit hex
// escape, without decoding s.
func validEscapes(s string) bool {
	for i := strings.IndexByte(s, '%'); i >= 0; {
		if i+2 >= len(s) || !isHex(s[i+1]) || !isHex(s[i+2]) {
			return false
		}
		j := strings.IndexByte(s[i+3:], '%')
		if j < 0 {
			return true
		}
		i += 3 + j
	}
	return true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

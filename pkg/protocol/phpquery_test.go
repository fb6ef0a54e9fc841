package protocol

import (
	"fmt"
	"strings"
	"testing"
)

// parsePHP builds $_GET from raw with every parameter kept and no depth
// limit short of PHP's own, so that the rules can be compared with PHP's.
func parsePHP(t testing.TB, raw string) *phpArray {
	t.Helper()
	get := &phpArray{limit: phpMaxNestingLevel + 2}
	q := newPHPQuery(raw)
	for {
		p, ok, err := q.next(true)
		if err != nil {
			t.Fatalf("%q: %v", raw, err)
		}
		if !ok {
			return get
		}
		p.register(get)
	}
}

// dumpPHP writes an array the way the test table spells it: string keys
// and values quoted, integer keys bare, in PHP array order; an array whose
// contents are not kept is {…}.
func dumpPHP(a *phpArray) string {
	var b strings.Builder
	var dump func(a *phpArray)
	dump = func(a *phpArray) {
		b.WriteByte('{')
		for i, e := range a.entries {
			if i > 0 {
				b.WriteByte(',')
			}
			if e.key.isInt {
				fmt.Fprint(&b, e.key.n)
			} else {
				fmt.Fprintf(&b, "%q", e.key.str)
			}
			b.WriteByte(':')
			switch e.val.kind {
			case phpString:
				fmt.Fprintf(&b, "%q", e.val.str)
			case phpArrayKind:
				dump(e.val.arr)
			default:
				b.WriteString("{…}")
			}
		}
		b.WriteByte('}')
	}
	dump(a)
	return b.String()
}

// TestPHPQueryRules checks the parser against PHP's documented behaviour.
// Each case names where PHP documents it; the few the manual leaves out
// name php-src's main/php_variables.c (php_default_treat_data,
// php_register_variable_ex), which is what PHP does.
func TestPHPQueryRules(t *testing.T) {
	nest := func(n int) string { return "a" + strings.Repeat("[x]", n) + "=v" }
	var vars strings.Builder
	for i := range phpMaxInputVars + 1 {
		fmt.Fprintf(&vars, "v%d=%d&", i, i)
	}
	tests := []struct {
		name, query, want string
	}{
		// https://www.php.net/manual/en/function.parse-str.php, Example #1
		// "Using parse_str()"; its note: values are decoded as by urldecode()
		// ('+' is a space).
		{"parse_str example 1", "first=value&arr[]=foo+bar&arr[]=baz",
			`{"first":"value","arr":{0:"foo bar",1:"baz"}}`},
		// parse_str, Example #2 "parse_str() name mangling".
		{"parse_str example 2: a space in a name", "My Value=Something", `{"My_Value":"Something"}`},
		// https://www.php.net/manual/en/language.variables.external.php, the
		// note: "Dots and spaces in variable names are converted to
		// underscores. For example <input name="a.b" /> becomes $_REQUEST["a_b"]."
		{"external variables: a dot in a name", "a.b=1", `{"a_b":"1"}`},
		// Variables From External Sources, Example #3 "More complex form
		// variables": personal[name], personal[email], beer[] from a multiple
		// select.
		{"external variables example 3", "personal%5Bname%5D=Ann&personal%5Bemail%5D=a%40b.c&beer%5B%5D=warthog&beer%5B%5D=guinness",
			`{"personal":{"name":"Ann","email":"a@b.c"},"beer":{0:"warthog",1:"guinness"}}`},
		// Only the top-level name is mangled, not keys in brackets
		// (php_register_variable_ex mangles up to the first '[').
		{"keys inside brackets keep dots and spaces", "a.b[c.d][e f]=1", `{"a_b":{"c.d":{"e f":"1"}}}`},
		// https://www.php.net/manual/en/function.http-build-query.php,
		// Example #3 "http_build_query() with complex arrays": its output read
		// back.
		{"http_build_query example 3 read back",
			"user%5Bname%5D=Bob+Smith&user%5Bage%5D=47&user%5Bsex%5D=M&user%5Bdob%5D=5%2F12%2F1956&pastimes%5B0%5D=golf&pastimes%5B1%5D=opera&pastimes%5B2%5D=poker&pastimes%5B3%5D=rap&children%5Bbobby%5D%5Bage%5D=12&children%5Bbobby%5D%5Bsex%5D=M&children%5Bsally%5D%5Bage%5D=8&children%5Bsally%5D%5Bsex%5D=F&flags_0=CEO",
			`{"user":{"name":"Bob Smith","age":"47","sex":"M","dob":"5/12/1956"},"pastimes":{0:"golf",1:"opera",2:"poker",3:"rap"},"children":{"bobby":{"age":"12","sex":"M"},"sally":{"age":"8","sex":"F"}},"flags_0":"CEO"}`},
		// https://www.php.net/manual/en/language.types.array.php: "Strings
		// containing valid decimal ints, unless the number is preceded by a +
		// sign, will be cast to the int type. E.g. the key "8" will actually
		// be stored under 8. On the other hand "08" will not be cast"; and
		// "If multiple elements in the array declaration use the same key,
		// only the last one will be used as all others are overwritten."
		{"arrays: key casts and overwrites", "a[8]=x&a[08]=y&a[%2B8]=z&a[-0]=m&a[8]=w",
			`{"a":{8:"w","08":"y","+8":"z","-0":"m"}}`},
		// Arrays: "if no key is specified, the maximum of the existing int
		// indices is taken, and the new key will be that maximum value plus 1".
		{"arrays: append after the largest int key", "a[5]=x&a[2]=y&a[]=z&a[x]=s&a[]=t",
			`{"a":{5:"x",2:"y",6:"z","x":"s",7:"t"}}`},
		// https://wiki.php.net/rfc/negative_array_index (PHP 8.0, and for
		// every array from PHP 8.3, php-src#11154): after a negative key n,
		// an append uses n+1.
		{"arrays: append after a negative key", "a[-5]=x&a[]=y", `{"a":{-5:"x",-4:"y"}}`},
		// A key past the int range stays a string (zend_handle_numeric_str:
		// overflow is not numeric), so it moves no append index.
		{"an index past int64 is a string key", "a[99999999999999999999]=x&a[]=y",
			`{"a":{"99999999999999999999":"x",0:"y"}}`},
		{"the largest int64 key, then an append that fails", "a[9223372036854775807]=x&a[]=y",
			`{"a":{9223372036854775807:"x"}}`},
		// https://www.php.net/manual/en/info.configuration.php:
		// max_input_nesting_level defaults to 64; past it
		// php_register_variable_ex deletes the whole variable.
		{"64 levels of nesting are kept", nest(64) + "&b=1",
			`{"a":` + strings.Repeat(`{"x":`, 64) + `"v"` + strings.Repeat("}", 64) + `,"b":"1"}`},
		{"65 levels delete the variable", "a=keep&" + nest(65) + "&b=1", `{"b":"1"}`},
		// info.configuration: max_input_vars defaults to 1000; parse_str's
		// note: "Exceeding this limit triggers an E_WARNING, and any
		// variables exceeding the limit are not added to the result array."
		{"max_input_vars: the 1001st parameter is dropped", vars.String(), ""},
		// php_default_treat_data splits with php_strtok_r, which skips empty
		// parameters, and decodes the name before registering it; a name
		// without '=' has the value "".
		{"empty parameters skipped, no '=' is an empty value", "&&a&&b=&", `{"a":"","b":""}`},
		{"percent-encoded brackets are brackets", "channels%5B0%5D=x&channels%5b%5d=y", `{"channels":{0:"x",1:"y"}}`},
		// php_register_variable_ex: leading spaces of a name are dropped; a
		// name empty before its first '[' is dropped.
		{"leading spaces trimmed", "+++a=1&%20b[]=2", `{"a":"1","b":{0:"2"}}`},
		{"empty names dropped", "=1&[x]=2&+=3&[]=4", `{}`},
		// php_register_variable_ex: a '[' with no ']' after it is not an
		// index: it and the '.', ' ' and '[' after it become '_'.
		{"an unclosed bracket joins the name", "a[b.c[d e=1&x.y[=2", `{"a_b_c_d_e":"1","x_y_":"2"}`},
		// ... and at a deeper level, the value goes to the last closed index.
		{"an unclosed bracket deeper", "a[x][y=1&b[][=2", `{"a":{"x":"1"},"b":{0:"2"}}`},
		// "[ ]" appends, like "[]"; a leading space inside other brackets is
		// kept; what follows a ']' that is not '[' is dropped.
		{"brackets with a space, trailing text", "a[ ]=1&a[ x]=2&a[y]z[w]=3&a[[q]=4", `{"a":{0:"1"," x":"2","y":"3","[q":"4"}}`},
		// A string in the way of an index becomes an array in place; a
		// later plain value replaces an array.
		{"a string replaced by an array, and back", "a=s&b=1&a[]=x&c[]=y&c=z", `{"a":{0:"x"},"b":"1","c":"z"}`},
		// The name ends at a decoded NUL (it is a C string); the value keeps
		// its NUL. A raw NUL ends the whole query.
		{"NUL in a name and in a value", "a%00b[]=1&c=x%00y", `{"a":"1","c":"x\x00y"}`},
		{"a raw NUL ends the query", "a=1&b=2\x00&c=3", `{"a":"1","b":"2"}`},
		// Numeric top-level names are integer keys of $_GET too.
		{"numeric names", "7=a&07=b", `{7:"a","07":"b"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := dumpPHP(parsePHP(t, tt.query))
			if tt.want == "" { // max_input_vars: v0..v999 kept, v1000 not
				if !strings.Contains(got, `"v999":"999"`) || strings.Contains(got, `"v1000"`) {
					t.Errorf("max_input_vars: got %.80s…", got)
				}
				return
			}
			if got != tt.want {
				t.Errorf("%q\n got  %s\n want %s", tt.query, got, tt.want)
			}
		})
	}
}

// TestPHPQueryKeepsLittle checks that the handshake's parse keeps no more
// than Appwrite reads: arrays below $_GET[name][k1][k2] are opaque, so a
// deeply nested parameter costs a bounded number of nodes.
func TestPHPQueryKeepsLittle(t *testing.T) {
	get := &phpArray{limit: phpKeptDepth}
	q := newPHPQuery("a[1][2][3][4][5]=x&a[1][2][3]=y&a[1][9]=z")
	for {
		p, ok, err := q.next(true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		p.register(get)
	}
	if got, want := dumpPHP(get), `{"a":{1:{2:{…},9:"z"}}}`; got != want {
		t.Errorf("got %s, want %s", got, want)
	}
}

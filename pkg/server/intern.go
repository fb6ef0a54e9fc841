package server

import "sync"

// internMax bounds the interner: past it strings are kept as they come, so
// clients sending junk names cannot make the table grow without limit;
// they only miss the sharing.
const internMax = 1 << 16

// interner shares one copy of the strings many connections hold: project
// ids, channel names and the ids of URL subscription slots, which would
// otherwise be copied out of every connection's handshake or message.
type interner struct {
	mu sync.Mutex
	m  map[string]string
}

// get returns the shared copy of s.
func (in *interner) get(s string) string {
	in.mu.Lock()
	defer in.mu.Unlock()
	if v, ok := in.m[s]; ok {
		return v
	}
	if in.m == nil {
		in.m = make(map[string]string)
	}
	if len(in.m) < internMax {
		in.m[s] = s
	}
	return s
}

// all replaces every string of ss with its shared copy, in place.
func (in *interner) all(ss []string) []string {
	for i, s := range ss {
		ss[i] = in.get(s)
	}
	return ss
}

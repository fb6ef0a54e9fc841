package server

import (
	"testing"
	"unsafe"
)

// Every idle connection is one conn: at a million connections, each 32
// bytes past a size class of the allocator cost 32 MB. The classes here
// are 256 and 288 bytes; conn took the second for its close record (the
// counters recordClose logs), 32 MB a million connections.
func TestConnStaysInItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 288 {
		t.Fatalf("conn is %d bytes: over the 288-byte size class", n)
	}
}

// TestRouterReadsTwoCacheLinesOfAConn: the fields router.visit reads for
// every recipient lie in two adjacent 64-byte lines of the connection, so
// a fan-out to recipients out of cache misses twice per recipient, not
// three times. Objects of the 288-byte class start 0 or 32 bytes into a
// line (spans start on a page, and 288 is 4.5 lines); both must hold.
func TestRouterReadsTwoCacheLinesOfAConn(t *testing.T) {
	var c conn
	fields := map[string][2]uintptr{
		"state": {unsafe.Offsetof(c.state), unsafe.Sizeof(c.state)},
		"flags": {unsafe.Offsetof(c.flags), unsafe.Sizeof(c.flags)},
		"mu":    {unsafe.Offsetof(c.mu), unsafe.Sizeof(c.mu)},
		"subs":  {unsafe.Offsetof(c.subs), unsafe.Sizeof(c.subs)},
		"q":     {unsafe.Offsetof(c.q), unsafe.Sizeof(c.q)},
	}
	for _, start := range []uintptr{0, 32} {
		first, last := ^uintptr(0), uintptr(0)
		for _, f := range fields {
			first, last = min(first, (start+f[0])/64), max(last, (start+f[0]+f[1]-1)/64)
		}
		if last-first > 1 {
			t.Errorf("conn starting %d bytes into a line: router.visit's fields span lines %d to %d: %v", start, first, last, fields)
		}
	}
}

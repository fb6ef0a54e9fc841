package server

import (
	"testing"
	"unsafe"
)

// Every idle connection is one conn: at a million connections, each 32
// bytes past a size class of the allocator cost 32 MB. 256 bytes is a
// class; the next is 288.
func TestConnStaysInItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(conn{}); n > 256 {
		t.Fatalf("conn is %d bytes: over the 256-byte size class", n)
	}
}

// TestRouterReadsTwoCacheLinesOfAConn: the fields router.visit reads for
// every recipient lie in two adjacent 64-byte lines of the connection
// (objects of the 256-byte size class start on a line), so a fan-out to
// recipients out of cache misses twice per recipient, not three times.
func TestRouterReadsTwoCacheLinesOfAConn(t *testing.T) {
	var c conn
	fields := map[string][2]uintptr{
		"state": {unsafe.Offsetof(c.state), unsafe.Sizeof(c.state)},
		"flags": {unsafe.Offsetof(c.flags), unsafe.Sizeof(c.flags)},
		"mu":    {unsafe.Offsetof(c.mu), unsafe.Sizeof(c.mu)},
		"subs":  {unsafe.Offsetof(c.subs), unsafe.Sizeof(c.subs)},
		"q":     {unsafe.Offsetof(c.q), unsafe.Sizeof(c.q)},
	}
	first, last := ^uintptr(0), uintptr(0)
	for _, f := range fields {
		first, last = min(first, f[0]/64), max(last, (f[0]+f[1]-1)/64)
	}
	if last-first > 1 {
		t.Errorf("router.visit's fields span cache lines %d to %d of conn: %v", first, last, fields)
	}
}

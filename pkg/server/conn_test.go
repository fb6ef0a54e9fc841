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

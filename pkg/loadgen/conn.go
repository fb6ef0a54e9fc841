package loadgen

// Connection states, in the order a connection normally passes them.
const (
	stConnecting    uint8 = iota // connect() in progress
	stUpgrading                  // upgrade request sent, waiting for 101
	stWaitConnected              // upgraded, waiting for the `connected` message
	stAuthing                    // `authentication` sent, waiting for its response
	stSubscribing                // (resuming) `subscribe` sent, waiting for its response
	stReady                      // connected (authenticated, subscribed): counted as open
	stClosing                    // our close frame sent, waiting for the server's
	stDone                       // socket closed
	// stAway: (resuming) the socket is closed and the connection comes
	// back when its deadline passes. Placed after stDone so that every
	// "state < stReady" test leaves it alone: it holds no socket.
	stAway
)

// Stall phases of a connection picked by Config.Stalled.
const (
	stallNone     uint8 = iota // a healthy connection
	stallPending               // will stall once `connected` arrives
	stallHeld                  // ready, and its socket is no longer read
	stallDraining              // read again at the end, to see whether the server closed it
	stallClosed                // the server closed it (FIN, reset or close frame)
)

// conn is everything the generator keeps per connection. It is kept small
// on purpose (56 bytes): no buffers while idle, no timers, no
// goroutine. The loop's shared read buffer is used for every read; only a
// frame split across reads parks its bytes in partial.
type conn struct {
	fd       int32
	state    uint8
	wasReady bool  // reached stReady once: counted in completeness
	stall    uint8 // stallNone for a healthy connection
	deflate  bool  // offers permessage-deflate; after the 101, whether the server agreed
	deadline int64 // unix ns: connect timeout, then close timeout
	partial  *partial

	// Completeness: the highest sequence seen plus one, how many distinct
	// sequences arrived, duplicates, and a 64-wide window of which of the
	// sequences below next arrived, so reordering within 64 is told
	// apart from duplication without a bitmap of every event.
	next uint32
	recv uint32
	dups uint32
	// slot is the connection's index in its loop (the seqLog's row for a
	// resuming one); node the node it is on or goes to next (its index in
	// the loop's targets).
	slot   int32
	window uint64
	node   uint8
}

// gone reports whether c holds no socket: closed for good, or away until
// it comes back.
func (c *conn) gone() bool { return c.state >= stDone }

// partial holds what a connection has not finished reading: the start of
// a frame (or of the upgrade response) and a fragmented message.
type partial struct {
	pending    []byte
	frag       []byte
	compressed bool // frag is a compressed message (RSV1 on its first frame)
}

// see records event seq and reports whether it is new. A sequence more
// than 64 behind the newest is too old to tell from a duplicate; it is
// counted as one, which errs on the side of reporting a problem.
func (c *conn) see(seq uint32) bool {
	if seq >= c.next {
		shift := seq - c.next + 1
		if shift >= 64 {
			c.window = 1
		} else {
			c.window = c.window<<shift | 1
		}
		c.next = seq + 1
		c.recv++
		return true
	}
	d := c.next - 1 - seq
	if d >= 64 || c.window&(1<<d) != 0 {
		c.dups++
		return false
	}
	c.window |= 1 << d
	c.recv++
	return true
}

package loadgen

import (
	"bytes"
	"fmt"
	"math/bits"
	"slices"
	"strconv"
	"strings"
)

// Resuming connections (Config.Resume) behave as the Appwrite Web SDK 25+
// does across a drain (RESUME.md): each subscribes by message under an id
// of its own, and when the server ends it, comes back after a fixed delay
// (the SDK's 1 s, no jitter) to the next node and sends the same subscribe
// again. What they must show is that no event went missing, twice or out
// of order across the reconnect, so every sequence is tracked per
// connection in a bitmap: 19,000 connections x 2,000 events is 4.75 MB,
// where a slice of what arrived would grow with every delivery.

// Resume statuses of a subscribe response, as counted.
const (
	resumeAbsent  uint8 = iota // the response has no "resume" field (a server without resuming)
	resumeNew                  // "new": the id was unknown, events start now
	resumeResumed              // "resumed": the missed events follow
	resumeLive                 // "live": could not resume (a "reason" says why)
)

var (
	keyTo       = []byte(`"to":"`)
	keyStatus   = []byte(`"resume":{"status":"`)
	keyReason   = []byte(`"reason":"`)
	subscribeTo = []byte("subscribe")
)

// responseTo is the "to" of a `response` message ("authentication",
// "subscribe", ...).
func responseTo(msg []byte) []byte { return stringAfter(msg, keyTo) }

// resumeStatus reads the resume status of the first subscription of a
// subscribe response, and for "live" its reason.
func resumeStatus(msg []byte) (status uint8, reason string) {
	s := stringAfter(msg, keyStatus)
	switch string(s) {
	case "":
		return resumeAbsent, ""
	case "new":
		return resumeNew, ""
	case "resumed":
		return resumeResumed, ""
	}
	return resumeLive, string(stringAfter(msg, keyReason))
}

// stringAfter is the JSON string value (no escapes expected) that follows
// key, which ends with its opening quote.
func stringAfter(msg, key []byte) []byte {
	i := bytes.Index(msg, key)
	if i < 0 {
		return nil
	}
	rest := msg[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil
	}
	return rest[:j]
}

// subscribeMessage is the `subscribe` a resuming connection sends after
// every `connected`: the same id each time, as the SDK does.
func subscribeMessage(id string, channels []string) []byte {
	b := fmt.Appendf(nil, `{"type":"subscribe","data":[{"subscriptionId":%q,"channels":[`, id)
	for i, ch := range channels {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, ch)
	}
	return append(b, `],"queries":[]}]}`...)
}

// seqLog is one loop's record of which sequences each of its connections
// received: a bitmap of words words per slot, plus per slot the first
// sequence received (-1: none yet), the first receptions below the highest
// already received (out of order), and when its last subscribe response
// came (unix ns) with how many times it came back. For the reader of a
// failure, per slot too: the highest sequence when it last went away, the
// first one received after it last came back, and the first and last
// sequences received twice (-1: none).
type seqLog struct {
	words      int
	bits       []uint64
	first      []int32
	outOfOrder []uint32
	liveAt     []int64
	reconnects []uint16
	status     []uint8
	leftAfter  []int32
	backWith   []int32
	dupFirst   []int32
	dupLast    []int32
}

func newSeqLog(conns, events int) *seqLog {
	words := (events + 63) / 64
	s := &seqLog{
		words:      words,
		bits:       make([]uint64, conns*words),
		first:      make([]int32, conns),
		outOfOrder: make([]uint32, conns),
		liveAt:     make([]int64, conns),
		reconnects: make([]uint16, conns),
		status:     make([]uint8, conns),
		leftAfter:  make([]int32, conns),
		backWith:   make([]int32, conns),
		dupFirst:   make([]int32, conns),
		dupLast:    make([]int32, conns),
	}
	for _, col := range [][]int32{s.first, s.leftAfter, s.backWith, s.dupFirst, s.dupLast} {
		for i := range col {
			col[i] = -1
		}
	}
	return s
}

// see records sequence seq on slot i (whose highest sequence so far plus
// one is next) and reports whether it is new, and whether it came after a
// higher one.
func (s *seqLog) see(i int, seq uint32, next uint32) (isNew, late bool) {
	w := &s.bits[i*s.words+int(seq/64)]
	bit := uint64(1) << (seq % 64)
	if *w&bit != 0 {
		if s.dupFirst[i] < 0 {
			s.dupFirst[i] = int32(seq)
		}
		s.dupLast[i] = int32(seq)
		return false, false
	}
	*w |= bit
	if s.first[i] < 0 {
		s.first[i] = int32(seq)
	}
	if s.backWith[i] < 0 && s.reconnects[i] > 0 {
		s.backWith[i] = int32(seq)
	}
	if seq+1 < next {
		s.outOfOrder[i]++
		return true, true
	}
	return true, false
}

// capacity is how many sequences the log can hold per connection.
func (s *seqLog) capacity() int { return s.words * 64 }

// missing lists what slot i lacks of [its first sequence, last] as runs
// (at most maxRuns of them kept) and counts it all. A slot that received
// nothing lacks everything from 0.
func (s *seqLog) missing(i, last, maxRuns int) (n int, runs [][2]int) {
	from := max(int(s.first[i]), 0)
	last = min(last, s.capacity()-1)
	row := s.bits[i*s.words : (i+1)*s.words]
	for seq := from; seq <= last; {
		w := row[seq/64] >> (seq % 64)
		if w&1 != 0 {
			// Skip the run of ones.
			step := bits.TrailingZeros64(^w)
			seq += step
			continue
		}
		step := 64 - seq%64
		if w != 0 {
			step = bits.TrailingZeros64(w)
		}
		end := min(seq+step-1, last)
		n += end - seq + 1
		switch {
		case len(runs) > 0 && runs[len(runs)-1][1] == seq-1:
			// The run goes on across a word's end.
			runs[len(runs)-1][1] = end
		case len(runs) < maxRuns:
			runs = append(runs, [2]int{seq, end})
		}
		seq = end + 1
	}
	return n, runs
}

// ConnReport is one connection that got something wrong.
type ConnReport struct {
	// Conn is the run-wide index; ID the subscription id it sent.
	Conn int    `json:"conn"`
	ID   string `json:"id"`
	// First is the first sequence it received (-1: none), Highest the
	// highest.
	First   int `json:"first"`
	Highest int `json:"highest"`
	// Missing sequences of [First, the last published], as runs
	// ("12-40"), the first few; Duplicated and OutOfOrder are counts.
	Missing     int      `json:"missing"`
	MissingRuns []string `json:"missing_runs,omitempty"`
	Duplicated  int      `json:"duplicated"`
	OutOfOrder  int      `json:"out_of_order"`
	// DupFirst and DupLast are the first and last sequences it received
	// twice (-1: none).
	DupFirst int `json:"dup_first"`
	DupLast  int `json:"dup_last"`
	// Reconnects is how many times it came back; LastStatus the resume
	// status of its last subscribe response. LeftAfter is the highest
	// sequence it had received when it last went away, BackWith the
	// first it received after it last came back (-1: none).
	Reconnects int    `json:"reconnects"`
	LastStatus string `json:"last_status"`
	LeftAfter  int    `json:"left_after"`
	BackWith   int    `json:"back_with"`
}

func (r ConnReport) bad() int { return r.Missing + r.Duplicated + r.OutOfOrder }

func (r ConnReport) disorder() int { return r.Duplicated + r.OutOfOrder }

// String is the report in one line, for logs.
func (r ConnReport) String() string {
	dup := ""
	if r.Duplicated > 0 {
		dup = fmt.Sprintf(" (seqs %d to %d)", r.DupFirst, r.DupLast)
	}
	return fmt.Sprintf("conn %d (id %s): first %d, highest %d, missing %d %s, duplicated %d%s, out of order %d; reconnects %d, left after seq %d, first seq after coming back %d, last status %s",
		r.Conn, r.ID, r.First, r.Highest, r.Missing, "["+strings.Join(r.MissingRuns, " ")+"]", r.Duplicated, dup, r.OutOfOrder, r.Reconnects, r.LeftAfter, r.BackWith, r.LastStatus)
}

// statusName is the name a status is reported under.
func statusName(s uint8) string {
	switch s {
	case resumeNew:
		return "new"
	case resumeResumed:
		return "resumed"
	case resumeLive:
		return "live"
	}
	return "absent"
}

// SeqSummary is what the resuming connections received, over each
// connection's [first received, last published].
type SeqSummary struct {
	// LastSeq is the last sequence published.
	LastSeq int `json:"last_seq"`
	// Missing, Duplicated and OutOfOrder are totals over the
	// connections; Conns* how many connections had any.
	Missing             int64 `json:"missing"`
	Duplicated          int64 `json:"duplicated"`
	OutOfOrder          int64 `json:"out_of_order"`
	ConnsMissing        int   `json:"conns_missing"`
	ConnsDuplicated     int   `json:"conns_duplicated"`
	ConnsOutOfOrder     int   `json:"conns_out_of_order"`
	ConnsNothing        int   `json:"conns_nothing"`
	ConnsFirstAfterZero int   `json:"conns_first_after_zero"`
	// Worst are the connections with the most wrong, worst first
	// (at most worstKept); WorstOrder those with the most duplicated or
	// out of order (which a loss elsewhere must not hide).
	Worst      []ConnReport `json:"worst,omitempty"`
	WorstOrder []ConnReport `json:"worst_order,omitempty"`
}

// worstKept is how many bad connections a summary keeps for the reader.
const worstKept = 10

// addWorst keeps the worstKept worst of ws plus r, by score.
func addWorst(ws []ConnReport, r ConnReport, score func(ConnReport) int) []ConnReport {
	ws = append(ws, r)
	slices.SortStableFunc(ws, func(a, b ConnReport) int { return score(b) - score(a) })
	if len(ws) > worstKept {
		ws = ws[:worstKept]
	}
	return ws
}

// merge folds another process's summary into s.
func (s *SeqSummary) merge(o *SeqSummary) {
	if o == nil {
		return
	}
	s.Missing += o.Missing
	s.Duplicated += o.Duplicated
	s.OutOfOrder += o.OutOfOrder
	s.ConnsMissing += o.ConnsMissing
	s.ConnsDuplicated += o.ConnsDuplicated
	s.ConnsOutOfOrder += o.ConnsOutOfOrder
	s.ConnsNothing += o.ConnsNothing
	s.ConnsFirstAfterZero += o.ConnsFirstAfterZero
	for _, w := range o.Worst {
		s.Worst = addWorst(s.Worst, w, ConnReport.bad)
	}
	for _, w := range o.WorstOrder {
		s.WorstOrder = addWorst(s.WorstOrder, w, ConnReport.disorder)
	}
}

// Clean reports whether every connection got every event from its first
// on exactly once and in order.
func (s *SeqSummary) Clean() bool {
	return s.Missing == 0 && s.Duplicated == 0 && s.OutOfOrder == 0 && s.ConnsNothing == 0
}

// runsText writes runs as "a-b" (or "a").
func runsText(runs [][2]int) []string {
	out := make([]string, len(runs))
	for i, r := range runs {
		if r[0] == r[1] {
			out[i] = strconv.Itoa(r[0])
		} else {
			out[i] = fmt.Sprintf("%d-%d", r[0], r[1])
		}
	}
	return out
}

package loadgen

import "sync/atomic"

// counters are a loop's live figures; the loop writes them, the progress
// reporter reads them.
type counters struct {
	attempted, everReady, open, failed, dropped atomic.Int64
	events, duplicates, pongs, foreign          atomic.Int64

	errConnect, errHandshake, errTimeout, errProto, errWrite atomic.Int64
	errReset, serverCloses, errorFrames, authFailed          atomic.Int64
	closedClean, closeTimeouts                               atomic.Int64
	stalledOpen, stalledClosed                               atomic.Int64
	deflateAgreed, compressedMsgs                            atomic.Int64

	// Resuming connections (Config.Resume).
	wentAway, goingAway, reconnects, reconnectFailures, resubscribed atomic.Int64
	resumeNew, resumeResumed, resumeLive, resumeLiveIncomplete       atomic.Int64
	resumeAbsent, outOfOrder, caughtUp                               atomic.Int64
	// lastLiveAt is when (unix ns) a connection last came back
	// subscribed: a maximum, not a sum.
	lastLiveAt atomic.Int64
}

// Progress is a snapshot of a generator's counters (one loop, one worker
// or the sum of all).
type Progress struct {
	// Attempted connections (connect() called).
	Attempted int64 `json:"attempted"`
	// EverReady connections reached `connected` (and auth).
	EverReady int64 `json:"ever_ready"`
	// Open connections are ready now.
	Open int64 `json:"open"`
	// Failed connections never became ready.
	Failed int64 `json:"failed"`
	// Dropped connections were ready and then lost before the end.
	Dropped int64 `json:"dropped"`
	// Events received (distinct per connection); Duplicates extra copies.
	Events     int64 `json:"events"`
	Duplicates int64 `json:"duplicates"`
	// Pongs answered to the Appwrite ping.
	Pongs int64 `json:"pongs"`
	// Foreign events carried no generator stamp.
	Foreign int64 `json:"foreign_events"`

	// Why connections failed or were lost: socket, bind or connect
	// errors; a non-101 upgrade answer; no `connected` in time; a broken
	// frame; a failed write; EOF or reset from the server; a close frame
	// from the server. ErrorFrames are `error` messages received,
	// AuthFailed the `authentication` messages refused.
	ErrConnect   int64 `json:"err_connect"`
	ErrHandshake int64 `json:"err_handshake"`
	ErrTimeout   int64 `json:"err_timeout"`
	ErrProtocol  int64 `json:"err_protocol"`
	ErrWrite     int64 `json:"err_write"`
	ErrReset     int64 `json:"err_reset"`
	ServerCloses int64 `json:"server_closes"`
	ErrorFrames  int64 `json:"error_frames"`
	AuthFailed   int64 `json:"auth_failed"`
	// ClosedClean connections completed the close handshake at the end;
	// CloseTimeouts did not within the close timeout.
	ClosedClean   int64 `json:"closed_clean"`
	CloseTimeouts int64 `json:"close_timeouts"`
	// StalledOpen are the stalled connections (Config.Stalled) that are
	// ready and not read now; they are part of Open. StalledClosed are
	// those the server closed (its FIN, a reset or its close frame seen
	// before ours was answered); they count neither as dropped nor among
	// the error kinds above, which describe the healthy connections.
	StalledOpen   int64 `json:"stalled_open"`
	StalledClosed int64 `json:"stalled_closed"`
	// DeflateAgreed connections offered permessage-deflate and had it
	// accepted; CompressedMessages are the messages they received
	// compressed (and inflated).
	DeflateAgreed      int64 `json:"deflate_agreed"`
	CompressedMessages int64 `json:"compressed_messages"`

	// Resuming connections (Config.Resume). WentAway counts the times
	// the server ended a ready one (GoingAway of them with close 1001);
	// Reconnects the tries to come back, ReconnectFailures those that
	// failed (refused, not upgraded, no answer); Resubscribed the returns
	// that got their subscribe response. Resume* count the subscribe
	// responses by their resume status (Absent: no such field; of Live,
	// LiveIncomplete had reason "incomplete"). OutOfOrder are first
	// receptions of a sequence below one already received; CaughtUp the
	// events received after a return that were published before its
	// subscribe response: the replay, and also live events the node was
	// late with (its router lagging behind the backbone), which a client
	// cannot tell apart: the node's own count of replayed events is the
	// figure for replays.
	// LastLiveAt is when (unix ns) the last return got its response.
	WentAway             int64 `json:"went_away,omitempty"`
	GoingAway            int64 `json:"going_away,omitempty"`
	Reconnects           int64 `json:"reconnects,omitempty"`
	ReconnectFailures    int64 `json:"reconnect_failures,omitempty"`
	Resubscribed         int64 `json:"resubscribed,omitempty"`
	ResumeNew            int64 `json:"resume_new,omitempty"`
	ResumeResumed        int64 `json:"resume_resumed,omitempty"`
	ResumeLive           int64 `json:"resume_live,omitempty"`
	ResumeLiveIncomplete int64 `json:"resume_live_incomplete,omitempty"`
	ResumeAbsent         int64 `json:"resume_absent,omitempty"`
	OutOfOrder           int64 `json:"out_of_order,omitempty"`
	CaughtUp             int64 `json:"caught_up,omitempty"`
	LastLiveAt           int64 `json:"last_live_at,omitempty"`
}

// pending is the number of attempted connections neither ready nor failed.
func (p Progress) pending() int64 { return p.Attempted - p.EverReady - p.Failed }

func (c *counters) snapshot() Progress {
	// Outcomes first, attempts last: a racing connect can then only make
	// pending look larger, never declare a ramp finished too early.
	p := Progress{
		EverReady: c.everReady.Load(), Failed: c.failed.Load(),
		Open: c.open.Load(), Dropped: c.dropped.Load(),
		Events: c.events.Load(), Duplicates: c.duplicates.Load(), Pongs: c.pongs.Load(), Foreign: c.foreign.Load(),
		ErrConnect: c.errConnect.Load(), ErrHandshake: c.errHandshake.Load(), ErrTimeout: c.errTimeout.Load(),
		ErrProtocol: c.errProto.Load(), ErrWrite: c.errWrite.Load(), ErrReset: c.errReset.Load(),
		ServerCloses: c.serverCloses.Load(), ErrorFrames: c.errorFrames.Load(), AuthFailed: c.authFailed.Load(),
		ClosedClean: c.closedClean.Load(), CloseTimeouts: c.closeTimeouts.Load(),
		StalledOpen: c.stalledOpen.Load(), StalledClosed: c.stalledClosed.Load(),
		DeflateAgreed: c.deflateAgreed.Load(), CompressedMessages: c.compressedMsgs.Load(),
		WentAway: c.wentAway.Load(), GoingAway: c.goingAway.Load(), Reconnects: c.reconnects.Load(),
		ReconnectFailures: c.reconnectFailures.Load(), Resubscribed: c.resubscribed.Load(),
		ResumeNew: c.resumeNew.Load(), ResumeResumed: c.resumeResumed.Load(), ResumeLive: c.resumeLive.Load(),
		ResumeLiveIncomplete: c.resumeLiveIncomplete.Load(), ResumeAbsent: c.resumeAbsent.Load(),
		OutOfOrder: c.outOfOrder.Load(), CaughtUp: c.caughtUp.Load(), LastLiveAt: c.lastLiveAt.Load(),
	}
	p.Attempted = c.attempted.Load()
	return p
}

func (p *Progress) add(o Progress) {
	p.Attempted += o.Attempted
	p.EverReady += o.EverReady
	p.Open += o.Open
	p.Failed += o.Failed
	p.Dropped += o.Dropped
	p.Events += o.Events
	p.Duplicates += o.Duplicates
	p.Pongs += o.Pongs
	p.Foreign += o.Foreign
	p.ErrConnect += o.ErrConnect
	p.ErrHandshake += o.ErrHandshake
	p.ErrTimeout += o.ErrTimeout
	p.ErrProtocol += o.ErrProtocol
	p.ErrWrite += o.ErrWrite
	p.ErrReset += o.ErrReset
	p.ServerCloses += o.ServerCloses
	p.ErrorFrames += o.ErrorFrames
	p.AuthFailed += o.AuthFailed
	p.ClosedClean += o.ClosedClean
	p.CloseTimeouts += o.CloseTimeouts
	p.StalledOpen += o.StalledOpen
	p.StalledClosed += o.StalledClosed
	p.DeflateAgreed += o.DeflateAgreed
	p.CompressedMessages += o.CompressedMessages
	p.WentAway += o.WentAway
	p.GoingAway += o.GoingAway
	p.Reconnects += o.Reconnects
	p.ReconnectFailures += o.ReconnectFailures
	p.Resubscribed += o.Resubscribed
	p.ResumeNew += o.ResumeNew
	p.ResumeResumed += o.ResumeResumed
	p.ResumeLive += o.ResumeLive
	p.ResumeLiveIncomplete += o.ResumeLiveIncomplete
	p.ResumeAbsent += o.ResumeAbsent
	p.OutOfOrder += o.OutOfOrder
	p.CaughtUp += o.CaughtUp
	p.LastLiveAt = max(p.LastLiveAt, o.LastLiveAt)
}

// healthyOpen is the open connections that read their sockets.
func (p Progress) healthyOpen() int64 { return p.Open - p.StalledOpen }

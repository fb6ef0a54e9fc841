package explain

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/broker"
)

// Bounds of the request/reply between nodes.
const (
	// DefaultWait is how long Ask waits for the other nodes' answers when
	// not all the live ones have answered. The dashboard marks a node
	// gone after 3 s of silence, so a node that died just now may be
	// waited for this long.
	DefaultWait = time.Second
	// MaxAnswerBytes bounds one node's answer; Answer functions keep
	// under it (a node's part of a page stops early, More set), and one
	// over it is refused rather than published.
	MaxAnswerBytes = 1 << 20
	// maxAnswering bounds the questions a node answers at once; more are
	// answered "busy". Answering walks the node's connections.
	maxAnswering = 4
	// maxPending bounds the answers queued for one question beyond the
	// nodes it waits for: whatever is published on the channel, a
	// question costs no more.
	maxPending = 1024
)

// Options configures a Cluster.
type Options struct {
	// Node is this node's name (the dashboard's); required.
	Node string
	// Peers carries the questions and answers between the nodes: a
	// broker on a channel of its own, never the event channel. Nil: this
	// node alone.
	Peers broker.Broker
	// Live names the nodes believed alive, this one included (the
	// dashboard's table). Ask waits until all of these answered or Wait
	// passed; nil: Ask waits for Wait whenever there are Peers.
	Live func() []string
	// Answer answers a question about this node's own connections:
	// kind is "explain" (body an explain Request, answer a NodeExplain)
	// or "connections" (a ListRequest, a NodeList). It must not block on
	// the router.
	Answer func(ctx context.Context, kind string, body []byte) ([]byte, error)
	// Wait bounds how long Ask waits for other nodes; default DefaultWait.
	Wait time.Duration
	// Logger; nil discards.
	Logger *zap.Logger
}

// Cluster asks every node a question and gathers their answers. Questions
// and answers travel on Peers as JSON (wire); every node sees every
// message, and acts on the questions of others and the answers addressed
// to it.
type Cluster struct {
	opts Options
	log  *zap.Logger
	busy chan struct{} // one slot per question being answered

	mu      sync.Mutex
	pending map[string]chan wire // questions asked by this node, by id
}

// wire is one message on the peers channel.
type wire struct {
	Type  string          `json:"t"` // "ask" or "answer"
	ID    string          `json:"id"`
	From  string          `json:"from"`           // the node that sends it
	To    string          `json:"to,omitempty"`   // answer: the node that asked
	Only  string          `json:"only,omitempty"` // ask: the one node that should answer ("" every node)
	Kind  string          `json:"kind,omitempty"`
	Body  json.RawMessage `json:"body,omitempty"`
	Error string          `json:"error,omitempty"`
}

// New builds a Cluster; Run serves the other nodes' questions.
func New(opts Options) *Cluster {
	if opts.Wait <= 0 {
		opts.Wait = DefaultWait
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	return &Cluster{opts: opts, log: opts.Logger, busy: make(chan struct{}, maxAnswering), pending: make(map[string]chan wire)}
}

// Run receives the peers channel until ctx ends. Without Peers it just
// waits for ctx.
func (c *Cluster) Run(ctx context.Context) {
	if c.opts.Peers == nil {
		<-ctx.Done()
		return
	}
	err := c.opts.Peers.Run(ctx, func(msg []byte) {
		var m wire
		if err := json.Unmarshal(msg, &m); err != nil || m.From == c.opts.Node {
			return // not ours to read, or our own back from Redis
		}
		switch m.Type {
		case "ask":
			if m.Only == "" || m.Only == c.opts.Node {
				c.answer(ctx, m)
			}
		case "answer":
			if m.To != c.opts.Node {
				return
			}
			c.mu.Lock()
			ch := c.pending[m.ID]
			c.mu.Unlock()
			if ch != nil {
				select {
				case ch <- m:
				default: // over maxPending: dropped, the node counts as missing
				}
			}
		}
	})
	if err != nil && ctx.Err() == nil {
		c.log.Warn("explain: peers channel stopped", zap.Error(err))
	}
}

// answer answers another node's question beside the receiving goroutine,
// so that a slow answer never holds up the channel.
func (c *Cluster) answer(ctx context.Context, q wire) {
	select {
	case c.busy <- struct{}{}:
	default:
		c.reply(ctx, q, nil, errors.New("node busy: too many questions at once"))
		return
	}
	go func() {
		defer func() { <-c.busy }()
		actx, cancel := context.WithTimeout(ctx, c.opts.Wait)
		defer cancel()
		body, err := c.local(actx, q.Kind, q.Body)
		c.reply(ctx, q, body, err)
	}()
}

func (c *Cluster) reply(ctx context.Context, q wire, body []byte, err error) {
	a := wire{Type: "answer", ID: q.ID, From: c.opts.Node, To: q.From, Body: body}
	if err != nil {
		a.Body, a.Error = nil, err.Error()
	}
	msg, merr := json.Marshal(a)
	if merr != nil {
		c.log.Warn("explain: encoding an answer", zap.Error(merr))
		return
	}
	pctx, cancel := context.WithTimeout(ctx, c.opts.Wait)
	defer cancel()
	if perr := c.opts.Peers.Publish(pctx, msg); perr != nil {
		c.log.Warn("explain: publishing an answer", zap.Error(perr))
	}
}

// local is this node's own answer, bounded.
func (c *Cluster) local(ctx context.Context, kind string, body []byte) ([]byte, error) {
	out, err := c.opts.Answer(ctx, kind, body)
	if err != nil {
		return nil, err
	}
	if len(out) > MaxAnswerBytes {
		return nil, fmt.Errorf("answer of %d bytes is over the %d-byte bound", len(out), MaxAnswerBytes)
	}
	return out, nil
}

// Answer is one node's answer to a question.
type Answer struct {
	Node string
	Body json.RawMessage // nil when Err is set
	Err  string
}

// Nodes says which nodes answered a question: the response's "nodes".
type Nodes struct {
	Answered []string          `json:"answered"`
	Missing  []string          `json:"missing"`          // believed alive, silent within the bound
	Failed   map[string]string `json:"failed,omitempty"` // answered with an error
}

// Ask asks kind of every node (of the node named only, when not ""),
// this one included, and gathers the answers until every node believed
// alive has answered or Wait has passed.
func (c *Cluster) Ask(ctx context.Context, kind string, body []byte, only string) ([]Answer, Nodes) {
	var answers []Answer
	var nodes Nodes
	got := map[string]bool{}
	add := func(a Answer) {
		if got[a.Node] {
			return
		}
		got[a.Node] = true
		if a.Err != "" {
			if nodes.Failed == nil {
				nodes.Failed = map[string]string{}
			}
			nodes.Failed[a.Node] = a.Err
			return
		}
		nodes.Answered = append(nodes.Answered, a.Node)
		answers = append(answers, a)
	}
	self := c.opts.Node
	if only == "" || only == self {
		out, err := c.local(ctx, kind, body)
		a := Answer{Node: self, Body: out}
		if err != nil {
			a.Err = err.Error()
		}
		add(a)
	}
	if c.opts.Peers != nil && only != self {
		c.gather(ctx, kind, body, only, add, got)
	}
	var want []string
	switch {
	case only != "":
		want = []string{only}
	case c.opts.Live != nil:
		want = c.opts.Live()
	}
	for _, n := range want {
		if !got[n] {
			nodes.Missing = append(nodes.Missing, n)
		}
	}
	slices.Sort(nodes.Answered)
	slices.Sort(nodes.Missing)
	return answers, nodes
}

// gather publishes the question and collects the other nodes' answers.
func (c *Cluster) gather(ctx context.Context, kind string, body []byte, only string, add func(Answer), got map[string]bool) {
	var idb [12]byte
	_, _ = rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	ch := make(chan wire, maxPending)
	c.mu.Lock()
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	msg, err := json.Marshal(wire{Type: "ask", ID: id, From: c.opts.Node, Only: only, Kind: kind, Body: body})
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, c.opts.Wait)
	defer cancel()
	if err := c.opts.Peers.Publish(ctx, msg); err != nil {
		c.log.Warn("explain: publishing a question", zap.Error(err))
		return
	}
	done := func() bool {
		if only != "" {
			return got[only]
		}
		if c.opts.Live == nil {
			return false
		}
		for _, n := range c.opts.Live() {
			if !got[n] {
				return false
			}
		}
		return true
	}
	for !done() {
		select {
		case a := <-ch:
			add(Answer{Node: a.From, Body: a.Body, Err: a.Error})
		case <-ctx.Done():
			return
		}
	}
}

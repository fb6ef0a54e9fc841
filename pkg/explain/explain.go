// Package explain owns the admin API's questions about connections: which
// connections an event would reach, and for each of their subscriptions the
// first reason it would not (POST /v1/explain), and who is connected (GET
// /v1/connections). It defines the answers' shapes, names connections
// across a cluster, merges and pages the nodes' answers, and carries the
// questions between nodes (Cluster).
//
// It never delivers anything and never sees the router: each node answers
// for its own connections through a function the server gives it, which
// reads every connection under that connection's own lock.
package explain

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Reason is why an event would not reach one subscription, or Delivered.
// A subscription gets the first that applies, in the order below: what
// the subscription and the roles decide first, then what the connection
// is going through now.
type Reason string

// The reasons, in the order they are checked.
const (
	Delivered Reason = "delivered"
	// OtherProject: the connection belongs to another project than the
	// event's (possible when it is named by its id).
	OtherProject Reason = "other_project"
	// ChannelNotSubscribed: none of the subscription's channels is among
	// the event's.
	ChannelNotSubscribed Reason = "channel_not_subscribed"
	// RoleNotHeld: none of the connection's roles is among the event's
	// roles, and they do not include "any".
	RoleNotHeld Reason = "role_not_held"
	// QueryFalse: one of the subscription's queries is false for the
	// payload; Verdict.Query says which and how.
	QueryFalse Reason = "query_false"
	// ConnectionClosing: the connection is closing (or still in its
	// upgrade): nothing is queued on it any more.
	ConnectionClosing Reason = "connection_closing"
	// UserHeld: the user's roles are being re-resolved after a
	// permission change, or the event announces such a change for this
	// user: the event would wait in the hold and be matched against the
	// roles the resolver answers, which explain cannot know.
	UserHeld Reason = "user_held"
	// QueueOverLimit: the frame would take the connection's send queue
	// over its byte limit: the queue is cut and the connection closed as
	// a slow consumer.
	QueueOverLimit Reason = "queue_over_limit"
)

// Request is the body of POST /v1/explain: an event in the publish format
// and whose connections to explain it for, either one connection by its
// id or every connection of a signed-in user of a project.
type Request struct {
	Event      json.RawMessage `json:"event"`
	Connection string          `json:"connection,omitempty"`
	Project    string          `json:"project,omitempty"`
	UserID     string          `json:"userId,omitempty"`
}

// ConnID names one connection in a cluster: its node's name and its id on
// that node (the "conn" of the node's log lines). Written "<node>/<id>".
// An id is reused once its connection has closed.
type ConnID struct {
	Node string
	ID   uint32
}

func (c ConnID) String() string { return c.Node + "/" + strconv.FormatUint(uint64(c.ID), 10) }

// ParseConnID reads "<node>/<id>"; the node's name may itself hold
// slashes, the id is after the last.
func ParseConnID(s string) (ConnID, error) {
	i := strings.LastIndexByte(s, '/')
	if i <= 0 {
		return ConnID{}, fmt.Errorf("connection %q is not <node>/<id>", s)
	}
	id, err := strconv.ParseUint(s[i+1:], 10, 32)
	if err != nil {
		return ConnID{}, fmt.Errorf("connection %q is not <node>/<id>: the id is not a number", s)
	}
	return ConnID{Node: s[:i], ID: uint32(id)}, nil
}

// CompareConnIDs orders connection ids as pages are: by node, then by id
// as a number. Ids that do not parse come first, by text.
func CompareConnIDs(a, b string) int {
	x, errA := ParseConnID(a)
	y, errB := ParseConnID(b)
	switch {
	case errA != nil || errB != nil:
		if errA != nil && errB != nil {
			return strings.Compare(a, b)
		}
		if errA != nil {
			return -1
		}
		return 1
	case x.Node != y.Node:
		return strings.Compare(x.Node, y.Node)
	case x.ID < y.ID:
		return -1
	case x.ID > y.ID:
		return 1
	}
	return 0
}

// Verdict is the answer for one subscription of one connection.
type Verdict struct {
	Subscription
	Delivered bool       `json:"delivered"`
	Reason    Reason     `json:"reason"`
	Query     *QueryMiss `json:"query,omitempty"` // with QueryFalse
}

// QueryMiss is the query that was false: its position among the
// subscription's queries, its text as the client sent it, and how it
// failed.
type QueryMiss struct {
	Index  int    `json:"index"`
	Text   string `json:"text"`
	Detail string `json:"detail"`
}

// Identity is who a connection is, in both answers.
type Identity struct {
	Connection string   `json:"connection"` // a ConnID
	Node       string   `json:"node"`
	Project    string   `json:"project"`
	UserID     string   `json:"userId"` // "" for a guest
	Roles      []string `json:"roles"`
	State      string   `json:"state"` // handshake, live, closing or closed
}

// Explained is the answer for one connection: it receives the event when
// one of its subscriptions does (the frame then lists those).
type Explained struct {
	Identity
	Delivered     bool      `json:"delivered"`
	Subscriptions []Verdict `json:"subscriptions"`
}

// NodeExplain is one node's answer to an explain request.
type NodeExplain struct {
	Connections []Explained `json:"connections"`
	Truncated   bool        `json:"truncated,omitempty"` // more of the user's connections than MaxExplained
}

// MaxExplained bounds the connections one node explains for one request:
// a user with more connections on one node is a bot, and the answer says
// it was cut.
const MaxExplained = 100

// Subscription is one subscription as GET /v1/connections shows it.
type Subscription struct {
	ID       string   `json:"id"`
	Channels []string `json:"channels"`
	Queries  []string `json:"queries"`
}

// Connection is one connection as GET /v1/connections shows it.
type Connection struct {
	Identity
	AgeSeconds    int64          `json:"ageSeconds"`   // since the socket was accepted
	LastActivity  int64          `json:"lastActivity"` // unix second of the last frame from the client (or of the upgrade)
	QueuedBytes   int            `json:"queuedBytes"`  // waiting in the send queue
	Subscriptions []Subscription `json:"subscriptions"`
}

// ListRequest is one node's part of GET /v1/connections: the project's
// connections (the user's, with UserID) after the cursor, at most Limit.
type ListRequest struct {
	Project string `json:"project"`
	UserID  string `json:"userId,omitempty"`
	After   string `json:"after,omitempty"` // a ConnID; "" from the start
	Limit   int    `json:"limit"`
}

// Page bounds of GET /v1/connections.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// ParseLimit reads the limit parameter: empty is DefaultLimit; it must be
// 1 to MaxLimit.
func ParseLimit(s string) (int, error) {
	if s == "" {
		return DefaultLimit, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > MaxLimit {
		return 0, fmt.Errorf("limit %q is not a number from 1 to %d", s, MaxLimit)
	}
	return n, nil
}

// Includes reports whether a node's connection id lies after the cursor:
// pages are in (node, id) order.
func (r ListRequest) Includes(node string, id uint32) bool {
	if r.After == "" {
		return true
	}
	after, err := ParseConnID(r.After)
	if err != nil {
		return true
	}
	switch strings.Compare(node, after.Node) {
	case -1:
		return false
	case 0:
		return id > after.ID
	}
	return true
}

// NodeList is one node's answer to a ListRequest: its first connections
// after the cursor, in id order, and whether it had more (beyond Limit, or
// beyond the answer's byte bound).
type NodeList struct {
	Connections []Connection `json:"connections"`
	More        bool         `json:"more,omitempty"`
}

// Page merges the nodes' answers into one page of at most limit
// connections in (node, id) order, and the cursor of the next page ("" when
// this is the last). A node that had more than it sent ends the page: the
// nodes after it come on a later page, so no connection is skipped.
func Page(answers map[string]NodeList, limit int) ([]Connection, string) {
	nodes := make([]string, 0, len(answers))
	for n := range answers {
		nodes = append(nodes, n)
	}
	slices.Sort(nodes)
	var page []Connection
	more := false
	for _, n := range nodes {
		a := answers[n]
		page = append(page, a.Connections...)
		if a.More {
			more = true
			break
		}
	}
	if len(page) > limit {
		page, more = page[:limit], true
	}
	if !more || len(page) == 0 {
		return page, ""
	}
	return page, page[len(page)-1].Connection
}

package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/auth"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
	"github.com/switchboard-rt/switchboard/pkg/usage"
)

// handshake is what the upgrade request told us, copied out of the read
// buffer (gobwas hands header bytes that are only valid during its callback).
type handshake struct {
	uri         string
	project     string // x-appwrite-project header
	jwt         string // x-appwrite-jwt header
	session     string // x-appwrite-session header
	cookie      string
	fallback    string // x-fallback-cookies header
	origin      string
	client      netip.Addr // the client's address (see clientaddr.go)
	peer        netip.Addr // the TCP peer: the client, or a proxy
	forwarded   string     // X-Forwarded-For, headers joined; only read from a trusted proxy
	realIP      string     // X-Real-IP; only read from a trusted proxy
	tooManyHdrs bool
	size        int              // the request head's bytes, the blank line's included (usage's inbound)
	deflate     deflateAgreement // permessage-deflate (deflate.go)
}

var crlfcrlf = []byte("\r\n\r\n")

// upgrade runs the HTTP upgrade once the whole request head is buffered and
// returns how many bytes it used (0 while the head is incomplete). With
// Config.ProxyProtocol, a PROXY header comes first; it is parsed again,
// cheaply, each time more of the request arrives, so that nothing of a
// connection's handshake is kept outside its buffered bytes.
func (c *conn) upgrade(data []byte) int {
	peer := peerAddr(c.nc.RemoteAddr())
	client, skip := peer, 0
	if c.srv.cfg.ProxyProtocol {
		var ok bool
		if client, skip, ok = c.proxyHeader(data, peer); !ok {
			return skip
		}
	}
	used := c.upgradeRequest(data[skip:], client, peer)
	if used == 0 {
		return 0
	}
	return skip + used
}

// upgradeRequest runs the HTTP upgrade on the request head at the start of
// data, from client (as far as the transport tells) over peer.
func (c *conn) upgradeRequest(data []byte, client, peer netip.Addr) int {
	s := c.srv
	end := bytes.Index(data, crlfcrlf)
	if end < 0 || end+4 > s.cfg.MaxHeaderBytes {
		if len(data) > s.cfg.MaxHeaderBytes || end+4 > s.cfg.MaxHeaderBytes {
			c.rejectHTTP(http.StatusRequestHeaderFieldsTooLarge, "request head too large")
			return len(data)
		}
		return 0
	}
	req := data[:end+4]

	h := handshake{client: client, peer: peer, size: len(req)}
	// Any client can send these headers: only a trusted proxy's are read.
	fromProxy := s.trusted.contains(client)
	u := ws.Upgrader{
		OnRequest: func(uri []byte) error {
			path, _, _ := bytes.Cut(uri, []byte{'?'})
			if string(path) != s.cfg.Path {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound), ws.RejectionReason("not found"))
			}
			if s.draining.Load() {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionReason("server is draining"))
			}
			if s.cfg.MaxConns > 0 && s.open.Load() >= int64(s.cfg.MaxConns) {
				return ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionReason("server is full"))
			}
			h.uri = string(uri)
			return nil
		},
		OnHeader: func(key, value []byte) error {
			switch {
			case headerIs(key, "X-Appwrite-Project"):
				h.project = string(value)
			case headerIs(key, "X-Appwrite-Jwt"):
				h.jwt = string(value)
			case headerIs(key, "X-Appwrite-Session"):
				h.session = string(value)
			case headerIs(key, "Cookie"):
				if h.cookie != "" {
					h.cookie += "; "
				}
				h.cookie += string(value)
			case headerIs(key, "X-Fallback-Cookies"):
				h.fallback = string(value)
			case headerIs(key, "Origin"):
				h.origin = string(value)
			case fromProxy && headerIs(key, "X-Forwarded-For"):
				// Several headers are one list, in order (RFC 9110, 5.3).
				if h.forwarded != "" {
					h.forwarded += ","
				}
				h.forwarded += string(value)
			case fromProxy && headerIs(key, "X-Real-Ip"):
				h.realIP = string(value)
			}
			return nil
		},
	}
	// Only a request that names the extension gets a negotiator: the
	// others pay nothing for it. The offers are read where they lie
	// (deflateAgreement.negotiate) and the answer is a header made once,
	// rather than gobwas's Negotiate, which builds options on the heap
	// (600 bytes and five allocations per upgrade).
	if s.cfg.Compression >= 0 && bytes.Contains(req, deflateExtensionBytes) {
		u.ExtensionCustom = func(v []byte, exts []httphead.Option) ([]httphead.Option, bool) {
			return exts, h.deflate.negotiate(v)
		}
		u.OnBeforeUpgrade = func() (ws.HandshakeHeader, error) { return h.deflate.header(), nil }
	}
	var resp bytes.Buffer
	_, err := u.Upgrade(struct {
		io.Reader
		io.Writer
	}{bytes.NewReader(req), &resp})
	if err != nil {
		s.metrics.upgrades.WithLabelValues("rejected").Inc()
		if ce := s.log.Check(zap.DebugLevel, "upgrade rejected"); ce != nil {
			ce.Write(zap.Uint32("conn", uint32(c.id)), zap.Stringer("client", h.client), zap.Error(err))
		}
		c.readClosed = true
		if resp.Len() == 0 {
			// gobwas answers nothing to a request line it cannot parse;
			// the client still deserves to know why it is dropped.
			resp.WriteString(httpError(http.StatusBadRequest, "malformed HTTP request"))
		}
		c.sendLast(outFrame{head: resp.Bytes()}, closeHandshakeRefused, 0)
		return len(data)
	}
	if fromProxy {
		h.client = forwardedClient(h.forwarded, h.realIP, h.client, s.trusted)
	}
	c.upgraded = true
	c.lastSeen.Store(s.clock.Load())
	c.mu.Lock()
	if c.state == stateHandshake {
		c.setStateLocked(stateLive)
	}
	if h.deflate != deflateNone {
		c.flags |= flagDeflate
	}
	c.mu.Unlock()
	s.metrics.upgrades.WithLabelValues("ok").Inc()
	if h.deflate != deflateNone {
		s.metrics.deflateUpgrades.Inc()
	}
	// The 101 goes out only once netpoll has let go of the socket: a
	// client may send nothing before it (RFC 6455, 4.1), so netpoll can
	// have nothing of the client's left to read when it lets go, and no
	// message can fall between netpoll's buffer and the node's poller.
	c.upgrading = &pendingUpgrade{resp: resp.Bytes(), h: h}
	if c.handOver() {
		return end + 4
	}
	c.finishUpgrade()
	return end + 4
}

// pendingUpgrade is an accepted upgrade whose response waits for the
// socket's hand-over.
type pendingUpgrade struct {
	resp []byte
	h    handshake
}

// finishUpgrade sends the 101 response and runs the Appwrite handshake.
func (c *conn) finishUpgrade() {
	up := c.upgrading
	c.upgrading = nil
	c.send(outFrame{head: up.resp})
	c.open(&up.h)
}

func headerIs(key []byte, name string) bool {
	return len(key) == len(name) && strings.EqualFold(string(key), name)
}

// rejectHTTP answers a request that never became a WebSocket.
func (c *conn) rejectHTTP(status int, reason string) {
	c.srv.metrics.upgrades.WithLabelValues("rejected").Inc()
	c.readClosed = true
	c.sendLast(outFrame{head: []byte(httpError(status, reason))}, closeHandshakeRefused, 0)
}

// httpError is a whole HTTP response refusing a request.
func httpError(status int, reason string) string {
	return "HTTP/1.1 " + itoa(status) + " " + http.StatusText(status) + "\r\nConnection: close\r\nContent-Type: text/plain\r\nContent-Length: " +
		itoa(len(reason)) + "\r\n\r\n" + reason
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
		if n == 0 {
			return string(b[i:])
		}
	}
}

// open runs the Appwrite side of the handshake on an upgraded connection:
// project, credentials, URL subscriptions, then the `connected` message.
func (c *conn) open(h *handshake) {
	s := c.srv
	_, rawQuery, _ := strings.Cut(h.uri, "?")
	q, qerr := protocol.ParseHandshakeQuery(rawQuery)
	project := h.project
	if project == "" {
		project = q.Project
	}
	if !s.connects.allow(h.client, time.Now()) {
		// Sampled: a client hammering the limit must not flood the log.
		s.invalidLog.Info("connect limit reached", zap.Uint32("conn", uint32(c.id)), zap.Stringer("client", h.client))
		s.metrics.protocolErrors.WithLabelValues(itoa(protocol.CodeTooManyRequests)).Inc()
		c.sendText(protocol.AppendError(nil, protocol.CodeTooManyRequests, "Too many requests"))
		c.closeWith(closeRateLimited, "")
		return
	}
	if ce := s.log.Check(zap.DebugLevel, "connection opened"); ce != nil {
		fields := []zap.Field{zap.Uint32("conn", uint32(c.id)), zap.Stringer("client", h.client)}
		if h.peer != h.client {
			fields = append(fields, zap.Stringer("peer", h.peer))
		}
		ce.Write(fields...)
	}
	if qerr != nil && project == "" {
		// The query could not be read, so neither could its project:
		// name the real fault rather than a missing project.
		c.failErr(qerr)
		return
	}
	if project == "" || !s.projectAllowed(project) {
		c.fail(protocol.CodePolicyViolation, "Missing or unknown project ID")
		return
	}
	// Where Appwrite's onOpen counts realtime.inbound: once the project
	// is known and the connect limit passed, before the origin check.
	s.usage.Add(project, usage.Counts{Inbound: int64(h.size)})
	if !s.originAllowed(h.origin) {
		c.fail(protocol.CodePolicyViolation, invalidOrigin(h.origin))
		return
	}
	if qerr != nil {
		c.failErr(qerr)
		return
	}
	creds := auth.Credentials{Project: project, JWT: h.jwt, Session: sessionFromHandshake(project, h)}
	if creds.JWT == "" {
		creds.JWT = q.JWT
	}
	if creds.JWT != "" && creds.Session != "" {
		c.fail(http.StatusForbidden, "Only one of JWT or session can be used at a time.")
		return
	}
	id, ok := c.resolve(creds)
	if !ok {
		return
	}

	subs := make([]subscription, 0, len(q.Slots))
	var slots []int
	var ids []string
	var channels []string
	for i, sl := range q.Slots {
		sub, err := s.newSubscription(slotSubscriptionID(q.SlotIndexes[i], sl), sl, id.UserID)
		if err != nil {
			c.failErr(err)
			return
		}
		subs = append(subs, sub)
		slots = append(slots, q.SlotIndexes[i])
		ids = append(ids, sub.id)
		channels = appendUnique(channels, sub.channels...)
	}

	if err := s.checkSubscriptionLimits(subs); err != nil {
		c.failErr(err)
		return
	}
	c.mu.Lock()
	c.project, c.userID, c.roles, c.subs = s.strs.get(project), id.UserID, id.Roles, subs
	if c.state != stateClosed {
		s.users.add(userKey{project, id.UserID}, c)
		s.projects.add(project)
	}
	c.mu.Unlock()
	c.reindex()
	connected := protocol.AppendConnected(nil, channels, slots, ids, id.User)
	// As Appwrite's updateStats and the triggerStats after `connected`: a
	// connection is counted once accepted, and `connected` is outbound
	// but not a message sent.
	s.usage.Add(project, usage.Counts{Connections: 1, Outbound: int64(len(connected))})
	c.sendText(connected)
}

// resolve resolves the handshake's credentials. As in Appwrite, a session
// that is not valid leaves the connection a guest (the SDK then sends an
// authentication message and gets a clear error); a JWT that is not valid
// is refused with 401 and the connection closed. A resolver that cannot
// answer closes the connection with 1008 and grants nothing.
func (c *conn) resolve(creds auth.Credentials) (auth.Identity, bool) {
	s := c.srv
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.AuthTimeout)
	defer cancel()
	id, err := s.cfg.Resolver.Resolve(ctx, creds)
	switch {
	case err == nil:
		return id, true
	case errors.Is(err, auth.ErrUnknownProject):
		// Appwrite knows no such project (--auth appwrite): refused as
		// Appwrite's worker refuses it in onOpen.
		s.log.Debug("project unknown to the resolver", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		c.fail(protocol.CodePolicyViolation, "Missing or unknown project ID")
	case errors.Is(err, auth.ErrUnauthorized) && creds.JWT == "":
		s.log.Debug("session rejected; connecting as guest", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		return auth.Guest(), true
	case errors.Is(err, auth.ErrUnauthorized):
		s.log.Debug("jwt rejected", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		c.failFor(closeAuthFailed, http.StatusUnauthorized, "Invalid JWT.")
	default:
		s.log.Warn("auth resolver failed", zap.Uint32("conn", uint32(c.id)), zap.Error(err))
		c.failFor(closeAuthUnavailable, protocol.CodePolicyViolation, "Authentication is unavailable, try again later.")
	}
	return auth.Identity{}, false
}

// sessionFromHandshake finds the Appwrite session in the order PROTOCOL.md
// gives: cookie a_session_<P>, cookie a_session_<P>_legacy, header
// x-appwrite-session, header x-fallback-cookies (a JSON object).
func sessionFromHandshake(project string, h *handshake) string {
	name := "a_session_" + project
	if v := cookieValue(h.cookie, name); v != "" {
		return v
	}
	if v := cookieValue(h.cookie, name+"_legacy"); v != "" {
		return v
	}
	if h.session != "" {
		return h.session
	}
	if h.fallback != "" {
		var m map[string]any
		if json.Unmarshal([]byte(h.fallback), &m) == nil {
			if v, ok := m[name].(string); ok {
				return v
			}
		}
	}
	return ""
}

// cookieValue returns the (URL-decoded) value of cookie name in a Cookie
// header, or "".
func cookieValue(header, name string) string {
	for header != "" {
		var part string
		part, header, _ = strings.Cut(header, ";")
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok || k != name {
			continue
		}
		v = strings.Trim(v, `"`)
		if dec, err := url.QueryUnescape(v); err == nil {
			v = dec
		}
		return v
	}
	return ""
}

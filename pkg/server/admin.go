package server

import (
	"bytes"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/explain"
	"github.com/switchboard-rt/switchboard/pkg/presence"
	"github.com/switchboard-rt/switchboard/pkg/protocol"
	"github.com/switchboard-rt/switchboard/pkg/usage"
)

// maxPublishBody bounds one POST /v1/publish body.
const maxPublishBody = 1 << 20

func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/publish", s.handlePublish)
	mux.HandleFunc("GET /v1/presences", s.keyed(s.handleListPresences))
	mux.HandleFunc("POST /v1/presences", s.keyed(s.handleUpsertPresence))
	mux.HandleFunc("DELETE /v1/presences/{id}", s.keyed(s.handleDeletePresence))
	mux.HandleFunc("POST /v1/explain", s.keyed(s.handleExplain))
	mux.HandleFunc("GET /v1/connections", s.keyed(s.handleConnections))
	mux.HandleFunc("GET /v1/usage", s.keyed(s.handleUsage))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if !s.serving.Load() {
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting"})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		switch err := s.cfg.Broker.Ready(); {
		case s.draining.Load():
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "draining"})
		case !s.serving.Load():
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "starting"})
		case err != nil:
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "broker unavailable", "error": err.Error()})
		default:
			writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{s.cfg.Registry, s.runtime}, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	// The dashboard: a browser can neither send a bearer header on a page
	// load nor set one on an EventSource, so it also takes the key as the
	// password of HTTP basic auth (any user name): the browser asks once
	// and sends it with the page, its files and its event stream. A key in
	// the URL would end up in histories and proxy logs.
	dash := s.dashboard.Handler()
	mux.Handle("GET /{$}", s.keyedPage(dash))
	mux.Handle("GET /dashboard/", s.keyedPage(dash))
	return mux
}

// keyOK reports whether r carries the API key (when one is configured),
// answering 401 when it does not.
func (s *Server) keyOK(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.APIKey == "" {
		return true
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.APIKey)) != 1 {
		writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong API key"})
		return false
	}
	return true
}

// keyedPage wraps a handler for a browser: the key may come as the
// password of basic auth, and a refusal asks the browser for it.
func (s *Server) keyedPage(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.APIKey != "" {
			if _, pass, ok := r.BasicAuth(); ok && subtle.ConstantTimeCompare([]byte(pass), []byte(s.cfg.APIKey)) == 1 {
				h.ServeHTTP(w, r)
				return
			}
			w.Header().Set("WWW-Authenticate", `Basic realm="switchboard admin", charset="UTF-8"`)
		}
		if s.keyOK(w, r) {
			h.ServeHTTP(w, r)
		}
	})
}

// keyed wraps a handler that needs the API key.
func (s *Server) keyed(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if s.keyOK(w, r) {
			h(w, r)
		}
	}
}

func (s *Server) handlePublish(w http.ResponseWriter, r *http.Request) {
	if !s.keyOK(w, r) {
		s.metrics.publishErrors.WithLabelValues("unauthorized").Inc()
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPublishBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.metrics.publishErrors.WithLabelValues("too_large").Inc()
			writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "body is over 1 MiB"})
			return
		}
		s.metrics.publishErrors.WithLabelValues("read").Inc()
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading body: " + err.Error()})
		return
	}
	if _, err := protocol.ParseEvent(body); err != nil {
		s.metrics.publishErrors.WithLabelValues("invalid").Inc()
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	if err := s.cfg.Broker.Publish(r.Context(), body); err != nil {
		s.metrics.publishErrors.WithLabelValues("broker").Inc()
		s.log.Warn("publish failed", zap.Error(err))
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "broker: " + err.Error()})
		return
	}
	s.metrics.published.Inc()
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "accepted"})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// handleListPresences answers GET /v1/presences?project=P with the
// project's live presences across the cluster: {"total":N,"presences":[...]}.
func (s *Server) handleListPresences(w http.ResponseWriter, r *http.Request) {
	project := r.URL.Query().Get("project")
	if project == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "project is required"})
		return
	}
	docs, err := s.presences.store.List(r.Context(), project)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "presence store: " + err.Error()})
		return
	}
	list := make([]json.RawMessage, len(docs))
	for i, d := range docs {
		list[i] = d
	}
	writeJSON(w, http.StatusOK, map[string]any{"total": len(list), "presences": list})
}

// handleUsage answers GET /v1/usage?project=P&from=&to= with the
// project's usage per minute, summed over the cluster's nodes by the store
// (usage.Report).
func (s *Server) handleUsage(w http.ResponseWriter, r *http.Request) {
	rg, err := usage.ParseRange(r.URL.Query(), time.Now())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	rep, err := usage.Query(r.Context(), s.cfg.Usage, rg)
	if err != nil {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "usage store: " + err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, rep)
}

// handleUpsertPresence answers POST /v1/presences: a backend sets a
// user's presence (say, "away"). The body is the presence message's data
// plus "project" and "userId"; the API key stands for every role, so any
// permissions are accepted. The record keeps whatever connections hold
// it; one that none holds lives until it expires or is deleted.
func (s *Server) handleUpsertPresence(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxPublishBody))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading body: " + err.Error()})
		return
	}
	var who struct {
		Project string `json:"project"`
		UserID  string `json:"userId"`
	}
	if err := json.Unmarshal(body, &who); err != nil || who.Project == "" || who.UserID == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "project and userId are required"})
		return
	}
	req, err := protocol.ParsePresence(body, s.cfg.MaxPresenceBytes)
	if err != nil {
		var pe *protocol.Error
		if errors.As(err, &pe) {
			err = errors.New(pe.Message)
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	doc, err := s.presences.upsert(nil, who.Project, who.UserID, req)
	switch {
	case errors.Is(err, presence.ErrIDTaken):
		writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "presence store: " + err.Error()})
	default:
		writeJSON(w, http.StatusOK, json.RawMessage(doc))
	}
}

// handleDeletePresence answers DELETE /v1/presences/{id}?project=P: the
// record goes whoever holds it, and its delete event is sent.
func (s *Server) handleDeletePresence(w http.ResponseWriter, r *http.Request) {
	project := r.URL.Query().Get("project")
	if project == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "project is required"})
		return
	}
	doc, err := s.presences.remove(project, r.PathValue("id"))
	switch {
	case err != nil:
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": "presence store: " + err.Error()})
	case doc == nil:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "presence not found"})
	default:
		writeJSON(w, http.StatusOK, json.RawMessage(doc))
	}
}

// maxExplainBody bounds one POST /v1/explain body: an event (what
// /v1/publish takes) and a few names.
const maxExplainBody = maxPublishBody + 4096

// handleExplain answers POST /v1/explain: for each connection the request
// names, across the cluster, and each of its subscriptions, whether the
// event would be delivered and the first reason it would not. A dry run:
// nothing is delivered (explain.go).
func (s *Server) handleExplain(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxExplainBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeJSON(w, http.StatusRequestEntityTooLarge, map[string]string{"error": "body is over 1 MiB"})
			return
		}
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "reading body: " + err.Error()})
		return
	}
	req, only, err := parseExplainRequest(body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	q, err := json.Marshal(req)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	answers, nodes := s.inspect.Ask(r.Context(), "explain", q, only)
	out := struct {
		Connections []explain.Explained `json:"connections"`
		Truncated   bool                `json:"truncated"`
		Nodes       explain.Nodes       `json:"nodes"`
	}{Connections: []explain.Explained{}, Nodes: nodes}
	for _, a := range answers {
		var ne explain.NodeExplain
		if err := json.Unmarshal(a.Body, &ne); err != nil {
			s.log.Warn("explain: a node's answer is not one", zap.String("node", a.Node), zap.Error(err))
			continue
		}
		out.Connections = append(out.Connections, ne.Connections...)
		out.Truncated = out.Truncated || ne.Truncated
	}
	slices.SortFunc(out.Connections, func(a, b explain.Explained) int { return explain.CompareConnIDs(a.Connection, b.Connection) })
	writeJSON(w, http.StatusOK, out)
}

// parseExplainRequest reads and checks an explain body: an event that
// /v1/publish would take, and either a connection id or a project and a
// user id. only is the node the connection is on ("" for every node).
func parseExplainRequest(body []byte) (req explain.Request, only string, err error) {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return req, "", fmt.Errorf("body is not an explain request: %w", err)
	}
	if dec.More() {
		return req, "", errors.New("body is not an explain request: more after the object")
	}
	if len(req.Event) == 0 {
		return req, "", errors.New("event is required (the message POST /v1/publish takes)")
	}
	if _, err := protocol.ParseEvent(req.Event); err != nil {
		return req, "", fmt.Errorf("event: %w", err)
	}
	switch {
	case req.Connection != "" && (req.Project != "" || req.UserID != ""):
		return req, "", errors.New("give either connection or project and userId, not both")
	case req.Connection != "":
		id, err := explain.ParseConnID(req.Connection)
		if err != nil {
			return req, "", err
		}
		return req, id.Node, nil
	case req.Project == "" || req.UserID == "":
		return req, "", errors.New("connection, or project and userId, are required")
	}
	return req, "", nil
}

// handleConnections answers GET /v1/connections?project=P[&userId=U]
// [&limit=N][&after=C]: a page of the project's connections across the
// cluster, in (node, id) order, and the cursor of the next page.
func (s *Server) handleConnections(w http.ResponseWriter, r *http.Request) {
	qs := r.URL.Query()
	req := explain.ListRequest{Project: qs.Get("project"), UserID: qs.Get("userId"), After: qs.Get("after")}
	if req.Project == "" {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "project is required"})
		return
	}
	limit, err := explain.ParseLimit(qs.Get("limit"))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	req.Limit = limit
	if req.After != "" {
		if _, err := explain.ParseConnID(req.After); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "after: " + err.Error()})
			return
		}
	}
	q, err := json.Marshal(req)
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	answers, nodes := s.inspect.Ask(r.Context(), "connections", q, "")
	lists := make(map[string]explain.NodeList, len(answers))
	for _, a := range answers {
		var nl explain.NodeList
		if err := json.Unmarshal(a.Body, &nl); err != nil {
			s.log.Warn("connections: a node's answer is not one", zap.String("node", a.Node), zap.Error(err))
			continue
		}
		lists[a.Node] = nl
	}
	page, next := explain.Page(lists, limit)
	if page == nil {
		page = []explain.Connection{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"connections": page, "next": next, "nodes": nodes})
}

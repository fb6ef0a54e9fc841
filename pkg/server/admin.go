package server

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/pprof"
	"strings"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/switchboard-rt/switchboard/pkg/protocol"
)

// maxPublishBody bounds one POST /v1/publish body.
const maxPublishBody = 1 << 20

func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/publish", s.handlePublish)
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
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.cfg.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

func (s *Server) handlePublish(w http.ResponseWriter, r *http.Request) {
	if s.cfg.APIKey != "" {
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(s.cfg.APIKey)) != 1 {
			s.metrics.publishErrors.WithLabelValues("unauthorized").Inc()
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong API key"})
			return
		}
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

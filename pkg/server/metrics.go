package server

import "github.com/prometheus/client_golang/prometheus"

// metrics are the node's Prometheus series. They live in the registry the
// caller passes in, never in the global default one.
type metrics struct {
	connections    prometheus.Gauge
	upgrades       *prometheus.CounterVec
	messagesIn     *prometheus.CounterVec
	messagesOut    prometheus.Counter
	framesOut      prometheus.Counter
	writeCalls     prometheus.Counter
	sendBufFull    prometheus.Counter
	deliveries     prometheus.Counter
	closes         [numCloseReasons]prometheus.Counter // switchboard_connection_closes_total by reason
	slowConsumers  prometheus.Counter
	protocolErrors *prometheus.CounterVec
	events         prometheus.Counter
	invalidEvents  prometheus.Counter
	publishErrors  *prometheus.CounterVec
	published      prometheus.Counter

	permissionChanges         prometheus.Counter
	permissionHolds           prometheus.Gauge
	permissionHoldSeconds     prometheus.Histogram
	permissionResolveFailures prometheus.Counter
	handshakeTimeouts         prometheus.Counter
	idleTimeouts              prometheus.Counter
	panics                    prometheus.Counter
	drainCloses               prometheus.Counter

	presences           prometheus.Gauge
	presenceUpserts     prometheus.Counter
	presenceDeletes     *prometheus.CounterVec
	presenceStoreErrors prometheus.Counter

	deflateUpgrades   prometheus.Counter
	deflatedEvents    prometheus.Counter
	deflatedDelivered prometheus.Counter
	deflateBytes      *prometheus.CounterVec

	resumes              *prometheus.CounterVec
	resumeReplayed       prometheus.Counter
	resumeRecordsDropped prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_connections", Help: "Open client sockets (upgraded or still in the handshake).",
		}),
		upgrades: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_upgrades_total", Help: "WebSocket upgrade attempts by result (ok, rejected).",
		}, []string{"result"}),
		messagesIn: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_messages_in_total", Help: "Client messages received, by type (invalid and unknown included).",
		}, []string{"type"}),
		messagesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_messages_out_total", Help: "Non-event messages sent to clients (connected, response, pong, error).",
		}),
		framesOut: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_frames_written_total", Help: "Frames fully written to sockets.",
		}),
		writeCalls: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_writev_calls_total", Help: "writev system calls made for client sockets; frames written per call shows how much batching under load saves.",
		}),
		sendBufFull: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_send_buffer_full_total", Help: "Writes that ended part-way because a socket's send buffer was full; the rest waited for EPOLLOUT.",
		}),
		deliveries: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_deliveries_total", Help: "Event frames queued for a recipient.",
		}),
		slowConsumers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_slow_consumer_closes_total", Help: "Connections closed because their outbound queue overflowed. Deprecated: switchboard_connection_closes_total{reason=\"slow_consumer\"}.",
		}),
		protocolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_protocol_errors_total", Help: "Errors answered to clients, by code or kind.",
		}, []string{"code"}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_events_total", Help: "Valid backbone messages routed.",
		}),
		invalidEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "broker_invalid_messages_total", Help: "Backbone messages dropped as invalid (not JSON, or no project, roles or channels).",
		}),
		publishErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_publish_errors_total", Help: "Rejected POST /v1/publish requests, by reason.",
		}, []string{"reason"}),
		published: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_published_total", Help: "Events accepted by POST /v1/publish.",
		}),
		handshakeTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_handshake_timeouts_total", Help: "Connections closed for not completing the upgrade in time. Deprecated: switchboard_connection_closes_total{reason=\"handshake_timeout\"}.",
		}),
		idleTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_idle_timeouts_total", Help: "Upgraded connections closed for sending no frame within the idle timeout. Deprecated: switchboard_connection_closes_total{reason=\"idle\"}.",
		}),
		panics: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_handler_panics_total", Help: "Panics recovered while handling a connection's input (the connection is closed with 1011).",
		}),
		drainCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_drain_closes_total", Help: "Connections told to go away (1001) while the node drains. Deprecated: switchboard_connection_closes_total{reason=\"shutdown\"}, which also counts those closed by the shutdown after the drain.",
		}),
		permissionChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_permission_changes_total", Help: "Permission changes applied to users with connections on this node.",
		}),
		permissionHolds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_permission_holds", Help: "Users whose events are held while their roles are re-resolved after a permission change.",
		}),
		permissionHoldSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "switchboard_permission_hold_seconds", Help: "How long a user's events were held for a permission change to be resolved (bounded by the auth timeout per resolution).",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}),
		permissionResolveFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_permission_resolve_failures_total", Help: "Re-resolutions after a permission change that failed or timed out; the user's connections dropped to guest.",
		}),
		presences: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "switchboard_presences", Help: "Presence records held by connections of this node.",
		}),
		presenceUpserts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_presence_upserts_total", Help: "Presence upserts stored (presence messages and the admin API).",
		}),
		presenceDeletes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_presence_deletes_total", Help: "Presence records this node deleted and announced, by why: closed (last connection gone), tick (expired, or held by a node that died), api.",
		}, []string{"reason"}),
		presenceStoreErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_presence_errors_total", Help: "Presence store calls or event publishes that failed.",
		}),
		deflateUpgrades: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_deflate_upgrades_total", Help: "Upgrades that negotiated permessage-deflate.",
		}),
		deflatedEvents: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_deflate_events_total", Help: "Events whose shared part was compressed: once per event, whatever the number of compressing recipients.",
		}),
		deflatedDelivered: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "switchboard_deflate_deliveries_total", Help: "Event frames queued compressed (RSV1).",
		}),
		deflateBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "switchboard_deflate_bytes_total", Help: "Payload bytes of compressed messages, by direction (out: events sent, in: client messages) and form (plain: before compression or after inflation, deflated: on the wire).",
		}, []string{"direction", "form"}),
	}
	m.resumes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchboard_resume_total",
		Help: "Subscriptions subscribed under an id new on their connection, by what became of them (RESUME.md): resumed (missed events replayed), new (an id the cluster had no record of), or started live because resuming was impossible: live_window, live_incomplete, live_user, live_open, live_size.",
	}, []string{"result"})
	for _, r := range resumeResults {
		m.resumes.WithLabelValues(r)
	}
	m.resumeReplayed = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "switchboard_resume_replayed_events_total", Help: "Missed events queued to resumed subscriptions.",
	})
	m.resumeRecordsDropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "switchboard_resume_records_dropped_total", Help: "Subscription records not written (the store failed, or the writer's queue was full): those subscriptions cannot resume.",
	})
	reg.MustRegister(m.resumes, m.resumeReplayed, m.resumeRecordsDropped)
	closes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "switchboard_connection_closes_total", Help: "Connections ended, by reason (one per connection, handshakes included; see README, Closes).",
	}, []string{"reason"})
	for r := range m.closes {
		if closeReason(r) != closeUnset { // counted as reset
			m.closes[r] = closes.WithLabelValues(closeReason(r).String())
		}
	}
	m.closes[closeUnset] = m.closes[closeReset]
	reg.MustRegister(closes)
	reg.MustRegister(m.deflateUpgrades, m.deflatedEvents, m.deflatedDelivered, m.deflateBytes)
	reg.MustRegister(m.connections, m.upgrades, m.messagesIn, m.messagesOut, m.framesOut, m.writeCalls, m.sendBufFull, m.deliveries,
		m.slowConsumers, m.protocolErrors, m.events, m.invalidEvents, m.publishErrors, m.published, m.permissionChanges, m.permissionHolds, m.permissionHoldSeconds, m.permissionResolveFailures, m.handshakeTimeouts, m.idleTimeouts, m.panics,
		m.drainCloses, m.presences, m.presenceUpserts, m.presenceDeletes, m.presenceStoreErrors)
	return m
}

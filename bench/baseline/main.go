// Command baseline is the comparison point for Switchboard's memory per
// connection: a WebSocket server written the usual way, with gorilla/websocket
// and goroutines per connection (a reader and a writer, as in gorilla's chat
// example). It speaks the subset of the Appwrite Realtime protocol that
// `switchboard bench` uses:
//
//   - GET /v1/realtime?project=P&channels[]=C upgrades and sends `connected`;
//   - {"type":"ping"} gets `pong`; WebSocket pings and closes are answered
//     by gorilla's default handlers;
//   - POST /v1/publish on the admin address takes the Redis message of
//     PROTOCOL.md and sends one `event` frame to every connection of that
//     project subscribed to one of its channels, when its roles include
//     "any" or "guests" (everyone here is a guest: no auth);
//   - an `authentication` message is answered with success and no user,
//     so a bench run with --auth behaves the same against both servers.
//
// It is deliberately simple and not a product: no limits, no metrics.
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"
)

func main() {
	var (
		listen      = flag.String("listen", "127.0.0.1:9505", "WebSocket listen address")
		adminListen = flag.String("admin-listen", "127.0.0.1:9506", "publish listen address")
		path        = flag.String("path", "/v1/realtime", "WebSocket path")
		readBuf     = flag.Int("read-buffer", 0, "gorilla read buffer per connection (0: gorilla's default, 4096)")
		writeBuf    = flag.Int("write-buffer", 0, "gorilla write buffer per connection (0: gorilla's default, 4096)")
		queue       = flag.Int("queue", 64, "outbound messages queued per connection before it is closed as slow")
	)
	flag.Parse()
	h := &hub{
		upgrader: websocket.Upgrader{
			ReadBufferSize:  *readBuf,
			WriteBufferSize: *writeBuf,
			CheckOrigin:     func(*http.Request) bool { return true },
		},
		queue: *queue,
		subs:  map[string]map[string]map[*client]struct{}{},
	}
	ws := http.NewServeMux()
	ws.HandleFunc(*path, h.serveWS)
	admin := http.NewServeMux()
	admin.HandleFunc("POST /v1/publish", h.publish)
	admin.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })

	errc := make(chan error, 2)
	go func() { errc <- http.ListenAndServe(*listen, ws) }()
	go func() { errc <- http.ListenAndServe(*adminListen, admin) }()
	log.Printf("baseline: websocket on %s%s, publish on %s", *listen, *path, *adminListen)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case err := <-errc:
		log.Fatal(err)
	case <-sig:
	}
}

// hub is the subscription table: project -> channel -> connections.
type hub struct {
	upgrader websocket.Upgrader
	queue    int
	mu       sync.RWMutex
	subs     map[string]map[string]map[*client]struct{}
}

// client is one connection: its own reader (the HTTP handler goroutine)
// and writer goroutine, and a queue between the hub and the writer.
type client struct {
	conn     *websocket.Conn
	send     chan *websocket.PreparedMessage
	project  string
	channels []string
	once     sync.Once
}

func (c *client) close() { c.once.Do(func() { close(c.send) }) }

func (h *hub) serveWS(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	project := q.Get("project")
	if p := r.Header.Get("x-appwrite-project"); p != "" {
		project = p
	}
	channels := q["channels[]"]
	conn, err := h.upgrader.Upgrade(w, r, nil)
	if err != nil {
		return // the upgrader has answered
	}
	if project == "" {
		_ = conn.WriteMessage(websocket.TextMessage, errorMsg(1008, "Missing or unknown project ID"))
		_ = conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.ClosePolicyViolation, "Missing or unknown project ID"))
		conn.Close()
		return
	}
	c := &client{conn: conn, send: make(chan *websocket.PreparedMessage, h.queue), project: project, channels: channels}
	connected, _ := json.Marshal(map[string]any{"type": "connected", "data": map[string]any{
		"channels": channels, "subscriptions": []string{}, "user": nil,
	}})
	if err := conn.WriteMessage(websocket.TextMessage, connected); err != nil {
		conn.Close()
		return
	}
	h.add(c)
	go c.writePump()
	c.readPump()
	h.remove(c)
	c.close()
}

func (c *client) writePump() {
	defer c.conn.Close()
	for m := range c.send {
		_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		if err := c.conn.WritePreparedMessage(m); err != nil {
			return
		}
	}
	_ = c.conn.WriteMessage(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""))
}

var (
	pongMsg = mustPrepare([]byte(`{"type":"pong"}`))
	authMsg = mustPrepare([]byte(`{"type":"response","data":{"to":"authentication","success":true,"user":null}}`))
	badType = mustPrepare(errorMsg(1003, "Message type is not valid."))
)

func (c *client) readPump() {
	for {
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			return
		}
		var m struct {
			Type string `json:"type"`
		}
		reply := badType
		if json.Unmarshal(b, &m) == nil {
			switch m.Type {
			case "ping":
				reply = pongMsg
			case "authentication":
				reply = authMsg
			}
		}
		select {
		case c.send <- reply:
		default: // a client that does not read its replies loses them
		}
	}
}

func (h *hub) add(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	byCh := h.subs[c.project]
	if byCh == nil {
		byCh = map[string]map[*client]struct{}{}
		h.subs[c.project] = byCh
	}
	for _, ch := range c.channels {
		if byCh[ch] == nil {
			byCh[ch] = map[*client]struct{}{}
		}
		byCh[ch][c] = struct{}{}
	}
}

func (h *hub) remove(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, ch := range c.channels {
		delete(h.subs[c.project][ch], c)
	}
}

// event is the backbone message of PROTOCOL.md.
type event struct {
	Project string   `json:"project"`
	Roles   []string `json:"roles"`
	Data    struct {
		Events    []string        `json:"events"`
		Channels  []string        `json:"channels"`
		Timestamp json.RawMessage `json:"timestamp"`
		Payload   json.RawMessage `json:"payload"`
	} `json:"data"`
}

func (h *hub) publish(w http.ResponseWriter, r *http.Request) {
	var e event
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&e); err != nil {
		http.Error(w, "invalid event: "+err.Error(), http.StatusBadRequest)
		return
	}
	if e.Project == "" || len(e.Roles) == 0 || len(e.Data.Channels) == 0 {
		http.Error(w, "invalid event: project, roles and channels are required", http.StatusBadRequest)
		return
	}
	w.WriteHeader(http.StatusAccepted)
	if !slices.Contains(e.Roles, "any") && !slices.Contains(e.Roles, "guests") {
		return
	}
	frame, err := json.Marshal(map[string]any{"type": "event", "data": map[string]any{
		"events": e.Data.Events, "channels": e.Data.Channels, "timestamp": e.Data.Timestamp,
		"payload": e.Data.Payload, "subscriptions": []string{},
	}})
	if err != nil {
		return
	}
	pm := mustPrepare(frame)
	h.mu.RLock()
	seen := map[*client]struct{}{}
	var slow []*client
	for _, ch := range e.Data.Channels {
		for c := range h.subs[e.Project][ch] {
			if _, dup := seen[c]; dup {
				continue
			}
			seen[c] = struct{}{}
			select {
			case c.send <- pm:
			default:
				slow = append(slow, c)
			}
		}
	}
	h.mu.RUnlock()
	for _, c := range slow {
		c.conn.Close() // the reader ends, removes and closes the queue
	}
}

func errorMsg(code int, message string) []byte {
	b, _ := json.Marshal(map[string]any{"type": "error", "data": map[string]any{"code": code, "message": message}})
	return b
}

func mustPrepare(b []byte) *websocket.PreparedMessage {
	pm, err := websocket.NewPreparedMessage(websocket.TextMessage, b)
	if err != nil {
		panic(fmt.Sprintf("preparing a message: %v", errors.Unwrap(err)))
	}
	return pm
}

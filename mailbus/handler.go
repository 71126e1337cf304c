package mailbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	json "github.com/goccy/go-json"
)

// HandlerConfig configures NewHandler. Every zero field has the default
// named in its comment.
type HandlerConfig struct {
	// Auth maps bearer tokens to agents. Required.
	Auth Authenticator
	// MaxBodyBytes caps request bodies and WebSocket frames. Zero means 1 MiB.
	MaxBodyBytes int64
	// PingInterval is how often the server pings each WebSocket; a
	// connection whose pong does not come back within the same interval is
	// closed. Zero means 30s.
	PingInterval time.Duration
	// WriteTimeout bounds one WebSocket write. Zero means 10s.
	WriteTimeout time.Duration
	// BatchMax caps how many messages go into one frame for clients that
	// asked for batches (?batch=1). Zero means 256.
	BatchMax int
	// OriginPatterns lists extra browser origins allowed to open the
	// WebSocket (see websocket.AcceptOptions). Non-browser clients send no
	// Origin and are always accepted.
	OriginPatterns []string
	// Logger receives unexpected errors. Zero means slog.Default().
	Logger *slog.Logger
}

// Close codes the server uses beyond the standard ones.
const (
	// StatusReplaced closes a connection superseded by a newer connection
	// of the same agent.
	StatusReplaced websocket.StatusCode = 4000
)

type handler struct {
	b      *Bus
	cfg    HandlerConfig
	mux    *http.ServeMux
	routes map[string][]any
}

// NewHandler serves the bus over HTTP and WebSocket at the full paths
// /api/v1/exchanges/{exchange_id}/mailbus/... (see docs/mailbus.md).
func NewHandler(b *Bus, cfg HandlerConfig) (http.Handler, error) {
	if b == nil || cfg.Auth == nil {
		return nil, errors.New("mailbus: NewHandler needs a Bus and HandlerConfig.Auth")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 1 << 20
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 30 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.BatchMax <= 0 {
		cfg.BatchMax = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &handler{b: b, cfg: cfg, mux: http.NewServeMux()}
	const base = "/api/v1/exchanges/{exchange_id}/mailbus/"
	h.route(base+"subscribe", http.MethodGet, h.subscribe)
	h.route(base+"publish", http.MethodPost, h.publish)
	h.route(base+"send", http.MethodPost, h.send)
	h.route(base+"acknowledge", http.MethodPost, h.acknowledge)
	h.route(base+"inbox", http.MethodGet, h.inbox)
	h.route(base+"presence", http.MethodGet, h.presence)
	h.route(base+"heartbeat", http.MethodPost, h.heartbeat)
	h.route(base+"subscriptions", http.MethodGet, h.getSubscriptions)
	h.route(base+"subscriptions", http.MethodPut, h.putSubscriptions)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
	})
	return h, nil
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

type caller struct {
	exchange, agent string
}

// route registers an authenticated endpoint; methods of one path share a
// registration so a wrong method gets a JSON 405.
func (h *handler) route(pattern, method string, fn func(http.ResponseWriter, *http.Request, caller)) {
	type entry struct {
		method string
		fn     func(http.ResponseWriter, *http.Request, caller)
	}
	if h.routes == nil {
		h.routes = map[string][]any{}
	}
	first := len(h.routes[pattern]) == 0
	h.routes[pattern] = append(h.routes[pattern], entry{method, fn})
	if !first {
		return
	}
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		for _, e := range h.routes[pattern] {
			e := e.(entry)
			if e.method != r.Method {
				continue
			}
			c, ok := h.authenticate(w, r)
			if !ok {
				return
			}
			e.fn(w, r, c)
			return
		}
		writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "method "+r.Method+" not allowed here")
	})
}

func (h *handler) authenticate(w http.ResponseWriter, r *http.Request) (caller, bool) {
	ex := r.PathValue("exchange_id")
	if !ValidID(ex) {
		writeError(w, http.StatusBadRequest, "invalid_input", "invalid exchange id")
		return caller{}, false
	}
	token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok || strings.TrimSpace(token) == "" {
		writeError(w, http.StatusUnauthorized, "unauthorized", "missing bearer token")
		return caller{}, false
	}
	agent, err := h.cfg.Auth.Authenticate(r.Context(), ex, strings.TrimSpace(token))
	if err == nil && !ValidID(agent) {
		err = fmt.Errorf("authenticator returned invalid agent id %q", agent)
	}
	if err != nil {
		h.fail(w, err)
		return caller{}, false
	}
	return caller{exchange: ex, agent: agent}, true
}

// errorStatus is the one table from bus errors to HTTP statuses and codes.
func errorStatus(err error) (int, string, string) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, "body_too_large", "request body too large"
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest, "invalid_input", strings.TrimPrefix(err.Error(), "mailbus: ")
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized, "unauthorized", "invalid API key"
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden, "forbidden", "API key not valid for this exchange"
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, "not_found", strings.TrimPrefix(err.Error(), "mailbus: ")
	case errors.Is(err, ErrConflict):
		return http.StatusConflict, "conflict", strings.TrimPrefix(err.Error(), "mailbus: ")
	case errors.Is(err, ErrClosed):
		return http.StatusServiceUnavailable, "unavailable", "mail bus is shutting down"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, "timeout", "request cancelled before it completed"
	}
	return http.StatusInternalServerError, "internal_error", "internal error"
}

func (h *handler) fail(w http.ResponseWriter, err error) {
	status, code, msg := errorStatus(err)
	if status == http.StatusInternalServerError {
		h.cfg.Logger.Error("mailbus: request failed", "err", err)
	}
	writeError(w, status, code, msg)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"error": msg, "code": code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (h *handler) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes)
	dec := json.NewDecoder(r.Body)
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			h.fail(w, err)
		} else {
			writeError(w, http.StatusBadRequest, "malformed_json", "malformed JSON body: "+err.Error())
		}
		return false
	}
	if _, err := dec.Token(); err != io.EOF {
		writeError(w, http.StatusBadRequest, "malformed_json", "trailing data after JSON body")
		return false
	}
	return true
}

func (h *handler) publish(w http.ResponseWriter, r *http.Request, c caller) {
	var m Message
	if !h.decode(w, r, &m) {
		return
	}
	out, err := h.b.Publish(r.Context(), c.exchange, c.agent, m)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// SendRequest is the body of POST /send, the original's shape.
type SendRequest struct {
	TargetAgent string  `json:"targetAgent"`
	Message     Message `json:"message"`
}

func (h *handler) send(w http.ResponseWriter, r *http.Request, c caller) {
	var req SendRequest
	if !h.decode(w, r, &req) {
		return
	}
	if req.Message.To != "" && req.Message.To != req.TargetAgent {
		writeError(w, http.StatusBadRequest, "invalid_input", "message.to differs from targetAgent")
		return
	}
	out, err := h.b.SendTo(r.Context(), c.exchange, c.agent, req.TargetAgent, req.Message)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// AckRequest is the body of POST /acknowledge. AgentID may be empty; when
// set it must be the caller.
type AckRequest struct {
	MessageID string `json:"messageId"`
	AgentID   string `json:"agentId,omitempty"`
}

func (h *handler) acknowledge(w http.ResponseWriter, r *http.Request, c caller) {
	var req AckRequest
	if !h.decode(w, r, &req) {
		return
	}
	if req.AgentID != "" && req.AgentID != c.agent {
		writeError(w, http.StatusForbidden, "forbidden", "an agent can only acknowledge its own messages")
		return
	}
	if req.MessageID == "" {
		writeError(w, http.StatusBadRequest, "invalid_input", "messageId is required")
		return
	}
	if err := h.b.Acknowledge(r.Context(), c.exchange, c.agent, req.MessageID); err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"acknowledged": true, "messageId": req.MessageID, "agentId": c.agent})
}

// InboxResponse is the body of GET /inbox.
type InboxResponse struct {
	Messages []Message `json:"messages"`
	// Next is the since to pass on the following call.
	Next uint64 `json:"next"`
}

func (h *handler) inbox(w http.ResponseWriter, r *http.Request, c caller) {
	since, ok := parseSince(w, r)
	if !ok {
		return
	}
	limit := 100
	if v := r.URL.Query().Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 1000 {
			writeError(w, http.StatusBadRequest, "invalid_input", "limit must be 1..1000")
			return
		}
		limit = n
	}
	msgs, next, err := h.b.Inbox(r.Context(), c.exchange, c.agent, since, limit)
	if err != nil {
		h.fail(w, err)
		return
	}
	if msgs == nil {
		msgs = []Message{}
	}
	writeJSON(w, http.StatusOK, InboxResponse{Messages: msgs, Next: next})
}

func parseSince(w http.ResponseWriter, r *http.Request) (int64, bool) {
	v := r.URL.Query().Get("since")
	if v == "" {
		return -1, true
	}
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil {
		writeError(w, http.StatusBadRequest, "invalid_input", "since must be a non-negative integer")
		return 0, false
	}
	return int64(n), true
}

func (h *handler) presence(w http.ResponseWriter, r *http.Request, c caller) {
	ps, err := h.b.Presence(r.Context(), c.exchange)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"agents": ps})
}

func (h *handler) heartbeat(w http.ResponseWriter, r *http.Request, c caller) {
	if err := h.b.Heartbeat(r.Context(), c.exchange, c.agent); err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// SubscriptionsBody is the body of GET and PUT /subscriptions.
type SubscriptionsBody struct {
	Types []string `json:"types"`
}

func (h *handler) getSubscriptions(w http.ResponseWriter, r *http.Request, c caller) {
	subs, err := h.b.Subscriptions(r.Context(), c.exchange, c.agent)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, SubscriptionsBody{Types: subs})
}

func (h *handler) putSubscriptions(w http.ResponseWriter, r *http.Request, c caller) {
	var body SubscriptionsBody
	if !h.decode(w, r, &body) {
		return
	}
	if err := h.b.SetSubscriptions(r.Context(), c.exchange, c.agent, body.Types); err != nil {
		h.fail(w, err)
		return
	}
	subs, err := h.b.Subscriptions(r.Context(), c.exchange, c.agent)
	if err != nil {
		h.fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, SubscriptionsBody{Types: subs})
}

// Frame is a control frame on the WebSocket, in either direction. Client
// actions: subscribe, unsubscribe (Type), ack (MessageID), publish
// (Message), send (TargetAgent, Message), heartbeat. Server actions:
// welcome, subscribed, unsubscribed, acked, accepted (ID), error (Error,
// Code). Ref, when a client sets it, is echoed in the reply.
type Frame struct {
	Action       string   `json:"action"`
	Ref          string   `json:"ref,omitempty"`
	Type         string   `json:"type,omitempty"`
	MessageID    string   `json:"messageId,omitempty"`
	TargetAgent  string   `json:"targetAgent,omitempty"`
	Message      *Message `json:"message,omitempty"`
	ID           string   `json:"id,omitempty"`
	AgentID      string   `json:"agentId,omitempty"`
	Next         uint64   `json:"next,omitempty"`
	Subscription []string `json:"subscriptions,omitempty"`
	Error        string   `json:"error,omitempty"`
	Code         string   `json:"code,omitempty"`
}

func (h *handler) subscribe(w http.ResponseWriter, r *http.Request, c caller) {
	since, ok := parseSince(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	batch := q.Get("batch") == "1" || q.Get("batch") == "true"
	ctx := r.Context()
	var types []string
	if q.Has("types") {
		for t := range strings.SplitSeq(q.Get("types"), ",") {
			if t = strings.TrimSpace(t); t != "" {
				types = append(types, t)
			}
		}
		if err := checkPatterns(types); err != nil {
			h.fail(w, err)
			return
		}
	}
	ex, err := h.b.exchange(ctx, c.exchange)
	if err != nil {
		h.fail(w, err)
		return
	}
	if !h.b.enter() {
		h.fail(w, ErrClosed)
		return
	}
	lh := &leanHijacker{ResponseWriter: w}
	conn, err := websocket.Accept(lh, r, &websocket.AcceptOptions{OriginPatterns: h.cfg.OriginPatterns})
	if err != nil {
		h.b.leave()
		lh.answer()
		return
	}
	if q.Has("types") {
		// Only now that the handshake succeeded: a refused one changes
		// nothing.
		if err := h.b.SetSubscriptions(ctx, c.exchange, c.agent, types); err != nil {
			_, code, msg := errorStatus(err)
			if code == "internal_error" {
				h.cfg.Logger.Error("mailbus: subscribe failed", "err", err)
			}
			conn.Close(websocket.StatusInternalError, msg)
			h.b.leave()
			return
		}
	}
	// The connection lives until the client goes, the server kicks the
	// session, or a ping or write fails. An idle connection costs one
	// parked goroutine with a small stack: the welcome is sent from the
	// HTTP handler's goroutine, which then returns (the connection is
	// hijacked, so that frees the request and its deep stack); the reader
	// starts afresh; writes run on the goroutine that has something to
	// deliver, or on short-lived goroutines like pings, only when there
	// is something to do.
	ws, ok := h.open(conn, lh.fc, ex, c, since, batch)
	if !ok {
		conn.CloseNow()
		h.b.leave()
		return
	}
	go func() {
		defer h.b.leave()
		defer conn.CloseNow()
		ws.serve()
	}()
}

// open attaches the connection to the agent's session and sends the
// welcome frame.
func (h *handler) open(conn *websocket.Conn, fc *frameConn, ex *exchange, c caller, since int64, batch bool) (*wsConn, bool) {
	conn.SetReadLimit(h.cfg.MaxBodyBytes)
	ctx, cancel := context.WithCancel(context.Background())
	ws := &wsConn{h: h, conn: conn, fc: fc, c: c, batch: batch, ctx: ctx, cancel: cancel}
	ws.room.L = &ws.mu
	ws.wd = time.AfterFunc(time.Hour, func() { conn.CloseNow() })
	ws.wd.Stop()
	s, err := ex.attach(c.agent, since, ws.poke)
	if err != nil {
		conn.Close(websocket.StatusGoingAway, "server shutting down")
		cancel()
		return nil, false
	}
	subs, _ := h.b.Subscriptions(ctx, c.exchange, c.agent)
	s.a.mu.Lock()
	next := s.next
	s.a.mu.Unlock()
	ws.reply(ctx, Frame{Action: "welcome", AgentID: c.agent, Next: next, Subscription: subs})
	ws.mu.Lock()
	ws.s = s
	ws.ping = time.AfterFunc(h.cfg.PingInterval, ws.pingOnce)
	ws.mu.Unlock()
	ws.poke()
	return ws, true
}

// serve reads frames until the connection ends, then detaches.
func (ws *wsConn) serve() {
	defer ws.cancel()
	defer ws.wd.Stop()
	s := ws.s
	ws.readLoop(ws.ctx)
	s.kick(nil)
	ws.mu.Lock()
	ws.closed = true
	ws.room.Broadcast()
	ws.ping.Stop()
	ws.mu.Unlock()
	ws.work.Wait()
	ws.cancel()
	ws.pending.Wait()
	s.detach()
}

func (ws *wsConn) closeWith(err error) {
	// No data frame may follow the close frame.
	ws.fc.mu.Lock()
	ws.fc.closed = true
	ws.fc.mu.Unlock()
	switch {
	case errors.Is(err, ErrReplaced):
		ws.conn.Close(StatusReplaced, "replaced by a newer connection of the same agent")
	case errors.Is(err, ErrClosed):
		ws.conn.Close(websocket.StatusGoingAway, "server shutting down")
	case errors.Is(err, errReload):
		ws.conn.Close(websocket.StatusTryAgainLater, "storage failure: reconnect")
	default:
		ws.conn.Close(websocket.StatusNormalClosure, "")
	}
}

type wsConn struct {
	h       *handler
	conn    *websocket.Conn
	fc      *frameConn // under conn: data frames are written here
	c       caller
	batch   bool
	ctx     context.Context
	cancel  context.CancelFunc
	pending sync.WaitGroup // replies waiting for durability

	// A write that has to wait for the socket arms wd, which closes the
	// connection if the write takes longer than WriteTimeout.
	wd *time.Timer

	// Reused by flushes (one at a time, handed over under mu).
	buf []byte
	ds  []delivery

	mu      sync.Mutex
	s       *session // nil until the welcome frame is out
	closed  bool
	running bool      // a flush is active
	dirty   bool      // something may be waiting since the flush last looked
	replies [][]byte  // encoded reply frames waiting for the flush
	room    sync.Cond // on mu: replies has room again, or the connection closed
	waitq   chan owed // replies owed, in order; nil until the first pipelined write
	ping    *time.Timer
	work    sync.WaitGroup // flush and ping goroutines
}

// poke makes sure the session's deliveries get written. The caller's
// goroutine writes them for as long as the socket takes them without
// waiting, up to inlineFrames frames: a broadcast to a thousand
// connections then costs a few goroutines, not one per connection. What
// may wait (a full socket, replies, the close handshake) is left to a
// flush goroutine.
func (ws *wsConn) poke() {
	ws.mu.Lock()
	ws.dirty = true
	if ws.running || ws.closed || ws.s == nil {
		ws.mu.Unlock()
		return
	}
	ws.running = true
	ws.work.Add(1)
	buf, ds := ws.buf, ws.ds
	ws.mu.Unlock()
	ws.flush(inlineFrames, buf, ds)
}

// inlineFrames bounds the frames poke writes on its caller's goroutine, so
// a reconnecting agent's replay does not hold up the others a broadcast
// wakes.
const inlineFrames = 4

// queueReplies hands replies to the flush goroutine, which writes them as
// one frame for clients that take batches. It waits while maxQueuedReplies
// are already queued: a client that pipelines writes without reading the
// replies then stalls the waiter, the waiter's queue fills, and the reader
// stops taking its frames, instead of the replies piling up in memory.
func (ws *wsConn) queueReplies(rs [][]byte) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for !ws.closed && len(ws.replies) >= maxQueuedReplies {
		ws.room.Wait()
	}
	if ws.closed {
		return
	}
	ws.replies = append(ws.replies, rs...)
	ws.dirty = true
	if ws.running || ws.s == nil {
		return
	}
	ws.running = true
	ws.work.Add(1)
	go ws.flush(-1, ws.buf, ws.ds)
}

// takeReplies hands the queued replies to the flush. Caller holds mu.
func (ws *wsConn) takeReplies() [][]byte {
	rs := ws.replies
	ws.replies = nil
	if len(rs) > 0 {
		ws.room.Broadcast()
	}
	return rs
}

// maxQueuedReplies bounds the replies queued for one connection's flush.
const maxQueuedReplies = 4096

// maxRef bounds a frame's ref, which every reply echoes.
const maxRef = 128

// flush writes replies and deliveries until there are none, then clears
// running. budget >= 0 means it runs on a poking goroutine and may write
// that many frames without waiting; the first thing that would wait goes
// to a new goroutine with the buffers, which owns the flush from then on.
// budget < 0 means the flush has a goroutine of its own and may wait.
func (ws *wsConn) flush(budget int, buf []byte, ds []delivery) {
	inline := budget >= 0
	handed := false
	defer func() {
		if !handed {
			ws.work.Done()
		}
	}()
	fail := func() {
		ws.conn.CloseNow()
		ws.stop()
	}
	n := 1
	if ws.batch {
		n = ws.h.cfg.BatchMax
	}
	for {
		ws.mu.Lock()
		if !ws.dirty || ws.closed {
			ws.running = false
			// Keep small buffers for the next flush, which cannot start
			// before mu is released.
			if cap(buf) <= maxKeptBuffer && cap(ds) <= maxKeptDeliveries {
				ws.buf, ws.ds = buf[:0], ds[:0]
			}
			ws.mu.Unlock()
			return
		}
		if inline && (len(ws.replies) > 0 || isDone(ws.s.gone)) {
			ws.mu.Unlock()
			handed = true
			go ws.flush(-1, buf, ds)
			return
		}
		ws.dirty = false
		replies := ws.takeReplies()
		ws.mu.Unlock()
		if !ws.writeReplies(replies) {
			fail()
			return
		}
		if isDone(ws.s.gone) {
			if inline {
				// Gone since the look above. The close handshake may
				// wait on the peer: not on a goroutine waking others.
				ws.mu.Lock()
				ws.dirty = true
				ws.mu.Unlock()
				handed = true
				go ws.flush(-1, buf, ds)
				return
			}
			// Say why before the reader sees the connection end.
			ws.closeWith(ws.s.err)
			ws.stop()
			return
		}
		for more := true; more; {
			ds, more = ws.s.take(n, ds[:0])
			if len(ds) == 0 {
				break
			}
			buf = append(buf[:0], make([]byte, frameHeadroom)...)
			if len(ds) > 1 {
				buf = append(buf, '[')
			}
			for i := range ds {
				if i > 0 {
					buf = append(buf, ',')
				}
				buf = ds[i].appendJSON(buf, ws.c.agent)
			}
			if len(ds) > 1 {
				buf = append(buf, ']')
			}
			clear(ds)
			if !inline {
				if ws.write(buf) != nil {
					fail()
					return
				}
				continue
			}
			rest, locked, err := ws.tryWrite(buf)
			if err != nil {
				fail()
				return
			}
			if budget--; len(rest) > 0 || budget == 0 {
				// The goroutine finishes the frame (rest lies in buf),
				// then takes another look.
				ws.mu.Lock()
				ws.dirty = true
				ws.mu.Unlock()
				handed = true
				go ws.resume(rest, locked, buf, ds)
				return
			}
		}
	}
}

// resume takes over a flush from a poking goroutine: it finishes the frame
// that goroutine could not (rest, with the frame lock if locked), then goes
// on.
func (ws *wsConn) resume(rest []byte, locked bool, buf []byte, ds []delivery) {
	if len(rest) > 0 {
		var err error
		if !locked {
			err = ws.fc.lock()
		}
		if err == nil {
			err = ws.finish(rest)
		}
		if err != nil {
			ws.conn.CloseNow()
			ws.stop()
			ws.work.Done()
			return
		}
	}
	ws.flush(-1, buf, ds)
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// writeReplies writes queued replies: one array frame for batch clients,
// one frame each otherwise.
func (ws *wsConn) writeReplies(rs [][]byte) bool {
	if len(rs) == 0 {
		return true
	}
	if !ws.batch || len(rs) == 1 {
		for _, r := range rs {
			if ws.write(framed(r)) != nil {
				return false
			}
		}
		return true
	}
	n := frameHeadroom + 2
	for _, r := range rs {
		n += len(r) + 1
	}
	buf := make([]byte, frameHeadroom, n)
	buf = append(buf, '[')
	for i, r := range rs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, r...)
	}
	return ws.write(append(buf, ']')) == nil
}

// A connection keeps its flush buffers between flushes only while they are
// this small: the live path reuses them, and a replay's large ones are not
// held by every idle connection afterwards.
const (
	maxKeptBuffer     = 4 << 10
	maxKeptDeliveries = 8
)

// framed copies p behind frameHeadroom.
func framed(p []byte) []byte {
	return append(make([]byte, frameHeadroom, frameHeadroom+len(p)), p...)
}

// write sends buf[frameHeadroom:] as one text frame, waiting for the socket
// if it must. A failed or timed-out write leaves the connection unusable,
// and it is closed.
func (ws *wsConn) write(buf []byte) error {
	if err := ws.fc.lock(); err != nil {
		return err
	}
	return ws.finish(frameBytes(buf))
}

// tryWrite sends buf[frameHeadroom:] as one text frame if that needs no
// waiting, neither for the socket nor for the frame lock: the caller may be
// waking a thousand connections, and a ping or reply stuck on a full socket
// holds the lock until it times out. Otherwise it returns the part of the
// frame not yet written and whether it holds the frame lock; the caller
// must pass both to resume.
func (ws *wsConn) tryWrite(buf []byte) (rest []byte, locked bool, err error) {
	p := frameBytes(buf)
	if !ws.fc.mu.TryLock() {
		return p, false, nil
	}
	if ws.fc.closed {
		ws.fc.mu.Unlock()
		return nil, false, net.ErrClosed
	}
	rest, err = ws.fc.tryWrite(p)
	if err != nil || len(rest) == 0 {
		return nil, false, ws.unlock(err)
	}
	return rest, true, nil
}

// finish writes p, the rest of a frame whose lock the caller holds, and
// releases the lock. wd bounds the wait.
func (ws *wsConn) finish(p []byte) error {
	ws.wd.Reset(ws.h.cfg.WriteTimeout)
	_, err := ws.fc.conn.Write(p)
	ws.wd.Stop()
	return ws.unlock(err)
}

// unlock releases the frame lock after a write that ended with err.
func (ws *wsConn) unlock(err error) error {
	if err != nil {
		ws.fc.closed = true
	}
	ws.fc.mu.Unlock()
	if err != nil {
		ws.conn.CloseNow()
	}
	return err
}

// stop marks the flush loop finished for good.
func (ws *wsConn) stop() {
	ws.mu.Lock()
	ws.running = false
	ws.closed = true
	ws.room.Broadcast()
	ws.mu.Unlock()
}

// pingOnce pings and re-arms; a missing pong ends the connection, which
// ends the reader.
func (ws *wsConn) pingOnce() {
	ws.mu.Lock()
	if ws.closed {
		ws.mu.Unlock()
		return
	}
	ws.work.Add(1)
	ws.mu.Unlock()
	defer ws.work.Done()
	ctx, cancel := context.WithTimeout(ws.ctx, ws.h.cfg.PingInterval)
	err := ws.conn.Ping(ctx)
	cancel()
	if err != nil {
		ws.conn.CloseNow()
		return
	}
	ws.mu.Lock()
	if !ws.closed {
		ws.ping.Reset(ws.h.cfg.PingInterval)
	}
	ws.mu.Unlock()
}

func (ws *wsConn) reply(ctx context.Context, f Frame) {
	if ctx.Err() != nil {
		return
	}
	b, _ := json.Marshal(f)
	_ = ws.write(framed(b))
}

func (ws *wsConn) replyErr(ctx context.Context, ref string, err error) {
	_, code, msg := errorStatus(err)
	if code == "internal_error" {
		ws.h.cfg.Logger.Error("mailbus: frame failed", "err", err)
	}
	ws.reply(ctx, Frame{Action: "error", Ref: ref, Error: msg, Code: code})
}

func (ws *wsConn) readLoop(ctx context.Context) {
	// The reader is the only sender on waitq; closing it lets the waiter
	// finish the replies still owed and exit.
	defer func() {
		ws.mu.Lock()
		if ws.waitq != nil {
			close(ws.waitq)
		}
		ws.mu.Unlock()
	}()
	for {
		typ, r, err := ws.conn.Reader(ctx)
		if err != nil {
			return
		}
		if ws.dispatch(ctx, typ, r) != nil {
			return
		}
	}
}

// dispatch decodes and handles one frame. It is kept out of readLoop so the
// frame it decodes is not on the stack of a reader parked between frames:
// an idle connection's stack then fits in 4 KiB.
//
//go:noinline
func (ws *wsConn) dispatch(ctx context.Context, typ websocket.MessageType, r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if typ != websocket.MessageText {
		ws.replyErr(ctx, "", fmt.Errorf("%w: binary frames are not supported", ErrInvalid))
		return nil
	}
	var f Frame
	if err := json.Unmarshal(data, &f); err != nil {
		ws.reply(ctx, Frame{Action: "error", Error: "malformed frame: " + err.Error(), Code: "malformed_frame"})
		return nil
	}
	ws.handle(ctx, f)
	return nil
}

func (ws *wsConn) handle(ctx context.Context, f Frame) {
	b, c := ws.h.b, ws.c
	if len(f.Ref) > maxRef {
		ws.replyErr(ctx, "", fmt.Errorf("%w: ref longer than %d bytes", ErrInvalid, maxRef))
		return
	}
	switch f.Action {
	case "subscribe", "unsubscribe":
		var err error
		if f.Action == "subscribe" {
			err = b.Subscribe(ctx, c.exchange, c.agent, f.Type)
		} else {
			err = b.Unsubscribe(ctx, c.exchange, c.agent, f.Type)
		}
		if err != nil {
			ws.replyErr(ctx, f.Ref, err)
			return
		}
		ws.reply(ctx, Frame{Action: f.Action + "d", Ref: f.Ref, Type: f.Type})
	case "ack":
		ex, err := b.exchange(ctx, c.exchange)
		var result <-chan error
		if err == nil {
			result, err = ex.ackAsync(c.agent, f.MessageID)
		}
		ws.later(ctx, f, result, err, Frame{Action: "acked", Ref: f.Ref, MessageID: f.MessageID})
	case "publish", "send":
		if f.Message == nil {
			ws.replyErr(ctx, f.Ref, fmt.Errorf("%w: %s frame without message", ErrInvalid, f.Action))
			return
		}
		m := *f.Message
		if f.Action == "send" {
			if !ValidID(f.TargetAgent) || (m.To != "" && m.To != f.TargetAgent) {
				ws.replyErr(ctx, f.Ref, fmt.Errorf("%w: targetAgent %q", ErrInvalid, f.TargetAgent))
				return
			}
			m.To = f.TargetAgent
		}
		out, result, err := b.publishAsync(ctx, c.exchange, c.agent, m)
		ws.later(ctx, f, result, err, Frame{Action: "accepted", Ref: f.Ref, ID: out.ID})
	case "heartbeat":
		if err := b.Heartbeat(ctx, c.exchange, c.agent); err != nil {
			ws.replyErr(ctx, f.Ref, err)
		}
	default:
		ws.reply(ctx, Frame{Action: "error", Ref: f.Ref, Error: fmt.Sprintf("unknown action %q", f.Action), Code: "unknown_action"})
	}
}

// later sends ok once result reports durability, without holding up the
// reader, so one connection can pipeline many writes. Replies are settled
// in order by one waiter goroutine per connection (started on first use),
// which gathers those that completed in the same group commit.
func (ws *wsConn) later(ctx context.Context, f Frame, result <-chan error, err error, ok Frame) {
	if err != nil {
		ws.replyErr(ctx, f.Ref, err)
		return
	}
	if result == nil {
		ws.reply(ctx, ok)
		return
	}
	ws.mu.Lock()
	if ws.waitq == nil {
		// Its capacity bounds the writes a client can have in flight;
		// beyond it the reader stalls, which backs the client off.
		ws.waitq = make(chan owed, 1024)
		ws.pending.Go(ws.waiter)
	}
	q := ws.waitq
	ws.mu.Unlock()
	select {
	case q <- owed{result: result, ok: ok}:
	case <-ctx.Done():
	}
}

// owed is a reply waiting for its write to become durable.
type owed struct {
	result <-chan error
	ok     Frame
}

func (ws *wsConn) waiter() {
	var held *owed
	for {
		p := held
		held = nil
		if p == nil {
			o, more := <-ws.waitq
			if !more {
				return
			}
			p = &o
		}
		out := [][]byte{ws.settle(p)}
		open := true
	gather:
		for {
			select {
			case o, more := <-ws.waitq:
				if !more {
					open = false
					break gather
				}
				if len(o.result) == 0 {
					held = &o
					break gather
				}
				out = append(out, ws.settle(&o))
			default:
				break gather
			}
		}
		ws.queueReplies(out)
		if !open {
			return
		}
	}
}

// settle waits for p's write and encodes its reply.
func (ws *wsConn) settle(p *owed) []byte {
	f := p.ok
	if err := <-p.result; err != nil {
		_, code, msg := errorStatus(err)
		if code == "internal_error" {
			ws.h.cfg.Logger.Error("mailbus: frame failed", "err", err)
		}
		f = Frame{Action: "error", Ref: p.ok.Ref, Error: msg, Code: code}
		b, _ := json.Marshal(f)
		return b
	}
	// The common replies, encoded without reflection.
	b := make([]byte, 0, 96)
	b = append(b, `{"action":`...)
	b = appendString(b, f.Action)
	if f.Ref != "" {
		b = append(b, `,"ref":`...)
		b = appendString(b, f.Ref)
	}
	if f.MessageID != "" {
		b = append(b, `,"messageId":`...)
		b = appendString(b, f.MessageID)
	}
	if f.ID != "" {
		b = append(b, `,"id":`...)
		b = appendString(b, f.ID)
	}
	return append(b, '}')
}

package mailbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/storage"
)

// HandlerConfig configures NewHandler. Every zero field has the default
// named in its comment.
type HandlerConfig struct {
	// Auth maps bearer tokens to agents. Required.
	Auth Authenticator
	// MaxBodyBytes caps request bodies and WebSocket frames. Zero means 1 MiB.
	MaxBodyBytes int64
	// PingInterval is how often the server pings each WebSocket. Zero
	// means 30s.
	PingInterval time.Duration
	// PongTimeout is how long a ping waits for its pong before the
	// connection is closed. Zero means PingInterval.
	PongTimeout time.Duration
	// WriteTimeout bounds one WebSocket write. Zero means 10s.
	WriteTimeout time.Duration
	// BatchMax caps how many messages go into one frame for clients that
	// asked for batches (?batch=1). Zero means 256.
	BatchMax int
	// OriginPatterns lists extra browser origins allowed to open the
	// WebSocket (see websocket.AcceptOptions). Non-browser clients send no
	// Origin and are always accepted.
	OriginPatterns []string
	// KeyExchange, when set, serves the worker API that Jetpack's
	// HttpMailBus calls (/api/mail/publish, /api/mail/subscribe and, with
	// Leaser, /api/mail/lease; see handler_worker.go). Its requests name
	// no exchange, so KeyExchange reads it from the API key, which Auth
	// then authenticates in that exchange; false answers 401.
	KeyExchange func(apiKey string) (exchangeID string, ok bool)
	// Leaser serves /api/mail/lease for an agent, for instance
	// ManagerLeaser. Nil leaves those routes out.
	Leaser func(exchangeID, agentID string) Leaser
	// Leases, when set, serves lease frames (lease.acquire, lease.renew,
	// lease.release, lease.status, lease.cancel: see lease.FrameSession)
	// on the WebSocket for the connection's agent, and the welcome frame
	// says so ("leases": true). Nil answers them as unknown actions.
	Leases *lease.Manager
	// Logger receives unexpected errors. Nil means slog.Default().
	Logger *slog.Logger
}

type handler struct {
	b      *Bus
	cfg    HandlerConfig
	raw    bool // data frames go through wsraw.go
	mux    *http.ServeMux
	routes map[string][]endpoint
}

// NewHandler serves the bus over HTTP and WebSocket at the full paths
// /api/v1/exchanges/{exchange_id}/mailbus/..., and with cfg.KeyExchange set
// at /api/mail/... as well (see docs/mailbus.md). It fails without a Bus
// or an Authenticator.
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
	if cfg.PongTimeout <= 0 {
		cfg.PongTimeout = cfg.PingInterval
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
	h := &handler{b: b, cfg: cfg, mux: http.NewServeMux(), raw: writeRaw}
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
	if cfg.KeyExchange != nil {
		h.routeWorker()
	}
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "no such endpoint")
	})
	return h, nil
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) { h.mux.ServeHTTP(w, r) }

type caller struct {
	exchange, agent string
}

// route registers an endpoint of the exchange's API.
func (h *handler) route(pattern, method string, fn func(http.ResponseWriter, *http.Request, caller)) {
	h.routeWith(pattern, method, fn, h.authenticate)
}

// endpoint is one method of a path: auth answers the request itself when
// it fails.
type endpoint struct {
	method string
	fn     func(http.ResponseWriter, *http.Request, caller)
	auth   func(http.ResponseWriter, *http.Request) (caller, bool)
}

// routeWith registers an authenticated endpoint; methods of one path share
// a registration so a wrong method gets a JSON 405.
func (h *handler) routeWith(pattern, method string, fn func(http.ResponseWriter, *http.Request, caller), auth func(http.ResponseWriter, *http.Request) (caller, bool)) {
	if h.routes == nil {
		h.routes = map[string][]endpoint{}
	}
	first := len(h.routes[pattern]) == 0
	h.routes[pattern] = append(h.routes[pattern], endpoint{method, fn, auth})
	if !first {
		return
	}
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		for _, e := range h.routes[pattern] {
			if e.method != r.Method {
				continue
			}
			c, ok := e.auth(w, r)
			if !ok {
				return
			}
			e.fn(w, r, c)
			return
		}
		httpx.WriteError(w, http.StatusMethodNotAllowed, httpx.CodeMethodNotAllowed, "method "+r.Method+" not allowed here")
	})
}

func (h *handler) authenticate(w http.ResponseWriter, r *http.Request) (caller, bool) {
	ex := r.PathValue("exchange_id")
	if !ValidID(ex) {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, "invalid exchange id")
		return caller{}, false
	}
	return h.authenticateIn(w, r, ex)
}

// authenticateIn authenticates the request's bearer key as an agent of
// exchange ex.
func (h *handler) authenticateIn(w http.ResponseWriter, r *http.Request, ex string) (caller, bool) {
	token, ok := httpx.Bearer(r)
	if !ok {
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "missing bearer token")
		return caller{}, false
	}
	agent, err := h.cfg.Auth.Authenticate(r.Context(), ex, token)
	if err == nil && !ValidID(agent) {
		err = fmt.Errorf("authenticator returned invalid agent id %q", agent)
	}
	if err != nil {
		h.fail(w, err)
		return caller{}, false
	}
	return caller{exchange: ex, agent: agent}, true
}

// errorStatus is the one table from bus errors to HTTP statuses and the
// codes of internal/httpx, for HTTP answers and error frames alike.
func errorStatus(err error) (int, string, string) {
	if he, ok := errors.AsType[*httpx.Error](err); ok {
		return he.Status, he.Code, he.Message
	}
	msg := strings.TrimPrefix(err.Error(), "mailbus: ")
	switch {
	case errors.Is(err, ErrInvalid), errors.Is(err, lease.ErrInvalidName), errors.Is(err, lease.ErrInvalidTTL),
		errors.Is(err, lease.ErrInvalidID), errors.Is(err, lease.ErrInvalidToken):
		return http.StatusBadRequest, httpx.CodeInvalid, strings.TrimPrefix(msg, "lease: ")
	case errors.Is(err, ErrUnauthorized), errors.Is(err, lease.ErrUnauthorized):
		return http.StatusUnauthorized, httpx.CodeUnauthorized, "invalid API key"
	case errors.Is(err, ErrForbidden), errors.Is(err, lease.ErrForbidden):
		return http.StatusForbidden, httpx.CodeForbidden, "API key not valid for this exchange"
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound, httpx.CodeNotFound, msg
	case errors.Is(err, ErrConflict):
		return http.StatusConflict, httpx.CodeConflict, msg
	case errors.Is(err, ErrClosed), errors.Is(err, lease.ErrClosed):
		return http.StatusServiceUnavailable, httpx.CodeUnavailable, "mail bus is shutting down"
	case errors.Is(err, storage.ErrUnavailable):
		return http.StatusServiceUnavailable, httpx.CodeUnavailable, "storage is unavailable; try again"
	case errors.Is(err, storage.ErrFenced):
		return http.StatusServiceUnavailable, httpx.CodeUnavailable, "this server no longer writes the mail bus; try again"
	case errors.Is(err, errReload):
		return http.StatusServiceUnavailable, httpx.CodeUnavailable, "mail bus is reloading after a storage failure; try again"
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable, httpx.CodeUnavailable, "request cancelled before it completed"
	}
	return http.StatusInternalServerError, httpx.CodeInternal, "internal error"
}

func (h *handler) fail(w http.ResponseWriter, err error) {
	status, code, msg := errorStatus(err)
	if status == http.StatusInternalServerError {
		h.cfg.Logger.Error("mailbus: request failed", "err", err)
	}
	httpx.WriteError(w, status, code, msg)
}

// decode reads the JSON body into v, answering the request itself when it
// cannot.
func (h *handler) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := httpx.DecodeJSON(w, r, h.cfg.MaxBodyBytes, v); err != nil {
		h.fail(w, err)
		return false
	}
	return true
}

func (h *handler) publish(w http.ResponseWriter, r *http.Request, c caller) {
	var m wireMessage
	if !h.decode(w, r, &m) {
		return
	}
	out, err := h.b.Publish(r.Context(), c.exchange, c.agent, m.message())
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

// sendRequest is the body of POST /send, as cf-mail-adapter 0.1.0's
// CloudflareMailBus sends it.
type sendRequest struct {
	TargetAgent string      `json:"targetAgent"`
	Message     wireMessage `json:"message"`
}

func (h *handler) send(w http.ResponseWriter, r *http.Request, c caller) {
	var req sendRequest
	if !h.decode(w, r, &req) {
		return
	}
	if req.Message.To != "" && req.Message.To != req.TargetAgent {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, "message.to differs from targetAgent")
		return
	}
	out, err := h.b.SendTo(r.Context(), c.exchange, c.agent, req.TargetAgent, req.Message.message())
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, out)
}

// ackRequest is the body of POST /acknowledge. AgentID may be empty; when
// set it must be the caller.
type ackRequest struct {
	MessageID string `json:"messageId"`
	AgentID   string `json:"agentId,omitempty"`
}

func (h *handler) acknowledge(w http.ResponseWriter, r *http.Request, c caller) {
	var req ackRequest
	if !h.decode(w, r, &req) {
		return
	}
	if req.AgentID != "" && req.AgentID != c.agent {
		httpx.WriteError(w, http.StatusForbidden, httpx.CodeForbidden, "an agent can only acknowledge its own messages")
		return
	}
	if req.MessageID == "" {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, "messageId is required")
		return
	}
	if err := h.b.Acknowledge(r.Context(), c.exchange, c.agent, req.MessageID); err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"acknowledged": true, "messageId": req.MessageID, "agentId": c.agent})
}

// inboxResponse is the body of GET /inbox.
type inboxResponse struct {
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
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, "limit must be 1..1000")
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
	httpx.WriteJSON(w, http.StatusOK, inboxResponse{Messages: msgs, Next: next})
}

func parseSince(w http.ResponseWriter, r *http.Request) (int64, bool) {
	v := r.URL.Query().Get("since")
	if v == "" {
		return -1, true
	}
	n, err := strconv.ParseUint(v, 10, 63)
	if err != nil {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, "since must be a non-negative integer")
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
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"agents": ps})
}

func (h *handler) heartbeat(w http.ResponseWriter, r *http.Request, c caller) {
	if err := h.b.Heartbeat(r.Context(), c.exchange, c.agent); err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"ok": true})
}

// subscriptionsBody is the body of GET and PUT /subscriptions.
type subscriptionsBody struct {
	Types []string `json:"types"`
}

func (h *handler) getSubscriptions(w http.ResponseWriter, r *http.Request, c caller) {
	subs, err := h.b.Subscriptions(r.Context(), c.exchange, c.agent)
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, subscriptionsBody{Types: subs})
}

func (h *handler) putSubscriptions(w http.ResponseWriter, r *http.Request, c caller) {
	var body subscriptionsBody
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
	httpx.WriteJSON(w, http.StatusOK, subscriptionsBody{Types: subs})
}

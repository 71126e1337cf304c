package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/storage"
)

// Authenticator resolves an API key to the agent it belongs to in an
// exchange. It returns an error wrapping ErrUnauthorized for an unknown key
// and ErrForbidden for a key of another exchange.
type Authenticator interface {
	Authenticate(ctx context.Context, exchangeID, token string) (agentID string, err error)
}

// keyWatcher is what an Authenticator may also offer: a channel closed
// when a key stops admitting its holder (revoked or rotated away), and a
// function that releases the watch. A blocking acquire made with a key
// that is revoked while it waits ends with 401 at once.
type keyWatcher interface {
	WatchKey(exchangeID, key string) (revoked <-chan struct{}, stop func())
}

// errRevoked is the cause of a wait ended by its key's revocation.
var errRevoked = fmt.Errorf("%w: API key revoked", ErrUnauthorized)

// HandlerConfig configures NewHandler.
type HandlerConfig struct {
	// Auth authenticates every request. Required. If it also has the
	// method WatchKey(exchangeID, key string) (<-chan struct{}, func()),
	// as mess.ExecutorAuth does, a blocking acquire ends with 401 as soon
	// as the key it was made with is revoked, and a lease WebSocket opened
	// with it is closed with 1008 after its waiting acquires end.
	Auth Authenticator
	// MaxBodyBytes caps request bodies and frames on the lease WebSocket
	// (a longer frame closes it with 1009). Zero means 64 KiB.
	MaxBodyBytes int64
	// PingInterval is how often the server pings each lease WebSocket; a
	// ping unanswered for as long closes it. Zero means 30s.
	PingInterval time.Duration
	// WriteTimeout bounds one write to a lease WebSocket. Zero means 10s.
	WriteTimeout time.Duration
	// Logger receives internal errors, which clients only see as a generic
	// 500. Nil means slog.Default().
	Logger *slog.Logger
}

// Wire types of the lease API v1. Times are epoch milliseconds and
// durations milliseconds, as in its LeaseStatus.
type (
	acquireRequest struct {
		File    string `json:"file"`
		TTLMs   int64  `json:"ttlMs"`
		WaitMs  int64  `json:"waitMs,omitempty"`
		AgentID string `json:"agentId,omitempty"` // optional; must match the key's agent
	}
	renewRequest struct {
		File  string `json:"file"`
		Token uint64 `json:"token"`
		TTLMs int64  `json:"ttlMs"`
	}
	releaseRequest struct {
		File    string `json:"file"`
		Token   uint64 `json:"token,omitempty"`   // 0: the caller's current lease
		AgentID string `json:"agentId,omitempty"` // optional; must match the key's agent
	}
	statusRequest struct {
		File string `json:"file"`
	}
	leaseJSON struct {
		File        string `json:"file"`
		AgentID     string `json:"agentId"`
		Token       uint64 `json:"token"`
		ExpiresAt   int64  `json:"expiresAt"`
		RemainingMs int64  `json:"remainingMs"`
	}
	acquireResponse struct {
		Acquired    bool   `json:"acquired"`
		File        string `json:"file"`
		AgentID     string `json:"agentId,omitempty"`
		Token       uint64 `json:"token,omitempty"`
		ExpiresAt   int64  `json:"expiresAt,omitempty"`
		RemainingMs int64  `json:"remainingMs,omitempty"`
	}
	renewResponse struct {
		Renewed bool `json:"renewed"`
		leaseJSON
	}
	releaseResponse struct {
		Released bool `json:"released"`
	}
	listResponse struct {
		Leases []leaseJSON `json:"leases"`
	}
	releaseAllResponse struct {
		Released int `json:"released"`
	}
	errorResponse struct {
		Error string `json:"error"`
		Code  string `json:"code"`
		Field string `json:"field,omitempty"` // the request member an invalid_input error is about
	}
)

type handler struct {
	m   *Manager
	cfg HandlerConfig
	mux *http.ServeMux
	out writeQueue // lease WebSockets with answers to write
}

// NewHandler serves the lease API v1 for m under
// /api/v1/exchanges/{exchange_id}/leases/: POST acquire, renew, release,
// status and release-all, GET list, and GET ws, a WebSocket carrying lease
// frames (see FrameSession). It needs m and cfg.Auth.
func NewHandler(m *Manager, cfg HandlerConfig) (http.Handler, error) {
	if m == nil || cfg.Auth == nil {
		return nil, errors.New("lease: NewHandler needs a Manager and HandlerConfig.Auth")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 10
	}
	if cfg.PingInterval <= 0 {
		cfg.PingInterval = 30 * time.Second
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &handler{m: m, cfg: cfg, mux: http.NewServeMux()}
	const base = "/api/v1/exchanges/{exchange_id}/leases/"
	h.route(base+"acquire", http.MethodPost, h.acquire)
	h.route(base+"renew", http.MethodPost, h.renew)
	h.route(base+"release", http.MethodPost, h.release)
	h.route(base+"status", http.MethodPost, h.status)
	h.route(base+"list", http.MethodGet, h.list)
	h.route(base+"release-all", http.MethodPost, h.releaseAll)
	h.route(base+"ws", http.MethodGet, h.serveWS)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "no such endpoint")
	})
	return h.mux, nil
}

type opFunc func(w http.ResponseWriter, r *http.Request, exchangeID, agentID string) error

// route registers an endpoint that authenticates, then runs op and maps
// its error to a status in one place (writeErr).
func (h *handler) route(pattern, method string, op opFunc) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			httpx.WriteError(w, http.StatusMethodNotAllowed, httpx.CodeMethodNotAllowed, "use "+method)
			return
		}
		x := r.PathValue("exchange_id")
		if err := validID(x); err != nil {
			invalid(w, "exchange_id", "invalid exchange id")
			return
		}
		key, ok := httpx.Bearer(r)
		if !ok {
			httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "missing bearer token")
			return
		}
		agent, err := h.cfg.Auth.Authenticate(r.Context(), x, key)
		if err == nil && validID(agent) != nil {
			err = fmt.Errorf("lease: the authenticator gave the invalid agent id %q", agent)
		}
		if err == nil {
			err = op(w, r, x, agent)
		}
		if err != nil {
			h.writeErr(w, r, err)
		}
	})
}

// decode reads r's JSON body into v within the handler's limit.
func (h *handler) decode(w http.ResponseWriter, r *http.Request, v any) error {
	return httpx.DecodeJSON(w, r, h.cfg.MaxBodyBytes, v)
}

// invalid answers 400 invalid_input naming the request member at fault, so
// that Client can tell ErrInvalidName, ErrInvalidTTL, ErrInvalidID and
// ErrInvalidToken apart.
func invalid(w http.ResponseWriter, field, msg string) {
	httpx.WriteErrorDetails(w, http.StatusBadRequest, httpx.CodeInvalid, msg, map[string]any{"field": field})
}

// The two conflicts a client must tell apart get their own codes.
const (
	codeStaleToken = "stale_token" // 409: the token is not the current grant's
	codeNotHeld    = "not_held"    // 409: the caller holds no live lease on the name
)

// writeErr answers err over HTTP, through errorAnswer.
func (h *handler) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	if he, ok := errors.AsType[*httpx.Error](err); ok {
		httpx.Write(w, he)
		return
	}
	if errors.Is(err, errRevoked) {
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "API key revoked")
		return
	}
	a := errorAnswer(err)
	switch {
	case a.status == http.StatusInternalServerError:
		h.cfg.Logger.Error("lease: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	case a.field != "":
		invalid(w, a.field, a.msg)
		return
	}
	httpx.WriteError(w, a.status, a.code, a.msg)
}

// answer is what an error becomes on the wire, over HTTP and in error
// frames alike.
type answer struct {
	status    int
	code, msg string
	field     string // the request member an invalid_input is about
}

// errorAnswer is the one table from errors to answers.
func errorAnswer(err error) answer {
	if he, ok := errors.AsType[*httpx.Error](err); ok {
		return answer{status: he.Status, code: he.Code, msg: he.Message}
	}
	if fe, ok := errors.AsType[*fieldError](err); ok {
		return answer{http.StatusBadRequest, httpx.CodeInvalid, fe.msg, fe.field}
	}
	switch {
	case errors.Is(err, ErrUnauthorized):
		return answer{http.StatusUnauthorized, httpx.CodeUnauthorized, "invalid API key", ""}
	case errors.Is(err, ErrForbidden):
		return answer{http.StatusForbidden, httpx.CodeForbidden, "API key not valid for this exchange or agent", ""}
	case errors.Is(err, ErrInvalidName):
		return answer{http.StatusBadRequest, httpx.CodeInvalid, message(err), "file"}
	case errors.Is(err, ErrInvalidTTL):
		return answer{http.StatusBadRequest, httpx.CodeInvalid, message(err), "ttlMs"}
	case errors.Is(err, ErrInvalidID):
		return answer{http.StatusBadRequest, httpx.CodeInvalid, message(err), "agentId"}
	case errors.Is(err, ErrInvalidToken):
		return answer{http.StatusBadRequest, httpx.CodeInvalid, "token is required", "token"}
	case errors.Is(err, ErrStaleToken):
		return answer{http.StatusConflict, codeStaleToken, message(err), ""}
	case errors.Is(err, ErrNotHeld):
		return answer{http.StatusConflict, codeNotHeld, message(err), ""}
	case errors.Is(err, storage.ErrFenced), errors.Is(err, storage.ErrUnavailable):
		// Another process owns the exchange now, or the store is out of
		// reach; nothing was acknowledged.
		return answer{http.StatusServiceUnavailable, httpx.CodeUnavailable, "lease service unavailable here; try again", ""}
	case errors.Is(err, ErrClosed):
		return answer{http.StatusServiceUnavailable, httpx.CodeUnavailable, "lease service is shutting down", ""}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// Over HTTP the client went away and nobody reads this; a frame
		// client reads it after cancelling a waiting acquire.
		return answer{http.StatusServiceUnavailable, httpx.CodeUnavailable, "request cancelled", ""}
	}
	return answer{http.StatusInternalServerError, httpx.CodeInternal, "internal error", ""}
}

// message is err's text without the package prefix, for clients.
func message(err error) string { return strings.TrimPrefix(err.Error(), "lease: ") }

func msDuration(ms int64) time.Duration {
	if ms < 0 || ms > int64(365*24*time.Hour/time.Millisecond) {
		return -1 // rejected by TTL validation
	}
	return time.Duration(ms) * time.Millisecond
}

func toJSON(g Grant, now time.Time) leaseJSON {
	return leaseJSON{File: g.Name, AgentID: g.Holder, Token: g.Token,
		ExpiresAt: g.ExpiresAt.UnixMilli(), RemainingMs: max(remainingMs(g.ExpiresAt.Sub(now)), 0)}
}

func (h *handler) acquire(w http.ResponseWriter, r *http.Request, x, agent string) error {
	var req acquireRequest
	if err := h.decode(w, r, &req); err != nil {
		return err
	}
	if req.AgentID != "" && req.AgentID != agent {
		return ErrForbidden
	}
	ctx := r.Context()
	if kw, ok := h.cfg.Auth.(keyWatcher); ok && req.WaitMs > 0 {
		key, _ := httpx.Bearer(r)
		revoked, stop := kw.WatchKey(x, key)
		defer stop()
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		go func() {
			select {
			case <-revoked:
				cancel(errRevoked)
			case <-ctx.Done():
			}
		}()
	}
	g, err := h.m.AcquireWait(ctx, x, agent, req.File, msDuration(req.TTLMs), msDuration(req.WaitMs))
	if cause := context.Cause(ctx); err != nil && errors.Is(cause, errRevoked) {
		return cause
	}
	if he, ok := errors.AsType[*HeldError](err); ok {
		now := h.m.cfg.Now()
		httpx.WriteJSON(w, http.StatusOK, acquireResponse{Acquired: false, File: he.Name, AgentID: he.Holder,
			ExpiresAt: he.ExpiresAt.UnixMilli(), RemainingMs: max(remainingMs(he.ExpiresAt.Sub(now)), 0)})
		return nil
	}
	if err != nil {
		return err
	}
	j := toJSON(g, h.m.cfg.Now())
	httpx.WriteJSON(w, http.StatusOK, acquireResponse{Acquired: true, File: j.File, AgentID: j.AgentID,
		Token: j.Token, ExpiresAt: j.ExpiresAt, RemainingMs: j.RemainingMs})
	return nil
}

func (h *handler) renew(w http.ResponseWriter, r *http.Request, x, agent string) error {
	var req renewRequest
	if err := h.decode(w, r, &req); err != nil {
		return err
	}
	g, err := h.m.Renew(r.Context(), x, agent, req.File, req.Token, msDuration(req.TTLMs))
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, renewResponse{Renewed: true, leaseJSON: toJSON(g, h.m.cfg.Now())})
	return nil
}

func (h *handler) release(w http.ResponseWriter, r *http.Request, x, agent string) error {
	var req releaseRequest
	if err := h.decode(w, r, &req); err != nil {
		return err
	}
	if req.AgentID != "" && req.AgentID != agent {
		return ErrForbidden
	}
	if err := h.m.Release(r.Context(), x, agent, req.File, req.Token); err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, releaseResponse{Released: true})
	return nil
}

func (h *handler) status(w http.ResponseWriter, r *http.Request, x, _ string) error {
	var req statusRequest
	if err := h.decode(w, r, &req); err != nil {
		return err
	}
	st, err := h.m.Status(r.Context(), x, req.File)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, st)
	return nil
}

func (h *handler) list(w http.ResponseWriter, r *http.Request, x, _ string) error {
	gs, err := h.m.List(r.Context(), x, r.URL.Query().Get("agent"))
	if err != nil {
		return err
	}
	now := h.m.cfg.Now()
	resp := listResponse{Leases: make([]leaseJSON, 0, len(gs))}
	for _, g := range gs {
		resp.Leases = append(resp.Leases, toJSON(g, now))
	}
	httpx.WriteJSON(w, http.StatusOK, resp)
	return nil
}

// releaseAll releases the caller's own leases. Releasing another agent's
// leases is left to in-process callers (Manager.ReleaseAll), which know
// when an agent has gone away.
func (h *handler) releaseAll(w http.ResponseWriter, r *http.Request, x, agent string) error {
	if _, err := httpx.ReadBody(w, r, h.cfg.MaxBodyBytes); err != nil {
		return err
	}
	n, err := h.m.ReleaseAll(r.Context(), x, agent)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, releaseAllResponse{Released: n})
	return nil
}

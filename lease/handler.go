package lease

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	json "github.com/goccy/go-json"
)

// Authenticator resolves an API key to the agent it belongs to in an
// exchange. It returns an error wrapping ErrUnauthorized for an unknown key
// and ErrForbidden for a key of another exchange.
type Authenticator interface {
	Authenticate(ctx context.Context, exchangeID, token string) (agentID string, err error)
}

// HandlerConfig configures NewHandler.
type HandlerConfig struct {
	// Auth authenticates every request. Required.
	Auth Authenticator
	// MaxBodyBytes caps request bodies. Zero means 64 KiB.
	MaxBodyBytes int64
	// Logger receives internal errors, which clients only see as a generic
	// 500. Nil discards them.
	Logger *slog.Logger
}

// Wire types of the HTTP API. Times are epoch milliseconds and durations
// milliseconds, as in the seed's LeaseStatus.
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
		File  string `json:"file"`
		Token uint64 `json:"token"`
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
	}
)

type handler struct {
	m   *Manager
	cfg HandlerConfig
	mux *http.ServeMux
}

// NewHandler serves the lease API for m under
// /api/v1/exchanges/{exchange_id}/leases/: POST acquire, renew, release,
// status and release-all, and GET list. It panics if cfg.Auth is nil.
func NewHandler(m *Manager, cfg HandlerConfig) http.Handler {
	if cfg.Auth == nil {
		panic("lease: HandlerConfig.Auth is required")
	}
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = 64 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	h := &handler{m: m, cfg: cfg, mux: http.NewServeMux()}
	const base = "/api/v1/exchanges/{exchange_id}/leases/"
	h.route(base+"acquire", http.MethodPost, h.acquire)
	h.route(base+"renew", http.MethodPost, h.renew)
	h.route(base+"release", http.MethodPost, h.release)
	h.route(base+"status", http.MethodPost, h.status)
	h.route(base+"list", http.MethodGet, h.list)
	h.route(base+"release-all", http.MethodPost, h.releaseAll)
	h.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "no such endpoint")
	})
	return h.mux
}

type opFunc func(w http.ResponseWriter, r *http.Request, exchangeID, agentID string) error

// route registers an endpoint that authenticates, then runs op and maps
// its error to a status in one place (writeErr).
func (h *handler) route(pattern, method string, op opFunc) {
	h.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			writeError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use "+method)
			return
		}
		x := r.PathValue("exchange_id")
		if err := ValidID(x); err != nil {
			writeError(w, http.StatusBadRequest, "invalid_exchange", "invalid exchange id")
			return
		}
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || tok == "" {
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing bearer token")
			return
		}
		agent, err := h.cfg.Auth.Authenticate(r.Context(), x, tok)
		if err == nil {
			err = ValidID(agent)
		}
		if err != nil {
			h.writeErr(w, r, err)
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, h.cfg.MaxBodyBytes)
		if err := op(w, r, x, agent); err != nil {
			h.writeErr(w, r, err)
		}
	})
}

// errBadJSON marks a body that could not be decoded.
var errBadJSON = errors.New("lease: malformed JSON body")

// bufs holds request and response buffers: a lease call reads and writes
// a few hundred bytes, and pooling them takes the allocation (and the GC
// work behind it) off every request.
var bufs = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// maxPooled keeps a rare large body from pinning its buffer in the pool.
const maxPooled = 16 << 10

func putBuf(b *bytes.Buffer) {
	if b.Cap() <= maxPooled {
		b.Reset()
		bufs.Put(b)
	}
}

func decode(r *http.Request, v any) error {
	buf := bufs.Get().(*bytes.Buffer)
	defer putBuf(buf)
	if _, err := buf.ReadFrom(r.Body); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return mbe
		}
		return errBadJSON
	}
	// The decoder copies what it keeps, so the buffer can go back to the pool.
	if json.Unmarshal(buf.Bytes(), v) != nil {
		return errBadJSON
	}
	return nil
}

func (h *handler) writeErr(w http.ResponseWriter, r *http.Request, err error) {
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", "request body too large")
	case errors.Is(err, errBadJSON):
		writeError(w, http.StatusBadRequest, "invalid_json", "malformed JSON body")
	case errors.Is(err, ErrUnauthorized):
		writeError(w, http.StatusUnauthorized, "unauthorized", "invalid API key")
	case errors.Is(err, ErrForbidden):
		writeError(w, http.StatusForbidden, "forbidden", "API key not valid for this exchange")
	case errors.Is(err, ErrInvalidName):
		writeError(w, http.StatusBadRequest, "invalid_name", message(err))
	case errors.Is(err, ErrInvalidTTL):
		writeError(w, http.StatusBadRequest, "invalid_ttl", message(err))
	case errors.Is(err, ErrInvalidID):
		writeError(w, http.StatusBadRequest, "invalid_id", message(err))
	case errors.Is(err, ErrInvalidToken):
		writeError(w, http.StatusBadRequest, "invalid_token", "token is required")
	case errors.Is(err, ErrStaleToken):
		writeError(w, http.StatusConflict, "stale_token", message(err))
	case errors.Is(err, ErrNotHeld):
		writeError(w, http.StatusConflict, "not_held", message(err))
	case errors.Is(err, ErrClosed):
		writeError(w, http.StatusServiceUnavailable, "unavailable", "lease service is shutting down")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// The client went away; nobody reads this.
		writeError(w, http.StatusServiceUnavailable, "cancelled", "request cancelled")
	default:
		h.cfg.Logger.Error("lease: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusInternalServerError, "internal", "internal error")
	}
}

// message is err's text without the package prefix, for clients.
func message(err error) string { return strings.TrimPrefix(err.Error(), "lease: ") }

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, errorResponse{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	buf := bufs.Get().(*bytes.Buffer)
	defer putBuf(buf)
	if err := json.NewEncoder(buf).Encode(v); err != nil {
		status = http.StatusInternalServerError
		buf.Reset()
		buf.WriteString(`{"error":"internal error","code":"internal"}` + "\n")
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

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
	if err := decode(r, &req); err != nil {
		return err
	}
	if req.AgentID != "" && req.AgentID != agent {
		return ErrForbidden
	}
	g, err := h.m.AcquireWait(r.Context(), x, agent, req.File, msDuration(req.TTLMs), msDuration(req.WaitMs))
	var he *HeldError
	if errors.As(err, &he) {
		now := h.m.cfg.Now()
		writeJSON(w, http.StatusOK, acquireResponse{Acquired: false, File: he.Name, AgentID: he.Holder,
			ExpiresAt: he.ExpiresAt.UnixMilli(), RemainingMs: max(remainingMs(he.ExpiresAt.Sub(now)), 0)})
		return nil
	}
	if err != nil {
		return err
	}
	j := toJSON(g, h.m.cfg.Now())
	writeJSON(w, http.StatusOK, acquireResponse{Acquired: true, File: j.File, AgentID: j.AgentID,
		Token: j.Token, ExpiresAt: j.ExpiresAt, RemainingMs: j.RemainingMs})
	return nil
}

func (h *handler) renew(w http.ResponseWriter, r *http.Request, x, agent string) error {
	var req renewRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	g, err := h.m.Renew(r.Context(), x, agent, req.File, req.Token, msDuration(req.TTLMs))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, renewResponse{Renewed: true, leaseJSON: toJSON(g, h.m.cfg.Now())})
	return nil
}

func (h *handler) release(w http.ResponseWriter, r *http.Request, x, agent string) error {
	var req releaseRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	ok, err := h.m.Release(r.Context(), x, agent, req.File, req.Token)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, releaseResponse{Released: ok})
	return nil
}

func (h *handler) status(w http.ResponseWriter, r *http.Request, x, _ string) error {
	var req statusRequest
	if err := decode(r, &req); err != nil {
		return err
	}
	st, err := h.m.Status(r.Context(), x, req.File)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, st)
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
	writeJSON(w, http.StatusOK, resp)
	return nil
}

// releaseAll releases the caller's own leases. Releasing another agent's
// leases is left to in-process callers (Manager.ReleaseAll), which know
// when an agent has gone away.
func (h *handler) releaseAll(w http.ResponseWriter, r *http.Request, x, agent string) error {
	if _, err := io.Copy(io.Discard, r.Body); err != nil {
		return err
	}
	n, err := h.m.ReleaseAll(r.Context(), x, agent)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, releaseAllResponse{Released: n})
	return nil
}

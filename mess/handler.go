package mess

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/storage"
)

// HandlerConfig configures NewHandler. Every zero field has the default
// named in its comment.
type HandlerConfig struct {
	// MaxBodyBytes caps request bodies. Zero means 10 MiB.
	MaxBodyBytes int64
	// Capabilities is the catalogue served at GET .../capabilities (see
	// LoadCapabilities). Nil serves an empty catalogue.
	Capabilities Catalogue
	// Logger receives errors clients only see as a generic 500. Zero means
	// slog.Default().
	Logger *slog.Logger
	// RegisterRate is how many registrations per minute one client address
	// (httpx.ClientAddr) may make without an invite or the registration
	// token, once its RegisterBurst is spent. Zero means 30; negative
	// means no limit.
	RegisterRate float64
	// RegisterBurst is how many such registrations an address may make at
	// once. Zero means 30.
	RegisterBurst int
	// TrustProxyHeaders counts registrations under the last address of
	// X-Forwarded-For instead of the connection's: set it only behind a
	// proxy that sets the header, or clients can pick their address.
	TrustProxyHeaders bool
	// StreamWriteTimeout is how long one write to an event stream may
	// take: a client that takes no data for that long is dropped, so it
	// cannot hold the stream's goroutine in Write. Zero means 30s.
	StreamWriteTimeout time.Duration
}

// apiBase is where every route of MESS protocol v1 lives.
const apiBase = "/api/v1/exchanges/{exchange_id}"

type handler struct {
	svc        *Service
	cfg        HandlerConfig
	registered *addrLimiter // nil: registrations are not limited
}

// NewHandler serves the HTTP API of MESS protocol v1 for svc under
// /api/v1/exchanges/{exchange_id}/: registration, requests (with long-polls
// and attachments), executors, the caller itself (GET /me), keys, invites
// (created, listed and revoked by the owner), the capability catalogue and
// the server-sent event stream. Every route but POST .../register needs
// "Authorization: Bearer <api key>". HEAD is answered on every GET route.
//
// Errors are JSON, {"error": message, "code": code} plus the Details of an
// *Error (the claimant's executor_id on a 409, say), with the codes of the
// module's one vocabulary: invalid_input and malformed_json (400),
// unauthorized (401), forbidden (403), not_found (404),
// method_not_allowed (405), conflict (409), too_large (413),
// unprocessable (422), rate_limited (429, with Retry-After), internal
// (500) and unavailable (503).
//
// Registrations that present neither a valid invite nor the registration
// token (those that create an exchange, or join an open one) are limited
// per client address by a token bucket (HandlerConfig.RegisterRate and
// RegisterBurst).
//
// Requests that wait (long-polls, the event stream) end when the request's
// context does, so a server that cancels its base context at shutdown ends
// them instead of waiting.
func NewHandler(svc *Service, cfg HandlerConfig) (http.Handler, error) {
	if svc == nil {
		return nil, errors.New("mess: NewHandler needs a Service")
	}
	if cfg.MaxBodyBytes < 0 {
		return nil, errors.New("mess: HandlerConfig.MaxBodyBytes must not be negative")
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = 10 << 20
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.StreamWriteTimeout < 0 {
		return nil, errors.New("mess: HandlerConfig.StreamWriteTimeout must not be negative")
	}
	if cfg.StreamWriteTimeout == 0 {
		cfg.StreamWriteTimeout = 30 * time.Second
	}
	if cfg.RegisterBurst < 0 {
		return nil, errors.New("mess: HandlerConfig.RegisterBurst must not be negative")
	}
	if cfg.RegisterRate == 0 {
		cfg.RegisterRate = 30
	}
	if cfg.RegisterBurst == 0 {
		cfg.RegisterBurst = 30
	}
	h := &handler{svc: svc, cfg: cfg}
	if cfg.RegisterRate > 0 {
		h.registered = newAddrLimiter(cfg.RegisterRate/60, cfg.RegisterBurst)
	}
	routes := []struct {
		method, path string
		fn           func(w http.ResponseWriter, r *http.Request, actor string) error
	}{
		{"GET", "/requests", h.listRequests},
		{"POST", "/requests", h.createRequest},
		{"GET", "/requests/{ref}", h.getRequest},
		{"PATCH", "/requests/{ref}", h.updateRequest},
		{"GET", "/requests/{ref}/attachments/{filename}", h.attachment},
		{"GET", "/me", h.whoAmI},
		{"GET", "/executors", h.listExecutors},
		{"GET", "/executors/{id}", h.getExecutor},
		{"PATCH", "/executors/{id}", h.updateExecutor},
		{"POST", "/executors/{id}/keys", h.createKey},
		{"DELETE", "/executors/{id}/keys/{key_id}", h.revokeKey},
		{"POST", "/invites", h.createInvite},
		{"GET", "/invites", h.listInvites},
		{"DELETE", "/invites/{id}", h.revokeInvite},
		{"GET", "/capabilities", h.capabilities},
		{"GET", "/events", h.events},
	}
	mux := http.NewServeMux()
	allowed := map[string][]string{apiBase + "/register": {"POST"}}
	mux.HandleFunc("POST "+apiBase+"/register", func(w http.ResponseWriter, r *http.Request) {
		err := checkText(r)
		if err == nil {
			err = h.register(w, r)
		}
		h.finish(w, r, err)
	})
	for _, rt := range routes {
		path := apiBase + rt.path
		allowed[path] = append(allowed[path], rt.method)
		mux.HandleFunc(rt.method+" "+path, h.authenticated(rt.fn))
	}
	// A known path asked with another method is a 405 in JSON; the
	// method-less pattern is less specific than the routes above.
	for path, methods := range allowed {
		if slices.Contains(methods, "GET") {
			methods = append(methods, "HEAD")
		}
		allow := strings.Join(methods, ", ")
		mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Allow", allow)
			httpx.WriteError(w, http.StatusMethodNotAllowed, httpx.CodeMethodNotAllowed, "method not allowed; use "+allow)
		})
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "Not found")
	})
	return mux, nil
}

// authenticated runs fn for the executor the request's key belongs to.
func (h *handler) authenticated(fn func(w http.ResponseWriter, r *http.Request, actor string) error) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key, _ := httpx.Bearer(r)
		actor, err := h.svc.Authenticate(r.Context(), r.PathValue("exchange_id"), key)
		if err == nil {
			err = checkText(r)
		}
		if err == nil {
			err = fn(w, r, actor)
		}
		h.finish(w, r, err)
	}
}

// finish answers err, if any, as a JSON error. It is the one place where
// the Service's errors become statuses.
func (h *handler) finish(w http.ResponseWriter, r *http.Request, err error) {
	if err == nil {
		return
	}
	if me, ok := errors.AsType[*Error](err); ok {
		status := statusOf(me.Kind)
		if secs, ok := me.Details["retry_after"].(int); ok {
			w.Header().Set("Retry-After", strconv.Itoa(secs))
		}
		httpx.WriteErrorDetails(w, status, httpx.Code(status), me.Message, me.Details)
		return
	}
	if he, ok := errors.AsType[*httpx.Error](err); ok {
		httpx.Write(w, he)
		return
	}
	status := statusOf(err)
	if status == http.StatusInternalServerError {
		h.cfg.Logger.Error("mess: request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		httpx.WriteError(w, status, httpx.CodeInternal, "internal error")
		return
	}
	httpx.WriteError(w, status, httpx.Code(status), http.StatusText(status))
}

// statusOf is the table from the Service's error kinds to HTTP statuses.
func statusOf(err error) int {
	switch {
	case errors.Is(err, ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, ErrConflict):
		return http.StatusConflict
	case errors.Is(err, ErrTooLarge):
		return http.StatusRequestEntityTooLarge
	case errors.Is(err, ErrUnprocessable):
		return http.StatusUnprocessableEntity
	case errors.Is(err, ErrRateLimited):
		return http.StatusTooManyRequests
	case errors.Is(err, ErrClosed), errors.Is(err, storage.ErrFenced), errors.Is(err, storage.ErrUnavailable),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// checkText refuses query parameters and the headers the exchange keeps or
// echoes (Idempotency-Key, Last-Event-ID) that are not UTF-8. Bodies are
// checked as they are read.
func checkText(r *http.Request) error {
	if r.URL.RawQuery != "" {
		for k, vs := range r.URL.Query() {
			if !utf8.ValidString(k) {
				return badRequest("query parameter names must be UTF-8")
			}
			for _, v := range vs {
				if !utf8.ValidString(v) {
					return badRequest("query parameter " + k + " must be UTF-8")
				}
			}
		}
	}
	for _, name := range []string{"Idempotency-Key", "Last-Event-ID"} {
		if !utf8.ValidString(r.Header.Get(name)) {
			return badRequest(name + " must be UTF-8")
		}
	}
	return nil
}

// badRequest is a 400 for a query parameter or header the handler parses.
func badRequest(msg string) error {
	return &httpx.Error{Status: http.StatusBadRequest, Code: httpx.CodeInvalid, Message: msg}
}

// decode reads a JSON body within the configured limit; an empty body
// leaves v as it is.
func (h *handler) decode(w http.ResponseWriter, r *http.Request, v any) error {
	return httpx.DecodeJSON(w, r, h.cfg.MaxBodyBytes, v)
}

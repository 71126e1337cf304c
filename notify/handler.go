package notify

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
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
	// Logger receives internal errors, which clients see only as a
	// generic 500. Nil means slog.Default().
	Logger *slog.Logger
}

type deliveriesResponse struct {
	ExecutorID string    `json:"executor_id"`
	Pending    []Pending `json:"pending"`
	Failures   []Failure `json:"failures"`
}

type testResponse struct {
	ExecutorID string       `json:"executor_id"`
	Channels   []TestResult `json:"channels"`
}

// NewHandler serves, for the calling executor only:
//
//	GET  /api/v1/exchanges/{exchange_id}/notifications/deliveries
//	POST /api/v1/exchanges/{exchange_id}/notifications/test
//
// The first lists its deliveries not yet sent and those recently given up
// (newest last). The second sends a test notification to each of its
// enabled channels through the outbox (Service.SendTest) and answers
// {"executor_id", "channels": [{"type", "destination", "status", "error"}]};
// 400 when it has no channels, 429 while its last test is still pending. Errors are {"error", "code"} in the codes
// of internal/httpx. It needs s and cfg.Auth.
func NewHandler(s *Service, cfg HandlerConfig) (http.Handler, error) {
	if s == nil || cfg.Auth == nil {
		return nil, errors.New("notify: NewHandler needs a Service and HandlerConfig.Auth")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/api/v1/exchanges/{exchange_id}/notifications/deliveries", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			httpx.WriteError(w, http.StatusMethodNotAllowed, httpx.CodeMethodNotAllowed, "use GET")
			return
		}
		x, agent, ok := authenticate(w, r, cfg)
		if !ok {
			return
		}
		if err := s.serving(r.Context(), x); err != nil {
			writeUnavailable(w, cfg, err)
			return
		}
		resp := deliveriesResponse{ExecutorID: agent, Pending: s.PendingFor(x, agent), Failures: s.Failures(x, agent)}
		if resp.Pending == nil {
			resp.Pending = []Pending{}
		}
		if resp.Failures == nil {
			resp.Failures = []Failure{}
		}
		httpx.WriteJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("/api/v1/exchanges/{exchange_id}/notifications/test", func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			w.Header().Set("Allow", "POST")
			httpx.WriteError(w, http.StatusMethodNotAllowed, httpx.CodeMethodNotAllowed, "use POST")
			return
		}
		x, agent, ok := authenticate(w, r, cfg)
		if !ok {
			return
		}
		res, err := s.SendTest(r.Context(), x, agent)
		switch {
		case err == nil:
			httpx.WriteJSON(w, http.StatusOK, testResponse{ExecutorID: agent, Channels: res})
		case errors.Is(err, ErrNoChannels):
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, "you have no notification channels: add one to your profile first")
		case errors.Is(err, ErrTestPending):
			w.Header().Set("Retry-After", "60")
			httpx.WriteErrorDetails(w, http.StatusTooManyRequests, httpx.CodeRateLimited, "your last test notification is still waiting to be sent; try again later", map[string]any{"retry_after": 60})
		case errors.Is(err, ErrInvalidConfig):
			httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, "your notification channels are not valid")
		case errors.Is(err, mess.ErrNotFound):
			httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "executor not found")
		default:
			writeUnavailable(w, cfg, err)
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		httpx.WriteError(w, http.StatusNotFound, httpx.CodeNotFound, "not found")
	})
	return mux, nil
}

// writeUnavailable answers for a service that cannot serve now: 503 when
// it is closed, another process owns the outbox, or the request was
// cancelled; 500 otherwise.
func writeUnavailable(w http.ResponseWriter, cfg HandlerConfig, err error) {
	switch {
	case errors.Is(err, ErrClosed), errors.Is(err, storage.ErrFenced),
		errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "notifications are not available now; try again")
	default:
		cfg.Logger.Error("notify: request failed", "err", err)
		httpx.WriteError(w, http.StatusInternalServerError, httpx.CodeInternal, "internal error")
	}
}

// authenticate answers the error itself when the request's key does not
// admit it to the exchange in its path.
func authenticate(w http.ResponseWriter, r *http.Request, cfg HandlerConfig) (exchangeID, agent string, ok bool) {
	x := r.PathValue("exchange_id")
	if !mess.ValidID(x) {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, "invalid exchange id")
		return "", "", false
	}
	key, ok := httpx.Bearer(r)
	if !ok {
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "missing API key")
		return "", "", false
	}
	agent, err := cfg.Auth.Authenticate(r.Context(), x, key)
	if err == nil && !mess.ValidID(agent) {
		err = fmt.Errorf("notify: the authenticator gave the invalid agent id %q", agent)
	}
	switch {
	case err == nil:
		return x, agent, true
	case errors.Is(err, ErrUnauthorized):
		httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "invalid API key")
	case errors.Is(err, ErrForbidden):
		httpx.WriteError(w, http.StatusForbidden, httpx.CodeForbidden, "API key not valid for this exchange")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		httpx.WriteError(w, http.StatusServiceUnavailable, httpx.CodeUnavailable, "request cancelled")
	default:
		cfg.Logger.Error("notify: authenticate", "err", err)
		httpx.WriteError(w, http.StatusInternalServerError, httpx.CodeInternal, "internal error")
	}
	return "", "", false
}

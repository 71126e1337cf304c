package notify

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"

	"github.com/meatspace-exchange/mess/mess"
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
	// Logger receives internal errors. Nil discards them.
	Logger *slog.Logger
}

type deliveriesResponse struct {
	ExecutorID string    `json:"executor_id"`
	Pending    []Pending `json:"pending"`
	Failures   []Failure `json:"failures"`
}

// NewHandler serves, for the calling executor only:
//
//	GET /api/v1/exchanges/{exchange_id}/notifications/deliveries
//
// its deliveries not yet sent and those recently given up (newest last).
func NewHandler(s *Service, cfg HandlerConfig) http.Handler {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/exchanges/{exchange_id}/notifications/deliveries", func(w http.ResponseWriter, r *http.Request) {
		x := r.PathValue("exchange_id")
		if !mess.ValidID(x) {
			writeError(w, http.StatusBadRequest, "invalid_id", "invalid exchange id")
			return
		}
		token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || token == "" {
			writeError(w, http.StatusUnauthorized, "unauthorized", "missing API key")
			return
		}
		agent, err := cfg.Auth.Authenticate(r.Context(), x, strings.TrimSpace(token))
		switch {
		case err == nil:
		case errors.Is(err, ErrUnauthorized):
			writeError(w, http.StatusUnauthorized, "unauthorized", "invalid API key")
			return
		case errors.Is(err, ErrForbidden):
			writeError(w, http.StatusForbidden, "forbidden", "API key not valid for this exchange")
			return
		default:
			cfg.Logger.Error("notify: authenticate", "err", err)
			writeError(w, http.StatusInternalServerError, "internal", "internal error")
			return
		}
		resp := deliveriesResponse{ExecutorID: agent, Pending: s.PendingFor(x, agent), Failures: s.Failures(x, agent)}
		if resp.Pending == nil {
			resp.Pending = []Pending{}
		}
		if resp.Failures == nil {
			resp.Failures = []Failure{}
		}
		writeJSON(w, http.StatusOK, resp)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "not_found", "not found")
	})
	return mux
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, map[string]string{"error": msg, "code": code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal error","code":"internal"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}

package main

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
)

// setupNotify delivers notifications and hooks for svc's events through a
// durable outbox in store, and serves each executor its delivery state at
// GET /api/v1/exchanges/:exchange_id/notifications/deliveries, and sends a test
// to the caller's channels at POST .../notifications/test. Settings:
//
//	NOTIFY_ALLOW_LOOPBACK        allow deliveries to 127.0.0.0/8 and ::1 (default false)
//	NOTIFY_ALLOW_PRIVATE         allow private, link-local and metadata addresses (default false)
//	NOTIFY_TIMEOUT               one HTTP request's time limit (default 10s)
//	NOTIFY_MAX_ATTEMPTS          attempts before a delivery is given up (default 8)
//	NOTIFY_BASE_BACKOFF          wait after the first failure, doubled per failure (default 1s)
//	NOTIFY_MAX_BACKOFF           longest wait between attempts (default 5m)
//	NOTIFY_WORKERS               deliveries sent at once (default 8)
//	NOTIFY_NTFY_SERVER           default ntfy server (default https://ntfy.sh)
//	NOTIFY_PUBLIC_URL            public base URL for click links to threads (default none)
//	NOTIFY_SIGNING_SECRET        HMAC key for webhooks without their own "secret" (default none)
//	NOTIFY_SLACK_INTERVAL        least time between posts to one Slack webhook (default 1s)
//	NOTIFY_GOOGLE_CHAT_INTERVAL  least time between posts to one Google Chat webhook (default 1s)
//	NOTIFY_IFTTT_URL, NOTIFY_TODOIST_URL, NOTIFY_LINEAR_URL,
//	NOTIFY_GOOGLE_TASKS_URL, NOTIFY_GOOGLE_OAUTH_URL
//	                             third-party API endpoints (default the public services)
func setupNotify(e *echo.Echo, store storage.Store, fence storage.Fence, svc *mess.Service, auth notify.Authenticator, getenv func(string) string, logger *slog.Logger, started **notify.Service) (closeFn func(context.Context) error, err error) {
	cfg := notify.Config{Source: svc, Store: store, Fence: fence, Logger: logger}
	if cfg.Policy, err = notifyPolicy(getenv); err != nil {
		return nil, err
	}
	env := envReader{getenv: getenv}
	cfg.Timeout = env.duration("NOTIFY_TIMEOUT", 0, false)
	cfg.BaseBackoff = env.duration("NOTIFY_BASE_BACKOFF", 0, false)
	cfg.MaxBackoff = env.duration("NOTIFY_MAX_BACKOFF", 0, false)
	cfg.SlackInterval = env.duration("NOTIFY_SLACK_INTERVAL", 0, false)
	cfg.GoogleChatInterval = env.duration("NOTIFY_GOOGLE_CHAT_INTERVAL", 0, false)
	cfg.MaxAttempts = int(env.integer("NOTIFY_MAX_ATTEMPTS", 0, false))
	cfg.Workers = int(env.integer("NOTIFY_WORKERS", 0, false))
	if env.err != nil {
		return nil, env.err
	}
	for _, s := range []struct {
		env string
		dst *string
	}{
		{"NOTIFY_NTFY_SERVER", &cfg.NtfyServer},
		{"NOTIFY_PUBLIC_URL", &cfg.PublicURL},
		{"NOTIFY_SIGNING_SECRET", &cfg.SigningSecret},
		{"NOTIFY_IFTTT_URL", &cfg.Endpoints.IFTTT},
		{"NOTIFY_TODOIST_URL", &cfg.Endpoints.Todoist},
		{"NOTIFY_LINEAR_URL", &cfg.Endpoints.Linear},
		{"NOTIFY_GOOGLE_TASKS_URL", &cfg.Endpoints.GoogleTasks},
		{"NOTIFY_GOOGLE_OAUTH_URL", &cfg.Endpoints.GoogleOAuth},
	} {
		*s.dst = getenv(s.env)
	}
	start := time.Now()
	n, err := notify.New(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	logger.Info("notification outbox restored", "pending", n.Stats().Pending, "took", time.Since(start).Round(time.Millisecond))
	h, err := notify.NewHandler(n, notify.HandlerConfig{Auth: auth, Logger: logger})
	if err != nil {
		return nil, errors.Join(err, n.Close(context.Background()))
	}
	e.Any("/api/v1/exchanges/:exchange_id/notifications/*", echo.WrapHandler(h))
	*started = n
	return n.Close, nil
}

// notifyPolicy reads which address ranges notifications may reach.
func notifyPolicy(getenv func(string) string) (notify.AddressPolicy, error) {
	env := envReader{getenv: getenv}
	p := notify.AddressPolicy{
		AllowLoopback: env.boolean("NOTIFY_ALLOW_LOOPBACK", false),
		AllowPrivate:  env.boolean("NOTIFY_ALLOW_PRIVATE", false),
	}
	return p, env.err
}

// profileValidator checks notification and hook configs when a profile is
// saved, so a bad URL or an unknown channel is a 400, not a failed delivery.
func profileValidator(getenv func(string) string) (func(notifications, hooks, preferences json.RawMessage) error, error) {
	policy, err := notifyPolicy(getenv)
	if err != nil {
		return nil, err
	}
	return notify.Config{Policy: policy}.ValidateProfile, nil
}

package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/storage"
)

// setupLease serves the lease API from store. Settings (Go durations):
//
//	LEASE_MIN_TTL           shortest TTL accepted (default 100ms)
//	LEASE_MAX_TTL           longest TTL accepted (default 1h)
//	LEASE_MAX_WAIT          longest blocking acquire (default 1m)
//	LEASE_COMPACT_INTERVAL  how often the journal is folded into a
//	                        snapshot (default 30s; negative disables)
//	LEASE_MAX_BODY_BYTES    request body limit in bytes (default 65536)
func setupLease(e *echo.Echo, store storage.Store, fence storage.Fence, auth lease.Authenticator, getenv func(string) string, logger *slog.Logger, started **lease.Manager) (closeFn func(context.Context) error, err error) {
	env := envReader{getenv: getenv}
	cfg := lease.Config{
		MinTTL:          env.duration("LEASE_MIN_TTL", 0, false),
		MaxTTL:          env.duration("LEASE_MAX_TTL", 0, false),
		MaxWait:         env.duration("LEASE_MAX_WAIT", 0, false),
		CompactInterval: env.duration("LEASE_COMPACT_INTERVAL", 0, negativeDisables),
	}
	maxBody := env.integer("LEASE_MAX_BODY_BYTES", 0, false)
	if env.err != nil {
		return nil, env.err
	}
	cfg.Store, cfg.Fence = store, fence
	cfg.Logger = logger
	start := time.Now()
	m, err := lease.New(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	logger.Info("lease state restored", "took", time.Since(start).Round(time.Millisecond))
	*started = m
	h, err := lease.NewHandler(m, lease.HandlerConfig{Auth: auth, MaxBodyBytes: maxBody, Logger: logger})
	if err != nil {
		return nil, errors.Join(err, m.Close(context.Background()))
	}
	e.Any("/api/v1/exchanges/:exchange_id/leases/*", echo.WrapHandler(h))
	return m.Close, nil
}

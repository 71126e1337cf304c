package main

import (
	"fmt"
	"log/slog"
	"strconv"
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
func setupLease(e *echo.Echo, store storage.Store, auth lease.Authenticator, getenv func(string) string, logger *slog.Logger) (m *lease.Manager, err error) {
	var cfg lease.Config
	for _, d := range []struct {
		env string
		dst *time.Duration
	}{
		{"LEASE_MIN_TTL", &cfg.MinTTL},
		{"LEASE_MAX_TTL", &cfg.MaxTTL},
		{"LEASE_MAX_WAIT", &cfg.MaxWait},
		{"LEASE_COMPACT_INTERVAL", &cfg.CompactInterval},
	} {
		if v := getenv(d.env); v != "" {
			if *d.dst, err = time.ParseDuration(v); err != nil {
				return nil, fmt.Errorf("%s: %w", d.env, err)
			}
		}
	}
	var maxBody int64
	if v := getenv("LEASE_MAX_BODY_BYTES"); v != "" {
		if maxBody, err = strconv.ParseInt(v, 10, 64); err != nil || maxBody <= 0 {
			return nil, fmt.Errorf("LEASE_MAX_BODY_BYTES: want a positive integer, got %q", v)
		}
	}
	cfg.Store = store
	cfg.Logger = logger
	start := time.Now()
	m, err = lease.New(cfg)
	if err != nil {
		return nil, err
	}
	logger.Info("lease state restored", "took", time.Since(start).Round(time.Millisecond))
	h := lease.NewHandler(m, lease.HandlerConfig{Auth: auth, MaxBodyBytes: maxBody, Logger: logger})
	e.Any("/api/v1/exchanges/:exchange_id/leases/*", echo.WrapHandler(h))
	return m, nil
}

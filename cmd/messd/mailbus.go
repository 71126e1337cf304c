package main

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/storage"
)

// setupMailbus serves the mail bus from store. Settings:
//
//	MAILBUS_RETENTION_AGE       drop stored mail older than this (Go duration, default 168h)
//	MAILBUS_RETENTION_COUNT     messages kept per agent inbox (default 10000)
//	MAILBUS_VISIBILITY_TIMEOUT  redeliver unacknowledged ackRequired mail after this (default 30s)
//	MAILBUS_PRESENCE_TIMEOUT    an agent is offline this long after its last heartbeat (default 90s)
//	MAILBUS_PING_INTERVAL       WebSocket ping period (default 30s)
//	MAILBUS_PONG_TIMEOUT        how long a ping waits for its pong (default: the ping period)
//	MAILBUS_SNAPSHOT_EVERY      journal records between snapshots (default 200000; negative disables)
//	MAILBUS_MAX_BODY_BYTES      request body and frame limit in bytes (default 1048576)
//	MAILBUS_ORIGINS             extra browser origins allowed on the WebSocket, comma-separated
//
// Besides its own API it serves the worker API of Jetpack's HttpMailBus
// (/api/mail/...), whose requests carry only an executor key: the exchange
// is the one the key was issued in, and leases come from leases.
func setupMailbus(e *echo.Echo, store storage.Store, auth mailbus.Authenticator, leases *lease.Manager, getenv func(string) string, logger *slog.Logger) (closeFn func(context.Context) error, err error) {
	cfg := mailbus.Config{Store: store, Logger: logger}
	hcfg := mailbus.HandlerConfig{Auth: auth, Logger: logger, KeyExchange: keyExchange}
	if leases != nil {
		hcfg.Leaser = func(exchangeID, agentID string) mailbus.Leaser {
			return mailbus.ManagerLeaser(leases, exchangeID, agentID)
		}
	}
	if d, ok := auth.(mailbus.Directory); ok {
		cfg.Directory = d
	}
	for _, d := range []struct {
		env string
		dst *time.Duration
	}{
		{"MAILBUS_RETENTION_AGE", &cfg.RetentionAge},
		{"MAILBUS_VISIBILITY_TIMEOUT", &cfg.VisibilityTimeout},
		{"MAILBUS_PRESENCE_TIMEOUT", &cfg.PresenceTimeout},
		{"MAILBUS_PING_INTERVAL", &hcfg.PingInterval},
		{"MAILBUS_PONG_TIMEOUT", &hcfg.PongTimeout},
	} {
		if v := getenv(d.env); v != "" {
			if *d.dst, err = time.ParseDuration(v); err != nil || *d.dst <= 0 {
				return nil, fmt.Errorf("%s: want a positive Go duration, got %q", d.env, v)
			}
		}
	}
	for _, d := range []struct {
		env string
		dst func(int64)
	}{
		{"MAILBUS_RETENTION_COUNT", func(n int64) { cfg.RetentionCount = int(n) }},
		{"MAILBUS_SNAPSHOT_EVERY", func(n int64) { cfg.SnapshotEvery = int(n) }},
		{"MAILBUS_MAX_BODY_BYTES", func(n int64) { hcfg.MaxBodyBytes = n }},
	} {
		if v := getenv(d.env); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n == 0 || (n < 0 && d.env != "MAILBUS_SNAPSHOT_EVERY") {
				return nil, fmt.Errorf("%s: want a positive integer, got %q", d.env, v)
			}
			d.dst(n)
		}
	}
	if v := getenv("MAILBUS_ORIGINS"); v != "" {
		hcfg.OriginPatterns = strings.Split(v, ",")
	}
	bus, err := mailbus.New(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	h, err := mailbus.NewHandler(bus, hcfg)
	if err != nil {
		bus.Close(context.Background())
		return nil, err
	}
	e.Any("/api/v1/exchanges/:exchange_id/mailbus/*", echo.WrapHandler(h))
	e.Any("/api/mail/*", echo.WrapHandler(h))
	return bus.Close, nil
}

// keyExchange reads the exchange from an executor API key,
// mess_{exchange}_{32 hex}. Exchange ids may hold '_', so it is everything
// between the leading "mess_" and the last '_'.
func keyExchange(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, "mess_")
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '_')
	if i <= 0 {
		return "", false
	}
	return rest[:i], true
}

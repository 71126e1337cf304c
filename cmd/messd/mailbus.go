package main

import (
	"context"
	"log/slog"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

// setupMailbus serves the mail bus from store. Settings:
//
//	MAILBUS_RETENTION_AGE       drop stored mail older than this (Go duration, default 168h)
//	MAILBUS_RETENTION_COUNT     messages kept per agent inbox (default 10000)
//	MAILBUS_RETENTION_BYTES     bytes of messages kept per agent inbox (default 67108864)
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
// is the one the key was issued in, and leases come from leases, which
// also serves lease frames on the mail bus WebSocket.
func setupMailbus(e *echo.Echo, store storage.Store, fence storage.Fence, auth mailbus.Authenticator, leases *lease.Manager, getenv func(string) string, logger *slog.Logger, started **mailbus.Bus) (closeFn func(context.Context) error, err error) {
	cfg := mailbus.Config{Store: store, Fence: fence, Logger: logger}
	hcfg := mailbus.HandlerConfig{Auth: auth, Logger: logger, KeyExchange: mess.KeyExchange}
	if leases != nil {
		hcfg.Leaser = func(exchangeID, agentID string) mailbus.Leaser {
			return mailbus.ManagerLeaser(leases, exchangeID, agentID)
		}
		hcfg.Leases = leases // lease frames on the mail bus WebSocket
	}
	if d, ok := auth.(mailbus.Directory); ok {
		cfg.Directory = d
	}
	env := envReader{getenv: getenv}
	cfg.RetentionAge = env.duration("MAILBUS_RETENTION_AGE", 0, false)
	cfg.VisibilityTimeout = env.duration("MAILBUS_VISIBILITY_TIMEOUT", 0, false)
	cfg.PresenceTimeout = env.duration("MAILBUS_PRESENCE_TIMEOUT", 0, false)
	hcfg.PingInterval = env.duration("MAILBUS_PING_INTERVAL", 0, false)
	hcfg.PongTimeout = env.duration("MAILBUS_PONG_TIMEOUT", 0, false)
	cfg.RetentionCount = int(env.integer("MAILBUS_RETENTION_COUNT", 0, false))
	cfg.RetentionBytes = env.integer("MAILBUS_RETENTION_BYTES", 0, false)
	cfg.SnapshotEvery = int(env.integer("MAILBUS_SNAPSHOT_EVERY", 0, negativeDisables))
	hcfg.MaxBodyBytes = env.integer("MAILBUS_MAX_BODY_BYTES", 0, false)
	if env.err != nil {
		return nil, env.err
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
	*started = bus
	e.Any("/api/mail/*", echo.WrapHandler(h))
	return bus.Close, nil
}

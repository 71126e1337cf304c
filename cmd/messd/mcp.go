package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mcpserver"
	"github.com/meatspace-exchange/mess/mess"
)

// setupMCP serves the exchange, the mail bus and the leases as MCP tools at
// /mcp (Streamable HTTP). Settings (Go durations):
//
//	MCP_MAX_WAIT             longest wait_for_change or waiting acquire (default 2m)
//	MCP_SESSION_TIMEOUT      an idle MCP session is closed after this (default 30m)
//	MCP_INBOX_POLL_INTERVAL  how often subscribed inboxes are checked for
//	                         mail sent outside MCP (default 1s)
//
// Unless GOGC is set, it also raises the garbage collector's target to 400%:
// the MCP SDK decodes every JSON message through a fresh 32 KiB buffer, so
// under MCP load the default target had the collector running a hundred
// times a second and halved the tool calls served (docs/mcp.md). The cost
// is a heap that may grow to five times the live data instead of twice.
func setupMCP(e *echo.Echo, svc *mess.Service, bus *mailbus.Bus, leases *lease.Manager, getenv func(string) string, logger *slog.Logger) (func(context.Context) error, error) {
	cfg := mcpserver.Config{Exchange: svc, Bus: bus, Leases: leases, Logger: logger}
	for _, d := range []struct {
		env string
		dst *time.Duration
	}{
		{"MCP_MAX_WAIT", &cfg.MaxWait},
		{"MCP_SESSION_TIMEOUT", &cfg.SessionTimeout},
		{"MCP_INBOX_POLL_INTERVAL", &cfg.InboxPollInterval},
	} {
		if v := getenv(d.env); v != "" {
			var err error
			if *d.dst, err = time.ParseDuration(v); err != nil || *d.dst <= 0 {
				return nil, fmt.Errorf("%s: want a positive Go duration, got %q", d.env, v)
			}
		}
	}
	srv, err := mcpserver.New(cfg)
	if err != nil {
		return nil, err
	}
	if getenv("GOGC") == "" {
		debug.SetGCPercent(400)
		logger.Debug("GC target raised to 400% for MCP; set GOGC to choose another")
	}
	e.Any("/mcp", echo.WrapHandler(srv))
	return srv.Close, nil
}

package main

import (
	"context"
	"log/slog"

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
// The MCP SDK allocates a fresh buffer for every message it decodes, so a
// server under MCP load runs the collector often; GOGC=400 roughly doubles
// the tool calls served at the cost of a larger heap (docs/mcp.md).
func setupMCP(e *echo.Echo, svc *mess.Service, bus *mailbus.Bus, leases *lease.Manager, getenv func(string) string, logger *slog.Logger) (func(context.Context) error, error) {
	cfg := mcpserver.Config{Exchange: svc, Bus: bus, Leases: leases, Logger: logger}
	env := envReader{getenv: getenv}
	cfg.MaxWait = env.duration("MCP_MAX_WAIT", 0, false)
	cfg.SessionTimeout = env.duration("MCP_SESSION_TIMEOUT", 0, false)
	cfg.InboxPollInterval = env.duration("MCP_INBOX_POLL_INTERVAL", 0, false)
	if env.err != nil {
		return nil, env.err
	}
	srv, err := mcpserver.New(cfg)
	if err != nil {
		return nil, err
	}
	e.Any("/mcp", echo.WrapHandler(srv))
	return srv.Close, nil
}

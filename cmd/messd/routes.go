package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/webapp"
)

// corsSkipper lets requests without an Origin header (agents, scripts: not
// browsers) bypass the CORS middleware when every origin is allowed. Such a
// response does not vary by origin, so it needs no "Vary: Origin", and the
// middleware's per-request header work is saved on the API's hot paths.
// With a list of origins the middleware always runs: a cache must not
// serve a response made for no origin to a browser.
func corsSkipper(origins []string) middleware.Skipper {
	if len(origins) != 1 || origins[0] != "*" {
		return middleware.DefaultSkipper
	}
	return func(c echo.Context) bool {
		r := c.Request()
		return r.Method != http.MethodOptions && r.Header.Get(echo.HeaderOrigin) == ""
	}
}

// newServer mounts the services' handlers on echo. It returns the Close
// functions of the services it started, to be called in reverse order at
// shutdown.
func newServer(c config, svc *mess.Service, caps mess.Catalogue, store storage.Store, fence storage.Fence, logger *slog.Logger, getenv func(string) string) (*echo.Echo, []func(context.Context) error, error) {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(logger)
	met := newMetrics()
	e.Use(met.middleware)
	e.Use(middleware.Recover())
	if fence != nil {
		e.Use(fenceGate(fence))
	}
	e.Use(middleware.CORSWithConfig(middleware.CORSConfig{
		Skipper:       corsSkipper(c.corsOrigins),
		AllowOrigins:  c.corsOrigins,
		AllowMethods:  []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete, http.MethodOptions},
		AllowHeaders:  []string{"Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "If-Match", "Mcp-Session-Id", "Mcp-Protocol-Version"},
		ExposeHeaders: []string{"Idempotent-Replayed", "ETag", "Mcp-Session-Id"},
	}))

	bi := readBuildInfo()
	health := map[string]string{"status": "ok", "service": "mess-exchange", "storage": c.storageType, "mode": "event-sourced", "role": "writer",
		"version": bi.Version, "revision": bi.Revision, "go_version": bi.GoVersion}
	e.Match([]string{http.MethodGet, http.MethodHead}, "/health", func(ec echo.Context) error {
		return ec.JSON(http.StatusOK, health)
	})
	// Ready only once serving: a starting process or a standby answers 503
	// (see handoff), so a load balancer sends it nothing.
	e.Match([]string{http.MethodGet, http.MethodHead}, "/ready", func(ec echo.Context) error {
		if fence != nil && fence.Valid() != nil {
			return ec.JSON(http.StatusServiceUnavailable, map[string]string{"status": "not ready", "role": "replaced"})
		}
		return ec.JSON(http.StatusOK, map[string]string{"status": "ready", "role": "writer"})
	})
	exchange, err := mess.NewHandler(svc, mess.HandlerConfig{
		MaxBodyBytes:       c.maxBody,
		Capabilities:       caps,
		Logger:             logger,
		StreamWriteTimeout: c.writeTimeout,
		RegisterRate:       float64(c.registerRate),
		RegisterBurst:      c.registerBurst,
		TrustProxyHeaders:  c.trustProxy,
	})
	if err != nil {
		return nil, nil, err
	}
	e.Any("/api/v1/exchanges/:exchange_id/*", echo.WrapHandler(exchange))
	e.Match([]string{http.MethodGet, http.MethodHead}, "/*", echo.WrapHandler(webapp.Handler())) // the web app for people; API routes are more specific

	// The other services, in start order; they are closed in reverse.
	setupAdmin(e, svc, c.adminToken, logger)
	var leases *lease.Manager
	var bus *mailbus.Bus
	var outbox *notify.Service
	mounts := []func() (func(context.Context) error, error){
		func() (func(context.Context) error, error) {
			return setupLease(e, store, fence, mess.Authenticator(svc, lease.ErrUnauthorized, lease.ErrForbidden), getenv, logger, &leases)
		},
		func() (func(context.Context) error, error) {
			return setupMailbus(e, store, fence, mess.Authenticator(svc, mailbus.ErrUnauthorized, mailbus.ErrForbidden), leases, getenv, logger, &bus)
		},
		func() (func(context.Context) error, error) {
			return setupNotify(e, store, fence, svc, mess.Authenticator(svc, notify.ErrUnauthorized, notify.ErrForbidden), getenv, logger, &outbox)
		},
		func() (func(context.Context) error, error) { return setupMCP(e, svc, bus, leases, getenv, logger) },
	}
	var closers []func(context.Context) error
	for _, mount := range mounts {
		closeFn, err := mount()
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i](context.Background())
			}
			return nil, nil, err
		}
		closers = append(closers, closeFn)
	}
	met.addLeases(leases)
	met.addBus(bus)
	met.addNotify(outbox)
	if c.metricsAddr == "" {
		e.GET("/metrics", echo.WrapHandler(met.handler()))
	} else {
		closeFn, err := met.serve(c.metricsAddr, logger)
		if err != nil {
			for i := len(closers) - 1; i >= 0; i-- {
				closers[i](context.Background())
			}
			return nil, nil, err
		}
		closers = append(closers, closeFn)
	}
	return e, closers, nil
}

// errorHandler answers what echo itself refuses (an unknown path, a body
// over the limit, a recovered panic) in the services' JSON error shape.
func errorHandler(logger *slog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		status, msg := http.StatusInternalServerError, "internal error"
		if he, ok := errors.AsType[*echo.HTTPError](err); ok && he.Code < 500 {
			status, msg = he.Code, fmt.Sprint(he.Message)
			switch status {
			case http.StatusNotFound:
				msg = "Not found"
			case http.StatusRequestEntityTooLarge:
				msg = "request body too large"
			}
		} else {
			logger.Error("request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "err", err)
		}
		httpx.WriteError(c.Response(), status, httpx.Code(status), msg)
	}
}

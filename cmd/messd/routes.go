package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/labstack/echo/v4/middleware"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
)

const apiBase = "/api/v1/exchanges/:exchange_id"

type handlers struct {
	svc    *mess.Service
	log    *slog.Logger
	capDir string
}

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

// newServer wires the services to routes. It returns the Close functions of
// the services it started, to be called in reverse order at shutdown.
func newServer(c config, svc *mess.Service, store storage.Store, logger *slog.Logger, getenv func(string) string) (*echo.Echo, []func(context.Context) error, error) {
	e := echo.New()
	e.HideBanner, e.HidePort = true, true
	e.HTTPErrorHandler = errorHandler(logger)
	e.JSONSerializer = jsonSerializer{}
	e.Use(middleware.Recover())
	e.Use(middleware.CORSWithConfig(middleware.CORSConfig{
		Skipper:       corsSkipper(c.corsOrigins),
		AllowOrigins:  c.corsOrigins,
		AllowMethods:  []string{http.MethodGet, http.MethodPost, http.MethodPatch, http.MethodDelete, http.MethodOptions},
		AllowHeaders:  []string{"Authorization", "Content-Type", "Idempotency-Key", "Last-Event-ID", "If-Match"},
		ExposeHeaders: []string{"Idempotent-Replayed", "ETag"},
	}))
	e.Use(middleware.BodyLimit(strconv.FormatInt(c.maxBody, 10)))

	h := &handlers{svc: svc, log: logger, capDir: c.capabilitiesDir}
	e.GET("/health", h.health)
	e.POST(apiBase+"/register", h.register)
	g := e.Group(apiBase, h.authenticate)
	g.GET("/requests", h.listRequests)
	g.POST("/requests", h.createRequest)
	g.GET("/requests/:ref", h.getRequest)
	g.PATCH("/requests/:ref", h.updateRequest)
	g.GET("/requests/:ref/attachments/:filename", h.attachment)
	g.GET("/executors", h.listExecutors)
	g.GET("/executors/:id", h.getExecutor)
	g.PATCH("/executors/:id", h.updateExecutor)
	g.POST("/executors/:id/keys", h.createKey)
	g.DELETE("/executors/:id/keys/:key_id", h.revokeKey)
	g.POST("/invites", h.createInvite)
	g.GET("/capabilities", h.capabilities)
	g.GET("/events", h.events)

	// The other services, in start order; they are closed in reverse.
	var leases *lease.Manager // the mail bus's worker API serves leases too
	mounts := []func() (func(context.Context) error, error){
		func() (func(context.Context) error, error) {
			m, err := setupLease(e, store, executorAuth{svc, lease.ErrUnauthorized, lease.ErrForbidden}, getenv, logger)
			if err != nil {
				return nil, err
			}
			leases = m
			return m.Close, nil
		},
		func() (func(context.Context) error, error) {
			return setupMailbus(e, store, executorAuth{svc, mailbus.ErrUnauthorized, mailbus.ErrForbidden}, leases, getenv, logger)
		},
		func() (func(context.Context) error, error) {
			return setupNotify(e, store, svc, executorAuth{svc, notify.ErrUnauthorized, notify.ErrForbidden}, getenv, logger)
		},
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
	return e, closers, nil
}

// executorAuth lets another service accept the exchange's executor API
// keys, wrapping the exchange's auth errors in that service's sentinels. It
// is also the mail bus's Directory: mail to a non-executor is refused.
type executorAuth struct {
	svc                     *mess.Service
	unauthorized, forbidden error
}

func (a executorAuth) Authenticate(ctx context.Context, exchangeID, token string) (string, error) {
	id, err := a.svc.Authenticate(ctx, exchangeID, token)
	switch {
	case errors.Is(err, mess.ErrUnauthorized):
		return "", fmt.Errorf("%w: %w", a.unauthorized, err)
	case errors.Is(err, mess.ErrForbidden):
		return "", fmt.Errorf("%w: %w", a.forbidden, err)
	}
	return id, err
}

func (a executorAuth) IsAgent(ctx context.Context, exchangeID, agentID string) (bool, error) {
	_, ok := a.svc.ExecutorConfig(exchangeID, agentID)
	return ok, nil
}

func (h *handlers) health(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok", "service": "mess-exchange", "storage": "filesystem", "mode": "event-sourced"})
}

// bearer returns the API key of the request, accepting any case of "Bearer".
func bearer(r *http.Request) string {
	auth := r.Header.Get("Authorization")
	if len(auth) > 7 && strings.EqualFold(auth[:7], "bearer ") {
		return strings.TrimSpace(auth[7:])
	}
	return ""
}

func (h *handlers) authenticate(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		id, err := h.svc.Authenticate(c.Request().Context(), c.Param("exchange_id"), bearer(c.Request()))
		if err != nil {
			return err
		}
		c.Set("executor", id)
		return next(c)
	}
}

func actor(c echo.Context) string { s, _ := c.Get("executor").(string); return s }

// bind decodes a JSON body strictly enough to report malformed input as 400.
func bind(c echo.Context, v any) error {
	body, err := io.ReadAll(c.Request().Body)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return echo.NewHTTPError(http.StatusRequestEntityTooLarge, "request body too large")
		}
		return echo.NewHTTPError(http.StatusBadRequest, "could not read request body")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil
	}
	if err := json.Unmarshal(body, v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf("malformed JSON at byte %d", se.Offset))
		case errors.As(err, &te):
			return echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf("field %s must be %s", te.Field, te.Type))
		default:
			return echo.NewHTTPError(http.StatusBadRequest, "malformed JSON: "+err.Error())
		}
	}
	return nil
}

func (h *handlers) register(c echo.Context) error {
	var r mess.Registration
	if err := bind(c, &r); err != nil {
		return err
	}
	res, err := h.svc.Register(c.Request().Context(), c.Param("exchange_id"), r)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, res)
}

func (h *handlers) createRequest(c echo.Context) error {
	var req mess.Request
	if err := bind(c, &req); err != nil {
		return err
	}
	res, err := h.svc.CreateRequest(c.Request().Context(), c.Param("exchange_id"), actor(c), req, c.Request().Header.Get("Idempotency-Key"))
	if err != nil {
		return err
	}
	if res.Replayed {
		c.Response().Header().Set("Idempotent-Replayed", "true")
	}
	return c.JSON(http.StatusCreated, res)
}

// waitParam parses ?wait= as seconds or a Go duration, capped at two minutes.
func waitParam(c echo.Context) (time.Duration, error) {
	v := c.QueryParam("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, err2 := strconv.ParseFloat(v, 64)
		if err2 != nil || secs < 0 {
			return 0, echo.NewHTTPError(http.StatusBadRequest, "wait must be seconds or a duration such as 30s")
		}
		d = time.Duration(secs * float64(time.Second))
	}
	return min(max(d, 0), 2*time.Minute), nil
}

func (h *handlers) listRequests(c echo.Context) error {
	q := c.QueryParams()
	opts := mess.ListOptions{
		ExecutorID:  q.Get("executor_id"),
		RequestorID: q.Get("requestor_id"),
		Priority:    mess.Priority(q.Get("priority")),
		Cursor:      q.Get("cursor"),
	}
	for _, v := range q["status"] {
		for s := range strings.SplitSeq(v, ",") {
			st, ok := mess.ParseStatus(strings.TrimSpace(s))
			if !ok {
				return echo.NewHTTPError(http.StatusBadRequest, fmt.Sprintf("invalid status %q", s))
			}
			opts.Statuses = append(opts.Statuses, st)
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return echo.NewHTTPError(http.StatusBadRequest, "limit must be a positive integer")
		}
		opts.Limit = n
	}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return echo.NewHTTPError(http.StatusBadRequest, "since must be an RFC 3339 time")
		}
		opts.Since = t
	}
	wait, err := waitParam(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	exID := c.Param("exchange_id")
	if wait > 0 {
		after := h.svc.Version(exID)
		if v := q.Get("after"); v != "" {
			if after, err = strconv.ParseUint(v, 10, 64); err != nil {
				return echo.NewHTTPError(http.StatusBadRequest, "after must be a version from a previous listing")
			}
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		_, err := h.svc.WaitForChange(wctx, exID, after)
		cancel()
		if err != nil {
			return err
		}
	}
	res, err := h.svc.List(ctx, exID, opts)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}

func etag(t mess.Thread) string { return fmt.Sprintf(`"%s-%d"`, t.Ref, t.Seq) }

func (h *handlers) getRequest(c echo.Context) error {
	ctx := c.Request().Context()
	exID, ref := c.Param("exchange_id"), c.Param("ref")
	wait, err := waitParam(c)
	if err != nil {
		return err
	}
	if wait > 0 {
		var after int64 = -1
		if v := c.QueryParam("after_seq"); v != "" {
			if after, err = strconv.ParseInt(v, 10, 64); err != nil {
				return echo.NewHTTPError(http.StatusBadRequest, "after_seq must be an integer")
			}
		} else {
			t, err := h.svc.Get(ctx, exID, ref)
			if err != nil {
				return err
			}
			after = t.Seq
		}
		wctx, cancel := context.WithTimeout(ctx, wait)
		err := h.svc.WaitThread(wctx, exID, ref, after)
		cancel()
		if err != nil {
			return err
		}
	}
	t, err := h.svc.Get(ctx, exID, ref)
	if err != nil {
		return err
	}
	c.Response().Header().Set("ETag", etag(t))
	return c.JSON(http.StatusOK, map[string]any{"thread": t})
}

func (h *handlers) updateRequest(c echo.Context) error {
	var u mess.Update
	if err := bind(c, &u); err != nil {
		return err
	}
	res, err := h.svc.Update(c.Request().Context(), c.Param("exchange_id"), actor(c), c.Param("ref"), u)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, res)
}

func (h *handlers) attachment(c echo.Context) error {
	data, ctype, err := h.svc.Attachment(c.Request().Context(), c.Param("exchange_id"), c.Param("ref"), c.Param("filename"))
	if err != nil {
		return err
	}
	c.Response().Header().Set("X-Content-Type-Options", "nosniff")
	return c.Blob(http.StatusOK, ctype, data)
}

func (h *handlers) listExecutors(c echo.Context) error {
	list, err := h.svc.Executors(c.Request().Context(), c.Param("exchange_id"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"executors": list})
}

func (h *handlers) getExecutor(c echo.Context) error {
	ctx := c.Request().Context()
	id := c.Param("id")
	if id != actor(c) {
		// Others see only the public profile.
		list, err := h.svc.Executors(ctx, c.Param("exchange_id"))
		if err != nil {
			return err
		}
		for _, e := range list {
			if e.ID == id {
				return c.JSON(http.StatusOK, map[string]any{"executor": e})
			}
		}
		return &mess.Error{Kind: mess.ErrNotFound, Message: "Executor not found"}
	}
	e, err := h.svc.Executor(ctx, c.Param("exchange_id"), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"executor": e})
}

func (h *handlers) updateExecutor(c echo.Context) error {
	var u mess.ProfileUpdate
	if err := bind(c, &u); err != nil {
		return err
	}
	id := c.Param("id")
	if err := h.svc.UpdateExecutor(c.Request().Context(), c.Param("exchange_id"), actor(c), id, u); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"executor_id": id, "updated": true})
}

func (h *handlers) createKey(c echo.Context) error {
	var body struct {
		RevokeOthers bool `json:"revoke_others"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	k, err := h.svc.CreateKey(c.Request().Context(), c.Param("exchange_id"), actor(c), c.Param("id"), body.RevokeOthers)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, k)
}

func (h *handlers) revokeKey(c echo.Context) error {
	if err := h.svc.RevokeKey(c.Request().Context(), c.Param("exchange_id"), actor(c), c.Param("id"), c.Param("key_id")); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"revoked": c.Param("key_id")})
}

func (h *handlers) createInvite(c echo.Context) error {
	var body struct {
		MaxUses      int     `json:"max_uses"`
		ExpiresInSec float64 `json:"expires_in"`
	}
	if err := bind(c, &body); err != nil {
		return err
	}
	inv, err := h.svc.CreateInvite(c.Request().Context(), c.Param("exchange_id"), actor(c), mess.InviteOptions{
		MaxUses: body.MaxUses,
		TTL:     time.Duration(body.ExpiresInSec * float64(time.Second)),
	})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, inv)
}

func (h *handlers) capabilities(c echo.Context) error {
	caps, err := mess.LoadCapabilities(h.capDir, c.QueryParam("tag"))
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"capabilities": caps})
}

// events streams the exchange's events as server-sent events. A client that
// reconnects with Last-Event-ID gets what it missed while that is still
// buffered, and an "reset" event (resynchronise with GET /requests) when not.
func (h *handlers) events(c echo.Context) error {
	ctx := c.Request().Context()
	exID := c.Param("exchange_id")
	last := c.Request().Header.Get("Last-Event-ID")
	if last == "" {
		last = c.QueryParam("last_event_id")
	}
	if last == "" {
		// A new subscriber starts from now.
		evs, _, _, err := h.svc.EventsAfter(exID, "")
		if err != nil {
			return err
		}
		if len(evs) > 0 {
			last = evs[len(evs)-1].EventID
		}
	}
	w := c.Response()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	w.Flush()
	for {
		evs, version, found, err := h.svc.EventsAfter(exID, last)
		if err != nil {
			return nil
		}
		if !found {
			fmt.Fprintf(w, "event: reset\ndata: {\"reason\":\"events since %s are no longer buffered; list requests again\"}\n\n", last)
			all, _, _, _ := h.svc.EventsAfter(exID, "")
			evs = nil
			if len(all) > 0 {
				last = all[len(all)-1].EventID
			}
		}
		for _, ev := range evs {
			b, _ := json.Marshal(ev)
			fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", ev.EventID, ev.EventType, b)
			last = ev.EventID
		}
		w.Flush()
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		h.svc.WaitForChange(wctx, exID, version)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if wctx.Err() != nil {
			fmt.Fprint(w, ": keep-alive\n\n")
		}
	}
}

// statusOf is the one table from library errors to HTTP statuses.
func statusOf(err error) int {
	switch {
	case errors.Is(err, mess.ErrInvalid):
		return http.StatusBadRequest
	case errors.Is(err, mess.ErrUnauthorized):
		return http.StatusUnauthorized
	case errors.Is(err, mess.ErrForbidden):
		return http.StatusForbidden
	case errors.Is(err, mess.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, mess.ErrConflict):
		return http.StatusConflict
	case errors.Is(err, mess.ErrClosed):
		return http.StatusServiceUnavailable
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

var codes = map[int]string{
	http.StatusBadRequest:            "invalid",
	http.StatusUnauthorized:          "unauthorized",
	http.StatusForbidden:             "forbidden",
	http.StatusNotFound:              "not_found",
	http.StatusMethodNotAllowed:      "method_not_allowed",
	http.StatusConflict:              "conflict",
	http.StatusRequestEntityTooLarge: "too_large",
	http.StatusServiceUnavailable:    "unavailable",
	http.StatusInternalServerError:   "internal",
}

// errorHandler renders every error as {"error": message, "code": ...}.
// Errors the library did not classify are logged and shown as a generic
// message.
func errorHandler(logger *slog.Logger) echo.HTTPErrorHandler {
	return func(err error, c echo.Context) {
		if c.Response().Committed {
			return
		}
		status := http.StatusInternalServerError
		body := map[string]any{}
		var me *mess.Error
		var he *echo.HTTPError
		switch {
		case errors.As(err, &me):
			status = statusOf(me)
			body["error"] = me.Message
			for k, v := range me.Details {
				body[k] = v
			}
		case errors.As(err, &he):
			status = he.Code
			msg := fmt.Sprint(he.Message)
			switch status {
			case http.StatusNotFound:
				msg = "Not found"
			case http.StatusRequestEntityTooLarge:
				msg = "request body too large"
			}
			body["error"] = msg
		default:
			status = statusOf(err)
			if status == http.StatusInternalServerError {
				logger.Error("request failed", "method", c.Request().Method, "path", c.Request().URL.Path, "err", err)
				body["error"] = "internal error"
			} else {
				body["error"] = http.StatusText(status)
			}
		}
		code, ok := codes[status]
		if !ok {
			code = strings.ToLower(strings.ReplaceAll(http.StatusText(status), " ", "_"))
		}
		body["code"] = code
		if c.Request().Method == http.MethodHead {
			c.NoContent(status)
			return
		}
		c.JSON(status, body)
	}
}

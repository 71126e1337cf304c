package mcpserver

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mess"
)

// ToolError is the error a tool reports: the status, code and message the
// HTTP API answers the same failure with, plus its details (the claimant of
// a thread, the holder of a lease). Its Error text is that JSON error body,
// so a model reading the tool result sees exactly what an HTTP client would.
type ToolError struct {
	Status  int
	Code    string
	Message string
	Details map[string]any
}

// Error returns the JSON error body {"error": ..., "code": ..., details...}.
func (e *ToolError) Error() string {
	body := make(map[string]any, len(e.Details)+2)
	for k, v := range e.Details {
		body[k] = v
	}
	body["error"], body["code"] = e.Message, e.Code
	b, err := json.Marshal(body)
	if err != nil {
		return `{"error":"internal error","code":"internal"}`
	}
	return string(b)
}

// invalid is a caller's mistake found by this package.
func invalid(msg string) *ToolError {
	return &ToolError{Status: http.StatusBadRequest, Code: httpx.CodeInvalid, Message: msg}
}

// classify is the one table from the services' errors to the HTTP API's
// status, code and message. It knows every sentinel of mess, mailbus and
// lease; anything else is internal and its text is not shown.
func classify(err error) *ToolError {
	e := func(status int, code, msg string) *ToolError {
		return &ToolError{Status: status, Code: code, Message: msg}
	}
	if te, ok := errors.AsType[*ToolError](err); ok {
		return te
	}
	if he, ok := errors.AsType[*httpx.Error](err); ok {
		return e(he.Status, he.Code, he.Message)
	}
	if me, ok := errors.AsType[*mess.Error](err); ok {
		te := classify(me.Kind)
		te.Message, te.Details = me.Message, me.Details
		return te
	}
	if held, ok := errors.AsType[*lease.HeldError](err); ok {
		te := e(http.StatusConflict, httpx.CodeConflict, trim(err))
		te.Details = map[string]any{"file": held.Name, "holder": held.Holder, "expires_at": held.ExpiresAt.UnixMilli()}
		return te
	}
	switch {
	case errors.Is(err, mess.ErrInvalid), errors.Is(err, mailbus.ErrInvalid),
		errors.Is(err, lease.ErrInvalidName), errors.Is(err, lease.ErrInvalidTTL),
		errors.Is(err, lease.ErrInvalidID), errors.Is(err, lease.ErrInvalidToken):
		return e(http.StatusBadRequest, httpx.CodeInvalid, trim(err))
	case errors.Is(err, mess.ErrUnauthorized), errors.Is(err, mailbus.ErrUnauthorized), errors.Is(err, lease.ErrUnauthorized):
		return e(http.StatusUnauthorized, httpx.CodeUnauthorized, "invalid API key")
	case errors.Is(err, mess.ErrForbidden), errors.Is(err, mailbus.ErrForbidden), errors.Is(err, lease.ErrForbidden):
		return e(http.StatusForbidden, httpx.CodeForbidden, trim(err))
	case errors.Is(err, mess.ErrNotFound), errors.Is(err, mailbus.ErrNotFound):
		return e(http.StatusNotFound, httpx.CodeNotFound, trim(err))
	case errors.Is(err, lease.ErrStaleToken):
		return e(http.StatusConflict, "stale_token", trim(err))
	case errors.Is(err, lease.ErrNotHeld):
		return e(http.StatusConflict, "not_held", trim(err))
	case errors.Is(err, lease.ErrHeld), errors.Is(err, mess.ErrConflict), errors.Is(err, mailbus.ErrConflict):
		return e(http.StatusConflict, httpx.CodeConflict, trim(err))
	case errors.Is(err, mess.ErrTooLarge):
		return e(http.StatusRequestEntityTooLarge, httpx.CodeTooLarge, trim(err))
	case errors.Is(err, mess.ErrRateLimited):
		return e(http.StatusTooManyRequests, httpx.CodeRateLimited, trim(err))
	case errors.Is(err, mess.ErrUnprocessable):
		return e(http.StatusUnprocessableEntity, httpx.CodeUnprocessable, trim(err))
	case errors.Is(err, mess.ErrClosed), errors.Is(err, mailbus.ErrClosed), errors.Is(err, lease.ErrClosed):
		return e(http.StatusServiceUnavailable, httpx.CodeUnavailable, "the service is shutting down")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return e(http.StatusServiceUnavailable, httpx.CodeUnavailable, "request cancelled before it completed")
	}
	return e(http.StatusInternalServerError, httpx.CodeInternal, "internal error")
}

// trim is an error's text without its package prefix, for clients.
func trim(err error) string {
	msg := err.Error()
	for _, p := range []string{"mess: ", "mailbus: ", "lease: "} {
		msg = strings.TrimPrefix(msg, p)
	}
	return msg
}

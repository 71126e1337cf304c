package mess

import (
	"errors"
	"fmt"
)

// Error kinds. Every error the Service returns for a caller's mistake is an
// *Error whose Kind is one of these, so callers test with errors.Is and
// servers map kinds to status codes in one place.
var (
	// ErrInvalid is returned when input is malformed or out of range.
	ErrInvalid = errors.New("mess: invalid input")
	// ErrNotFound is returned when a thread, executor, key or exchange does not exist.
	ErrNotFound = errors.New("mess: not found")
	// ErrConflict is returned when the change clashes with the current state:
	// a thread claimed by someone else, a terminal thread, an executor id taken.
	ErrConflict = errors.New("mess: conflict")
	// ErrUnauthorized is returned when a credential is missing, unknown or revoked.
	ErrUnauthorized = errors.New("mess: unauthorized")
	// ErrForbidden is returned when the caller is known but may not do this.
	ErrForbidden = errors.New("mess: forbidden")
	// ErrTooLarge is returned when a request, a message or a member's
	// attachments would pass a size limit; the message names the limit.
	ErrTooLarge = errors.New("mess: too large")
	// ErrRateLimited is returned when a client registers too often or the
	// server holds as many exchanges as it may. Details["retry_after"] is
	// the seconds to wait before trying again.
	ErrRateLimited = errors.New("mess: rate limited")
	// ErrUnprocessable is returned when a request is well formed but
	// cannot be honoured as sent: an Idempotency-Key reused with another
	// body.
	ErrUnprocessable = errors.New("mess: unprocessable")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("mess: closed")
)

// Error is a caller-facing error: Message is safe to show to the client and
// Details carries machine-readable context (such as the current claimant of
// a thread on a conflicting claim).
type Error struct {
	Kind    error
	Message string
	Details map[string]any
}

func (e *Error) Error() string { return e.Message }

// Unwrap returns the error's kind.
func (e *Error) Unwrap() error { return e.Kind }

func errorf(kind error, format string, args ...any) *Error {
	return &Error{Kind: kind, Message: fmt.Sprintf(format, args...)}
}

func (e *Error) with(k string, v any) *Error {
	if e.Details == nil {
		e.Details = map[string]any{}
	}
	e.Details[k] = v
	return e
}

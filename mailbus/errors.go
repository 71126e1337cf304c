package mailbus

import "errors"

// Sentinel errors. Callers test with errors.Is; the HTTP handler maps each
// to one status code.
var (
	// ErrUnauthorized is returned (or wrapped by an Authenticator) when a
	// credential is missing or unknown. HTTP 401.
	ErrUnauthorized = errors.New("mailbus: unauthorized")
	// ErrForbidden is returned when a credential is valid but not for this
	// exchange, or an agent acts for another agent. HTTP 403.
	ErrForbidden = errors.New("mailbus: forbidden")
	// ErrInvalid is returned for malformed messages, types, patterns or
	// identifiers. HTTP 400.
	ErrInvalid = errors.New("mailbus: invalid input")
	// ErrNotFound is returned when acknowledging a message the agent has no
	// acknowledgeable copy of, or naming an agent the Directory rejects.
	// HTTP 404.
	ErrNotFound = errors.New("mailbus: not found")
	// ErrConflict is returned when an ackRequired message reuses the id of
	// one a recipient has not acknowledged yet: acknowledgements name
	// messages by id, so the two could not be told apart. HTTP 409.
	ErrConflict = errors.New("mailbus: conflict")
	// ErrClosed is returned by every call after Close.
	ErrClosed = errors.New("mailbus: closed")
	// ErrNotConnected is returned by client calls that need a live
	// connection before Connect succeeded.
	ErrNotConnected = errors.New("mailbus: not connected")
	// ErrNoLeaser is returned by the lease calls when no Leaser is
	// configured.
	ErrNoLeaser = errors.New("mailbus: no lease service configured")
)

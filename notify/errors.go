package notify

import "errors"

var (
	// ErrClosed is returned after Close.
	ErrClosed = errors.New("notify: closed")
	// ErrUnauthorized is returned by an Authenticator for a missing or
	// unknown key (HTTP 401).
	ErrUnauthorized = errors.New("notify: unauthorized")
	// ErrForbidden is returned by an Authenticator for a valid key of
	// another exchange (HTTP 403).
	ErrForbidden = errors.New("notify: forbidden")
	// ErrBlockedAddress is returned when an outgoing request would reach a
	// scheme or address the operator has not allowed (SSRF guard).
	ErrBlockedAddress = errors.New("notify: destination not allowed")
	// ErrInvalidConfig is returned for a channel or hook that cannot be
	// delivered as configured (missing URL, unknown type, ...).
	ErrInvalidConfig = errors.New("notify: invalid configuration")
)

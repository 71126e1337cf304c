package lease

import (
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Test for them with errors.Is; Client maps the server's
// error answers back onto the same values.
var (
	// ErrHeld is returned by Acquire when another agent holds the lease. The
	// error is a *HeldError carrying the holder and its deadline.
	ErrHeld = errors.New("lease: held by another agent")
	// ErrNotHeld is returned by Renew and Release when the caller holds no
	// live lease on the name: it expired, was released, was never granted,
	// or is another agent's.
	ErrNotHeld = errors.New("lease: not held")
	// ErrStaleToken is returned by Renew and Release when the token is not
	// the one of the current grant on the name (the lease passed on).
	ErrStaleToken = errors.New("lease: stale fencing token")
	// ErrInvalidName is returned for an empty, too long or malformed name.
	ErrInvalidName = errors.New("lease: invalid name")
	// ErrInvalidTTL is returned when a TTL is outside [MinTTL, MaxTTL].
	ErrInvalidTTL = errors.New("lease: invalid ttl")
	// ErrInvalidID is returned for an exchange or agent id that does not
	// match ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$.
	ErrInvalidID = errors.New("lease: invalid id")
	// ErrInvalidToken is returned by Renew when the fencing token is
	// missing (zero).
	ErrInvalidToken = errors.New("lease: invalid token")
	// ErrClosed is returned by every operation after Close. Client returns
	// it for a 503 answer (the server is shutting down, or another process
	// serves the exchange now: a Manager under a Config.Fence that was
	// replaced returns errors wrapping storage.ErrFenced).
	ErrClosed = errors.New("lease: closed")
	// ErrUnauthorized is returned by an Authenticator for a missing or
	// unknown API key (HTTP 401).
	ErrUnauthorized = errors.New("lease: unauthorized")
	// ErrDisconnected is returned by a call made over a lease WebSocket
	// (FrameClient) whose connection was lost before the answer came: the
	// server may or may not have carried it out.
	ErrDisconnected = errors.New("lease: connection lost")
	// ErrForbidden is returned by an Authenticator for a valid key that
	// belongs to another exchange (HTTP 403).
	ErrForbidden = errors.New("lease: forbidden")
)

// HeldError reports that a lease is held by another agent. It matches
// ErrHeld with errors.Is.
type HeldError struct {
	// Name is the canonical lease name.
	Name string
	// Holder is the agent holding the lease.
	Holder string
	// ExpiresAt is the holder's current deadline (wall clock).
	ExpiresAt time.Time
}

func (e *HeldError) Error() string {
	return fmt.Sprintf("lease: %q held by %s until %s", e.Name, e.Holder, e.ExpiresAt.UTC().Format(time.RFC3339Nano))
}

// Is makes errors.Is(err, ErrHeld) true for a *HeldError.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

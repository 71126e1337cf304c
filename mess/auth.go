package mess

import (
	"context"
	"errors"
	"fmt"
)

// ExecutorAuth lets another service of the server (leases, the mail bus,
// notifications) accept the exchange's executor API keys, so one key works
// everywhere. Each of those services defines its own Authenticator
// interface with its own ErrUnauthorized and ErrForbidden; ExecutorAuth
// satisfies all of them by wrapping the exchange's errors in the sentinels
// it was made with. Its IsAgent also makes it the mail bus's Directory: mail
// to someone who is not an executor of the exchange is refused.
//
//	leases := lease.NewHandler(m, lease.HandlerConfig{
//		Auth: mess.Authenticator(svc, lease.ErrUnauthorized, lease.ErrForbidden),
//	})
type ExecutorAuth struct {
	svc                     *Service
	unauthorized, forbidden error
}

// Authenticator returns an ExecutorAuth for svc whose errors wrap
// unauthorized (a missing, unknown or revoked key) or forbidden (a key of
// another exchange) besides the exchange's own ErrUnauthorized and
// ErrForbidden.
func Authenticator(svc *Service, unauthorized, forbidden error) ExecutorAuth {
	return ExecutorAuth{svc: svc, unauthorized: unauthorized, forbidden: forbidden}
}

// Authenticate returns the executor that key belongs to in exchangeID.
func (a ExecutorAuth) Authenticate(ctx context.Context, exchangeID, key string) (string, error) {
	id, err := a.svc.Authenticate(ctx, exchangeID, key)
	switch {
	case errors.Is(err, ErrUnauthorized):
		return "", fmt.Errorf("%w: %w", a.unauthorized, err)
	case errors.Is(err, ErrForbidden):
		return "", fmt.Errorf("%w: %w", a.forbidden, err)
	}
	return id, err
}

// IsAgent reports whether agentID is an executor of exchangeID.
func (a ExecutorAuth) IsAgent(ctx context.Context, exchangeID, agentID string) (bool, error) {
	return a.svc.IsExecutor(ctx, exchangeID, agentID)
}

// WatchKey returns a channel closed when key stops admitting its holder in
// exchangeID, and a stop function that releases the watch (see
// Service.WatchKey). A service whose sessions, streams or waits outlive the
// request that authenticated them finds it with a type assertion on its
// Authenticator and ends them when the channel closes.
func (a ExecutorAuth) WatchKey(exchangeID, key string) (<-chan struct{}, func()) {
	return a.svc.WatchKey(exchangeID, key)
}

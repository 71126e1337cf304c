package mailbus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/meatspace-exchange/mess/lease"
)

// LeaseStatus is the lease package's status: Jetpack's LeaseStatus
// (isLeased, agentId, expiresAt in epoch ms) plus the fencing token.
type LeaseStatus = lease.Status

// Leaser is the part of the lease service the bus's lease calls use,
// bound to one agent. *lease.Client satisfies it; wrap an in-process
// *lease.Manager with ManagerLeaser.
type Leaser interface {
	Acquire(ctx context.Context, name string, ttl time.Duration) (lease.Grant, error)
	Release(ctx context.Context, name string, token uint64) error
	Status(ctx context.Context, name string) (lease.Status, error)
}

var (
	_ Leaser = (*lease.Client)(nil)
	_ Leaser = managerLeaser{}
)

// ManagerLeaser binds an in-process lease manager to one agent.
func ManagerLeaser(m *lease.Manager, exchangeID, agentID string) Leaser {
	return managerLeaser{m: m, exchange: exchangeID, agent: agentID}
}

type managerLeaser struct {
	m               *lease.Manager
	exchange, agent string
}

func (l managerLeaser) Acquire(ctx context.Context, name string, ttl time.Duration) (lease.Grant, error) {
	return l.m.Acquire(ctx, l.exchange, l.agent, name, ttl)
}

func (l managerLeaser) Release(ctx context.Context, name string, token uint64) error {
	return l.m.Release(ctx, l.exchange, l.agent, name, token)
}

func (l managerLeaser) Status(ctx context.Context, name string) (lease.Status, error) {
	return l.m.Status(ctx, l.exchange, name)
}

// leases implements the MailBus lease calls over a Leaser, remembering
// the fencing token of each grant so ReleaseLease(file) can present it.
type leases struct {
	l      Leaser
	mu     sync.Mutex
	tokens map[string]uint64
}

func (ls *leases) acquire(ctx context.Context, file string, ttl time.Duration) (lease.Grant, error) {
	if ls.l == nil {
		return lease.Grant{}, ErrNoLeaser
	}
	g, err := ls.l.Acquire(ctx, file, ttl)
	if err != nil {
		return lease.Grant{}, fmt.Errorf("mailbus: acquire lease %s: %w", file, err)
	}
	ls.mu.Lock()
	if ls.tokens == nil {
		ls.tokens = map[string]uint64{}
	}
	ls.tokens[file] = g.Token
	ls.mu.Unlock()
	return g, nil
}

func (ls *leases) release(ctx context.Context, file string) error {
	if ls.l == nil {
		return ErrNoLeaser
	}
	ls.mu.Lock()
	tok, ok := ls.tokens[file]
	ls.mu.Unlock()
	if !ok {
		return fmt.Errorf("%w: no lease on %s acquired through this bus", ErrNotFound, file)
	}
	err := ls.l.Release(ctx, file, tok)
	gone := errors.Is(err, lease.ErrNotHeld) || errors.Is(err, lease.ErrStaleToken)
	if err != nil && !gone {
		// The token stays, so that the release can be retried.
		return fmt.Errorf("mailbus: release lease %s: %w", file, err)
	}
	ls.mu.Lock()
	if ls.tokens[file] == tok { // not a newer grant acquired meanwhile
		delete(ls.tokens, file)
	}
	ls.mu.Unlock()
	if gone {
		return fmt.Errorf("mailbus: release lease %s: %w (it expired or passed to another agent first)", file, err)
	}
	return nil
}

func (ls *leases) status(ctx context.Context, file string) (LeaseStatus, error) {
	if ls.l == nil {
		return LeaseStatus{}, ErrNoLeaser
	}
	st, err := ls.l.Status(ctx, file)
	if err != nil {
		return LeaseStatus{}, fmt.Errorf("mailbus: lease status %s: %w", file, err)
	}
	return st, nil
}

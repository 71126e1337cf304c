package mailbus

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/meatspace-exchange/mess/lease"
)

// LocalConfig configures an in-process agent.
type LocalConfig struct {
	// Exchange and Agent name the agent. Required.
	Exchange, Agent string
	// Leaser serves the lease calls. Nil makes them return ErrNoLeaser.
	Leaser Leaser
	// ManualAck turns off automatic acknowledgement of ackRequired
	// messages whose handlers all returned nil.
	ManualAck bool
	// OnError receives handler failures. Nil drops them.
	OnError func(error)
}

// Local is an agent inside the bus's own process. It behaves like a remote
// Client (same routing, durability and acknowledgements) without a
// network hop.
type Local struct {
	b      *Bus
	cfg    LocalConfig
	d      *dispatcher
	leases leases

	mu      sync.Mutex
	started bool
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

var _ MailBus = (*Local)(nil)

// Agent returns an in-process MailBus for one agent.
func (b *Bus) Agent(cfg LocalConfig) (*Local, error) {
	if !ValidID(cfg.Exchange) || !ValidID(cfg.Agent) {
		return nil, fmt.Errorf("%w: exchange %q / agent %q", ErrInvalid, cfg.Exchange, cfg.Agent)
	}
	l := &Local{b: b, cfg: cfg, leases: leases{l: cfg.Leaser}, stop: make(chan struct{}), done: make(chan struct{})}
	l.d = newDispatcher(func(ctx context.Context, id string) error {
		return b.Acknowledge(ctx, cfg.Exchange, cfg.Agent, id)
	}, cfg.OnError, cfg.ManualAck)
	return l, nil
}

// AgentID implements MailBus.
func (l *Local) AgentID() string { return l.cfg.Agent }

// Connect attaches the agent and starts delivering from the position it
// last reached.
func (l *Local) Connect(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return ErrClosed
	}
	if l.started {
		return nil
	}
	ex, err := l.b.exchange(ctx, l.cfg.Exchange)
	if err != nil {
		return err
	}
	if !l.b.enter() {
		return ErrClosed
	}
	s, err := ex.attach(l.cfg.Agent, -1, nil)
	if err != nil {
		l.b.leave()
		return err
	}
	l.started = true
	go l.pump(s)
	return nil
}

func (l *Local) pump(s *session) {
	defer close(l.done)
	defer l.b.leave()
	defer func() { s.detach() }()
	var ds []delivery
	for {
		select {
		case <-l.stop:
			return
		case <-s.gone:
			if errors.Is(s.err, errReload) {
				// The exchange reloads from storage; continue on the
				// fresh one from the position this agent reached.
				if ns := l.reattach(); ns != nil {
					s.detach()
					s = ns
					continue
				}
			}
			if s.err != nil {
				l.d.onError(fmt.Errorf("mailbus: agent %s disconnected: %w", l.cfg.Agent, s.err))
			}
			return
		case <-s.wake:
		}
		for more := true; more; {
			ds, more = s.take(256, ds[:0])
			if len(ds) == 0 {
				break
			}
			ms := make([]Message, len(ds))
			for i := range ds {
				ms[i] = ds[i].message(l.cfg.Agent)
			}
			clear(ds)
			l.d.push(ms...)
		}
	}
}

// reattach attaches to the exchange anew after it broke, retrying while
// storage keeps failing; nil means the Local or the bus is shutting down.
func (l *Local) reattach() *session {
	for wait := 10 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			select {
			case <-l.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		ex, err := l.b.exchange(ctx, l.cfg.Exchange)
		var s *session
		if err == nil {
			s, err = ex.attach(l.cfg.Agent, -1, nil)
		}
		cancel()
		if err == nil {
			return s
		}
		if errors.Is(err, ErrClosed) || isDone(l.stop) {
			return nil
		}
		l.d.onError(fmt.Errorf("mailbus: agent %s reattaching: %w", l.cfg.Agent, err))
		select {
		case <-l.stop:
			return nil
		case <-time.After(wait):
		}
	}
}

// Close implements MailBus.
func (l *Local) Close(ctx context.Context) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	started := l.started
	l.mu.Unlock()
	close(l.stop)
	var err error
	if started {
		select {
		case <-l.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	if derr := l.d.close(ctx); err == nil {
		err = derr
	}
	return err
}

// Publish implements MailBus.
func (l *Local) Publish(ctx context.Context, m Message) (Message, error) {
	return l.b.Publish(ctx, l.cfg.Exchange, l.cfg.Agent, m)
}

// SendTo implements MailBus.
func (l *Local) SendTo(ctx context.Context, agentID string, m Message) (Message, error) {
	return l.b.SendTo(ctx, l.cfg.Exchange, l.cfg.Agent, agentID, m)
}

// Subscribe implements MailBus.
func (l *Local) Subscribe(ctx context.Context, pattern string, h Handler) (*Subscription, error) {
	if err := l.d.lockSubs(ctx); err != nil {
		return nil, err
	}
	defer l.d.unlockSubs()
	s, isNew, err := l.d.add(pattern, h)
	if err != nil {
		return nil, err
	}
	if isNew {
		if err := l.b.Subscribe(ctx, l.cfg.Exchange, l.cfg.Agent, pattern); err != nil {
			l.d.remove(s)
			return nil, err
		}
	}
	return s, nil
}

// Unsubscribe implements MailBus.
func (l *Local) Unsubscribe(ctx context.Context, s *Subscription) error {
	if s == nil {
		return nil
	}
	if err := l.d.lockSubs(ctx); err != nil {
		return err
	}
	defer l.d.unlockSubs()
	if l.d.remove(s) {
		return l.b.Unsubscribe(ctx, l.cfg.Exchange, l.cfg.Agent, s.Pattern)
	}
	return nil
}

// Acknowledge implements MailBus.
func (l *Local) Acknowledge(ctx context.Context, messageID string) error {
	return l.b.Acknowledge(ctx, l.cfg.Exchange, l.cfg.Agent, messageID)
}

// SendHeartbeat implements MailBus.
func (l *Local) SendHeartbeat(ctx context.Context) error {
	return l.b.Heartbeat(ctx, l.cfg.Exchange, l.cfg.Agent)
}

// AcquireLease implements MailBus.
func (l *Local) AcquireLease(ctx context.Context, file string, ttl time.Duration) (lease.Grant, error) {
	return l.leases.acquire(ctx, file, ttl)
}

// ReleaseLease implements MailBus.
func (l *Local) ReleaseLease(ctx context.Context, file string) error {
	return l.leases.release(ctx, file)
}

// IsLeased implements MailBus.
func (l *Local) IsLeased(ctx context.Context, file string) (LeaseStatus, error) {
	return l.leases.status(ctx, file)
}

package mailbus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/meatspace-exchange/mess/lease"
)

// Handler receives a message. Returning an error (or panicking) leaves an
// ackRequired message unacknowledged, so the bus delivers it again after
// the visibility timeout; other messages and handlers are unaffected.
type Handler func(ctx context.Context, m Message) error

// Subscription is one handler registered for one pattern.
type Subscription struct {
	Pattern string
	h       Handler
	id      uint64
}

// MailBus is what an agent uses, in process (Local) or remote (Client):
// the method set of Jetpack's IMailBus (cf-mail-adapter 0.1.0) as Go, with
// a fencing token on every lease grant.
type MailBus interface {
	// AgentID is the agent this bus speaks for (known after Connect for a
	// Client, which learns it from its credential).
	AgentID() string
	// Connect starts receiving (IMailBus's initialize).
	Connect(ctx context.Context) error
	// Close stops receiving and never reconnects afterwards. Handlers
	// of messages already received run to the end of the queue within
	// ctx; when ctx ends first, the running handler's context is cancelled
	// and the rest of the queue is dropped (an ackRequired message among
	// them is delivered again to the agent's next connection). It is
	// idempotent.
	Close(ctx context.Context) error
	// Publish broadcasts m to the agents subscribed to its type (or, with
	// m.To set, to that agent only) and returns it as stored.
	Publish(ctx context.Context, m Message) (Message, error)
	// SendTo sends m to agentID only.
	SendTo(ctx context.Context, agentID string, m Message) (Message, error)
	// Subscribe registers h for messages whose type matches pattern (a
	// type, "prefix.*" or "*") and makes the subscription durable on the
	// bus, so broadcasts reach this agent's inbox while it is offline.
	Subscribe(ctx context.Context, pattern string, h Handler) (*Subscription, error)
	// Unsubscribe removes s; the pattern is dropped from the bus when no
	// handler uses it any more.
	Unsubscribe(ctx context.Context, s *Subscription) error
	// Acknowledge acknowledges this agent's copy of messageID.
	Acknowledge(ctx context.Context, messageID string) error
	// SendHeartbeat reports this agent alive.
	SendHeartbeat(ctx context.Context) error
	// AcquireLease takes the lease on file for ttl and returns the grant,
	// whose Token fences the resource: present it to whatever the lease
	// guards, which refuses tokens lower than the last one it saw. While
	// another agent holds the lease it fails with an error wrapping
	// lease.ErrHeld (a *lease.HeldError names the holder).
	AcquireLease(ctx context.Context, file string, ttl time.Duration) (lease.Grant, error)
	// ReleaseLease releases a lease this bus acquired. It fails with
	// lease.ErrNotHeld if the lease had expired (or passed to another
	// agent) before the release, and can be retried after any other error.
	ReleaseLease(ctx context.Context, file string) error
	// IsLeased reports who holds file.
	IsLeased(ctx context.Context, file string) (LeaseStatus, error)
}

// dispatcher runs handlers for one agent: one goroutine, messages in
// arrival order, every handler isolated from the others' failures.
type dispatcher struct {
	ack       func(ctx context.Context, id string) error
	onError   func(error)
	manualAck bool

	// ctx is the handlers' context; cancel aborts the dispatcher.
	ctx    context.Context
	cancel context.CancelFunc

	mu       sync.Mutex
	subs     []*Subscription
	nextID   uint64
	queue    []Message
	wake     chan struct{}
	done     chan struct{}
	stop     chan struct{} // closed by close: run ends once the queue is empty
	stopOnce sync.Once

	// subLock (a one-slot semaphore, so that waiting for it honours a
	// context) is held while a subscription change, or a connection's
	// handshake, carries the patterns to the bus: otherwise two changes
	// could reach the bus in the opposite order to the one they were made
	// in, and the bus would keep the older set.
	subLock chan struct{}

	// handled remembers ids of ackRequired messages whose handlers
	// succeeded, so a redelivery is acknowledged again without rerunning
	// the handlers.
	handled     map[string]struct{}
	handledRing []string
	handledPos  int
}

func newDispatcher(ack func(context.Context, string) error, onError func(error), manualAck bool) *dispatcher {
	if onError == nil {
		onError = func(error) {}
	}
	d := &dispatcher{
		ack: ack, onError: onError, manualAck: manualAck,
		wake: make(chan struct{}, 1), done: make(chan struct{}), stop: make(chan struct{}),
		subLock: make(chan struct{}, 1),
		handled: map[string]struct{}{}, handledRing: make([]string, 8192),
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	go d.run()
	return d
}

// lockSubs takes subLock, or fails when ctx ends first.
func (d *dispatcher) lockSubs(ctx context.Context) error {
	select {
	case d.subLock <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (d *dispatcher) unlockSubs() { <-d.subLock }

func (d *dispatcher) add(pattern string, h Handler) (*Subscription, bool, error) {
	if !ValidPattern(pattern) {
		return nil, false, fmt.Errorf("%w: subscription pattern %q", ErrInvalid, pattern)
	}
	if h == nil {
		return nil, false, fmt.Errorf("%w: nil handler", ErrInvalid)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nextID++
	s := &Subscription{Pattern: pattern, h: h, id: d.nextID}
	isNew := !slices.ContainsFunc(d.subs, func(o *Subscription) bool { return o.Pattern == pattern })
	d.subs = append(d.subs, s)
	return s, isNew, nil
}

// remove drops s and reports whether its pattern has no handler left.
func (d *dispatcher) remove(s *Subscription) (last bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.subs = slices.DeleteFunc(d.subs, func(o *Subscription) bool { return o == s })
	return !slices.ContainsFunc(d.subs, func(o *Subscription) bool { return o.Pattern == s.Pattern })
}

func (d *dispatcher) patterns() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, s := range d.subs {
		out = append(out, s.Pattern)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (d *dispatcher) push(ms ...Message) {
	d.mu.Lock()
	d.queue = append(d.queue, ms...)
	d.mu.Unlock()
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

func (d *dispatcher) run() {
	defer close(d.done)
	for {
		d.mu.Lock()
		q := d.queue
		d.queue = nil
		d.mu.Unlock()
		for _, m := range q {
			if d.ctx.Err() != nil {
				return
			}
			d.dispatch(m)
		}
		if len(q) > 0 {
			continue
		}
		select {
		case <-d.wake:
		case <-d.stop:
			d.mu.Lock()
			empty := len(d.queue) == 0
			d.mu.Unlock()
			if empty {
				return
			}
		case <-d.ctx.Done():
			return
		}
	}
}

func (d *dispatcher) dispatch(m Message) {
	if m.AckRequired {
		if _, ok := d.handled[m.ID]; ok {
			d.doAck(m)
			return
		}
	}
	d.mu.Lock()
	var hs []*Subscription
	for _, s := range d.subs {
		if Match(s.Pattern, m.Type) {
			hs = append(hs, s)
		}
	}
	d.mu.Unlock()
	if len(hs) == 0 {
		// Direct mail arrives whatever the subscriptions; without a
		// handler it is reported, and an ackRequired one stays
		// unacknowledged so it is not silently lost.
		d.onError(fmt.Errorf("mailbus: no handler for message %s of type %s", m.ID, m.Type))
		return
	}
	failed := false
	for _, s := range hs {
		if err := call(d.ctx, s.h, m); err != nil {
			failed = true
			d.onError(fmt.Errorf("mailbus: handler for %s on message %s: %w", s.Pattern, m.ID, err))
		}
	}
	if failed || !m.AckRequired {
		return
	}
	d.remember(m.ID)
	d.doAck(m)
}

func (d *dispatcher) doAck(m Message) {
	if d.manualAck || m.AckedAt != nil {
		return
	}
	if err := d.ack(d.ctx, m.ID); err != nil && !errors.Is(err, ErrClosed) && d.ctx.Err() == nil {
		d.onError(fmt.Errorf("mailbus: acknowledge %s: %w", m.ID, err))
	}
}

func (d *dispatcher) remember(id string) {
	if old := d.handledRing[d.handledPos]; old != "" {
		delete(d.handled, old)
	}
	d.handledRing[d.handledPos] = id
	d.handledPos = (d.handledPos + 1) % len(d.handledRing)
	d.handled[id] = struct{}{}
}

// call runs h, turning a panic into an error.
func call(ctx context.Context, h Handler, m Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("handler panicked: %v", r)
		}
	}()
	return h(ctx, m)
}

// close stops the dispatcher once the queue is drained. If ctx ends first,
// it aborts: the running handler's context is cancelled and the rest of
// the queue is dropped; run ends when that handler returns.
func (d *dispatcher) close(ctx context.Context) error {
	d.stopOnce.Do(func() { close(d.stop) })
	select {
	case <-d.done:
		d.cancel()
		return nil
	case <-ctx.Done():
		d.cancel()
		return ctx.Err()
	}
}

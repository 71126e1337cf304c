package mailbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// Authenticator maps a bearer token to the agent it belongs to in an
// exchange. Implementations return errors wrapping ErrUnauthorized (unknown
// or missing key) or ErrForbidden (a valid key of another exchange).
type Authenticator interface {
	Authenticate(ctx context.Context, exchangeID, token string) (agentID string, err error)
}

// Directory is optional: when set, SendTo refuses (ErrNotFound) agents the
// directory does not know instead of storing mail for them.
type Directory interface {
	IsAgent(ctx context.Context, exchangeID, agentID string) (bool, error)
}

// Config configures a Bus. Every zero field has the default named in its
// comment.
type Config struct {
	// Store keeps inboxes, subscriptions and acknowledgements durable.
	// Nil means storage.NewMemory(): nothing survives the process.
	Store storage.Store
	// Fence, when set, is the owner this bus writes Store under because
	// other processes can reach it: each exchange is claimed and its log
	// fenced before it is read, and nothing is acknowledged once Fence
	// says this process may have been replaced (see storage.Fence).
	Fence storage.Fence
	// Directory, when set, is asked whether the target of a direct message
	// exists. Nil accepts any valid agent id and keeps its mail until it
	// connects or retention drops it.
	Directory Directory
	// RetentionAge drops stored messages older than this. Zero means 7 days.
	RetentionAge time.Duration
	// RetentionCount caps each agent's inbox; the oldest messages go first.
	// Zero means 10000.
	RetentionCount int
	// RetentionBytes caps the size of each agent's inbox (the sum of its
	// messages' sizes, a message counted in every inbox it is in though it
	// is held once); the oldest messages go first, acknowledged or not,
	// but the newest always stays. Zero means 64 MiB.
	RetentionBytes int64
	// VisibilityTimeout is how long an ackRequired message waits for its
	// acknowledgement before it is delivered again. Zero means 30s.
	VisibilityTimeout time.Duration
	// PresenceTimeout is how long after its last heartbeat (or connect) an
	// agent still counts as online. Zero means 90s.
	PresenceTimeout time.Duration
	// SnapshotEvery is how many journal records accumulate in an exchange
	// before its state is snapshotted and the covered journal objects are
	// deleted; an exchange whose last snapshot held more inbox entries than
	// this waits for that many records instead. Zero means 200000; negative
	// disables compaction.
	SnapshotEvery int
	// Now is the clock. Zero means time.Now.
	Now func() time.Time
	// Logger receives operational errors. Nil means slog.Default().
	Logger *slog.Logger
}

// Bus routes mail between the agents of many exchanges. Each exchange is
// isolated: its agents, subscriptions and inboxes never mix with another's.
// It is safe for concurrent use.
type Bus struct {
	cfg    Config
	j      *journal.Journal
	mu     sync.Mutex
	exs    map[string]*exchange
	closed bool
	stop   chan struct{}
	wg     sync.WaitGroup
	conns  sync.WaitGroup // live WebSocket handlers and local clients

	// delivered and redelivered count messages handed to sessions since
	// start (Stats); take adds once per batch, not per message.
	delivered, redelivered atomic.Uint64
}

// enter registers a connection that Close must wait for; it fails once the
// bus is closing.
func (b *Bus) enter() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	b.conns.Add(1)
	return true
}

func (b *Bus) leave() { b.conns.Done() }

// New starts a bus on cfg.Store. A zero Config is a working bus in memory.
// Exchanges are loaded from the store on first use, so ctx bounds nothing
// yet; it is there for the stores that may need it.
func New(ctx context.Context, cfg Config) (*Bus, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.Store == nil {
		cfg.Store = storage.NewMemory()
	}
	if cfg.RetentionAge == 0 {
		cfg.RetentionAge = 7 * 24 * time.Hour
	}
	if cfg.RetentionCount == 0 {
		cfg.RetentionCount = 10000
	}
	if cfg.RetentionBytes == 0 {
		cfg.RetentionBytes = 64 << 20
	}
	if cfg.VisibilityTimeout == 0 {
		cfg.VisibilityTimeout = 30 * time.Second
	}
	if cfg.PresenceTimeout == 0 {
		cfg.PresenceTimeout = 90 * time.Second
	}
	if cfg.SnapshotEvery == 0 {
		cfg.SnapshotEvery = 200000
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	switch {
	case cfg.RetentionAge < 0:
		return nil, fmt.Errorf("mailbus: RetentionAge %s is negative", cfg.RetentionAge)
	case cfg.RetentionCount < 0:
		return nil, fmt.Errorf("mailbus: RetentionCount %d is negative", cfg.RetentionCount)
	case cfg.RetentionBytes < 0:
		return nil, fmt.Errorf("mailbus: RetentionBytes %d is negative", cfg.RetentionBytes)
	case cfg.VisibilityTimeout < 0:
		return nil, fmt.Errorf("mailbus: VisibilityTimeout %s is negative", cfg.VisibilityTimeout)
	case cfg.PresenceTimeout < 0:
		return nil, fmt.Errorf("mailbus: PresenceTimeout %s is negative", cfg.PresenceTimeout)
	}
	j, err := journal.New(journal.Config{Store: cfg.Store, Now: cfg.Now, SegmentBytes: journal.SegmentBytes, Fence: cfg.Fence})
	if err != nil {
		return nil, fmt.Errorf("mailbus: %w", err)
	}
	b := &Bus{cfg: cfg, j: j, exs: map[string]*exchange{}, stop: make(chan struct{})}
	tick := min(max(cfg.VisibilityTimeout/4, 10*time.Millisecond), time.Second)
	if sweepEvery > 0 {
		tick = sweepEvery
	}
	b.wg.Add(1)
	go b.sweeper(tick)
	return b, nil
}

// replaced reports whether another process may have taken over the store
// this bus writes.
func (b *Bus) replaced() bool { return b.cfg.Fence != nil && b.cfg.Fence.Valid() != nil }

// Close stops the bus: new calls fail with ErrClosed, every connection is
// closed (WebSocket clients get StatusGoingAway), accepted writes are made
// durable, and background work stops. It is idempotent.
func (b *Bus) Close(ctx context.Context) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	exs := make([]*exchange, 0, len(b.exs))
	for _, ex := range b.exs {
		exs = append(exs, ex)
	}
	b.mu.Unlock()
	close(b.stop)
	for _, ex := range exs {
		ex.shutdown()
	}
	done := make(chan struct{})
	go func() {
		b.wg.Wait()
		b.conns.Wait()
		for _, ex := range exs {
			ex.committers.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return b.j.Close(ctx)
}

// exchange returns the loaded state of exchange id, replaying it from the
// store on first use. A load that found an object gone between listing
// and reading it (another process compacting the log: a replaced owner
// still running) reads again from the start.
func (b *Bus) exchange(ctx context.Context, id string) (*exchange, error) {
	for attempt := 1; ; attempt++ {
		ex, err := b.loadedExchange(ctx, id)
		if err == nil || attempt == 3 || !errors.Is(err, storage.ErrNotFound) {
			return ex, err
		}
	}
}

func (b *Bus) loadedExchange(ctx context.Context, id string) (*exchange, error) {
	if !ValidID(id) {
		return nil, fmt.Errorf("%w: exchange id %q", ErrInvalid, id)
	}
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil, ErrClosed
	}
	ex := b.exs[id]
	if ex == nil || ex.broken.Load() {
		prev := ex
		ex = newExchange(b, id)
		ex.prev = prev
		b.exs[id] = ex
		go ex.load()
	}
	b.mu.Unlock()
	select {
	case <-ex.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if ex.loadErr != nil {
		// Forget the failed attempt so a later call retries the load.
		b.mu.Lock()
		if b.exs[id] == ex {
			delete(b.exs, id)
		}
		b.mu.Unlock()
		return nil, ex.loadErr
	}
	return ex, nil
}

// Publish sends m from agent from in exchange exchangeID. A message with To
// set is direct; otherwise it goes to every agent of the exchange whose
// subscriptions match m.Type, and to every agent that never set its
// subscriptions, except the sender. A coordination.response whose payload
// is {"action":"ack","messageId":id} also acknowledges id for the sender,
// as Jetpack's HttpMailBus means it. It returns the stored
// message (id, timestamp and from filled in) once it is durable.
// Heartbeats update presence and reach live subscribers (a direct one, its
// target if connected) but are never stored.
func (b *Bus) Publish(ctx context.Context, exchangeID, from string, m Message) (Message, error) {
	m, result, err := b.publishAsync(ctx, exchangeID, from, m)
	if err != nil || result == nil {
		return m, err
	}
	return m, wait(ctx, result)
}

// publishAsync validates and queues m; the channel (nil for heartbeats)
// reports durability. Messages queued by one goroutine keep their order.
func (b *Bus) publishAsync(ctx context.Context, exchangeID, from string, m Message) (Message, <-chan error, error) {
	if !ValidID(from) {
		return Message{}, nil, fmt.Errorf("%w: agent id %q", ErrInvalid, from)
	}
	if err := normalize(&m, from, b.cfg.Now()); err != nil {
		return Message{}, nil, err
	}
	if m.To != "" && b.cfg.Directory != nil {
		ok, err := b.cfg.Directory.IsAgent(ctx, exchangeID, m.To)
		if err != nil {
			return Message{}, nil, fmt.Errorf("mailbus: look up agent %s: %w", m.To, err)
		}
		if !ok {
			return Message{}, nil, fmt.Errorf("%w: agent %q", ErrNotFound, m.To)
		}
	}
	ex, err := b.exchange(ctx, exchangeID)
	if err != nil {
		return Message{}, nil, err
	}
	if m.Type == TypeHeartbeat {
		ex.heartbeat(from, &m)
		return m, nil, nil
	}
	if id := ackedMessage(&m); id != "" {
		// Jetpack's HttpMailBus has no other way to acknowledge. The
		// message itself is still published, as HttpMailBus's worker did.
		if err := ex.ack(ctx, from, id); err != nil && !errors.Is(err, ErrNotFound) {
			return Message{}, nil, err
		}
	}
	result, err := ex.submit(&m)
	return m, result, err
}

// SendTo sends m to agent to only.
func (b *Bus) SendTo(ctx context.Context, exchangeID, from, to string, m Message) (Message, error) {
	if !ValidID(to) {
		return Message{}, fmt.Errorf("%w: target agent %q", ErrInvalid, to)
	}
	m.To = to
	return b.Publish(ctx, exchangeID, from, m)
}

// Acknowledge records that agent acknowledged its copy of message id. It
// stops redelivery of that copy; other recipients' copies are unaffected.
// Acknowledging twice is not an error.
func (b *Bus) Acknowledge(ctx context.Context, exchangeID, agentID, messageID string) error {
	if !ValidID(agentID) {
		return fmt.Errorf("%w: agent id %q", ErrInvalid, agentID)
	}
	ex, err := b.exchange(ctx, exchangeID)
	if err != nil {
		return err
	}
	return ex.ack(ctx, agentID, messageID)
}

// Subscribe adds patterns to agent's durable subscriptions.
func (b *Bus) Subscribe(ctx context.Context, exchangeID, agentID string, patterns ...string) error {
	return b.changeSubs(ctx, exchangeID, agentID, patterns, subAdd)
}

// Unsubscribe removes patterns from agent's durable subscriptions.
func (b *Bus) Unsubscribe(ctx context.Context, exchangeID, agentID string, patterns ...string) error {
	return b.changeSubs(ctx, exchangeID, agentID, patterns, subRemove)
}

// SetSubscriptions replaces agent's durable subscriptions.
func (b *Bus) SetSubscriptions(ctx context.Context, exchangeID, agentID string, patterns []string) error {
	return b.changeSubs(ctx, exchangeID, agentID, patterns, subSet)
}

// Subscriptions returns agent's durable subscriptions, sorted.
func (b *Bus) Subscriptions(ctx context.Context, exchangeID, agentID string) ([]string, error) {
	if !ValidID(agentID) {
		return nil, fmt.Errorf("%w: agent id %q", ErrInvalid, agentID)
	}
	ex, err := b.exchange(ctx, exchangeID)
	if err != nil {
		return nil, err
	}
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if a := ex.agents[agentID]; a != nil {
		return append([]string{}, a.subs...), nil
	}
	return []string{}, nil
}

func (b *Bus) changeSubs(ctx context.Context, exchangeID, agentID string, patterns []string, op subOp) error {
	if !ValidID(agentID) {
		return fmt.Errorf("%w: agent id %q", ErrInvalid, agentID)
	}
	if err := checkPatterns(patterns); err != nil {
		return err
	}
	ex, err := b.exchange(ctx, exchangeID)
	if err != nil {
		return err
	}
	return ex.changeSubs(ctx, agentID, patterns, op)
}

// maxSubscriptions bounds one agent's subscription patterns.
const maxSubscriptions = 256

func checkPatterns(patterns []string) error {
	for _, p := range patterns {
		if !ValidPattern(p) {
			return fmt.Errorf("%w: subscription pattern %q (want a type, a prefix like task.*, or *)", ErrInvalid, p)
		}
	}
	if len(patterns) > maxSubscriptions {
		return fmt.Errorf("%w: more than %d subscriptions", ErrInvalid, maxSubscriptions)
	}
	return nil
}

// Inbox returns up to limit stored messages of agent with Seq > since, in
// order, and the sequence to pass as since next time. A negative since
// means "after the last position this agent confirmed". Reading with since
// confirms everything up to since, and unacknowledged ackRequired messages
// at or below since are returned again once their visibility timeout ran
// out.
func (b *Bus) Inbox(ctx context.Context, exchangeID, agentID string, since int64, limit int) ([]Message, uint64, error) {
	if !ValidID(agentID) {
		return nil, 0, fmt.Errorf("%w: agent id %q", ErrInvalid, agentID)
	}
	ex, err := b.exchange(ctx, exchangeID)
	if err != nil {
		return nil, 0, err
	}
	return ex.inbox(agentID, since, limit)
}

// Heartbeat records agent's liveness without storing anything.
func (b *Bus) Heartbeat(ctx context.Context, exchangeID, agentID string) error {
	m := Message{Type: TypeHeartbeat, Payload: heartbeatPayload(b.cfg.Now())}
	_, err := b.Publish(ctx, exchangeID, agentID, m)
	return err
}

func heartbeatPayload(now time.Time) json.RawMessage {
	p, _ := json.Marshal(map[string]string{"timestamp": now.UTC().Format(time.RFC3339Nano), "status": "alive"})
	return p
}

// Presence describes one agent's liveness.
type Presence struct {
	AgentID string `json:"agentId"`
	// Online is true while the agent is connected or heartbeating and its
	// last heartbeat (or connect) is within the presence timeout.
	Online bool `json:"online"`
	// Connected is true while a WebSocket or in-process session is open.
	Connected     bool       `json:"connected"`
	LastHeartbeat *time.Time `json:"lastHeartbeat,omitempty"`
	// ConnectedAt is when its latest connection opened.
	ConnectedAt *time.Time `json:"connectedAt,omitempty"`
	// Pending is how many stored messages the agent has not been sent yet
	// (on the connection furthest ahead, while it has any).
	Pending uint64 `json:"pending"`
}

// Presence lists the agents the bus knows in an exchange, sorted by id.
func (b *Bus) Presence(ctx context.Context, exchangeID string) ([]Presence, error) {
	ex, err := b.exchange(ctx, exchangeID)
	if err != nil {
		return nil, err
	}
	return ex.presence(), nil
}

// Touch makes the bus aware of an authenticated agent, so that presence
// lists it.
func (b *Bus) Touch(ctx context.Context, exchangeID, agentID string) error {
	if !ValidID(agentID) {
		return fmt.Errorf("%w: agent id %q", ErrInvalid, agentID)
	}
	ex, err := b.exchange(ctx, exchangeID)
	if err != nil {
		return err
	}
	ex.mu.Lock()
	ex.join(agentID)
	ex.mu.Unlock()
	return nil
}

// sweepEvery, when positive, overrides the sweeper's period of the buses
// New makes from then on; tests that sweep by hand set it long.
var sweepEvery time.Duration

// sweeper redelivers unacknowledged messages and applies age retention.
func (b *Bus) sweeper(tick time.Duration) {
	defer b.wg.Done()
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		b.mu.Lock()
		exs := make([]*exchange, 0, len(b.exs))
		for _, ex := range b.exs {
			exs = append(exs, ex)
		}
		b.mu.Unlock()
		for _, ex := range exs {
			select {
			case <-ex.ready:
				if ex.loadErr == nil {
					ex.sweep()
				}
			default:
			}
		}
	}
}

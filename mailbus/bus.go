package mailbus

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
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
	// Nil keeps everything in memory only (tests, embedding without
	// persistence): nothing survives a restart.
	Store storage.Store
	// Directory, when set, is asked whether the target of a direct message
	// exists. Nil accepts any valid agent id and keeps its mail until it
	// connects or retention drops it.
	Directory Directory
	// RetentionAge drops stored messages older than this. Zero means 7 days.
	RetentionAge time.Duration
	// RetentionCount caps each agent's inbox; the oldest messages go first.
	// Zero means 10000.
	RetentionCount int
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
	// Logger receives operational errors. Zero means slog.Default().
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

// New starts a bus on cfg.Store.
func New(cfg Config) (*Bus, error) {
	if cfg.RetentionAge == 0 {
		cfg.RetentionAge = 7 * 24 * time.Hour
	}
	if cfg.RetentionCount == 0 {
		cfg.RetentionCount = 10000
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
	case cfg.VisibilityTimeout < 0:
		return nil, fmt.Errorf("mailbus: VisibilityTimeout %s is negative", cfg.VisibilityTimeout)
	case cfg.PresenceTimeout < 0:
		return nil, fmt.Errorf("mailbus: PresenceTimeout %s is negative", cfg.PresenceTimeout)
	}
	b := &Bus{cfg: cfg, exs: map[string]*exchange{}, stop: make(chan struct{})}
	if cfg.Store != nil {
		j, err := journal.New(journal.Config{Store: cfg.Store, Now: cfg.Now, SegmentBytes: journal.SegmentBytes})
		if err != nil {
			return nil, fmt.Errorf("mailbus: %w", err)
		}
		b.j = j
	}
	b.wg.Add(1)
	go b.sweeper()
	return b, nil
}

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
	if b.j != nil {
		return b.j.Close(ctx)
	}
	return nil
}

// exchange returns the loaded state of exchange id, replaying it from the
// store on first use.
func (b *Bus) exchange(ctx context.Context, id string) (*exchange, error) {
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
// subscriptions match m.Type, except the sender. It returns the stored
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
		return slices.Clone(a.subs), nil
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
	ConnectedAt   *time.Time `json:"connectedAt,omitempty"`
	// Pending is how many stored messages the agent has not been sent yet.
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
	ex.agent(agentID)
	ex.mu.Unlock()
	return nil
}

// sweeper redelivers unacknowledged messages and applies age retention.
func (b *Bus) sweeper() {
	defer b.wg.Done()
	tick := min(max(b.cfg.VisibilityTimeout/4, 10*time.Millisecond), time.Second)
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

// ---- exchange state ----

type subOp int

const (
	subAdd subOp = iota
	subRemove
	subSet
)

// stored is one accepted message, shared by all its recipients' inboxes.
type stored struct {
	msg    Message // immutable once stored
	raw    []byte  // JSON of msg without seq or ack fields
	recv   time.Time
	failed atomic.Bool // the journal write failed: never deliver
}

// ackState is the per-recipient acknowledgement state of an ackRequired
// message.
type ackState struct {
	ackedAt time.Time
	due     time.Time // redelivery deadline once sent; zero while unsent or queued
}

// entry is one inbox slot: the number of its message in the exchange's
// msgTable, and whether the message requires an acknowledgement (its state
// is then in agent.acks). It holds no pointer, which is what keeps retained
// mail out of the garbage collector's marking.
type entry uint64

func newEntry(num uint64, ack bool) entry {
	e := entry(num << 1)
	if ack {
		e |= 1
	}
	return e
}

func (e entry) num() uint64    { return uint64(e) >> 1 }
func (e entry) needsAck() bool { return e&1 != 0 }

// agent is one agent's inbox and presence. Lock order: exchange.mu, then
// agent.mu.
type agent struct {
	id   string
	subs []string // guarded by exchange.mu

	tab      *msgTable // the exchange's
	mu       sync.Mutex
	first    uint64 // seq of ents[0]; seqs start at 1
	ents     []entry
	durable  uint64               // highest seq known durable
	pending  map[string]uint64    // message id → seq of ackRequired entries
	acks     map[uint64]*ackState // seq → state of ackRequired entries
	cursor   uint64               // highest seq handed to a session
	savedCur uint64               // cursor last written to the journal
	sess     *session
	beat     time.Time // last heartbeat
	connAt   time.Time
}

func (a *agent) next() uint64 { return a.first + uint64(len(a.ents)) }

// at returns the message of inbox entry seq and, when the message requires
// an acknowledgement, the entry's state; st is nil when seq is not in the
// inbox. Caller holds a.mu.
func (a *agent) at(seq uint64) (st *stored, ack *ackState) {
	if seq < a.first || seq >= a.next() {
		return nil, nil
	}
	e := a.ents[seq-a.first]
	if e.needsAck() {
		ack = a.acks[seq]
	}
	return a.tab.get(e.num()), ack
}

type commit struct {
	done  <-chan error
	apply func(error)
	err   error // received from done ahead of time (ready)
	got   bool
}

// ready reports whether c's record is durable (or failed) already, without
// waiting.
func (c *commit) ready() bool {
	if c.done == nil || c.got {
		return true
	}
	select {
	case c.err = <-c.done:
		c.got = true
		return true
	default:
		return false
	}
}

type exchange struct {
	b       *Bus
	id      string
	ready   chan struct{}
	loadErr error

	// A journal write that fails breaks the exchange: memory then holds
	// seqs the journal does not, and a restart would number what follows
	// differently from what agents were told. It stops taking writes, its
	// sessions are kicked, and the next use loads a fresh exchange from
	// storage once this one's writes and snapshot have finished (prev).
	broken atomic.Bool
	prev   *exchange

	mu          sync.Mutex
	closed      bool
	failure     error // why it broke; closed is set too
	lsn         uint64
	msgs        msgTable
	agents      map[string]*agent
	routes      map[string][]*agent // message type → subscribed agents
	sinceSnap   int
	snapEntries int // inbox entries in the last snapshot
	snapping    bool
	commits     chan *commit

	committers sync.WaitGroup

	// Owned by the committer goroutine.
	toWake   []*session
	lastWake int    // len(toWake) at the last wake: the next one's likely size
	wakeRun  uint64 // sessions with wokenIn == wakeRun are in toWake
}

func newExchange(b *Bus, id string) *exchange {
	return &exchange{
		b: b, id: id, ready: make(chan struct{}),
		agents:  map[string]*agent{},
		commits: make(chan *commit, 1<<16),
		wakeRun: 1, // not a new session's wokenIn
	}
}

func (ex *exchange) partition() string { return "mailbus/" + ex.id + "/log" }

// agent returns (creating) the state of id. Caller holds ex.mu.
func (ex *exchange) agent(id string) *agent {
	a := ex.agents[id]
	if a == nil {
		a = &agent{id: id, tab: &ex.msgs, first: 1}
		ex.agents[id] = a
	}
	return a
}

// committer applies the effects of journal records in journal order once
// each is durable, so an agent never sees seq n+1 before seq n is safe.
//
// Sessions to wake are collected (wakeLater) and woken once the commits
// whose records are already durable have all been applied: those of one
// group commit. A connection then gets all of their messages in one write.
func (ex *exchange) committer() {
	defer ex.committers.Done()
	var next *commit
	var failure error
	run := 0 // commits applied since the last wake
	for {
		c := next
		next = nil
		run++
		if c == nil {
			var ok bool
			if c, ok = <-ex.commits; !ok {
				return
			}
		}
		err := c.err
		if c.done != nil && !c.got {
			err = <-c.done
		}
		if failure == nil && err != nil {
			failure = err
			ex.fail(err)
		}
		if failure != nil && err == nil {
			// Durable, but ordered after a write that is not: a restart
			// would give it other seqs than memory did. Its sender is
			// told it failed, as at-least-once allows.
			err = fmt.Errorf("%w (after an earlier write failed: %v)", errReload, failure)
		}
		c.apply(err)
		select {
		case n, ok := <-ex.commits:
			// Bounded, so that a committer that never catches up with
			// the journal still wakes sessions.
			if ok && n.ready() && run < maxWakeRun {
				next = n
				continue
			}
			ex.wake()
			run = 0
			if !ok {
				return
			}
			next = n
		default:
			ex.wake()
			run = 0
		}
	}
}

// maxWakeRun is the most commits applied between two wakes.
const maxWakeRun = 256

// wakeLater has s woken at the end of the committer's current run of
// durable commits. Only the committer calls it.
func (ex *exchange) wakeLater(s *session) {
	if s.wokenIn != ex.wakeRun {
		s.wokenIn = ex.wakeRun
		if ex.toWake == nil {
			ex.toWake = make([]*session, 0, ex.lastWake)
		}
		ex.toWake = append(ex.toWake, s)
	}
}

func (ex *exchange) wake() {
	ss := ex.toWake
	ex.toWake = nil // notifyAll's goroutines keep ss
	ex.lastWake = len(ss)
	ex.wakeRun++
	// The committer is one of ex.committers, so adding to it cannot race
	// with shutdown's Wait.
	notifyAll(ss, &ex.committers)
}

// errReload is why sessions of a broken exchange end, and what writes
// ordered after its failed one report.
var errReload = errors.New("mailbus: exchange reloading after a storage failure")

// fail breaks the exchange (see exchange.broken). Only the committer calls
// it.
func (ex *exchange) fail(err error) {
	ex.b.cfg.Logger.Error("mailbus: journal write failed; the exchange reloads from storage", "exchange", ex.id, "err", err)
	ex.close(err, errReload)
}

func (ex *exchange) shutdown() {
	<-ex.ready
	ex.close(nil, ErrClosed)
}

// close stops taking writes, has the committer end once it has applied
// those queued, and ends every session with why. A failure marks the
// exchange broken. Closing twice does nothing.
func (ex *exchange) close(failure, why error) {
	ex.mu.Lock()
	if ex.closed {
		ex.mu.Unlock()
		return
	}
	ex.closed = true
	if failure != nil {
		ex.failure = failure
		ex.broken.Store(true)
	}
	var sessions []*session
	for _, a := range ex.agents {
		a.mu.Lock()
		if a.sess != nil {
			sessions = append(sessions, a.sess)
		}
		a.mu.Unlock()
	}
	if ex.loadErr == nil {
		close(ex.commits)
	}
	ex.mu.Unlock()
	for _, s := range sessions {
		s.kick(why)
	}
}

// record is one journal line. Short keys keep the journal small.
type record struct {
	LSN   uint64   `json:"l"`
	Kind  string   `json:"k"` // m message, a ack, s subscriptions, c cursor
	Agent string   `json:"a,omitempty"`
	Msg   *Message `json:"m,omitempty"`
	Types []string `json:"t,omitempty"`
	ID    string   `json:"i,omitempty"`
	Seq   uint64   `json:"q,omitempty"`
	Time  int64    `json:"ts,omitempty"` // unix ms

	raw []byte // replay only: the encoded message
}

// write queues rec in the journal and returns the channel that reports
// its durability. Caller holds ex.mu, which is what makes journal order
// equal to the order of state changes, and must then call ex.commit.
func (ex *exchange) write(rec *record) (<-chan error, error) {
	if ex.closed {
		if ex.failure != nil {
			return nil, fmt.Errorf("%w: %v", errReload, ex.failure)
		}
		return nil, ErrClosed
	}
	j := ex.b.j
	if j == nil {
		ex.lsn++
		return nil, nil
	}
	rec.LSN = ex.lsn + 1
	var line []byte
	if rec.raw != nil {
		// Messages are already encoded once for delivery; splice that
		// encoding into the record instead of encoding it again.
		line = make([]byte, 0, len(rec.raw)+64)
		line = append(line, `{"l":`...)
		line = strconv.AppendUint(line, rec.LSN, 10)
		line = append(line, `,"k":"m","ts":`...)
		line = strconv.AppendInt(line, rec.Time, 10)
		line = append(line, `,"m":`...)
		line = append(line, rec.raw...)
		line = append(line, '}')
	} else {
		var err error
		if line, err = json.Marshal(rec); err != nil {
			return nil, fmt.Errorf("mailbus: encode record: %w", err)
		}
	}
	done, err := j.AppendAsync(ex.partition(), line)
	if err != nil {
		if errors.Is(err, journal.ErrClosed) {
			return nil, ErrClosed
		}
		return nil, fmt.Errorf("mailbus: journal: %w", err)
	}
	ex.lsn++
	ex.sinceSnap++
	return done, nil
}

// commit runs apply, in journal order, once done reports. Caller holds
// ex.mu.
func (ex *exchange) commit(done <-chan error, apply func(error)) {
	ex.commits <- &commit{done: done, apply: apply}
}

func wait(ctx context.Context, result <-chan error) error {
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// submit stores m and routes it; the returned channel reports once it is
// durable. The order of submit calls is the delivery order.
func (ex *exchange) submit(m *Message) (<-chan error, error) {
	st, err := newStored(m, ex.b.cfg.Now())
	if err != nil {
		return nil, err
	}
	result := make(chan error, 1)
	ex.mu.Lock()
	if m.AckRequired {
		if who := ex.pendingID(m); who != "" {
			ex.mu.Unlock()
			return nil, fmt.Errorf("%w: agent %s has not acknowledged an earlier message with id %q", ErrConflict, who, m.ID)
		}
	}
	done, err := ex.write(&record{Kind: "m", Msg: m, Time: st.recv.UnixMilli(), raw: st.raw})
	if err != nil {
		ex.mu.Unlock()
		return nil, err
	}
	recips := ex.applyMessage(st)
	ex.commit(done, func(err error) {
		if err != nil {
			st.failed.Store(true)
			ex.b.cfg.Logger.Error("mailbus: journal write failed", "exchange", ex.id, "err", err)
			err = fmt.Errorf("mailbus: store message: %w", err)
		}
		// Inboxes first, so a sender that reads one after its ack sees
		// the message; the sender is told before the subscribers are
		// woken, because waking a thousand takes longer.
		for _, r := range recips {
			r.a.mu.Lock()
			if r.seq > r.a.durable {
				r.a.durable = r.seq
			}
			if s := r.a.sess; s != nil {
				ex.wakeLater(s)
			}
			r.a.mu.Unlock()
		}
		result <- err
	})
	snap := ex.wantSnapshot()
	ex.mu.Unlock()
	if snap {
		go ex.snapshot()
	}
	return result, nil
}

func newStored(m *Message, recv time.Time) (*stored, error) {
	if m.Timestamp.Year() < 0 || m.Timestamp.Year() > 9999 {
		return nil, fmt.Errorf("%w: timestamp year outside 0..9999", ErrInvalid)
	}
	return &stored{msg: *m, raw: m.appendJSON(nil), recv: recv}, nil
}

// pendingID returns a recipient of m that still has to acknowledge a
// message with m's id, or "". Caller holds ex.mu.
func (ex *exchange) pendingID(m *Message) string {
	check := func(a *agent) bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		seq, ok := a.pending[m.ID]
		if !ok {
			return false
		}
		_, ack := a.at(seq)
		return ack != nil && ack.ackedAt.IsZero()
	}
	if m.To != "" {
		if a := ex.agents[m.To]; a != nil && check(a) {
			return a.id
		}
		return ""
	}
	for _, a := range ex.subscribers(m.Type) {
		if a.id != m.From && check(a) {
			return a.id
		}
	}
	return ""
}

type recipient struct {
	a   *agent
	seq uint64
}

// applyMessage puts st in its recipients' inboxes. It is the same code for
// live traffic and journal replay, so replay assigns the same seqs. Caller
// holds ex.mu.
func (ex *exchange) applyMessage(st *stored) []recipient {
	m := &st.msg
	num := ex.msgs.add(st)
	if m.To != "" {
		a := ex.agent(m.To)
		ex.msgs.ref(num, 1)
		return []recipient{{a, ex.deliver(a, num, st)}}
	}
	subs := ex.subscribers(m.Type)
	out := make([]recipient, 0, len(subs))
	for _, a := range subs {
		if a.id != m.From {
			out = append(out, recipient{a, ex.deliver(a, num, st)})
		}
	}
	ex.msgs.ref(num, len(out))
	return out
}

// subscribers returns the agents whose subscriptions match typ. Caller
// holds ex.mu. Matching every agent's patterns on every broadcast was a
// third of the time a broadcast held ex.mu; the result is kept per type
// until a subscription changes (setSubs).
func (ex *exchange) subscribers(typ string) []*agent {
	if as, ok := ex.routes[typ]; ok {
		return as
	}
	var as []*agent
	for _, a := range ex.agents {
		if matchAny(a.subs, typ) {
			as = append(as, a)
		}
	}
	// Types are chosen by clients: bound what they can make us keep.
	if ex.routes == nil || len(ex.routes) >= maxRoutes {
		ex.routes = map[string][]*agent{}
	}
	ex.routes[typ] = as
	return as
}

// maxRoutes bounds exchange.routes.
const maxRoutes = 256

// setSubs replaces a's subscriptions. Caller holds ex.mu.
func (ex *exchange) setSubs(a *agent, subs []string) {
	a.subs = subs
	ex.routes = nil
}

func matchAny(patterns []string, t string) bool {
	for _, p := range patterns {
		if Match(p, t) {
			return true
		}
	}
	return false
}

// needAck records that entry seq, message id, awaits an acknowledgement.
// The maps are made on first use: most agents never get such mail, and
// ten thousand idle connections should not each carry two empty maps.
// Caller holds a.mu.
func (a *agent) needAck(id string, seq uint64, ack *ackState) {
	if a.pending == nil {
		a.pending, a.acks = map[string]uint64{}, map[uint64]*ackState{}
	}
	a.pending[id] = seq
	a.acks[seq] = ack
}

// deliver appends message num, st, to a's inbox and applies count
// retention. The caller counts the reference (msgTable.ref).
func (ex *exchange) deliver(a *agent, num uint64, st *stored) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	seq := a.next()
	if st.msg.AckRequired {
		a.needAck(st.msg.ID, seq, &ackState{})
	}
	a.ents = append(a.ents, newEntry(num, st.msg.AckRequired))
	if over := len(a.ents) - ex.b.cfg.RetentionCount; over > 0 {
		a.drop(over)
	}
	return seq
}

// drop removes the n oldest entries. Caller holds a.mu.
func (a *agent) drop(n int) {
	for i, e := range a.ents[:n] {
		if e.needsAck() {
			seq := a.first + uint64(i)
			id := a.tab.get(e.num()).msg.ID
			if s, ok := a.pending[id]; ok && s == seq {
				delete(a.pending, id)
			}
			delete(a.acks, seq)
		}
		a.tab.unref(e.num())
	}
	a.ents = a.ents[n:]
	a.first += uint64(n)
	if a.durable < a.first-1 {
		a.durable = a.first - 1
	}
}

func (ex *exchange) ack(ctx context.Context, agentID, id string) error {
	result, err := ex.ackAsync(agentID, id)
	if err != nil || result == nil {
		return err
	}
	return wait(ctx, result)
}

// ackAsync records the acknowledgement; the channel (nil when there was
// nothing to do) reports once it is durable.
func (ex *exchange) ackAsync(agentID, id string) (<-chan error, error) {
	now := ex.b.cfg.Now()
	ex.mu.Lock()
	defer ex.mu.Unlock()
	a := ex.agents[agentID]
	if a == nil {
		return nil, fmt.Errorf("%w: no acknowledgeable message %q for agent %s", ErrNotFound, id, agentID)
	}
	a.mu.Lock()
	_, ack := a.at(a.pending[id])
	if ack == nil {
		a.mu.Unlock()
		return nil, fmt.Errorf("%w: no acknowledgeable message %q for agent %s", ErrNotFound, id, agentID)
	}
	acked := !ack.ackedAt.IsZero()
	a.mu.Unlock()
	if acked {
		return nil, nil
	}
	done, err := ex.write(&record{Kind: "a", Agent: agentID, ID: id, Time: now.UnixMilli()})
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	ack.ackedAt = now
	a.mu.Unlock()
	result := make(chan error, 1)
	ex.commit(done, func(err error) {
		if err != nil {
			err = fmt.Errorf("mailbus: store acknowledgement: %w", err)
		}
		result <- err
	})
	return result, nil
}

// applyAck is the replay side of ack.
func (ex *exchange) applyAck(agentID, id string, at time.Time) {
	a := ex.agent(agentID)
	a.mu.Lock()
	if _, ack := a.at(a.pending[id]); ack != nil && ack.ackedAt.IsZero() {
		ack.ackedAt = at
	}
	a.mu.Unlock()
}

func (ex *exchange) changeSubs(ctx context.Context, agentID string, patterns []string, op subOp) error {
	result := make(chan error, 1)
	ex.mu.Lock()
	a := ex.agent(agentID)
	var next []string
	switch op {
	case subSet:
		next = slices.Clone(patterns)
	case subAdd:
		next = append(slices.Clone(a.subs), patterns...)
	case subRemove:
		next = slices.DeleteFunc(slices.Clone(a.subs), func(s string) bool { return slices.Contains(patterns, s) })
	}
	slices.Sort(next)
	next = slices.Compact(next)
	if len(next) > maxSubscriptions {
		ex.mu.Unlock()
		return fmt.Errorf("%w: more than %d subscriptions", ErrInvalid, maxSubscriptions)
	}
	if slices.Equal(next, a.subs) {
		ex.mu.Unlock()
		return nil
	}
	done, err := ex.write(&record{Kind: "s", Agent: agentID, Types: next})
	if err != nil {
		ex.mu.Unlock()
		return err
	}
	ex.setSubs(a, next)
	ex.commit(done, func(err error) {
		if err != nil {
			err = fmt.Errorf("mailbus: store subscriptions: %w", err)
		}
		result <- err
	})
	ex.mu.Unlock()
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// saveCursor journals a's delivery cursor without waiting; losing the
// latest value in a crash only causes redelivery, which receivers dedupe.
func (ex *exchange) saveCursor(a *agent) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	a.mu.Lock()
	cur, saved := a.cursor, a.savedCur
	a.savedCur = cur
	a.mu.Unlock()
	if cur <= saved || ex.closed {
		return
	}
	if done, err := ex.write(&record{Kind: "c", Agent: a.id, Seq: cur}); err == nil {
		ex.commit(done, func(error) {})
	}
}

func (ex *exchange) heartbeat(from string, m *Message) {
	now := ex.b.cfg.Now()
	st, err := newStored(m, now)
	if err != nil {
		return
	}
	ex.mu.Lock()
	a := ex.agent(from)
	a.mu.Lock()
	a.beat = now
	a.mu.Unlock()
	targets := ex.subscribers(m.Type)
	if m.To != "" {
		targets = nil
		if o := ex.agents[m.To]; o != nil {
			targets = []*agent{o}
		}
	}
	var live []*session
	for _, o := range targets {
		if o == a {
			continue
		}
		o.mu.Lock()
		if s := o.sess; s != nil && len(s.live) < 1024 {
			s.live = append(s.live, st)
			live = append(live, s)
		}
		o.mu.Unlock()
	}
	ex.mu.Unlock()
	notifyAll(live, nil)
}

func (ex *exchange) inbox(agentID string, since int64, limit int) ([]Message, uint64, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	now := ex.b.cfg.Now()
	ex.mu.Lock()
	a := ex.agent(agentID)
	ex.mu.Unlock()
	a.mu.Lock()
	from := a.cursor
	if since >= 0 {
		from = uint64(since)
		if from > a.cursor && from <= a.durable {
			a.cursor = from
		}
	}
	var out []Message
	// Unacknowledged ackRequired messages the caller already saw come back
	// once their visibility timeout expired.
	for _, seq := range a.sortedPending() {
		if seq > from || len(out) >= limit {
			break
		}
		st, ack := a.at(seq)
		if ack == nil || !ack.ackedAt.IsZero() || st.failed.Load() {
			continue
		}
		if ack.due.IsZero() || now.After(ack.due) {
			ack.due = now.Add(ex.b.cfg.VisibilityTimeout)
			out = append(out, a.view(seq, st, ack))
		}
	}
	seq := max(from+1, a.first)
	for ; seq <= a.durable && len(out) < limit; seq++ {
		st, ack := a.at(seq)
		if st.failed.Load() {
			continue
		}
		if ack != nil && ack.ackedAt.IsZero() {
			ack.due = now.Add(ex.b.cfg.VisibilityTimeout)
		}
		out = append(out, a.view(seq, st, ack))
	}
	a.mu.Unlock()
	if since >= 0 {
		ex.saveCursor(a)
	}
	return out, seq - 1, nil
}

// view returns the recipient's copy of entry seq. Caller holds a.mu.
func (a *agent) view(seq uint64, st *stored, ack *ackState) Message {
	m := st.msg
	m.Seq = seq
	if ack != nil && !ack.ackedAt.IsZero() {
		t := ack.ackedAt.UTC()
		m.AckedAt, m.AckedBy = &t, a.id
	}
	return m
}

func (a *agent) sortedPending() []uint64 {
	out := make([]uint64, 0, len(a.pending))
	for _, s := range a.pending {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func (ex *exchange) presence() []Presence {
	now := ex.b.cfg.Now()
	ex.mu.Lock()
	agents := make([]*agent, 0, len(ex.agents))
	for _, a := range ex.agents {
		agents = append(agents, a)
	}
	ex.mu.Unlock()
	out := make([]Presence, 0, len(agents))
	for _, a := range agents {
		a.mu.Lock()
		p := Presence{AgentID: a.id, Connected: a.sess != nil}
		last := a.beat
		if !a.beat.IsZero() {
			t := a.beat.UTC()
			p.LastHeartbeat = &t
		}
		if a.sess != nil {
			t := a.connAt.UTC()
			p.ConnectedAt = &t
			if a.connAt.After(last) {
				last = a.connAt
			}
			if a.durable >= a.sess.next {
				p.Pending = a.durable - a.sess.next + 1
			}
		} else if a.durable > a.cursor {
			p.Pending = a.durable - max(a.cursor, a.first-1)
		}
		p.Online = !last.IsZero() && now.Sub(last) < ex.b.cfg.PresenceTimeout
		a.mu.Unlock()
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AgentID < out[j].AgentID })
	return out
}

// sweep queues redeliveries of overdue unacknowledged messages and applies
// age retention.
func (ex *exchange) sweep() {
	now := ex.b.cfg.Now()
	cutoff := now.Add(-ex.b.cfg.RetentionAge)
	ex.mu.Lock()
	// What the last sweep and count retention dropped, unless a snapshot
	// is still looking messages up.
	if !ex.snapping {
		ex.msgs.trim()
	}
	agents := make([]*agent, 0, len(ex.agents))
	for _, a := range ex.agents {
		agents = append(agents, a)
	}
	ex.mu.Unlock()
	for _, a := range agents {
		a.mu.Lock()
		n := 0
		for n < len(a.ents) && a.first+uint64(n) <= a.durable && a.tab.get(a.ents[n].num()).recv.Before(cutoff) {
			n++
		}
		if n > 0 {
			a.drop(n)
		}
		s := a.sess
		queued := false
		if s != nil && len(a.pending) > 0 {
			for _, seq := range a.sortedPending() {
				_, ack := a.at(seq)
				if ack == nil || !ack.ackedAt.IsZero() || ack.due.IsZero() || seq >= s.next {
					continue
				}
				if now.After(ack.due) {
					ack.due = time.Time{}
					s.redeliver = append(s.redeliver, seq)
					queued = true
				}
			}
		}
		a.mu.Unlock()
		if queued {
			s.notify()
		}
	}
}

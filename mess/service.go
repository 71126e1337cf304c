package mess

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// Config configures a Service. Zero values get the documented defaults.
type Config struct {
	// Store holds the event log, executors and exchange records. Zero
	// means storage.NewMemory(): state lasts as long as the process.
	Store storage.Store
	// Fence, when set, is the owner this service writes Store under
	// because other processes can reach it: every exchange is claimed and
	// its event log fenced before it is read, an update of an executor or
	// exchange record is acknowledged only once the exchange's owner
	// record still shows this owner, and nothing is acknowledged once
	// Fence says this process may have been replaced (see storage.Fence).
	Fence storage.Fence
	// Now is the clock. Zero means time.Now.
	Now func() time.Time
	// Logger receives operational messages. Zero means slog.Default().
	Logger *slog.Logger

	// OpenRegistration lets anyone register in any exchange without an
	// invite. Off by default: the first registrant of an exchange becomes its
	// owner and everyone after needs an invite or the RegistrationToken.
	OpenRegistration bool
	// OpenExchanges are exchanges that accept registrations without invites.
	OpenExchanges []string
	// RegistrationToken, when set, lets a registration that presents it join
	// any exchange (or create one).
	RegistrationToken string
	// AllowedExchanges, when non-empty, is the only exchanges that may exist.
	AllowedExchanges []string
	// MaxExchanges caps how many exchanges the server holds; registering
	// a new one past it is ErrRateLimited. Zero means 10,000; negative
	// means no cap.
	MaxExchanges int

	// IdempotencyTTL is how long an Idempotency-Key is remembered. Zero means 24h.
	IdempotencyTTL time.Duration
	// EventBuffer is how many recent events each exchange keeps for stream
	// resumption. Zero means 10,000.
	EventBuffer int
	// EventBufferBytes bounds the same buffer by the size of its events'
	// payloads. Zero means 8 MiB.
	EventBufferBytes int
	// MaxMessageBytes is the most one request or message may hold in
	// memory besides its attachments (the request's fields; a message's
	// blocks and note). Zero means 256 KiB.
	MaxMessageBytes int
	// MaxAttachmentBytes is the most attachment data one member of an
	// exchange may have stored, counted as sent (base64). Zero means
	// 256 MiB; negative means no limit.
	MaxAttachmentBytes int64
	// ExpiryInterval is how often needed_by deadlines are checked. Zero means 1s.
	ExpiryInterval time.Duration
	// SnapshotEvery is how many events an exchange gets before a snapshot
	// of its state is written, so that start-up reads the snapshot and the
	// events after it rather than the whole log (see snapshot.go). A
	// snapshot also waits for a quarter of the events the previous one
	// covered. Zero means 10,000; negative means no snapshots are written
	// or read.
	SnapshotEvery int
	// SnapshotInterval is how long an exchange's newest events may go
	// without a snapshot. Zero means 10 minutes.
	SnapshotInterval time.Duration
	// ValidateProfile, when set, checks notification, hook and preference
	// configs as a profile is registered or updated; its error is reported
	// to the caller as invalid input.
	ValidateProfile func(notifications, hooks, preferences json.RawMessage) error
}

// Service is the MESS exchange: threads, executors and their keys for any
// number of exchanges. State is an in-memory projection of the event log
// rebuilt by New; every change is durable before its method returns.
type Service struct {
	cfg     Config
	store   storage.Store
	journal *journal.Journal
	log     *slog.Logger

	mu        sync.RWMutex
	exchanges map[string]*exchange
	keys      map[[32]byte]keyRef
	watches   map[[32]byte]map[*keyWatch]struct{} // under mu, like keys

	listenMu  sync.RWMutex
	listeners []func(Event)

	nExchanges atomic.Int64 // exchanges with a record, for MaxExchanges

	keyFloor atomic.Uint64  // ms; the journal names objects after it (journalNow)
	fenced   sync.Map       // exchange id → true: its event log was fenced by load
	snapDue  chan *exchange // exchanges whose snapshot fell due

	closed   atomic.Bool
	stop     chan struct{}
	bg       sync.WaitGroup
	bgCtx    context.Context // ends when Close gives up waiting
	bgCancel context.CancelFunc
	openSet  map[string]bool
	allowed  map[string]bool
}

// New opens the service on cfg.Store and rebuilds its state from the log.
// A zero Config works: an in-memory store, closed registration and the
// defaults above. Call Close when done.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Store == nil {
		cfg.Store = storage.NewMemory()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.IdempotencyTTL <= 0 {
		cfg.IdempotencyTTL = 24 * time.Hour
	}
	if cfg.EventBuffer <= 0 {
		cfg.EventBuffer = 10000
	}
	if cfg.EventBufferBytes <= 0 {
		cfg.EventBufferBytes = 8 << 20
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 256 << 10
	}
	if cfg.MaxAttachmentBytes == 0 {
		cfg.MaxAttachmentBytes = 256 << 20
	}
	if cfg.ExpiryInterval <= 0 {
		cfg.ExpiryInterval = time.Second
	}
	if cfg.MaxExchanges == 0 {
		cfg.MaxExchanges = 10000
	}
	if cfg.SnapshotEvery == 0 {
		cfg.SnapshotEvery = 10000
	}
	if cfg.SnapshotInterval <= 0 {
		cfg.SnapshotInterval = 10 * time.Minute
	}
	s := &Service{
		cfg:       cfg,
		store:     cfg.Store,
		log:       cfg.Logger,
		exchanges: map[string]*exchange{},
		keys:      map[[32]byte]keyRef{},
		watches:   map[[32]byte]map[*keyWatch]struct{}{},
		stop:      make(chan struct{}),
		snapDue:   make(chan *exchange, 64),
		openSet:   map[string]bool{},
		allowed:   map[string]bool{},
	}
	for _, id := range cfg.OpenExchanges {
		if !ValidID(id) {
			return nil, fmt.Errorf("mess: OpenExchanges: invalid exchange id %q", id)
		}
		s.openSet[id] = true
	}
	for _, id := range cfg.AllowedExchanges {
		if !ValidID(id) {
			return nil, fmt.Errorf("mess: AllowedExchanges: invalid exchange id %q", id)
		}
		s.allowed[id] = true
	}
	j, err := journal.New(journal.Config{Store: cfg.Store, Now: s.journalNow, Fence: cfg.Fence, Dated: true, OnLanded: s.landed})
	if err != nil {
		return nil, err
	}
	s.journal = j
	if err := s.load(ctx); err != nil {
		j.Close(ctx)
		return nil, err
	}
	s.bgCtx, s.bgCancel = context.WithCancel(context.WithoutCancel(ctx))
	s.bg.Add(1)
	go s.sweep()
	if cfg.SnapshotEvery >= 0 {
		s.bg.Add(1)
		go s.snapshotLoop()
	}
	return s, nil
}

// Close stops background work and waits for writes in flight. It is idempotent.
func (s *Service) Close(ctx context.Context) error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.stop)
	bgDone := make(chan struct{})
	go func() { s.bg.Wait(); close(bgDone) }()
	select {
	case <-bgDone:
	case <-ctx.Done():
		s.bgCancel() // a snapshot being written
		<-bgDone
	}
	s.bgCancel()
	err := s.journal.Close(ctx)
	s.flushLastSeen(ctx)
	s.snapshotAtClose(ctx)
	s.mu.RLock()
	for _, ex := range s.exchanges {
		ex.mu.Lock()
		close(ex.changed)
		ex.changed = make(chan struct{})
		ex.mu.Unlock()
	}
	s.mu.RUnlock()
	return err
}

// OnEvent registers fn to be called with every event after it is durable and
// applied, in the order events are applied within a thread. fn must not
// block; it runs on the writer's goroutine.
func (s *Service) OnEvent(fn func(Event)) {
	s.listenMu.Lock()
	s.listeners = append(s.listeners, fn)
	s.listenMu.Unlock()
}

func (s *Service) now() time.Time { return s.cfg.Now().UTC().Truncate(time.Millisecond) }

func (s *Service) checkOpen() error {
	if s.closed.Load() {
		return ErrClosed
	}
	return nil
}

// exchange is the in-memory state of one exchange. mu guards every field and
// the state of its threads; a thread's own mutex serialises its writers.
type exchange struct {
	id string

	mu          sync.RWMutex
	meta        *exchangeMeta
	metaVersion string
	executors   map[string]*executorRec
	threads     map[string]*thread
	order       []orderEntry // update order, oldest first; stale entries skipped
	stale       int
	useq        uint64
	version     uint64
	changed     chan struct{}
	ring        []Event // recent events, oldest first
	ringBytes   int     // their payloads' size
	idem        map[string]*idemEntry
	attachBytes map[string]int64 // attachment bytes stored, by member
	attachHeld  map[string]int64 // attachment bytes being stored, by member

	execMu sync.Mutex // serialises executor and exchange-record writes

	log exchangeLog // its share of the event log, and its snapshots
}

type orderEntry struct {
	useq uint64
	t    *thread
}

type idemEntry struct {
	ref  string
	at   time.Time
	hash string        // requestHash of the request the key was first used with
	done chan struct{} // closed when the first request finished
	err  error
}

func newExchange(id string) *exchange {
	return &exchange{
		id:          id,
		executors:   map[string]*executorRec{},
		threads:     map[string]*thread{},
		changed:     make(chan struct{}),
		idem:        map[string]*idemEntry{},
		attachBytes: map[string]int64{},
		attachHeld:  map[string]int64{},
	}
}

// exchange returns the state of id, creating it in memory if create is set.
func (s *Service) exchange(id string, create bool) *exchange {
	s.mu.RLock()
	ex := s.exchanges[id]
	s.mu.RUnlock()
	if ex != nil || !create {
		return ex
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if ex = s.exchanges[id]; ex == nil {
		ex = newExchange(id)
		s.exchanges[id] = ex
	}
	return ex
}

// notifyLocked wakes waiters; ex.mu must be held for writing.
func (ex *exchange) notifyLocked() {
	ex.version++
	close(ex.changed)
	ex.changed = make(chan struct{})
}

// eventOverhead is what an event costs in the buffer besides its payload.
const eventOverhead = 160

// pushEventLocked buffers ev, dropping the oldest events past maxCount or
// maxBytes. The newest event always stays.
func (ex *exchange) pushEventLocked(ev Event, maxCount, maxBytes int) {
	ex.ring = append(ex.ring, ev)
	ex.ringBytes += len(ev.Payload) + eventOverhead
	drop := 0
	for len(ex.ring)-drop > 1 && (len(ex.ring)-drop > maxCount || ex.ringBytes > maxBytes) {
		ex.ringBytes -= len(ex.ring[drop].Payload) + eventOverhead
		drop++
	}
	if drop > 0 {
		clear(ex.ring[:drop]) // let the payloads go
		ex.ring = ex.ring[drop:]
	}
}

// touchLocked moves t to the front of the update order.
func (ex *exchange) touchLocked(t *thread) {
	ex.useq++
	if t.useq != 0 {
		ex.stale++
	}
	t.useq = ex.useq
	ex.order = append(ex.order, orderEntry{ex.useq, t})
	if ex.stale > 1024 && ex.stale > len(ex.order)/2 {
		live := ex.order[:0]
		for _, e := range ex.order {
			if e.t.useq == e.useq {
				live = append(live, e)
			}
		}
		clear(ex.order[len(live):])
		ex.order = live
		ex.stale = 0
	}
}

// thread is a thread's state plus what its writers need.
type thread struct {
	mu          sync.Mutex // held by a writer from validation to apply
	ready       bool       // false while the creating write is in flight
	useq        uint64
	confirmedBy string                   // the executor the requestor confirmed to; "" for none
	files       map[string]attachmentRef // attachments by name and alias; the first wins
	Thread
}

// eventLog is an exchange's event log; the journal files it in day
// folders, events/exchange={id}/{YYYY}/{MM}/{DD}/, which DuckDB reads.
func eventLog(exchangeID string) string { return "events/exchange=" + exchangeID }

// claim makes the exchange this owner's before its records or log are
// written or read.
func (s *Service) claim(ctx context.Context, exchangeID string) error {
	if s.cfg.Fence == nil {
		return nil
	}
	return s.cfg.Fence.Claim(ctx, exchangeID)
}

// confirm is called after an in-place update of one of the exchange's
// records and before it is acknowledged.
func (s *Service) confirm(ctx context.Context, exchangeID string) error {
	if s.cfg.Fence == nil {
		return nil
	}
	return s.cfg.Fence.Confirm(ctx, exchangeID)
}

// mayUpdate is called before a record is created or updated in place
// (executor profiles, exchange records). The store does not fence those,
// so a process that may have been replaced writes none: its change could
// land after the new owner loaded the record.
func (s *Service) mayUpdate() error {
	if s.cfg.Fence == nil {
		return nil
	}
	return s.cfg.Fence.Valid()
}

// errChangedBehind answers an in-place update that found its record
// changed by another process: a replaced writer's late, unacknowledged
// write. The record was reloaded; the next try works on it.
var errChangedBehind = fmt.Errorf("the record was changed by a replaced writer; reloaded it, try again: %w", storage.ErrUnavailable)

// commit makes events durable, then applies them to ex under its lock.
// The caller holds the thread's mutex when the events touch a thread.
func (s *Service) commit(ctx context.Context, ex *exchange, evs []Event, decoded []any) error {
	lines := make([][]byte, len(evs))
	for i := range evs {
		b, err := json.Marshal(evs[i])
		if err != nil {
			return fmt.Errorf("mess: encode event: %w", err)
		}
		lines[i] = b
	}
	// Not cancellable: once queued the events may become durable, and state
	// must then match the log, so a caller that goes away still waits.
	if err := s.appendEvents(ex, lines); err != nil {
		if errors.Is(err, journal.ErrClosed) {
			return ErrClosed
		}
		return fmt.Errorf("mess: append events: %w", err)
	}
	s.applyDurable(ex, evs, decoded)
	return nil
}

// applyDurable applies events that are in the log and tells the listeners.
func (s *Service) applyDurable(ex *exchange, evs []Event, decoded []any) {
	ex.mu.Lock()
	for i := range evs {
		s.applyLocked(ex, &evs[i], decoded[i])
		ex.pushEventLocked(evs[i], s.cfg.EventBuffer, s.cfg.EventBufferBytes)
	}
	ex.notifyLocked()
	ex.mu.Unlock()
	s.eventsApplied(ex, len(evs))
	s.listenMu.RLock()
	for _, fn := range s.listeners {
		for _, ev := range evs {
			fn(ev)
		}
	}
	s.listenMu.RUnlock()
}

// landed applies a batch of events whose commit failed because the
// store's reply was lost, once the journal found it in the log after all
// (journal.Config.OnLanded). The write that found it is refused, so no
// change is decided from a state without these events: a claim that was
// answered 503 but landed is never granted to someone else too.
func (s *Service) landed(log string, data []byte) {
	lines, _ := journal.Lines(data)
	evs := make([]Event, 0, len(lines))
	decoded := make([]any, 0, len(lines))
	for _, l := range lines {
		ev, p, err := decodeLine(l)
		if err != nil || !ValidID(ev.ExchangeID) || eventLog(ev.ExchangeID) != log {
			s.log.Warn("skip an unreadable event that landed late", "log", log, "err", err)
			continue
		}
		evs, decoded = append(evs, ev), append(decoded, p)
	}
	if len(evs) == 0 {
		return
	}
	s.log.Warn("events reported as failed were stored after all; applied them", "log", log, "events", len(evs))
	s.applyDurable(s.exchange(evs[0].ExchangeID, true), evs, decoded)
}

func (s *Service) newEvent(ex *exchange, ref string, typ, actor string, seq int64, ts time.Time, payload any) (Event, error) {
	b, err := json.Marshal(payload)
	if err != nil {
		return Event{}, fmt.Errorf("mess: encode payload: %w", err)
	}
	var r *string
	if ref != "" {
		r = &ref
	}
	return Event{
		EventID:    s.journal.NewID(ts).String(),
		TS:         ts,
		ExchangeID: ex.id,
		ThreadRef:  r,
		EventType:  typ,
		ActorID:    actor,
		Seq:        seq,
		Payload:    b,
	}, nil
}

// applyLocked folds one event into state. It is used both live and during
// replay; events at or below a thread's current seq are duplicates.
func (s *Service) applyLocked(ex *exchange, ev *Event, p any) {
	if ev.ThreadRef == nil {
		return
	}
	ref := *ev.ThreadRef
	t := ex.threads[ref]
	if ev.EventType == EventThreadCreated {
		tc, ok := p.(*threadCreatedPayload)
		if !ok {
			return
		}
		if t == nil {
			t = &thread{}
			ex.threads[ref] = t
		} else if t.ready {
			return // a replayed duplicate
		}
		req := tc.Request
		t.ready = true
		t.Thread = Thread{
			Summary: Summary{
				Ref:         ref,
				Status:      StatusPending,
				Intent:      req.Intent,
				RequestorID: tc.RequestorID,
				Priority:    req.Priority,
				CreatedAt:   ev.TS,
				UpdatedAt:   ev.TS,
				Seq:         ev.Seq,
				NeededBy:    req.NeededBy,
				Requires:    req.Requires,
			},
			Request: &req,
		}
		if t.Priority == "" {
			t.Priority = PriorityNormal
		}
		t.History = append(t.History, HistoryEntry{Seq: ev.Seq, TS: ev.TS, ActorID: ev.ActorID, Type: "created", NewStatus: StatusPending})
		if tc.IdempotencyKey != "" {
			k := idemKey(tc.RequestorID, tc.IdempotencyKey)
			if _, ok := ex.idem[k]; !ok && s.now().Sub(ev.TS) < s.cfg.IdempotencyTTL {
				done := make(chan struct{})
				close(done)
				ex.idem[k] = &idemEntry{ref: ref, at: ev.TS, hash: tc.IdempotencyHash, done: done}
			}
		}
		ex.touchLocked(t)
		return
	}
	if t == nil || !t.ready || ev.Seq <= t.Seq {
		return
	}
	t.Seq = ev.Seq
	t.UpdatedAt = ev.TS
	switch p := p.(type) {
	case *messagePayload:
		t.Messages = append(t.Messages, Message{From: ev.ActorID, TS: ev.TS, Mess: p.Mess, attachments: p.Attachments})
		for _, r := range p.Attachments {
			ex.attachBytes[ev.ActorID] += r.Size
			if t.files == nil {
				t.files = map[string]attachmentRef{}
			}
			for _, name := range []string{r.Name, r.Alias} {
				if _, taken := t.files[name]; !taken && name != "" {
					t.files[name] = r
				}
			}
		}
		t.History = append(t.History, HistoryEntry{Seq: ev.Seq, TS: ev.TS, ActorID: ev.ActorID, Type: "message"})
	case *statusPayload:
		t.Status = p.NewStatus
		t.ExecutorID = p.ExecutorID
		// A confirmation belongs to the executor it was given to: it goes
		// when the claim is released or passes to someone else.
		switch {
		case p.Confirmed && p.ExecutorID != nil:
			t.confirmedBy = *p.ExecutorID
		case p.ExecutorID == nil || *p.ExecutorID != t.confirmedBy:
			t.confirmedBy = ""
		}
		t.History = append(t.History, HistoryEntry{Seq: ev.Seq, TS: ev.TS, ActorID: ev.ActorID, Type: "status", OldStatus: p.OldStatus, NewStatus: p.NewStatus, Message: p.Message})
	case *externalIDPayload:
		t.ExternalID = p.ExternalID
	}
	ex.touchLocked(t)
}

func idemKey(requestor, key string) string { return requestor + "\x00" + key }

// sweep expires pending threads whose needed_by has passed and forgets old
// idempotency keys.
func (s *Service) sweep() {
	defer s.bg.Done()
	tick := time.NewTicker(s.cfg.ExpiryInterval)
	defer tick.Stop()
	lastSeenFlush := s.now()
	for {
		select {
		case <-s.stop:
			return
		case <-tick.C:
		}
		now := s.now()
		if now.Sub(lastSeenFlush) > time.Minute {
			lastSeenFlush = now
			s.flushLastSeen(context.Background())
		}
		s.mu.RLock()
		exs := make([]*exchange, 0, len(s.exchanges))
		for _, ex := range s.exchanges {
			exs = append(exs, ex)
		}
		s.mu.RUnlock()
		for _, ex := range exs {
			var due []string
			ex.mu.Lock()
			for k, e := range ex.idem {
				if e.ref != "" && now.Sub(e.at) > s.cfg.IdempotencyTTL {
					delete(ex.idem, k)
				}
			}
			for ref, t := range ex.threads {
				if t.ready && t.NeededBy != nil && !t.NeededBy.After(now) && t.Status == StatusPending {
					due = append(due, ref)
				}
			}
			ex.mu.Unlock()
			slices.Sort(due)
			for _, ref := range due {
				_, err := s.transition(context.Background(), ex, systemActor, ref, Update{Status: string(StatusExpired), Message: "needed_by passed before anyone claimed it"})
				if err != nil && !errors.Is(err, ErrConflict) && !errors.Is(err, ErrClosed) {
					s.log.Warn("expire thread", "exchange", ex.id, "ref", ref, "err", err)
				}
			}
		}
	}
}

// systemActor is the actor of changes the exchange itself makes.
const systemActor = "exchange"

func (s *Service) loadExchangeForRead(exchangeID string) (*exchange, error) {
	if err := s.checkOpen(); err != nil {
		return nil, err
	}
	if !ValidID(exchangeID) {
		return nil, errorf(ErrInvalid, "invalid exchange id")
	}
	ex := s.exchange(exchangeID, false)
	if ex == nil {
		return nil, errorf(ErrNotFound, "exchange not found")
	}
	return ex, nil
}

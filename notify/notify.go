package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

// Source is what the outbox needs from the exchange; *mess.Service
// implements it.
type Source interface {
	OnEvent(fn func(mess.Event))
	Get(ctx context.Context, exchangeID, ref string) (mess.Thread, error)
	ExecutorIDs(exchangeID string) []string
	ExecutorConfig(exchangeID, executorID string) (mess.Executor, bool)
	ExecutorCapabilities(exchangeID, executorID string) []string
	SetExternalID(ctx context.Context, exchangeID, ref, externalID string) error
	EventsAfter(exchangeID, lastEventID string) (evs []mess.Event, version uint64, found bool, err error)
}

// Config configures a Service. Zero values get the documented defaults.
type Config struct {
	// Source is the exchange whose events are delivered. Required.
	Source Source
	// Store holds the outbox journal (objects under notify/outbox/) and is
	// listed under exchanges/ to find exchanges at restart. Required.
	Store storage.Store
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Policy restricts the addresses deliveries may reach. The zero value
	// allows public http(s) addresses only.
	Policy AddressPolicy
	// Timeout bounds one HTTP request. Zero means 10s.
	Timeout time.Duration
	// MaxAttempts is how often a delivery is tried before it is given up.
	// Zero means 8.
	MaxAttempts int
	// BaseBackoff is the wait after the first failure, doubled after each
	// further one with ±50% jitter. Zero means 1s.
	BaseBackoff time.Duration
	// MaxBackoff caps the wait between attempts. Zero means 5m.
	MaxBackoff time.Duration
	// Workers is how many deliveries are sent at once. Zero means 8.
	Workers int
	// NtfyServer is the default ntfy server. Zero means https://ntfy.sh.
	NtfyServer string
	// PublicURL is the server's public base URL, used for click links to a
	// thread. Empty means no links.
	PublicURL string
	// SigningSecret signs webhook deliveries whose config has no "secret".
	// Empty means such webhooks go unsigned.
	SigningSecret string
	// SlackInterval and GoogleChatInterval are the least time between two
	// posts to one webhook; deliveries that arrive sooner are coalesced into
	// the next post. Zero means 1s for both (Slack allows about one message
	// a second per webhook, Google Chat 60 a minute).
	SlackInterval, GoogleChatInterval time.Duration
	// RecoveryWindow is how far before the last recorded event a restart
	// looks again for events whose deliveries might not have been
	// recorded (events reach the outbox slightly out of order). Zero means 1m.
	RecoveryWindow time.Duration
	// FailureHistory is how many failed deliveries are kept per executor.
	// Zero means 50.
	FailureHistory int
	// CompactInterval is how often the outbox journal is folded into a
	// snapshot and its objects deleted. Zero means 1m; negative disables.
	CompactInterval time.Duration
	// Endpoints of the third-party services hooks call.
	Endpoints Endpoints
	// Now is the clock. Zero means time.Now.
	Now func() time.Time
}

const outboxPartition = "notify/outbox"

// Delivery is one message to one destination, recorded durably before it
// is sent. ID (event id, executor, channel or hook and its position) is the
// de-duplication key.
type Delivery struct {
	ID         string          `json:"id"`
	EventID    string          `json:"event_id"`
	EventType  string          `json:"event_type"`
	TS         time.Time       `json:"ts"`
	ExchangeID string          `json:"exchange_id"`
	Ref        string          `json:"ref"`
	ExecutorID string          `json:"executor_id"`
	ActorID    string          `json:"actor_id,omitempty"`
	OldStatus  string          `json:"old_status,omitempty"`
	NewStatus  string          `json:"new_status,omitempty"`
	Message    string          `json:"message,omitempty"`
	Kind       string          `json:"kind"` // notification or hook
	Type       string          `json:"type"`
	Hook       string          `json:"hook,omitempty"` // created, claimed, ...
	Config     json.RawMessage `json:"config"`
}

// Kinds of delivery.
const (
	KindNotification = "notification"
	KindHook         = "hook"
)

// Failure describes a delivery that was given up. It never holds secrets:
// the destination is reduced to scheme and host.
type Failure struct {
	ID          string    `json:"id"`
	EventID     string    `json:"event_id"`
	Ref         string    `json:"ref"`
	Kind        string    `json:"kind"`
	Type        string    `json:"type"`
	Hook        string    `json:"hook,omitempty"`
	Destination string    `json:"destination,omitempty"`
	Attempts    int       `json:"attempts"`
	Error       string    `json:"error"`
	At          time.Time `json:"at"`
}

// Pending describes a delivery not yet sent.
type Pending struct {
	ID        string    `json:"id"`
	EventID   string    `json:"event_id"`
	Ref       string    `json:"ref"`
	Kind      string    `json:"kind"`
	Type      string    `json:"type"`
	Hook      string    `json:"hook,omitempty"`
	Attempts  int       `json:"attempts"`
	NextTry   time.Time `json:"next_attempt"`
	LastError string    `json:"last_error,omitempty"`
}

// record is one line of the outbox journal.
type record struct {
	Op       string    `json:"op"` // start, add, done, fail, mark
	ID       string    `json:"id,omitempty"`
	D        *Delivery `json:"d,omitempty"`
	Exchange string    `json:"x,omitempty"`
	EventID  string    `json:"e,omitempty"`
	TS       time.Time `json:"ts"`
	Attempts int       `json:"n,omitempty"`
	Error    string    `json:"err,omitempty"`
}

type entry struct {
	d        Delivery
	seq      int64
	attempts int
	next     time.Time
	lastErr  string
	inflight bool
	dest     string
	order    string
}

type mark struct {
	eventID string
	ts      time.Time
}

// Service derives deliveries from exchange events, records them and sends
// them. It is safe for concurrent use.
type Service struct {
	cfg    Config
	src    Source
	log    *slog.Logger
	jr     *journal.Journal
	client *http.Client

	qmu   sync.Mutex
	queue []mess.Event
	qwake chan struct{}

	compactMu sync.RWMutex

	mu          sync.Mutex
	pending     map[string]*entry
	known       map[string]time.Time // sent or failed delivery ids → event time
	marks       map[string]mark
	failures    map[string][]Failure // exchange/executor
	seq         int64
	nextAllowed map[string]time.Time
	swake       chan struct{}
	since       time.Time

	jobs     chan []*entry
	stop     chan struct{}
	wg       sync.WaitGroup
	closed   atomic.Bool
	sent     atomic.Int64
	deriving atomic.Int64 // events taken from queue, not yet recorded
}

// New replays the outbox, re-derives deliveries for events that may have
// been missed before a restart, subscribes to cfg.Source and starts sending.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Source == nil || cfg.Store == nil {
		return nil, errors.New("notify: Config.Source and Config.Store are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.Timeout, 10*time.Second)
	def(&cfg.BaseBackoff, time.Second)
	def(&cfg.MaxBackoff, 5*time.Minute)
	def(&cfg.SlackInterval, time.Second)
	def(&cfg.GoogleChatInterval, time.Second)
	def(&cfg.RecoveryWindow, time.Minute)
	if cfg.CompactInterval == 0 {
		cfg.CompactInterval = time.Minute
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 8
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 8
	}
	if cfg.FailureHistory <= 0 {
		cfg.FailureHistory = 50
	}
	if cfg.NtfyServer == "" {
		cfg.NtfyServer = "https://ntfy.sh"
	}
	cfg.PublicURL = strings.TrimRight(cfg.PublicURL, "/")
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	cfg.Endpoints.defaults()
	s := &Service{
		cfg: cfg, src: cfg.Source, log: cfg.Logger,
		client:      cfg.Policy.NewClient(cfg.Timeout),
		qwake:       make(chan struct{}, 1),
		pending:     map[string]*entry{},
		known:       map[string]time.Time{},
		marks:       map[string]mark{},
		failures:    map[string][]Failure{},
		nextAllowed: map[string]time.Time{},
		swake:       make(chan struct{}, 1),
		jobs:        make(chan []*entry),
		stop:        make(chan struct{}),
	}
	// Subscribe before replaying so no event falls between the two; the
	// deriver skips deliveries already recorded.
	s.src.OnEvent(s.enqueue)
	if err := s.replay(ctx); err != nil {
		return nil, err
	}
	j, err := journal.New(journal.Config{Store: cfg.Store, Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	s.jr = j
	if s.since.IsZero() {
		s.since = cfg.Now().UTC()
		if err := s.appendRecords(ctx, []record{{Op: "start", TS: s.since}}); err != nil {
			j.Close(ctx)
			return nil, err
		}
	} else if err := s.recover(ctx); err != nil {
		j.Close(ctx)
		return nil, err
	}
	s.wg.Add(3 + cfg.Workers)
	go s.compactor()
	go s.deriver()
	go s.scheduler()
	for range cfg.Workers {
		go s.worker()
	}
	s.wakeScheduler()
	select {
	case s.qwake <- struct{}{}:
	default:
	}
	return s, nil
}

// Close stops accepting events, waits for deliveries in flight and
// returns. Deliveries not yet sent stay recorded and go out after the next
// start. It is idempotent.
func (s *Service) Close(ctx context.Context) error {
	if s.closed.Swap(true) {
		return nil
	}
	close(s.stop)
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.jr.Close(ctx)
}

func (s *Service) enqueue(ev mess.Event) {
	switch ev.EventType {
	case mess.EventThreadCreated, mess.EventStatusChanged:
	default:
		return
	}
	if s.closed.Load() {
		return
	}
	s.qmu.Lock()
	s.queue = append(s.queue, ev)
	s.qmu.Unlock()
	select {
	case s.qwake <- struct{}{}:
	default:
	}
}

func (s *Service) wakeScheduler() {
	select {
	case s.swake <- struct{}{}:
	default:
	}
}

func (s *Service) appendRecords(ctx context.Context, recs []record) error {
	lines := make([][]byte, len(recs))
	for i := range recs {
		b, err := json.Marshal(recs[i])
		if err != nil {
			return err
		}
		lines[i] = b
	}
	return s.jr.Append(ctx, outboxPartition, lines...)
}

func (s *Service) replay(ctx context.Context) error {
	after, err := s.loadSnapshot(ctx)
	if err != nil {
		return err
	}
	return journal.Replay(ctx, s.cfg.Store, journal.ReplayConfig{
		Prefix: outboxPartition + "/",
		After:  after,
		Decode: func(key string, data []byte) (any, error) {
			lines, _ := journal.Lines(data)
			recs := make([]record, 0, len(lines))
			for _, l := range lines {
				var r record
				if json.Unmarshal(l, &r) == nil {
					recs = append(recs, r)
				}
			}
			return recs, nil
		},
		Apply: func(key string, v any) error {
			for _, r := range v.([]record) {
				s.applyRecord(r)
			}
			return nil
		},
	})
}

// applyRecord folds one journal record into state (replay only).
func (s *Service) applyRecord(r record) {
	switch r.Op {
	case "start":
		if s.since.IsZero() {
			s.since = r.TS
		}
	case "add":
		if r.D != nil && s.pending[r.D.ID] == nil {
			if _, ok := s.known[r.D.ID]; !ok {
				s.addEntryLocked(*r.D)
			}
		}
	case "done", "fail":
		e := s.pending[r.ID]
		if e == nil {
			return
		}
		delete(s.pending, r.ID)
		s.known[r.ID] = e.d.TS
		if r.Op == "fail" {
			s.recordFailureLocked(e, r.Attempts, r.Error, r.TS)
		}
	case "mark":
		if m := s.marks[r.Exchange]; r.EventID > m.eventID {
			s.marks[r.Exchange] = mark{r.EventID, r.TS}
		}
	}
}

func (s *Service) addEntryLocked(d Delivery) {
	s.seq++
	e := &entry{d: d, seq: s.seq, dest: destination(d.Type, d.Config)}
	if d.Kind != KindNotification {
		e.dest = ""
	}
	if d.Kind == KindHook {
		// Hooks of one executor for one thread run in event order, so a
		// "complete" hook sees the id its "create" hook produced.
		e.order = d.ExchangeID + "/" + d.Ref + "/" + d.ExecutorID
	}
	s.pending[d.ID] = e
}

// recover re-derives deliveries for buffered events at or after the last
// recorded event of each exchange (less RecoveryWindow), or after the
// outbox first started for exchanges it never recorded.
func (s *Service) recover(ctx context.Context) error {
	ids := map[string]bool{}
	opts := storage.ListOptions{}
	for {
		page, err := s.cfg.Store.List(ctx, "exchanges/", opts)
		if err != nil {
			return fmt.Errorf("notify: list exchanges: %w", err)
		}
		for _, k := range page.Keys {
			id := strings.TrimSuffix(strings.TrimPrefix(k, "exchanges/"), ".json")
			if mess.ValidID(id) {
				ids[id] = true
			}
		}
		if page.Next == "" {
			break
		}
		opts.After = page.Next
	}
	for x := range s.marks {
		ids[x] = true
	}
	var evs []mess.Event
	for x := range ids {
		from := s.since
		if m, ok := s.marks[x]; ok {
			from = m.ts.Add(-s.cfg.RecoveryWindow)
		}
		all, _, _, err := s.src.EventsAfter(x, "")
		if err != nil {
			continue
		}
		for _, ev := range all {
			if !ev.TS.Before(from) && (ev.EventType == mess.EventThreadCreated || ev.EventType == mess.EventStatusChanged) {
				evs = append(evs, ev)
			}
		}
	}
	slices.SortFunc(evs, func(a, b mess.Event) int { return strings.Compare(a.EventID, b.EventID) })
	s.qmu.Lock()
	s.queue = append(evs, s.queue...)
	s.qmu.Unlock()
	s.prune()
	return nil
}

// prune forgets ids of finished deliveries older than any restart would
// look at again.
func (s *Service) prune() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, ts := range s.known {
		x, _, _ := strings.Cut(id, "|")
		m, ok := s.marks[x]
		if ok && ts.Before(m.ts.Add(-2*s.cfg.RecoveryWindow)) {
			delete(s.known, id)
		}
	}
}

// deriver turns queued events into recorded deliveries.
func (s *Service) deriver() {
	defer s.wg.Done()
	for {
		select {
		case <-s.qwake:
		case <-s.stop:
			return
		}
		for {
			s.qmu.Lock()
			batch := s.queue
			s.queue = nil
			s.deriving.Add(int64(len(batch)))
			s.qmu.Unlock()
			if len(batch) == 0 {
				break
			}
			s.deriveBatch(batch)
			s.deriving.Add(-int64(len(batch)))
		}
	}
}

func (s *Service) deriveBatch(evs []mess.Event) {
	ctx := context.Background()
	var recs []record
	var adds []Delivery
	marks := map[string]mark{}
	for _, ev := range evs {
		for _, d := range s.derive(ctx, ev) {
			s.mu.Lock()
			_, done := s.known[d.ID]
			dup := done || s.pending[d.ID] != nil
			s.mu.Unlock()
			if dup {
				continue
			}
			d := d
			recs = append(recs, record{Op: "add", ID: d.ID, D: &d, TS: ev.TS})
			adds = append(adds, d)
		}
		if m := marks[ev.ExchangeID]; ev.EventID > m.eventID {
			marks[ev.ExchangeID] = mark{ev.EventID, ev.TS}
		}
	}
	for x, m := range marks {
		recs = append(recs, record{Op: "mark", Exchange: x, EventID: m.eventID, TS: m.ts})
	}
	s.compactMu.RLock()
	defer s.compactMu.RUnlock()
	if err := s.appendRecords(ctx, recs); err != nil {
		// Not recorded: a restart derives these again from the event log.
		s.log.Error("notify: record deliveries", "err", err)
		if errors.Is(err, journal.ErrClosed) {
			return
		}
	}
	s.mu.Lock()
	for _, d := range adds {
		if s.pending[d.ID] == nil {
			s.addEntryLocked(d)
		}
	}
	for x, m := range marks {
		if m.eventID > s.marks[x].eventID {
			s.marks[x] = m
		}
	}
	s.mu.Unlock()
	s.wakeScheduler()
}

func (s *Service) recordFailureLocked(e *entry, attempts int, msg string, at time.Time) {
	k := e.d.ExchangeID + "/" + e.d.ExecutorID
	f := Failure{ID: e.d.ID, EventID: e.d.EventID, Ref: e.d.Ref, Kind: e.d.Kind, Type: e.d.Type, Hook: e.d.Hook,
		Destination: publicDestination(e.d.Config), Attempts: attempts, Error: msg, At: at}
	l := append(s.failures[k], f)
	if len(l) > s.cfg.FailureHistory {
		l = l[len(l)-s.cfg.FailureHistory:]
	}
	s.failures[k] = l
}

// Failures returns the executor's recent given-up deliveries, newest last.
func (s *Service) Failures(exchangeID, executorID string) []Failure {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.failures[exchangeID+"/"+executorID])
}

// PendingFor returns the executor's deliveries not yet sent.
func (s *Service) PendingFor(exchangeID, executorID string) []Pending {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Pending
	for _, e := range s.pending {
		if e.d.ExchangeID == exchangeID && e.d.ExecutorID == executorID {
			out = append(out, Pending{ID: e.d.ID, EventID: e.d.EventID, Ref: e.d.Ref, Kind: e.d.Kind, Type: e.d.Type,
				Hook: e.d.Hook, Attempts: e.attempts, NextTry: e.next, LastError: e.lastErr})
		}
	}
	slices.SortFunc(out, func(a, b Pending) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Stats are counters for monitoring and tests.
type Stats struct {
	// Queued counts events not yet turned into recorded deliveries.
	Queued int `json:"queued"`
	// Pending counts recorded deliveries not yet sent or given up.
	Pending int   `json:"pending"`
	Sent    int64 `json:"sent"`
}

// Stats returns current counters.
func (s *Service) Stats() Stats {
	s.qmu.Lock()
	q := len(s.queue) + int(s.deriving.Load())
	s.qmu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Queued: q, Pending: len(s.pending), Sent: s.sent.Load()}
}

func (s *Service) backoff(attempts int) time.Duration {
	d := s.cfg.BaseBackoff
	for i := 1; i < attempts && d < s.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.cfg.MaxBackoff)
	// ±50% jitter spreads retries of many deliveries that failed together.
	return d/2 + rand.N(d)
}

package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
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
	// OnEvent registers fn for every event once it is durable. fn must not
	// block.
	OnEvent(fn func(mess.Event))
	// Exchanges lists the exchanges whose recent events a restart looks
	// at again.
	Exchanges(ctx context.Context) ([]string, error)
	// DeliveryProfiles returns the delivery profile of every executor of
	// an exchange.
	DeliveryProfiles(ctx context.Context, exchangeID string) ([]mess.DeliveryProfile, error)
	// DeliveryProfile returns one executor's delivery profile, or an error
	// wrapping mess.ErrNotFound.
	DeliveryProfile(ctx context.Context, exchangeID, executorID string) (mess.DeliveryProfile, error)
	// Get returns a thread as it is now, or an error wrapping
	// mess.ErrNotFound.
	Get(ctx context.Context, exchangeID, ref string) (mess.Thread, error)
	// SetExternalID keeps the id a hook's target gave a thread.
	SetExternalID(ctx context.Context, exchangeID, ref, externalID string) error
	// EventsAfter returns an exchange's buffered events after
	// lastEventID ("" for all of them).
	EventsAfter(exchangeID, lastEventID string) (evs []mess.Event, version uint64, found bool, err error)
}

// Config configures a Service. Zero values get the documented defaults.
type Config struct {
	// Source is the exchange whose events are delivered. Required.
	Source Source
	// Store holds the outbox: one journal per exchange, under
	// notify/exchange={id}/outbox/, with its snapshots (see the package
	// doc, Durability and fencing). Nil means storage.NewMemory(): the
	// outbox lasts as long as the process.
	Store storage.Store
	// Fence, when set, is the authority this Service writes under in a
	// store other processes can reach (a bucket with a standby beside the
	// writer): each exchange is claimed (Fence.Claim) and its outbox
	// journal fenced before it is read, and once a newer owner has taken
	// over, nothing more is recorded or sent and the handler answers 503.
	// Nil means this process is the store's only writer.
	Fence storage.Fence
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
	// MaxChannels and MaxHooks cap how many notification channels and
	// hooks one executor's profile may have: each is a delivery per event,
	// so an unbounded profile would let one executor queue deliveries
	// without limit. ValidateProfile refuses a profile over a cap, and
	// profiles stored before it keep only their first ones. Zero means 20
	// channels and 50 hooks.
	MaxChannels, MaxHooks int
	// Endpoints of the third-party services hooks call.
	Endpoints Endpoints
	// Now is the clock. Zero means time.Now.
	Now func() time.Time
}

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
	Op       string    `json:"op"` // add, done, fail, mark; start in the old layout
	ID       string    `json:"id,omitempty"`
	D        *Delivery `json:"d,omitempty"`
	Exchange string    `json:"x,omitempty"` // the exchange whose outbox records it
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

	outboxes  sync.Map            // exchange id → *outbox
	old       map[string]snapshot // the old layout, by exchange; read-only after New
	compactMu sync.Mutex          // one compaction pass at a time

	mu          sync.Mutex
	running     bool // the scheduler has started
	pending     map[string]*entry
	known       map[string]time.Time // sent or failed delivery ids → event time
	marks       map[string]mark
	failures    map[string][]Failure // exchange/executor
	seq         int64
	since       time.Time
	timed       slotHeap              // see schedule.go
	groups      map[string][]*entry   // hooks by thread and executor, in order
	held        map[string][]*entry   // due notifications by rate-limited webhook
	wakes       map[string]bool       // webhooks with a rate-limit slot in timed
	nextAllowed map[string]time.Time  // a chat webhook's next free slot
	outcomes    map[outcomeKey]uint64 // attempts by channel type and result (ChannelStats)
	swake       chan struct{}

	jobs     chan []*entry
	stop     chan struct{}
	wg       sync.WaitGroup
	closed   atomic.Bool
	sent     atomic.Int64
	deriving atomic.Int64 // events taken from queue, not yet recorded
}

// Defaults of the Config fields whose zero value means a default.
const (
	defaultTimeout        = 10 * time.Second
	defaultMaxAttempts    = 8
	defaultBaseBackoff    = time.Second
	defaultMaxBackoff     = 5 * time.Minute
	defaultWorkers        = 8
	defaultNtfyServer     = "https://ntfy.sh"
	defaultChatInterval   = time.Second
	defaultRecovery       = time.Minute
	defaultFailures       = 50
	defaultCompact        = time.Minute
	defaultMaxChannels    = 20
	defaultMaxHooks       = 50
	maxConfiguredAttempts = 1000
)

// withDefaults validates c and fills in the defaults of its zero fields.
// Source and Store are not looked at: ValidateProfile needs neither.
func (c Config) withDefaults() (Config, error) {
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"Timeout", c.Timeout}, {"BaseBackoff", c.BaseBackoff}, {"MaxBackoff", c.MaxBackoff},
		{"SlackInterval", c.SlackInterval}, {"GoogleChatInterval", c.GoogleChatInterval},
		{"RecoveryWindow", c.RecoveryWindow},
	} {
		if d.v < 0 {
			return c, fmt.Errorf("notify: Config.%s is negative (%s)", d.name, d.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int
	}{
		{"MaxAttempts", c.MaxAttempts}, {"Workers", c.Workers}, {"FailureHistory", c.FailureHistory},
		{"MaxChannels", c.MaxChannels}, {"MaxHooks", c.MaxHooks},
	} {
		if n.v < 0 {
			return c, fmt.Errorf("notify: Config.%s is negative (%d)", n.name, n.v)
		}
	}
	if c.MaxAttempts > maxConfiguredAttempts {
		return c, fmt.Errorf("notify: Config.MaxAttempts %d is above %d", c.MaxAttempts, maxConfiguredAttempts)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.Timeout, defaultTimeout)
	def(&c.BaseBackoff, defaultBaseBackoff)
	def(&c.MaxBackoff, defaultMaxBackoff)
	def(&c.SlackInterval, defaultChatInterval)
	def(&c.GoogleChatInterval, defaultChatInterval)
	def(&c.RecoveryWindow, defaultRecovery)
	def(&c.CompactInterval, defaultCompact)
	if c.BaseBackoff > c.MaxBackoff {
		return c, fmt.Errorf("notify: Config.BaseBackoff (%s) is above MaxBackoff (%s)", c.BaseBackoff, c.MaxBackoff)
	}
	defInt := func(n *int, v int) {
		if *n == 0 {
			*n = v
		}
	}
	defInt(&c.MaxAttempts, defaultMaxAttempts)
	defInt(&c.Workers, defaultWorkers)
	defInt(&c.FailureHistory, defaultFailures)
	defInt(&c.MaxChannels, defaultMaxChannels)
	defInt(&c.MaxHooks, defaultMaxHooks)
	if c.NtfyServer == "" {
		c.NtfyServer = defaultNtfyServer
	}
	c.PublicURL = strings.TrimRight(c.PublicURL, "/")
	c.Endpoints.defaults()
	for _, u := range []struct{ name, v string }{
		{"NtfyServer", c.NtfyServer}, {"PublicURL", c.PublicURL},
		{"Endpoints.IFTTT", c.Endpoints.IFTTT}, {"Endpoints.Todoist", c.Endpoints.Todoist},
		{"Endpoints.Linear", c.Endpoints.Linear}, {"Endpoints.GoogleTasks", c.Endpoints.GoogleTasks},
		{"Endpoints.GoogleOAuth", c.Endpoints.GoogleOAuth},
	} {
		if u.v == "" {
			continue
		}
		if p, err := url.Parse(u.v); err != nil || (p.Scheme != "http" && p.Scheme != "https") || p.Host == "" {
			return c, fmt.Errorf("notify: Config.%s %q is not an http(s) URL", u.name, u.v)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// New replays the outbox, re-derives deliveries for events that may have
// been missed before a restart, subscribes to cfg.Source and starts sending.
// It returns an error for a missing Source or a Config field out of range.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if cfg.Source == nil {
		return nil, errors.New("notify: Config.Source is required")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if cfg.Store == nil {
		cfg.Store = storage.NewMemory()
	}
	s := &Service{
		cfg: cfg, src: cfg.Source, log: cfg.Logger,
		client:      cfg.Policy.NewClient(cfg.Timeout),
		qwake:       make(chan struct{}, 1),
		pending:     map[string]*entry{},
		known:       map[string]time.Time{},
		marks:       map[string]mark{},
		failures:    map[string][]Failure{},
		groups:      map[string][]*entry{},
		held:        map[string][]*entry{},
		wakes:       map[string]bool{},
		nextAllowed: map[string]time.Time{},
		swake:       make(chan struct{}, 1),
		jobs:        make(chan []*entry),
		stop:        make(chan struct{}),
	}
	// Subscribe before replaying so no event falls between the two; the
	// deriver skips deliveries already recorded.
	s.src.OnEvent(s.enqueue)
	fail := func(err error) (*Service, error) {
		s.closed.Store(true) // the subscription stays; it drops everything
		if s.jr != nil {
			s.jr.Close(ctx)
		}
		return nil, err
	}
	j, err := journal.New(journal.Config{Store: cfg.Store, Now: cfg.Now, Fence: cfg.Fence})
	if err != nil {
		return fail(err)
	}
	s.jr = j
	first, err := s.load(ctx)
	if err != nil {
		return fail(err)
	}
	if !first {
		if err := s.recover(ctx); err != nil {
			return fail(err)
		}
	}
	s.mu.Lock()
	s.rebuildQueueLocked()
	s.running = true
	s.mu.Unlock()
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
	s.client.CloseIdleConnections()
	return s.jr.Close(ctx)
}

// serving returns why the service cannot answer for exchangeID now, if it
// cannot: it was closed, another process owns the outbox now (an error
// wrapping storage.ErrFenced), or the exchange's outbox did not load.
func (s *Service) serving(ctx context.Context, exchangeID string) error {
	if s.closed.Load() {
		return ErrClosed
	}
	if s.cfg.Fence != nil {
		if err := s.cfg.Fence.Valid(); err != nil {
			return err
		}
	}
	_, err := s.outboxFor(ctx, exchangeID)
	return err
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

// appendRecords records recs, each in the outbox of its exchange, and
// returns once they are durable.
func (s *Service) appendRecords(ctx context.Context, recs []record) error {
	byX := map[string][][]byte{}
	for i := range recs {
		b, err := json.Marshal(recs[i])
		if err != nil {
			return err
		}
		x := recs[i].Exchange
		byX[x] = append(byX[x], b)
	}
	var writes []<-chan error
	var errs []error
	for x, lines := range byX {
		ob, err := s.outboxFor(ctx, x)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ob.log.Touch()
		w, err := s.jr.AppendAsync(ob.part, lines...)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		writes = append(writes, w)
	}
	for _, w := range writes {
		select {
		case err := <-w:
			errs = append(errs, err)
		case <-ctx.Done():
			errs = append(errs, ctx.Err())
		}
	}
	return errors.Join(errs...)
}

// addEntryLocked records d as pending; a caller past replay queues it.
func (s *Service) addEntryLocked(d Delivery) *entry {
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
	return e
}

// recover re-derives deliveries for buffered events at or after the last
// recorded event of each exchange (less RecoveryWindow), or after the
// outbox first started for exchanges it never recorded.
func (s *Service) recover(ctx context.Context) error {
	ids := map[string]bool{}
	xs, err := s.src.Exchanges(ctx)
	if err != nil {
		return fmt.Errorf("notify: list exchanges: %w", err)
	}
	for _, x := range xs {
		ids[x] = true
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
	// Each exchange's outbox is loaded first, so that deliveries it holds
	// already are not derived again.
	loaded := map[string]bool{}
	for _, ev := range evs {
		if _, seen := loaded[ev.ExchangeID]; !seen {
			_, err := s.outboxFor(ctx, ev.ExchangeID)
			if err != nil {
				s.log.Error("notify: load outbox", "exchange", ev.ExchangeID, "err", err)
			}
			loaded[ev.ExchangeID] = err == nil
		}
	}
	var recs []record
	var adds []Delivery
	marks := map[string]mark{}
	for _, ev := range evs {
		if !loaded[ev.ExchangeID] {
			continue // derived again after a restart
		}
		ds, err := s.derive(ctx, ev)
		if err != nil {
			s.log.Error("notify: derive deliveries", "event", ev.EventID, "err", err)
		}
		for _, d := range ds {
			s.mu.Lock()
			_, done := s.known[d.ID]
			dup := done || s.pending[d.ID] != nil
			s.mu.Unlock()
			if dup {
				continue
			}
			d := d
			recs = append(recs, record{Op: "add", ID: d.ID, D: &d, Exchange: d.ExchangeID, TS: ev.TS})
			adds = append(adds, d)
		}
		if m := marks[ev.ExchangeID]; ev.EventID > m.eventID {
			marks[ev.ExchangeID] = mark{ev.EventID, ev.TS}
		}
	}
	for x, m := range marks {
		recs = append(recs, record{Op: "mark", Exchange: x, EventID: m.eventID, TS: m.ts})
	}
	if len(recs) == 0 {
		return
	}
	if err := s.appendRecords(ctx, recs); err != nil {
		// Not recorded: a restart derives these again from the event log.
		s.log.Error("notify: record deliveries", "err", err)
		if errors.Is(err, journal.ErrClosed) || errors.Is(err, storage.ErrFenced) {
			return
		}
	}
	s.mu.Lock()
	for _, d := range adds {
		if s.pending[d.ID] == nil {
			s.queueLocked(s.addEntryLocked(d))
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
	s.failures[k] = keepLast(append(s.failures[k], failureOf(e.d, attempts, msg, at)), s.cfg.FailureHistory)
}

// failureOf describes a given-up delivery, keeping no secrets.
func failureOf(d Delivery, attempts int, msg string, at time.Time) Failure {
	return Failure{ID: d.ID, EventID: d.EventID, Ref: d.Ref, Kind: d.Kind, Type: d.Type, Hook: d.Hook,
		Destination: publicDestination(d.Config), Attempts: attempts, Error: msg, At: at}
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

package lease

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// Defaults applied by New to zero Config fields.
const (
	defaultMinTTL          = 100 * time.Millisecond
	defaultMaxTTL          = time.Hour
	defaultMaxWait         = time.Minute
	defaultPrefix          = "leases"
	defaultCompactInterval = 30 * time.Second
	defaultSweepInterval   = 5 * time.Second
)

// Config configures a Manager.
type Config struct {
	// Store keeps grants durable. Nil means storage.NewMemory(): leases
	// live as long as the process (tests and examples).
	Store storage.Store
	// Prefix is the key prefix of the lease state in Store. Zero means
	// "leases". Each exchange keeps its journal under
	// {Prefix}/exchange={id}/log/ and its snapshots under
	// {Prefix}/exchange={id}/snap/ (see the package doc, Durability).
	Prefix string
	// Fence, when set, is the authority this Manager writes under in a
	// store other processes can reach (a bucket with a standby beside the
	// writer): each exchange is claimed (Fence.Claim) and its journal
	// fenced before its leases are read, and once a newer owner has taken
	// over, every operation fails with an error wrapping storage.ErrFenced
	// (HTTP 503). Nil means this process is the store's only writer.
	Fence storage.Fence
	// MinTTL and MaxTTL bound the TTL of every grant and renewal. Zero
	// means 100ms and 1h.
	MinTTL, MaxTTL time.Duration
	// MaxWait caps how long a blocking acquire may wait. Zero means 1m.
	MaxWait time.Duration
	// CompactInterval is how often the journal is folded into a snapshot.
	// Zero means 30s; negative disables periodic compaction (Close still
	// compacts).
	CompactInterval time.Duration
	// SweepInterval is how often expired leases are dropped from memory.
	// Expiry itself never waits for the sweep. Zero means 5s.
	SweepInterval time.Duration
	// Now is the clock. Its monotonic reading measures TTLs; its wall
	// reading is what ExpiresAt reports and what survives a restart. Zero
	// means time.Now.
	Now func() time.Time
	// Logger receives background errors (compaction). Nil means
	// slog.Default().
	Logger *slog.Logger
}

// Grant is a lease held by Holder until ExpiresAt, identified by its fencing
// token. Tokens strictly increase per name over the service's whole life,
// across restarts and takeovers.
type Grant struct {
	Name      string
	Holder    string
	Token     uint64
	ExpiresAt time.Time
}

// Status is the LeaseStatus object of the lease API v1, the shape mail bus
// clients read from isLeased: a free name has only IsLeased false.
type Status struct {
	IsLeased    bool   `json:"isLeased"`
	AgentID     string `json:"agentId,omitempty"`
	ExpiresAt   int64  `json:"expiresAt,omitempty"` // epoch ms
	Token       uint64 `json:"token,omitempty"`
	RemainingMs int64  `json:"remainingMs,omitempty"`
}

const numShards = 256

type key struct{ x, n string }

type entry struct {
	ex       *exchange
	holder   string // "" when free
	token    uint64
	deadline time.Time
	waiters  []*waiter // FIFO
	timer    *time.Timer
	// writing is closed once the journal write of the grant that made
	// holder the holder is settled, and nil after. Until then nobody else
	// is told of the grant: a failed write undoes it, and a crash loses
	// it, so a refusal or status naming it could name a holder that never
	// was.
	writing chan struct{}
}

type waiter struct {
	agent   string
	ttl     time.Duration
	granted chan struct{} // closed by handoff
	got     bool
	token   uint64
	writing chan struct{} // the handed-over grant's (entry.writing)
	expires time.Time
	written <-chan error // the grant's journal write, queued by handoff
}

type shard struct {
	mu sync.Mutex
	m  map[key]*entry
}

// Manager grants leases. It is safe for concurrent use.
type Manager struct {
	cfg     Config
	seed    maphash.Seed
	shards  [numShards]shard
	expired atomic.Uint64 // leases that ran out (Stats)
	j       *journal.Journal
	xs      sync.Map // exchange id → *exchange
	legacy  legacyState

	compactMu sync.Mutex // one compaction pass at a time

	closeMu   sync.RWMutex // held shared by every operation
	closed    bool
	done      chan struct{} // closed by Close: wakes waiters and loops
	closeOnce sync.Once
	wg        sync.WaitGroup
}

// New opens a Manager, restoring the durable state found in cfg.Store; ctx
// bounds that restore. A zero Config is a working in-memory Manager.
func New(ctx context.Context, cfg Config) (*Manager, error) {
	if cfg.Store == nil {
		cfg.Store = storage.NewMemory()
	}
	if cfg.Prefix == "" {
		cfg.Prefix = defaultPrefix
	}
	if err := storage.ValidKey(cfg.Prefix); err != nil {
		return nil, fmt.Errorf("lease: Config.Prefix: %w", err)
	}
	if cfg.MinTTL == 0 {
		cfg.MinTTL = defaultMinTTL
	}
	if cfg.MaxTTL == 0 {
		cfg.MaxTTL = defaultMaxTTL
	}
	if cfg.MinTTL < time.Millisecond || cfg.MaxTTL < cfg.MinTTL {
		return nil, fmt.Errorf("lease: need 1ms <= MinTTL (%s) <= MaxTTL (%s)", cfg.MinTTL, cfg.MaxTTL)
	}
	if cfg.MaxWait <= 0 {
		cfg.MaxWait = defaultMaxWait
	}
	if cfg.CompactInterval == 0 {
		cfg.CompactInterval = defaultCompactInterval
	}
	if cfg.SweepInterval <= 0 {
		cfg.SweepInterval = defaultSweepInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	m := &Manager{cfg: cfg, seed: maphash.MakeSeed(), done: make(chan struct{})}
	for i := range m.shards {
		m.shards[i].m = make(map[key]*entry)
	}
	j, err := journal.New(journal.Config{Store: cfg.Store, Now: cfg.Now, SegmentBytes: journal.SegmentBytes, Fence: cfg.Fence})
	if err != nil {
		return nil, err
	}
	m.j = j
	if err := m.load(ctx); err != nil {
		return nil, errors.Join(err, j.Close(context.Background()))
	}
	if cfg.CompactInterval > 0 {
		m.wg.Go(m.compactLoop)
	}
	m.wg.Go(m.sweepLoop)
	return m, nil
}

func (m *Manager) shard(k key) *shard {
	return &m.shards[maphash.Comparable(m.seed, k)%numShards]
}

// enter admits an operation unless the manager is closed or, under a
// Fence, this process may have been replaced: then it must neither write
// nor answer from what it holds in memory.
func (m *Manager) enter() error {
	m.closeMu.RLock()
	if m.closed {
		m.closeMu.RUnlock()
		return ErrClosed
	}
	if m.cfg.Fence != nil {
		if err := m.cfg.Fence.Valid(); err != nil {
			m.closeMu.RUnlock()
			return err
		}
	}
	return nil
}

func (m *Manager) leave() { m.closeMu.RUnlock() }

func (m *Manager) checkTTL(ttl time.Duration) error {
	if ttl < m.cfg.MinTTL || ttl > m.cfg.MaxTTL {
		return fmt.Errorf("%w: %s not in [%s, %s]", ErrInvalidTTL, ttl, m.cfg.MinTTL, m.cfg.MaxTTL)
	}
	return nil
}

func validate(exchangeID, agentID, name string) (key, error) {
	if err := validID(exchangeID); err != nil {
		return key{}, err
	}
	if agentID != "" {
		if err := validID(agentID); err != nil {
			return key{}, err
		}
	}
	n, err := canonicalName(name)
	if err != nil {
		return key{}, err
	}
	return key{exchangeID, n}, nil
}

func (e *entry) live(now time.Time) bool { return e.holder != "" && now.Before(e.deadline) }

func (e *entry) grant(k key) Grant {
	return Grant{Name: k.n, Holder: e.holder, Token: e.token, ExpiresAt: e.deadline}
}

func (e *entry) heldError(k key) *HeldError {
	return &HeldError{Name: k.n, Holder: e.holder, ExpiresAt: e.deadline}
}

// outcome is what an attempt decided under the shard lock.
type outcome int

const (
	outGranted outcome = iota // a new grant (new token)
	outRenewed                // the caller's own lease, deadline kept or extended
	outHeld                   // another agent holds it
)

// tryLocked grants or renews k for agent if it can; s.mu must be held. On
// outRenewed, prev is the deadline before the renewal (for rollback).
func (m *Manager) tryLocked(s *shard, ex *exchange, k key, agent string, ttl time.Duration, now time.Time) (e *entry, out outcome, prev time.Time) {
	e = s.m[k]
	if e == nil {
		e = &entry{ex: ex}
		s.m[k] = e
	}
	for {
		if e.live(now) {
			if e.holder != agent {
				return e, outHeld, time.Time{}
			}
			prev = e.deadline
			if d := now.Add(ttl); d.After(e.deadline) {
				e.deadline = d
			}
			return e, outRenewed, prev
		}
		if e.holder != "" {
			m.expired.Add(1)
			e.holder = ""
		}
		if len(e.waiters) == 0 {
			break
		}
		// Expired or free with a queue: the head of the queue goes first.
		m.handoffLocked(e, k, now)
	}
	e.holder = agent
	e.token = ex.tokens.Add(1)
	e.deadline = now.Add(ttl)
	e.writing = make(chan struct{})
	return e, outGranted, time.Time{}
}

// handoffLocked gives a free or expired lease to the first waiter and
// queues the grant's record, so that it reaches the journal before
// anything the new holder does with the lease.
func (m *Manager) handoffLocked(e *entry, k key, now time.Time) {
	w := e.waiters[0]
	e.waiters[0] = nil
	e.waiters = e.waiters[1:]
	e.holder = w.agent
	e.token = e.ex.tokens.Add(1)
	e.deadline = now.Add(w.ttl)
	e.writing = make(chan struct{})
	w.got, w.token, w.expires, w.writing = true, e.token, e.deadline, e.writing
	w.written = m.record(e.ex, grantRecord(k, e.grant(k), now))
	close(w.granted)
	m.armLocked(e, k, now)
}

// armLocked makes sure someone wakes the queue when the current holder's
// lease runs out; release wakes it directly.
func (m *Manager) armLocked(e *entry, k key, now time.Time) {
	if len(e.waiters) == 0 || e.holder == "" {
		if e.timer != nil {
			e.timer.Stop()
			e.timer = nil
		}
		return
	}
	d := e.deadline.Sub(now)
	if e.timer == nil {
		e.timer = time.AfterFunc(d, func() { m.expire(k) })
	} else {
		e.timer.Reset(d)
	}
}

// expire runs when a lease with waiters reaches its deadline.
func (m *Manager) expire(k key) {
	s := m.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[k]
	if e == nil {
		return
	}
	now := m.cfg.Now()
	if e.holder != "" && e.live(now) {
		m.armLocked(e, k, now) // renewed meanwhile
		return
	}
	if len(e.waiters) > 0 {
		if e.holder != "" {
			m.expired.Add(1)
		}
		m.handoffLocked(e, k, now)
	}
}

// freeLocked clears the holder of e and passes the lease on to the queue.
func (m *Manager) freeLocked(s *shard, e *entry, k key, now time.Time) {
	e.holder = ""
	if len(e.waiters) > 0 {
		m.handoffLocked(e, k, now)
		return
	}
	if e.timer != nil {
		e.timer.Stop()
		e.timer = nil
	}
	delete(s.m, k)
}

// Acquire grants the lease on name to agentID for ttl when it is free or
// expired, or renews it (never shortening it) when agentID already holds
// it. When another agent holds it, the error is a *HeldError. The grant is
// durable when Acquire returns.
func (m *Manager) Acquire(ctx context.Context, exchangeID, agentID, name string, ttl time.Duration) (Grant, error) {
	return m.AcquireWait(ctx, exchangeID, agentID, name, ttl, 0)
}

// AcquireWait is Acquire that, while another agent holds the lease, waits
// up to wait (capped at Config.MaxWait) for it. Waiters are served first
// come, first served: a release or expiry hands the lease to the oldest
// waiter only. On timeout the error is a *HeldError for the then holder;
// when ctx ends first it is ctx.Err().
func (m *Manager) AcquireWait(ctx context.Context, exchangeID, agentID, name string, ttl, wait time.Duration) (Grant, error) {
	if agentID == "" {
		return Grant{}, fmt.Errorf("%w: empty agent id", ErrInvalidID)
	}
	k, err := validate(exchangeID, agentID, name)
	if err != nil {
		return Grant{}, err
	}
	if err := m.checkTTL(ttl); err != nil {
		return Grant{}, err
	}
	wait = min(wait, m.cfg.MaxWait)
	if err := m.enter(); err != nil {
		return Grant{}, err
	}
	defer m.leave()
	ex, err := m.open(ctx, k.x)
	if err != nil {
		return Grant{}, err
	}

	s := m.shard(k)
	s.mu.Lock()
	now := m.cfg.Now()
	e, out, prev := m.tryLocked(s, ex, k, agentID, ttl, now)
	for out == outHeld && e.writing != nil {
		// Answered once the holder's grant is settled (see entry.writing).
		ch := e.writing
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Grant{}, ctx.Err()
		}
		s.mu.Lock()
		now = m.cfg.Now()
		e, out, prev = m.tryLocked(s, ex, k, agentID, ttl, now)
	}
	if out != outHeld {
		g := e.grant(k)
		var ch chan struct{}
		if out == outGranted {
			ch = e.writing
		}
		written := m.record(ex, grantRecord(k, g, now))
		s.mu.Unlock()
		return m.commitGrant(k, g, out, prev, written, ch)
	}
	if wait <= 0 {
		he := e.heldError(k)
		s.mu.Unlock()
		return Grant{}, he
	}
	w := &waiter{agent: agentID, ttl: ttl, granted: make(chan struct{})}
	e.waiters = append(e.waiters, w)
	m.armLocked(e, k, now)
	s.mu.Unlock()

	t := time.NewTimer(wait)
	defer t.Stop()
	var cause error
	select {
	case <-w.granted:
	case <-t.C:
	case <-ctx.Done():
		cause = ctx.Err()
	case <-m.done:
		cause = ErrClosed
	}
	s.mu.Lock()
	now = m.cfg.Now()
	if w.got {
		if cause == nil {
			g := Grant{Name: k.n, Holder: agentID, Token: w.token, ExpiresAt: w.expires}
			s.mu.Unlock()
			return m.commitGrant(k, g, outGranted, time.Time{}, w.written, w.writing)
		}
		// The caller is gone: its grant is already queued for the
		// journal, so release it there too, then give the lease straight
		// to the next in line. A failed write of that release only ever
		// delays others (see Release).
		if e := s.m[k]; e != nil && e.token == w.token && e.holder == agentID {
			_ = m.record(ex, releaseRecord(k, w.token))
			settledLocked(e, w.writing)
			m.freeLocked(s, e, k, now)
		}
		s.mu.Unlock()
		return Grant{}, cause
	}
	e = s.m[k] // still present: an entry with waiters is never deleted
	for i, x := range e.waiters {
		if x == w {
			e.waiters = append(e.waiters[:i], e.waiters[i+1:]...)
			break
		}
	}
	m.armLocked(e, k, now)
	if cause == nil {
		if !e.live(now) && len(e.waiters) == 0 {
			// The holder expired just as the timer fired and nobody else
			// is queued: this waiter is first in line after all.
			e, out, prev := m.tryLocked(s, ex, k, agentID, ttl, now)
			g := e.grant(k)
			var ch chan struct{}
			if out == outGranted {
				ch = e.writing
			}
			written := m.record(ex, grantRecord(k, g, now))
			s.mu.Unlock()
			return m.commitGrant(k, g, out, prev, written, ch)
		}
		cause = e.heldError(k)
	}
	if e.holder == "" && len(e.waiters) == 0 {
		delete(s.m, k)
	}
	s.mu.Unlock()
	return Grant{}, cause
}

// commitGrant waits for the journal write of a grant or renewal, undoing
// it in memory if the write fails so that nobody relies on a grant a
// restart would forget.
func (m *Manager) commitGrant(k key, g Grant, out outcome, prev time.Time, written <-chan error, writing chan struct{}) (Grant, error) {
	return m.settleGrant(k, g, out, prev, writing, <-written)
}

// settleGrant finishes a grant or renewal whose journal write ended with
// err: see commitGrant.
func (m *Manager) settleGrant(k key, g Grant, out outcome, prev time.Time, writing chan struct{}, err error) (Grant, error) {
	s := m.shard(k)
	if err == nil {
		if writing != nil {
			s.mu.Lock()
			settledLocked(s.m[k], writing)
			s.mu.Unlock()
		}
		return g, nil
	}
	s.mu.Lock()
	if e := s.m[k]; e != nil && e.token == g.Token && e.holder == g.Holder {
		switch {
		case out == outGranted:
			m.freeLocked(s, e, k, m.cfg.Now())
		case e.deadline.Equal(g.ExpiresAt):
			e.deadline = prev
		}
	}
	settledLocked(s.m[k], writing) // after the undo, which may hand the lease on
	s.mu.Unlock()
	return Grant{}, fmt.Errorf("lease: record grant on %q: %w", k.n, err)
}

// settledLocked tells those waiting on a grant's write (writing) that it
// is settled; e is the grant's entry, if still present. The shard lock must
// be held.
func settledLocked(e *entry, writing chan struct{}) {
	if writing == nil {
		return
	}
	if e != nil && e.writing == writing {
		e.writing = nil
	}
	select {
	case <-writing:
	default:
		close(writing)
	}
}

// Renew extends agentID's lease on name to ttl from now, given the token of
// its grant. It never shortens the lease: if the lease already runs longer,
// the returned Grant keeps the later deadline. A token that is no longer
// the current one gives ErrStaleToken; a lease that expired or is not the
// caller's gives ErrNotHeld.
func (m *Manager) Renew(ctx context.Context, exchangeID, agentID, name string, token uint64, ttl time.Duration) (Grant, error) {
	k, err := validate(exchangeID, agentID, name)
	if err != nil {
		return Grant{}, err
	}
	if agentID == "" {
		return Grant{}, fmt.Errorf("%w: empty agent id", ErrInvalidID)
	}
	if token == 0 {
		return Grant{}, ErrInvalidToken
	}
	if err := m.checkTTL(ttl); err != nil {
		return Grant{}, err
	}
	if err := m.enter(); err != nil {
		return Grant{}, err
	}
	defer m.leave()
	ex, err := m.open(ctx, k.x)
	if err != nil {
		return Grant{}, err
	}
	s := m.shard(k)
	s.mu.Lock()
	now := m.cfg.Now()
	e := s.m[k]
	if err := checkHeld(e, k, agentID, token, now); err != nil {
		s.mu.Unlock()
		return Grant{}, err
	}
	prev := e.deadline
	if d := now.Add(ttl); d.After(e.deadline) {
		e.deadline = d
	}
	g := e.grant(k)
	written := m.record(ex, grantRecord(k, g, now))
	s.mu.Unlock()
	return m.commitGrant(k, g, outRenewed, prev, written, nil)
}

// Release gives up agentID's lease on name. A token of
// 0 means the caller's current lease, whatever its token: the caller is
// identified by its agent id (over HTTP, by its API key), which is all a
// mail bus client sends when it releases. A non-zero token must be the
// current grant's, so that a holder that lost the lease and got it back
// cannot release the newer grant by mistake. Nothing is released when the
// token is not current (ErrStaleToken) or when the caller holds no live
// lease on name (ErrNotHeld: free, expired or someone else's).
func (m *Manager) Release(ctx context.Context, exchangeID, agentID, name string, token uint64) error {
	if agentID == "" {
		return fmt.Errorf("%w: empty agent id", ErrInvalidID)
	}
	k, err := validate(exchangeID, agentID, name)
	if err != nil {
		return err
	}
	if err := m.enter(); err != nil {
		return err
	}
	defer m.leave()
	ex, err := m.open(ctx, k.x)
	if err != nil {
		return err
	}
	s := m.shard(k)
	s.mu.Lock()
	now := m.cfg.Now()
	e := s.m[k]
	if err := checkHeld(e, k, agentID, token, now); err != nil {
		s.mu.Unlock()
		return err
	}
	// Queued before freeLocked, which may hand the lease on and queue the
	// next grant.
	written := m.record(ex, releaseRecord(k, e.token))
	m.freeLocked(s, e, k, now)
	s.mu.Unlock()
	if err := <-written; err != nil {
		// The lease is already free in memory; after a crash it could come
		// back until its deadline, which is safe (it only ever blocks).
		return fmt.Errorf("lease: record release of %q: %w", k.n, err)
	}
	return nil
}

// checkHeld says why agent does not hold e (under token, if not 0) now, if
// it does not. Renew and Release act only on a lease that passes it.
func checkHeld(e *entry, k key, agent string, token uint64, now time.Time) error {
	switch {
	case e == nil || e.holder == "":
		return fmt.Errorf("%w: %q is not leased", ErrNotHeld, k.n)
	case token != 0 && e.token != token:
		return fmt.Errorf("%w: %q is at token %d, not %d", ErrStaleToken, k.n, e.token, token)
	case e.holder != agent:
		return fmt.Errorf("%w: %q is held by %s", ErrNotHeld, k.n, e.holder)
	case !e.live(now):
		return fmt.Errorf("%w: lease on %q expired", ErrNotHeld, k.n)
	}
	return nil
}

// Status reports the lease on name. An expired lease is reported free.
func (m *Manager) Status(ctx context.Context, exchangeID, name string) (Status, error) {
	k, err := validate(exchangeID, "", name)
	if err != nil {
		return Status{}, err
	}
	if err := m.enter(); err != nil {
		return Status{}, err
	}
	defer m.leave()
	if _, err := m.open(ctx, k.x); err != nil {
		return Status{}, err
	}
	s := m.shard(k)
	s.mu.Lock()
	e := s.m[k]
	for e != nil && e.writing != nil {
		// Answered once the holder's grant is settled (see entry.writing).
		ch := e.writing
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return Status{}, ctx.Err()
		}
		s.mu.Lock()
		e = s.m[k]
	}
	now := m.cfg.Now()
	if e == nil || !e.live(now) {
		s.mu.Unlock()
		return Status{IsLeased: false}, nil
	}
	st := Status{
		IsLeased:    true,
		AgentID:     e.holder,
		ExpiresAt:   e.deadline.UnixMilli(),
		Token:       e.token,
		RemainingMs: remainingMs(e.deadline.Sub(now)),
	}
	s.mu.Unlock()
	return st, nil
}

// remainingMs rounds up so a live lease never reports 0 ms left.
func remainingMs(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

// List returns the live leases in exchangeID, sorted by name; a non-empty
// agentID keeps only that agent's. It scans every lease of the manager.
func (m *Manager) List(ctx context.Context, exchangeID, agentID string) ([]Grant, error) {
	if err := validID(exchangeID); err != nil {
		return nil, err
	}
	if agentID != "" {
		if err := validID(agentID); err != nil {
			return nil, err
		}
	}
	if err := m.enter(); err != nil {
		return nil, err
	}
	defer m.leave()
	if _, err := m.open(ctx, exchangeID); err != nil {
		return nil, err
	}
	var out []Grant
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		now := m.cfg.Now()
		for k, e := range s.m {
			// A grant still being written is not in effect yet (see
			// entry.writing): the listing comes before it.
			if k.x == exchangeID && e.live(now) && e.writing == nil && (agentID == "" || e.holder == agentID) {
				out = append(out, e.grant(k))
			}
		}
		s.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// ReleaseAll releases every live lease agentID holds in exchangeID, for an
// agent that went away, and returns how many it released.
func (m *Manager) ReleaseAll(ctx context.Context, exchangeID, agentID string) (int, error) {
	if err := validID(exchangeID); err != nil {
		return 0, err
	}
	if err := validID(agentID); err != nil {
		return 0, err
	}
	if err := m.enter(); err != nil {
		return 0, err
	}
	defer m.leave()
	ex, err := m.open(ctx, exchangeID)
	if err != nil {
		return 0, err
	}
	var written []<-chan error
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		now := m.cfg.Now()
		for k, e := range s.m {
			if k.x == exchangeID && e.holder == agentID && e.live(now) {
				written = append(written, m.record(ex, releaseRecord(k, e.token)))
				m.freeLocked(s, e, k, now)
			}
		}
		s.mu.Unlock()
	}
	var errs []error
	for _, w := range written {
		if err := <-w; err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return 0, fmt.Errorf("lease: record release of %d leases: %w", len(written), errs[0])
	}
	return len(written), nil
}

// record queues lines for ex's journal and returns the channel that
// receives the write's outcome. Callers hold the shard lock of the lease
// the lines are about, so that a name's records reach the journal in the
// order its state changed: a grant before its renewals and its release,
// a release before the next grant. Replay and compaction rely on that.
// The write is not cancelled with the caller's context so that its
// outcome is known: a record written after the caller gave up would
// otherwise resurrect a grant that was rolled back.
func (m *Manager) record(ex *exchange, lines ...[]byte) <-chan error {
	ex.log.Touch()
	written, err := m.j.AppendAsync(ex.part, lines...)
	if err != nil {
		failed := make(chan error, 1)
		failed <- err
		return failed
	}
	return written
}

func (m *Manager) sweepLoop() {
	t := time.NewTicker(m.cfg.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		for i := range m.shards {
			s := &m.shards[i]
			s.mu.Lock()
			now := m.cfg.Now()
			for k, e := range s.m {
				if !e.live(now) && len(e.waiters) == 0 {
					if e.holder != "" {
						m.expired.Add(1)
					}
					delete(s.m, k)
				}
			}
			s.mu.Unlock()
		}
	}
}

func (m *Manager) compactLoop() {
	t := time.NewTicker(m.cfg.CompactInterval)
	defer t.Stop()
	for {
		select {
		case <-m.done:
			return
		case <-t.C:
		}
		if err := m.compact(context.Background()); err != nil {
			m.cfg.Logger.Error("lease: compaction failed", "err", err)
		}
	}
}

// Close stops the manager: waiters get ErrClosed, later calls get
// ErrClosed, queued journal writes finish, and each exchange's journal is
// folded into a snapshot so the next start replays little (unless a newer
// owner has taken over). It is idempotent.
func (m *Manager) Close(ctx context.Context) error {
	first := false
	m.closeOnce.Do(func() { first = true; close(m.done) })
	if !first {
		return nil
	}
	finished := make(chan error, 1)
	go func() {
		m.closeMu.Lock() // waits for operations in flight
		m.closed = true
		m.closeMu.Unlock()
		m.wg.Wait()
		err := m.j.Close(context.Background())
		if cerr := m.compact(context.Background()); err == nil {
			err = cerr
		}
		for i := range m.shards {
			s := &m.shards[i]
			s.mu.Lock()
			for _, e := range s.m {
				if e.timer != nil {
					e.timer.Stop()
				}
			}
			s.mu.Unlock()
		}
		finished <- err
	}()
	select {
	case err := <-finished:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

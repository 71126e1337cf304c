// Package ownership decides which process writes a shared store. A record
// object names the owner and an epoch that grows on every takeover; the
// owner proves it is alive by rewriting the record (a heartbeat), and a
// standby takes over once the record has not changed for a timeout
// measured on the standby's own monotonic clock, never by comparing wall
// clocks across machines.
//
// Every change to the record is a conditional write (Create for the
// first, Update with the version read for the rest), so of two processes
// racing for it exactly one wins, on any storage.Store that honours them
// (check with storage.VerifyConditionalWrites).
//
// An Ownership is the storage.Fence the services write under: Valid says
// whether this process may still acknowledge anything, judged on its own
// monotonic clock so that it ends before any standby can declare it dead;
// Claim and Confirm keep one owner record per exchange
// (owners/exchanges/{id}.json) at this owner's epoch, so that exchanges
// can later be spread over several processes; and the journals fence
// every log with the epoch (internal/journal). A writer paused past the
// timeout (SIGSTOP, a VM freeze) therefore acknowledges nothing once it
// wakes, and a write it had in flight meets the new owner's fence.
package ownership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meatspace-exchange/mess/storage"
)

// ErrLost is the cause of an Ownership's end when another process took the
// record over or the store could not be reached for too long.
var ErrLost = errors.New("ownership: lost")

// Config says which record to claim and how liveness is judged.
type Config struct {
	// Store holds the record. Required.
	Store storage.Store
	// Key is the record's key, e.g. "owners/messd.json". Required.
	Key string
	// Holder names this process incarnation; it must be unique to it (a
	// host name plus a random id, say). Required.
	Holder string
	// Addr is where this process serves, for operators reading the record.
	Addr string
	// Heartbeat is how often the owner rewrites the record and a standby
	// reads it. Zero means 2s.
	Heartbeat time.Duration
	// Timeout is how long the record must stay unchanged before a standby
	// takes over. It must be well above Heartbeat; zero means 10s.
	Timeout time.Duration
	// MinEpoch, when set, is the lowest epoch this claim may take: a store
	// whose logs were copied from another (messd migrate) must continue
	// above the epochs written in them.
	MinEpoch uint64
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// record is the stored owner record.
type record struct {
	Epoch    uint64    `json:"epoch"`
	Holder   string    `json:"holder"`
	Addr     string    `json:"addr,omitempty"`
	Beat     uint64    `json:"beat"` // changes on every heartbeat, and with it the version
	Since    time.Time `json:"since"`
	Released bool      `json:"released,omitempty"`
}

// Ownership is a claimed record. Its heartbeat runs until Release or until
// it is lost.
type Ownership struct {
	cfg   Config
	epoch uint64

	mu      sync.Mutex
	rec     record
	version string

	lost     chan struct{}
	lostErr  error
	lostOnce sync.Once
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once

	// beatAt is when the last successful heartbeat (or the claim) was
	// sent, in nanoseconds on the monotonic clock since born.
	born   time.Time
	beatAt atomic.Int64

	claimMu sync.Mutex
	claimed map[string]bool // exchanges whose owner record has our epoch
}

func (c *Config) validate() error {
	switch {
	case c.Store == nil:
		return errors.New("ownership: Config.Store is required")
	case c.Holder == "":
		return errors.New("ownership: Config.Holder is required")
	}
	if err := storage.ValidKey(c.Key); err != nil {
		return fmt.Errorf("ownership: Config.Key: %w", err)
	}
	if c.Heartbeat <= 0 {
		c.Heartbeat = 2 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.Timeout < 3*c.Heartbeat {
		return fmt.Errorf("ownership: Timeout %v must be at least three heartbeats (%v)", c.Timeout, 3*c.Heartbeat)
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// Claim blocks until this process owns the record: at once when there is
// none or its owner released it, and otherwise once the owner's heartbeat
// has stopped for Config.Timeout. waiting, if not nil, is called once with
// the current owner's record when Claim has to wait (the process is then a
// standby). Claim returns ctx's error if ctx ends first.
func Claim(ctx context.Context, cfg Config, waiting func(holder, addr string)) (*Ownership, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var (
		seenVersion string
		seenAt      time.Time // on this process's monotonic clock
		told        bool
	)
	for {
		obj, err := cfg.Store.Get(ctx, cfg.Key)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			o, err := create(ctx, cfg, record{Epoch: max(1, cfg.MinEpoch)})
			if err == nil || !errors.Is(err, storage.ErrExists) {
				return o, err
			}
			continue // another process created it first: read who
		case err != nil:
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			cfg.Logger.Warn("ownership: reading the owner record", "key", cfg.Key, "err", err)
		default:
			var cur record
			if err := json.Unmarshal(obj.Data, &cur); err != nil {
				return nil, fmt.Errorf("ownership: %s is not an owner record: %w", cfg.Key, err)
			}
			now := time.Now()
			if obj.Version != seenVersion {
				seenVersion, seenAt = obj.Version, now
			}
			if cur.Released || now.Sub(seenAt) >= cfg.Timeout {
				o, err := takeOver(ctx, cfg, cur, obj.Version)
				if err == nil || !errors.Is(err, storage.ErrVersionMismatch) {
					return o, err
				}
				continue // someone else moved first: start counting again
			}
			if !told && waiting != nil {
				waiting(cur.Holder, cur.Addr)
				told = true
			}
		}
		t := time.NewTimer(cfg.Heartbeat)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

func create(ctx context.Context, cfg Config, rec record) (*Ownership, error) {
	rec.Holder, rec.Addr, rec.Since = cfg.Holder, cfg.Addr, time.Now().UTC()
	data, _ := json.Marshal(rec)
	sent := time.Now()
	v, err := cfg.Store.Create(ctx, cfg.Key, data)
	if err != nil {
		return nil, err
	}
	return start(cfg, rec, v, sent), nil
}

func takeOver(ctx context.Context, cfg Config, prev record, version string) (*Ownership, error) {
	rec := record{Epoch: max(prev.Epoch+1, cfg.MinEpoch), Holder: cfg.Holder, Addr: cfg.Addr, Since: time.Now().UTC()}
	data, _ := json.Marshal(rec)
	sent := time.Now()
	v, err := cfg.Store.Update(ctx, cfg.Key, data, version)
	if err != nil {
		return nil, err
	}
	if !prev.Released && prev.Holder != cfg.Holder {
		cfg.Logger.Warn("ownership: took over from a silent owner", "key", cfg.Key, "previous", prev.Holder, "epoch", rec.Epoch)
	}
	return start(cfg, rec, v, sent), nil
}

func start(cfg Config, rec record, version string, sent time.Time) *Ownership {
	o := &Ownership{cfg: cfg, epoch: rec.Epoch, rec: rec, version: version,
		lost: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{}),
		born: sent, claimed: map[string]bool{}}
	go o.heartbeat()
	return o
}

// Epoch is the record's epoch under this ownership: larger than that of
// every owner before it.
func (o *Ownership) Epoch() uint64 { return o.epoch }

// Lost is closed when the ownership ends without Release: another process
// took the record over, or no heartbeat succeeded for half the timeout (so
// this process gives up before any standby may take over). Err says which.
func (o *Ownership) Lost() <-chan struct{} { return o.lost }

// Err is why Lost was closed, wrapping ErrLost; nil before that.
func (o *Ownership) Err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.lostErr
}

func (o *Ownership) heartbeat() {
	defer close(o.done)
	t := time.NewTicker(o.cfg.Heartbeat)
	defer t.Stop()
	lastOK := time.Now()
	for {
		select {
		case <-o.stop:
			return
		case <-t.C:
		}
		// A beat may take longer than the period on a slow store; it must
		// not take so long that half the timeout passes unnoticed.
		ctx, cancel := context.WithTimeout(context.Background(), o.cfg.Timeout/4)
		sent := time.Now()
		err := o.beat(ctx)
		cancel()
		switch {
		case err == nil:
			lastOK = time.Now()
			o.beatAt.Store(int64(sent.Sub(o.born)))
		case errors.Is(err, storage.ErrVersionMismatch), errors.Is(err, storage.ErrNotFound):
			o.fail(fmt.Errorf("%w: %s was taken over by another process", ErrLost, o.cfg.Key))
			return
		case time.Since(lastOK) >= o.cfg.Timeout/2:
			o.fail(fmt.Errorf("%w: no heartbeat of %s succeeded for %v: %v", ErrLost, o.cfg.Key, time.Since(lastOK).Round(time.Millisecond), err))
			return
		default:
			o.cfg.Logger.Warn("ownership: heartbeat failed", "key", o.cfg.Key, "err", err)
		}
	}
}

func (o *Ownership) beat(ctx context.Context) error {
	o.mu.Lock()
	rec, version := o.rec, o.version
	o.mu.Unlock()
	rec.Beat++
	data, _ := json.Marshal(rec)
	v, err := o.cfg.Store.Update(ctx, o.cfg.Key, data, version)
	if errors.Is(err, storage.ErrVersionMismatch) {
		// An earlier beat may have landed although its answer was lost
		// (a timeout, a dropped connection): then the record is still
		// ours, at a version this process never saw.
		rec, v, err = o.stillOurs(ctx)
	}
	if err != nil {
		return err
	}
	o.mu.Lock()
	o.rec, o.version = rec, v
	o.mu.Unlock()
	return nil
}

// stillOurs reads the record after a version mismatch: it returns the
// record and its version when it still names this process at its epoch,
// and ErrVersionMismatch when another process has it.
func (o *Ownership) stillOurs(ctx context.Context) (record, string, error) {
	obj, err := o.cfg.Store.Get(ctx, o.cfg.Key)
	if err != nil {
		return record{}, "", err
	}
	var cur record
	if err := json.Unmarshal(obj.Data, &cur); err != nil {
		return record{}, "", fmt.Errorf("ownership: %s is not an owner record: %w", o.cfg.Key, err)
	}
	if cur.Holder != o.cfg.Holder || cur.Epoch != o.epoch || cur.Released {
		return record{}, "", storage.ErrVersionMismatch
	}
	return cur, obj.Version, nil
}

func (o *Ownership) fail(err error) {
	o.lostOnce.Do(func() {
		o.mu.Lock()
		o.lostErr = err
		o.mu.Unlock()
		o.cfg.Logger.Error("ownership lost", "key", o.cfg.Key, "err", err)
		close(o.lost)
		o.stopOnce.Do(func() { close(o.stop) })
	})
}

// Release stops the heartbeat and marks the record released, so a standby
// takes over at once instead of waiting out the timeout. Call it after
// the last write. After the ownership was lost it only stops.
func (o *Ownership) Release(ctx context.Context) error {
	o.stopOnce.Do(func() { close(o.stop) })
	<-o.done
	select {
	case <-o.lost:
		return nil
	default:
	}
	o.mu.Lock()
	rec, version := o.rec, o.version
	o.mu.Unlock()
	rec.Released, rec.Beat = true, rec.Beat+1
	data, _ := json.Marshal(rec)
	_, err := o.cfg.Store.Update(ctx, o.cfg.Key, data, version)
	return err
}

// lease is how long after a heartbeat was sent this process may still act
// as the owner. A standby counts Timeout from when it saw that heartbeat
// land, which is later, on a clock that may run a little faster: allow a
// drift of 0.1% and a margin.
func (o *Ownership) lease() time.Duration {
	margin := min(500*time.Millisecond, o.cfg.Timeout/10)
	return o.cfg.Timeout - o.cfg.Timeout/1000 - margin
}

// Valid returns an error wrapping storage.ErrFenced once the ownership
// was lost or this process could have been replaced: when no heartbeat
// sent within the lease has succeeded. It reads only the local clock.
func (o *Ownership) Valid() error {
	select {
	case <-o.lost:
		return fmt.Errorf("%w: %w", storage.ErrFenced, o.Err())
	default:
	}
	at := o.born.Add(time.Duration(o.beatAt.Load()))
	if since := time.Since(at); since >= o.lease() {
		return fmt.Errorf("%w: no heartbeat of %s succeeded for %v", storage.ErrFenced, o.cfg.Key, since.Round(time.Millisecond))
	}
	return nil
}

// Fenced ends the ownership because a write met a newer owner's fence.
func (o *Ownership) Fenced(err error) {
	o.fail(fmt.Errorf("%w: %w", ErrLost, err))
}

// exchangeRecord is an exchange's owner record.
type exchangeRecord struct {
	Epoch  uint64    `json:"epoch"`
	Holder string    `json:"holder"`
	Since  time.Time `json:"since"`
}

// ExchangeKey is the key of an exchange's owner record.
func ExchangeKey(exchange string) string { return "owners/exchanges/" + exchange + ".json" }

// Claim makes this owner's epoch the exchange's: it creates the record,
// or moves it up from an older epoch with a conditional write. Records
// are never deleted. It returns an error wrapping storage.ErrFenced (and
// ends the ownership) if the record names a newer epoch.
func (o *Ownership) Claim(ctx context.Context, exchange string) error {
	key := ExchangeKey(exchange)
	if err := storage.ValidKey(key); err != nil {
		return err
	}
	o.claimMu.Lock()
	done := o.claimed[exchange]
	o.claimMu.Unlock()
	if done {
		return o.Valid()
	}
	data, _ := json.Marshal(exchangeRecord{Epoch: o.epoch, Holder: o.cfg.Holder, Since: time.Now().UTC()})
	for {
		if err := o.Valid(); err != nil {
			return err
		}
		cur, version, err := o.readExchange(ctx, key)
		switch {
		case errors.Is(err, storage.ErrNotFound):
			_, err = o.cfg.Store.Create(ctx, key, data)
		case err != nil:
		case cur.Epoch > o.epoch:
			err = fmt.Errorf("ownership: exchange %s is owned at epoch %d, after ours (%d): %w", exchange, cur.Epoch, o.epoch, storage.ErrFenced)
			o.Fenced(err)
			return err
		case cur.Epoch == o.epoch:
			if cur.Holder != o.cfg.Holder {
				return fmt.Errorf("ownership: exchange %s is held by %s at our epoch", exchange, cur.Holder)
			}
		default:
			_, err = o.cfg.Store.Update(ctx, key, data, version)
		}
		if errors.Is(err, storage.ErrExists) || errors.Is(err, storage.ErrVersionMismatch) {
			continue // moved under us (or our own write's answer was lost): read again
		}
		if err != nil {
			return fmt.Errorf("ownership: claim %s: %w", exchange, err)
		}
		o.claimMu.Lock()
		o.claimed[exchange] = true
		o.claimMu.Unlock()
		return nil
	}
}

// Confirm reads the exchange's owner record and returns an error wrapping
// storage.ErrFenced unless it shows this owner's epoch. A service calls it
// after an in-place update, before acknowledging it.
func (o *Ownership) Confirm(ctx context.Context, exchange string) error {
	if err := o.Valid(); err != nil {
		return err
	}
	cur, _, err := o.readExchange(ctx, ExchangeKey(exchange))
	if errors.Is(err, storage.ErrNotFound) {
		if err := o.Claim(ctx, exchange); err != nil {
			return err
		}
		return o.Confirm(ctx, exchange)
	}
	if err != nil {
		return fmt.Errorf("ownership: confirm %s: %w", exchange, err)
	}
	if cur.Epoch != o.epoch || cur.Holder != o.cfg.Holder {
		err := fmt.Errorf("ownership: exchange %s is owned at epoch %d by %s: %w", exchange, cur.Epoch, cur.Holder, storage.ErrFenced)
		if cur.Epoch > o.epoch {
			o.Fenced(err)
		}
		return err
	}
	return nil
}

func (o *Ownership) readExchange(ctx context.Context, key string) (exchangeRecord, string, error) {
	obj, err := o.cfg.Store.Get(ctx, key)
	if err != nil {
		return exchangeRecord{}, "", err
	}
	var r exchangeRecord
	if err := json.Unmarshal(obj.Data, &r); err != nil {
		return exchangeRecord{}, "", fmt.Errorf("ownership: %s is not an owner record: %w", key, err)
	}
	return r, obj.Version, nil
}

var _ storage.Fence = (*Ownership)(nil)

package lease

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// Durable state is kept per exchange: a journal of records under
// {Prefix}/exchange={id}/log/ plus, from time to time, a snapshot under
// {Prefix}/exchange={id}/snap/ that folds the journal objects before a
// boundary (which are then deleted). Each exchange has its own token
// counter, resumed above every token its snapshot and journal hold.
//
// A grant record carries the wall-clock deadline and the TTL left when it
// was written; on restart a lease gets min(deadline - now, that TTL), so a
// restart never extends a lease, even if the wall clock stepped back.
//
// The Manager queues a name's records under the lock that orders its
// changes, so the journal holds them in that order: a grant before its
// renewals and its release, a release before the next grant. Replay
// relies on it only loosely: a grant applies when its token is above every
// token seen for the name (or equals the live one, which is a renewal: the
// later deadline wins because renewals never shorten), and a release
// clears the name only if the token matches.
//
// A snapshot is made from the journal objects themselves, never from
// memory: memory may hold a grant whose write is still in flight or will
// fail, and a snapshot must say exactly what the objects it replaces said.
// That also makes a snapshot written by an owner that has been replaced
// (and does not know it yet) correct, merely old.

// record is one journal line. The JSON names are short because every
// grant writes one; they are the stored format, so they never change.
type record struct {
	Op       string `json:"op"`          // opGrant or opRelease
	Exchange string `json:"x"`           // exchange id
	Name     string `json:"n"`           // canonical lease name
	Holder   string `json:"a,omitempty"` // agent id; grants only
	Token    uint64 `json:"t"`           // fencing token
	Deadline int64  `json:"e,omitempty"` // wall-clock deadline, epoch ms; grants only
	LeftMs   int64  `json:"r,omitempty"` // ms left when written; grants only
}

// Record operations.
const (
	opGrant   = "g" // a grant or a renewal
	opRelease = "r"
)

type snapshot struct {
	// Next is above every token in the journal objects the snapshot
	// replaced, so the exchange's counter resumes at or above it.
	Next   uint64   `json:"next"`
	Leases []record `json:"leases"`
	// Boundary is the journal key the snapshot covers up to (a
	// per-exchange snapshot only). In a fenced journal it is a slot key:
	// replay and Open start after it, and it is never deleted.
	Boundary string `json:"boundary,omitempty"`
}

func makeGrantRecord(k key, g Grant, now time.Time) record {
	return record{Op: opGrant, Exchange: k.x, Name: k.n, Holder: g.Holder, Token: g.Token,
		Deadline: g.ExpiresAt.UnixMilli(), LeftMs: g.ExpiresAt.Sub(now).Milliseconds()}
}

func grantRecord(k key, g Grant, now time.Time) []byte {
	b, _ := json.Marshal(makeGrantRecord(k, g, now))
	return b
}

func releaseRecord(k key, token uint64) []byte {
	b, _ := json.Marshal(record{Op: opRelease, Exchange: k.x, Name: k.n, Token: token})
	return b
}

// replayState rebuilds leases from a snapshot and journal records.
type replayState struct {
	next  uint64 // grants below it are settled by the snapshot (the legacy layout only)
	maxT  uint64 // highest token seen anywhere
	live  map[key]record
	maxAt map[key]uint64 // highest token seen per name
}

func newReplayState() *replayState {
	return &replayState{live: map[key]record{}, maxAt: map[key]uint64{}}
}

func (st *replayState) apply(r record) {
	k := key{r.Exchange, r.Name}
	st.maxT = max(st.maxT, r.Token)
	cur, isLive := st.live[k]
	switch r.Op {
	case opGrant:
		if isLive && cur.Token == r.Token {
			if r.Deadline > cur.Deadline {
				st.live[k] = r
			}
			return
		}
		if r.Token < st.next || r.Token <= st.maxAt[k] {
			return
		}
		st.live[k] = r
		st.maxAt[k] = r.Token
	case opRelease:
		st.maxAt[k] = max(st.maxAt[k], r.Token)
		if isLive && cur.Token == r.Token {
			delete(st.live, k)
		}
	}
}

// decode reads the records of one journal object. A write torn by a crash
// can leave garbage before the object's end; nothing after it in the
// object was acknowledged.
func (m *Manager) decode(key string, data []byte) []record {
	lines, _ := journal.Lines(data) // a torn tail was never acknowledged
	recs := make([]record, 0, len(lines))
	for _, l := range lines {
		var r record
		if err := json.Unmarshal(l, &r); err != nil {
			m.cfg.Logger.Warn("lease: journal object ends in a torn write", "key", key)
			break
		}
		recs = append(recs, r)
	}
	return recs
}

// exchange is the durable side of one exchange's leases.
type exchange struct {
	id      string
	log     string        // journal partition
	snapDir string        // snapshot key prefix
	tokens  atomic.Uint64 // the last token issued in this exchange
	ready   chan struct{} // closed once loaded, or once loading failed (err)
	err     error

	appended atomic.Uint64 // records queued, so compaction passes idle exchanges by

	// Set by the load before ready is closed, then owned by compaction
	// (Manager.compactMu).
	folded   uint64          // appended when the last compaction sealed the journal
	snap     snapState       // the newest snapshot this process knows of
	controls map[string]bool // journal keys holding fences (never folded or deleted)
}

// snapState is an exchange's newest snapshot as far as this process knows.
type snapState struct {
	known bool // false: read the store to find out
	key   string
	gen   uint64
	sn    *snapshot // nil: there is none
}

func newExchange(prefix, id string) *exchange {
	dir := prefix + "/exchange=" + id
	return &exchange{id: id, log: dir + "/log", snapDir: dir + "/snap/", ready: make(chan struct{}),
		controls: map[string]bool{}}
}

// snapKey names snapshot gen of ex. Generations count up from 1, and a
// snapshot is written with Create, so of two processes folding the same
// journal (an owner that was replaced and does not know it yet, and its
// successor) only one writes each generation.
func (ex *exchange) snapKey(gen uint64) string { return fmt.Sprintf("%s%020d.json", ex.snapDir, gen) }

// isSlot reports whether key is a slot of a fenced journal log:
// {log}/{20 digits}.jsonl.
func isSlot(log, key string) bool {
	name, ok := strings.CutPrefix(key, log+"/")
	if !ok {
		return false
	}
	name, ok = strings.CutSuffix(name, ".jsonl")
	if !ok || len(name) != 20 {
		return false
	}
	for i := range len(name) {
		if name[i] < '0' || name[i] > '9' {
			return false
		}
	}
	return true
}

// legacyState is what the layout before per-exchange journals left: one
// journal under {Prefix}/log/ and snapshots under {Prefix}/snap/ for
// every exchange. It is read at every start and never written or deleted:
// an exchange starts from its leases there until it has a snapshot of its
// own (which then includes them), and every exchange's tokens start above
// the highest token there, since that one counter served every exchange.
type legacyState struct {
	maxT uint64
	live map[string][]record // by exchange: leases not yet expired at start
}

// loadLegacy reads the old layout as the old code did.
func (m *Manager) loadLegacy(ctx context.Context) (legacyState, error) {
	st := newReplayState()
	last := ""
	for k, err := range storage.Keys(ctx, m.cfg.Store, m.cfg.Prefix+"/snap/") {
		if err != nil {
			return legacyState{}, fmt.Errorf("lease: list snapshots: %w", err)
		}
		last = k
	}
	if last != "" {
		obj, err := m.cfg.Store.Get(ctx, last)
		if err != nil {
			return legacyState{}, fmt.Errorf("lease: read snapshot: %w", err)
		}
		var sn snapshot
		if err := json.Unmarshal(obj.Data, &sn); err != nil {
			return legacyState{}, fmt.Errorf("lease: decode snapshot %s: %w", last, err)
		}
		for _, r := range sn.Leases {
			k := key{r.Exchange, r.Name}
			st.live[k] = r
			st.maxAt[k] = r.Token
			st.maxT = max(st.maxT, r.Token)
		}
		st.next = sn.Next
		if sn.Next > 0 {
			st.maxT = max(st.maxT, sn.Next-1)
		}
	}
	err := journal.Replay(ctx, m.cfg.Store, journal.ReplayConfig{
		Prefix: m.cfg.Prefix + "/log/",
		Decode: func(key string, data []byte) (any, error) { return m.decode(key, data), nil },
		Apply: func(_ string, v any) error {
			for _, r := range v.([]record) {
				st.apply(r)
			}
			return nil
		},
	})
	if err != nil {
		return legacyState{}, fmt.Errorf("lease: replay: %w", err)
	}
	out := legacyState{maxT: st.maxT, live: map[string][]record{}}
	now := m.cfg.Now().UnixMilli()
	for k, r := range st.live {
		if r.Deadline > now && validID(k.x) == nil {
			out.live[k.x] = append(out.live[k.x], r)
		}
	}
	return out, nil
}

// loadParallel is how many exchanges load at once.
const loadParallel = 8

// load reads the old layout, then loads every exchange found in the store,
// loadParallel at a time. Exchanges first used later load then (open).
func (m *Manager) load(ctx context.Context) error {
	legacy, err := m.loadLegacy(ctx)
	if err != nil {
		return err
	}
	m.legacy = legacy
	ids, err := m.exchangeIDs(ctx)
	if err != nil {
		return err
	}
	for x := range legacy.live {
		ids = append(ids, x)
	}
	sem := make(chan struct{}, loadParallel)
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, x := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			_, errs[i] = m.open(ctx, x)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// exchangeIDs lists the exchanges with objects under {Prefix}/exchange=.
// Past the first few keys of an exchange it lists on from the next
// exchange, so that a long journal (after a crash) costs no long listing.
func (m *Manager) exchangeIDs(ctx context.Context) ([]string, error) {
	prefix := m.cfg.Prefix + "/exchange="
	var ids []string
	after := ""
	for {
		skip := ""
		n := 0
		for k, err := range storage.KeysAfter(ctx, m.cfg.Store, prefix, after) {
			if err != nil {
				return nil, fmt.Errorf("lease: list exchanges: %w", err)
			}
			id, _, ok := strings.Cut(k[len(prefix):], "/")
			if !ok {
				continue
			}
			if len(ids) == 0 || ids[len(ids)-1] != id {
				ids, n = append(ids, id), 0
			}
			if n++; n > 8 {
				// "0" sorts right after "/", and no id byte sorts between.
				skip = prefix + id + "0"
				break
			}
		}
		if skip == "" {
			break
		}
		after = skip
	}
	valid := ids[:0]
	for _, id := range ids {
		if validID(id) == nil {
			valid = append(valid, id)
		} else {
			m.cfg.Logger.Warn("lease: ignoring a folder that names no valid exchange", "id", id)
		}
	}
	return valid, nil
}

// open returns exchange x, loading it on first use. A failed load is
// forgotten, so the next call tries again.
func (m *Manager) open(ctx context.Context, x string) (*exchange, error) {
	v, ok := m.xs.Load(x)
	if !ok {
		ex := newExchange(m.cfg.Prefix, x)
		if v, ok = m.xs.LoadOrStore(x, ex); !ok {
			ex.err = m.loadExchange(ctx, ex)
			if ex.err != nil {
				m.xs.CompareAndDelete(x, ex)
			}
			close(ex.ready)
			return ex, ex.err
		}
	}
	ex := v.(*exchange)
	select {
	case <-ex.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if ex.err != nil {
		return nil, ex.err
	}
	return ex, nil
}

// maxLoadAttempts bounds how often a load starts again because a replaced
// owner compacted the journal under it.
const maxLoadAttempts = 10

// loadExchange restores ex: under a Fence it claims the exchange and
// fences its journal first, so the replay sees every write a replaced
// owner made; then it reads the newest snapshot and the journal after it.
func (m *Manager) loadExchange(ctx context.Context, ex *exchange) error {
	if f := m.cfg.Fence; f != nil {
		if err := f.Claim(ctx, ex.id); err != nil {
			return fmt.Errorf("lease: claim exchange %s: %w", ex.id, err)
		}
	}
	opened := false
	for attempt := 1; ; attempt++ {
		snap, err := m.latestSnapshot(ctx, ex)
		if err != nil {
			return err
		}
		after := ""
		if snap.sn != nil && isSlot(ex.log, snap.sn.Boundary) {
			after = snap.sn.Boundary
		}
		if !opened {
			if err := m.j.Open(ctx, ex.log, after); err != nil {
				return fmt.Errorf("lease: open the journal of %s: %w", ex.id, err)
			}
			opened = true
		}
		st := m.base(ex.id, snap.sn)
		tail := false
		err = journal.Replay(ctx, m.cfg.Store, journal.ReplayConfig{
			Prefix: ex.log + "/",
			After:  after,
			Decode: func(key string, data []byte) (any, error) { return m.decode(key, data), nil },
			Apply: func(_ string, v any) error {
				tail = true
				for _, r := range v.([]record) {
					if r.Exchange == ex.id {
						st.apply(r)
					}
				}
				return nil
			},
		})
		// A replaced owner that has not noticed yet may still compact:
		// it writes a newer snapshot before it deletes anything, so an
		// object gone from under the replay, or a newer snapshot after
		// it, means reading again from that snapshot.
		if errors.Is(err, storage.ErrNotFound) && attempt < maxLoadAttempts {
			continue
		}
		if err != nil {
			return fmt.Errorf("lease: replay the journal of %s: %w", ex.id, err)
		}
		again, err := m.latestSnapshot(ctx, ex)
		if err != nil {
			return err
		}
		if again.key != snap.key && attempt < maxLoadAttempts {
			continue
		}
		if again.key != snap.key {
			return fmt.Errorf("lease: the snapshots of %s keep changing while it loads", ex.id)
		}
		m.install(ex, st)
		ex.snap = snap
		if tail {
			ex.appended.Store(1) // compact what the journal held
		}
		return nil
	}
}

// base is the state an exchange's journal applies to: its snapshot, or
// without one the exchange's leases in the old layout.
func (m *Manager) base(x string, sn *snapshot) *replayState {
	st := newReplayState()
	st.maxT = m.legacy.maxT
	recs := m.legacy.live[x]
	if sn != nil {
		recs = sn.Leases
		if sn.Next > 0 {
			st.maxT = max(st.maxT, sn.Next-1)
		}
	}
	for _, r := range recs {
		k := key{x, r.Name}
		r.Exchange = x
		st.live[k] = r
		st.maxAt[k] = r.Token
		st.maxT = max(st.maxT, r.Token)
	}
	return st
}

// install puts the leases of a loaded exchange in memory.
func (m *Manager) install(ex *exchange, st *replayState) {
	ex.tokens.Store(st.maxT)
	now := m.cfg.Now()
	for k, r := range st.live {
		// Deadline and LeftMs are both rounded down to the millisecond, so
		// this never lands after the deadline that was granted.
		left := min(time.UnixMilli(r.Deadline).Sub(now), time.Duration(r.LeftMs)*time.Millisecond)
		if left <= 0 || validID(r.Holder) != nil {
			continue
		}
		s := m.shard(k)
		s.mu.Lock()
		s.m[k] = &entry{ex: ex, holder: r.Holder, token: r.Token, deadline: now.Add(left)}
		s.mu.Unlock()
	}
}

// latestSnapshot finds ex's newest snapshot in the store.
func (m *Manager) latestSnapshot(ctx context.Context, ex *exchange) (snapState, error) {
	for attempt := 1; ; attempt++ {
		last := ""
		var gen uint64
		for k, err := range storage.Keys(ctx, m.cfg.Store, ex.snapDir) {
			if err != nil {
				return snapState{}, fmt.Errorf("lease: list the snapshots of %s: %w", ex.id, err)
			}
			name, ok := strings.CutSuffix(k[len(ex.snapDir):], ".json")
			n, err := strconv.ParseUint(name, 10, 64)
			if ok && err == nil && len(name) == 20 {
				last, gen = k, n
			}
		}
		if last == "" {
			return snapState{known: true}, nil
		}
		obj, err := m.cfg.Store.Get(ctx, last)
		if errors.Is(err, storage.ErrNotFound) && attempt < maxLoadAttempts {
			continue // replaced by a newer one meanwhile
		}
		if err != nil {
			return snapState{}, fmt.Errorf("lease: read snapshot %s: %w", last, err)
		}
		var sn snapshot
		if err := json.Unmarshal(obj.Data, &sn); err != nil {
			return snapState{}, fmt.Errorf("lease: decode snapshot %s: %w", last, err)
		}
		return snapState{known: true, key: last, gen: gen, sn: &sn}, nil
	}
}

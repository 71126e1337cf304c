package lease

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/internal/snaplog"
	"github.com/meatspace-exchange/mess/storage"
)

// Durable state is kept per exchange: a journal of records under
// {Prefix}/exchange={id}/log/ folded from time to time into a snapshot
// under {Prefix}/exchange={id}/snap/ (internal/snaplog), after which the
// journal objects it covers are deleted. Each exchange has its own token
// counter, resumed above every token its snapshot and journal hold.
//
// A grant record carries the wall-clock deadline and the TTL left when it
// was written; on restart a lease gets min(deadline - now, that TTL), so a
// restart never extends a lease, even if the wall clock stepped back.
//
// The Manager queues a name's records under the lock that orders its
// changes, so the journal holds them in that order: a grant before its
// renewals and its release, a release before the next grant. Replay
// applies a grant when its token is above every token seen for the name
// (or equals the live one, which is a renewal: the later deadline wins
// because renewals never shorten), and a release only if the token
// matches. So records seen again (a snapshot's objects left by a failed
// deletion, a suffix of them) change nothing.

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

// snapshot is the payload of a snapshot: an exchange's live leases, or in
// the old layout every exchange's.
type snapshot struct {
	// Next is above every token in the journal objects the snapshot
	// replaced, so the counter resumes at or above it.
	Next   uint64   `json:"next"`
	Leases []record `json:"leases"`
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
	id     string
	log    *snaplog.Log
	part   string        // its journal partition
	tokens atomic.Uint64 // the last token issued in this exchange
	ready  chan struct{} // closed once loaded, or once loading failed (err)
	err    error
}

// exchangeState is what an exchange's journal says (snaplog.State).
type exchangeState struct {
	m  *Manager
	x  string
	st *replayState
}

func (s *exchangeState) Apply(_ string, v any) error {
	for _, r := range v.([]record) {
		if r.Exchange == s.x {
			s.st.apply(r)
		}
	}
	return nil
}

func (s *exchangeState) Snapshot() ([]byte, error) {
	now := s.m.cfg.Now().UnixMilli()
	sn := snapshot{Next: s.st.maxT + 1, Leases: []record{}}
	for _, r := range s.st.live {
		if r.Deadline > now {
			sn.Leases = append(sn.Leases, r)
		}
	}
	sort.Slice(sn.Leases, func(i, j int) bool { return sn.Leases[i].Name < sn.Leases[j].Name })
	return json.Marshal(sn)
}

func (m *Manager) newExchange(id string) (*exchange, error) {
	dir := m.cfg.Prefix + "/exchange=" + id
	ex := &exchange{id: id, part: dir + "/log", ready: make(chan struct{})}
	var err error
	ex.log, err = snaplog.New(snaplog.Config{
		Store: m.cfg.Store, Journal: m.j, Fence: m.cfg.Fence, Log: ex.part, Snaps: dir + "/snap/",
		Base:   func(payload []byte) (snaplog.State, error) { return m.base(id, payload) },
		Decode: func(key string, data []byte) (any, error) { return m.decode(key, data), nil },
	})
	return ex, err
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
		ex, err := m.newExchange(x)
		if err != nil {
			return nil, err
		}
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

// loadExchange restores ex: under a Fence it claims the exchange first,
// and the load fences its journal before replaying it, so the replay sees
// every write a replaced owner made.
func (m *Manager) loadExchange(ctx context.Context, ex *exchange) error {
	if f := m.cfg.Fence; f != nil {
		if err := f.Claim(ctx, ex.id); err != nil {
			return fmt.Errorf("lease: claim exchange %s: %w", ex.id, err)
		}
	}
	st, err := ex.log.Load(ctx)
	if err != nil {
		return fmt.Errorf("lease: load exchange %s: %w", ex.id, err)
	}
	m.install(ex, st.(*exchangeState).st)
	return nil
}

// base is the state an exchange's journal applies to: a snapshot's
// payload, or without one the exchange's leases in the old layout.
func (m *Manager) base(x string, payload []byte) (*exchangeState, error) {
	st := newReplayState()
	st.maxT = m.legacy.maxT
	recs := m.legacy.live[x]
	if payload != nil {
		var sn snapshot
		if err := json.Unmarshal(payload, &sn); err != nil {
			return nil, err
		}
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
	return &exchangeState{m: m, x: x, st: st}, nil
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

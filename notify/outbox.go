package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/internal/snaplog"
	"github.com/meatspace-exchange/mess/storage"
)

// Layout of the outbox in Config.Store. Each exchange has its own journal
// and snapshots (internal/snaplog):
//
//	notify/exchange={id}/outbox/...          the journal
//	notify/exchange={id}/snap/{gen}.json     snapshots
//	notify/started.json                      when the outbox first started
//
// The layout before that, one journal for every exchange under
// notify/outbox/ and its snapshot notify/snapshot.json, is read at every
// start and never written: an exchange starts from its part of it until
// it has a snapshot of its own.
const (
	exchangePrefix = "notify/exchange="
	startedKey     = "notify/started.json"
	oldOutbox      = "notify/outbox"
	oldSnapshot    = "notify/snapshot.json"
)

// outbox is one exchange's outbox journal.
type outbox struct {
	id    string
	part  string // journal partition
	log   *snaplog.Log
	ready chan struct{} // closed once loaded, or once loading failed (err)
	err   error
}

func (s *Service) newOutbox(x string) (*outbox, error) {
	dir := exchangePrefix + x
	ob := &outbox{id: x, part: dir + "/outbox", ready: make(chan struct{})}
	var err error
	ob.log, err = snaplog.New(snaplog.Config{
		Store: s.cfg.Store, Journal: s.jr, Fence: s.cfg.Fence, Log: ob.part, Snaps: dir + "/snap/",
		Base: func(payload []byte) (snaplog.State, error) {
			st := s.newState(x)
			if payload == nil {
				st.load(s.old[x])
				return st, nil
			}
			var sn snapshot
			if err := json.Unmarshal(payload, &sn); err != nil {
				return nil, err
			}
			st.load(sn)
			return st, nil
		},
		Decode: decodeRecords,
	})
	return ob, err
}

func decodeRecords(_ string, data []byte) (any, error) {
	lines, _ := journal.Lines(data)
	recs := make([]record, 0, len(lines))
	for _, l := range lines {
		var r record
		if json.Unmarshal(l, &r) == nil {
			recs = append(recs, r)
		}
	}
	return recs, nil
}

// outboxFor returns exchange x's outbox, loading it on first use (see
// loadOutbox). A failed load is forgotten, so the next call tries again.
func (s *Service) outboxFor(ctx context.Context, x string) (*outbox, error) {
	v, ok := s.outboxes.Load(x)
	if !ok {
		ob, err := s.newOutbox(x)
		if err != nil {
			return nil, err
		}
		if v, ok = s.outboxes.LoadOrStore(x, ob); !ok {
			ob.err = s.loadOutbox(ctx, ob)
			if ob.err != nil {
				s.outboxes.CompareAndDelete(x, ob)
			}
			close(ob.ready)
			return ob, ob.err
		}
	}
	ob := v.(*outbox)
	select {
	case <-ob.ready:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if ob.err != nil {
		return nil, ob.err
	}
	return ob, nil
}

// loadOutbox claims the exchange (under a Fence), fences and replays its
// journal, and adds what it holds to the service's state; deliveries
// found after start are queued at once.
func (s *Service) loadOutbox(ctx context.Context, ob *outbox) error {
	if f := s.cfg.Fence; f != nil {
		if err := f.Claim(ctx, ob.id); err != nil {
			return fmt.Errorf("notify: claim exchange %s: %w", ob.id, err)
		}
	}
	st, err := ob.log.Load(ctx)
	if err != nil {
		return fmt.Errorf("notify: load the outbox of %s: %w", ob.id, err)
	}
	s.mu.Lock()
	s.mergeLocked(st.(*outboxState), s.running)
	s.mu.Unlock()
	return nil
}

// loadParallel is how many outboxes load at once at start.
const loadParallel = 8

// load reads the old layout and the start time, then loads every outbox
// in the store. It reports whether this is the outbox's first start.
func (s *Service) load(ctx context.Context) (first bool, err error) {
	old, err := s.loadOld(ctx)
	if err != nil {
		return false, err
	}
	s.old = map[string]snapshot{}
	var ids []string
	for x := range old.exchanges() {
		s.old[x] = old.only(x)
		ids = append(ids, x)
	}
	if first, err = s.loadSince(ctx, old.since); err != nil {
		return false, err
	}
	found, err := s.exchangeIDs(ctx)
	if err != nil {
		return false, err
	}
	ids = append(ids, found...)
	sem := make(chan struct{}, loadParallel)
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	for i, x := range ids {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			_, errs[i] = s.outboxFor(ctx, x)
		})
	}
	wg.Wait()
	return first, errors.Join(errs...)
}

// loadOld folds the old layout: its snapshot and the journal after it.
func (s *Service) loadOld(ctx context.Context) (*outboxState, error) {
	st := s.newState("")
	after := ""
	obj, err := s.cfg.Store.Get(ctx, oldSnapshot)
	switch {
	case err == nil:
		var sn snapshot
		if err := json.Unmarshal(obj.Data, &sn); err != nil {
			return nil, fmt.Errorf("notify: decode snapshot: %w", err)
		}
		st.load(sn)
		after = sn.LastKey
	case !errors.Is(err, storage.ErrNotFound):
		return nil, fmt.Errorf("notify: read snapshot: %w", err)
	}
	err = journal.Replay(ctx, s.cfg.Store, journal.ReplayConfig{
		Prefix: oldOutbox + "/",
		After:  after,
		Decode: decodeRecords,
		Apply:  st.Apply,
	})
	if err != nil {
		return nil, fmt.Errorf("notify: replay: %w", err)
	}
	return st, nil
}

// loadSince reads when the outbox first started, recording it (once, with
// Create, so every process agrees) if no start was recorded: then this is
// the outbox's first start, unless the old layout says otherwise.
func (s *Service) loadSince(ctx context.Context, old time.Time) (first bool, err error) {
	var v struct {
		Since time.Time `json:"since"`
	}
	for {
		obj, err := s.cfg.Store.Get(ctx, startedKey)
		if err == nil {
			if err := json.Unmarshal(obj.Data, &v); err != nil {
				return false, fmt.Errorf("notify: decode %s: %w", startedKey, err)
			}
			s.since = v.Since
			return false, nil
		}
		if !errors.Is(err, storage.ErrNotFound) {
			return false, fmt.Errorf("notify: read %s: %w", startedKey, err)
		}
		v.Since = old
		if old.IsZero() {
			v.Since = s.cfg.Now().UTC()
		}
		data, _ := json.Marshal(v)
		if _, err := s.cfg.Store.Create(ctx, startedKey, data); err == nil {
			s.since = v.Since
			return old.IsZero(), nil
		} else if !errors.Is(err, storage.ErrExists) {
			return false, fmt.Errorf("notify: write %s: %w", startedKey, err)
		}
	}
}

// exchangeIDs lists the exchanges with objects under notify/exchange=.
// Past the first few keys of an exchange it lists on from the next one, so
// that a long journal costs no long listing.
func (s *Service) exchangeIDs(ctx context.Context) ([]string, error) {
	var ids []string
	after := ""
	for {
		skip := ""
		n := 0
		for k, err := range storage.KeysAfter(ctx, s.cfg.Store, exchangePrefix, after) {
			if err != nil {
				return nil, fmt.Errorf("notify: list exchanges: %w", err)
			}
			id, _, ok := strings.Cut(k[len(exchangePrefix):], "/")
			if !ok {
				continue
			}
			if len(ids) == 0 || ids[len(ids)-1] != id {
				ids, n = append(ids, id), 0
			}
			if n++; n > 8 {
				// "0" sorts right after "/", and no id byte sorts between.
				skip = exchangePrefix + id + "0"
				break
			}
		}
		if skip == "" {
			return ids, nil
		}
		after = skip
	}
}

type pendingDelivery struct {
	d   Delivery
	seq int64
}

// outboxState is what an outbox journal says, folded: the deliveries
// pending, those finished (by event time, until pruned), the last event
// recorded per exchange and the failures kept per executor. It is a
// snaplog.State.
type outboxState struct {
	x        string // the exchange; "" for the old layout's every exchange
	hist     int    // Config.FailureHistory
	window   time.Duration
	since    time.Time // the old layout only
	seq      int64
	pending  map[string]pendingDelivery
	known    map[string]time.Time
	marks    map[string]mark
	failures map[string][]Failure
}

func (s *Service) newState(x string) *outboxState {
	return &outboxState{x: x, hist: s.cfg.FailureHistory, window: s.cfg.RecoveryWindow,
		pending: map[string]pendingDelivery{}, known: map[string]time.Time{},
		marks: map[string]mark{}, failures: map[string][]Failure{}}
}

// load adds a snapshot's contents.
func (st *outboxState) load(sn snapshot) {
	if st.since.IsZero() {
		st.since = sn.Since
	}
	for _, d := range sn.Pending {
		st.seq++
		st.pending[d.ID] = pendingDelivery{d, st.seq}
	}
	for k, v := range sn.Known {
		st.known[k] = v
	}
	for x, m := range sn.Marks {
		st.marks[x] = mark{m.EventID, m.TS}
	}
	for k, v := range sn.Failures {
		st.failures[k] = v
	}
}

// exchange is the exchange a record is about.
func (r record) exchange() string {
	switch {
	case r.Exchange != "":
		return r.Exchange
	case r.D != nil:
		return r.D.ExchangeID
	}
	x, _, _ := strings.Cut(r.ID, "|")
	return x
}

// Apply folds one journal object's records.
func (st *outboxState) Apply(_ string, v any) error {
	for _, r := range v.([]record) {
		if st.x == "" || r.exchange() == st.x {
			st.apply(r)
		}
	}
	return nil
}

func (st *outboxState) apply(r record) {
	switch r.Op {
	case "start":
		if st.since.IsZero() {
			st.since = r.TS
		}
	case "add":
		if r.D == nil {
			return
		}
		if _, ok := st.pending[r.D.ID]; ok {
			return
		}
		if _, ok := st.known[r.D.ID]; ok {
			return
		}
		st.seq++
		st.pending[r.D.ID] = pendingDelivery{*r.D, st.seq}
	case "done", "fail":
		p, ok := st.pending[r.ID]
		if !ok {
			return
		}
		delete(st.pending, r.ID)
		st.known[r.ID] = p.d.TS
		if r.Op == "fail" {
			k := p.d.ExchangeID + "/" + p.d.ExecutorID
			st.failures[k] = keepLast(append(st.failures[k], failureOf(p.d, r.Attempts, r.Error, r.TS)), st.hist)
		}
	case "mark":
		if m := st.marks[r.Exchange]; r.EventID > m.eventID {
			st.marks[r.Exchange] = mark{r.EventID, r.TS}
		}
	}
}

// ordered lists the pending deliveries in the order they were recorded.
func (st *outboxState) ordered() []Delivery {
	ps := make([]pendingDelivery, 0, len(st.pending))
	for _, p := range st.pending {
		ps = append(ps, p)
	}
	slices.SortFunc(ps, func(a, b pendingDelivery) int { return int(a.seq - b.seq) })
	out := make([]Delivery, len(ps))
	for i, p := range ps {
		out[i] = p.d
	}
	return out
}

// Snapshot encodes the state, forgetting finished deliveries older than
// any restart would derive again.
func (st *outboxState) Snapshot() ([]byte, error) {
	sn := st.only(st.x)
	for id, ts := range sn.Known {
		if m, ok := sn.Marks[st.x]; ok && ts.Before(m.TS.Add(-2*st.window)) {
			delete(sn.Known, id)
		}
	}
	return json.Marshal(sn)
}

// only is the part of the state about exchange x, as a snapshot.
func (st *outboxState) only(x string) snapshot {
	sn := snapshot{Pending: []Delivery{}, Known: map[string]time.Time{}, Marks: map[string]snapMark{},
		Failures: map[string][]Failure{}}
	for _, d := range st.ordered() {
		if d.ExchangeID == x {
			sn.Pending = append(sn.Pending, d)
		}
	}
	for id, ts := range st.known {
		if strings.HasPrefix(id, x+"|") {
			sn.Known[id] = ts
		}
	}
	if m, ok := st.marks[x]; ok {
		sn.Marks[x] = snapMark{m.eventID, m.ts}
	}
	for k, v := range st.failures {
		if strings.HasPrefix(k, x+"/") {
			sn.Failures[k] = v
		}
	}
	return sn
}

// exchanges lists the exchanges the state mentions.
func (st *outboxState) exchanges() map[string]bool {
	xs := map[string]bool{}
	for _, p := range st.pending {
		xs[p.d.ExchangeID] = true
	}
	for id := range st.known {
		x, _, _ := strings.Cut(id, "|")
		xs[x] = true
	}
	for x := range st.marks {
		xs[x] = true
	}
	for k := range st.failures {
		x, _, _ := strings.Cut(k, "/")
		xs[x] = true
	}
	delete(xs, "")
	return xs
}

// mergeLocked adds a loaded exchange's state to the service's, queueing
// its pending deliveries if the scheduler runs already.
func (s *Service) mergeLocked(st *outboxState, queue bool) {
	for id, ts := range st.known {
		s.known[id] = ts
	}
	for _, d := range st.ordered() {
		if _, done := s.known[d.ID]; done || s.pending[d.ID] != nil {
			continue
		}
		if e := s.addEntryLocked(d); queue {
			s.queueLocked(e)
		}
	}
	for x, m := range st.marks {
		if m.eventID > s.marks[x].eventID {
			s.marks[x] = m
		}
	}
	for k, v := range st.failures {
		s.failures[k] = keepLast(append(s.failures[k], v...), s.cfg.FailureHistory)
	}
}

func keepLast(l []Failure, n int) []Failure {
	if len(l) > n {
		return l[len(l)-n:]
	}
	return l
}

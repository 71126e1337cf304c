package mess

// Snapshots of the projection, so that start-up reads a snapshot per
// exchange and the events after it instead of every event ever written.
//
// # Boundaries
//
// An exchange's events live in day partitions,
// events/exchange={id}/{YYYY}/{MM}/{DD}/, and the journal names objects so
// that, within a partition, key order is write order. A snapshot covers a
// prefix of the exchange's log in key order, everything that sorts before
// one boundary key B, so that a restart replays exactly the listing of
// events/exchange={id}/ after B. Two rules make "sorts before B" the same
// as "was written before the snapshot was cut":
//
//   - Day folders never go backwards per exchange: the journal writes a
//     batch to the folder of the day it is written, or to the newest
//     folder the log has (journal.Observe, at load) if that is later (a
//     clock stepped back). A fenced log's slots obey the same order by
//     construction (internal/journal). No object is ever added to a
//     folder older than the newest, so B, taken in the newest folder,
//     sorts after every object of the older ones.
//   - Object names never go backwards across restarts (journalNow): the
//     journal names objects from its clock, which load raises above every
//     object name and boundary it saw, so a clock stepped back across a
//     restart cannot name a new object below B.
//
// B is the boundary journal.Seal returns for the exchange's log: every
// object before it is complete, and every later object sorts after it.
// In a fenced log (a shared store) B is the key of the last slot.
//
// # Writing
//
// A snapshot is never copied from the live state. The snapshot goroutine
// seals (appends go on meanwhile: a seal only takes its turn in the
// journal's queue), then folds the events between the previous snapshot's boundary
// and B into the previous snapshot with the very code replay uses
// (replayInto, applyLocked), and writes the result. Threads no new event
// touched are copied as encoded; only the new events and the threads
// they touch are decoded, so a snapshot costs about a copy of the
// previous one plus the new events, in time and memory. (The first
// snapshot of an exchange, or one after the previous became unreadable,
// folds the whole log and briefly holds a second projection.) As it is
// built from storage alone, a snapshot equals what a full replay of the
// events before B gives, even when a write the live process counted as
// failed turned out durable.
//
// A snapshot falls due after Config.SnapshotEvery events (and at least a
// quarter of those the previous one covered, so that rewriting a large
// exchange stays a fixed fraction of the cost of its log), after
// Config.SnapshotInterval for an exchange with newer events, and at Close
// (for more than a tenth of SnapshotEvery new events).
//
// # Objects
//
// snapshots/mess/exchange={id}/{YYYY}/{MM}/{DD}/{name}.snap, where the path
// after the exchange is B's, so snapshots list in the order of their
// boundaries. One is written with Create, whole or not at all, in the
// format of snapshot_codec.go, which ends in a checksum. Start-up tries
// the newest first and falls back to the one before, then to the whole
// log, when one cannot be read (torn, corrupt, another exchange's, a
// format this build does not know). Once a snapshot is written, the
// older ones are deleted but the one it was folded from. Event objects
// are never deleted: they are the history users query.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	fastjson "github.com/goccy/go-json"
	"github.com/oklog/ulid/v2"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

const (
	snapshotDir = "snapshots/mess/"
	// loadParallel bounds the exchanges loaded at once, replayParallel the
	// event objects each reads at once (a remote store wants many).
	loadParallel   = 8
	replayParallel = 16
)

var (
	errReplayDone   = errors.New("mess: replay reached the boundary")
	errNoNewestPart = errors.New("mess: nothing to seal")
)

// exchangeLog is what an exchange knows of its share of the event log and
// of its snapshots.
type exchangeLog struct {
	mu      sync.Mutex
	written bool // the log holds events (loaded or appended)

	pending atomic.Int64 // event lines not in the newest snapshot, about
	queued  atomic.Bool  // waiting for the snapshot goroutine

	// Set by load, then under snapMu, held for a whole snapshot.
	snapMu   sync.Mutex
	snapKey  string    // newest snapshot loaded or written; "" for none
	boundary string    // its boundary
	snapAt   time.Time // when it was loaded or written
	loaded   *loadSnapshot

	covered atomic.Int64 // event lines the newest snapshot covers
}

// loadSnapshot is a snapshot encoded by load, to be written.
type loadSnapshot struct {
	boundary    string
	data        []byte
	lines, tail int64 // lines it covers, and of those how many load replayed
}

func eventsPrefix(exchangeID string) string { return "events/exchange=" + exchangeID + "/" }

// snapshotKey is the key of the snapshot with boundary b; the boundary's
// path below the exchange is kept, so snapshots list in boundary order.
func snapshotKey(b string) string {
	return snapshotDir + strings.TrimPrefix(b, "events/") + ".snap"
}

// appendEvents makes lines durable in the exchange's log. The journal
// files them in day folders that never go back (see the boundaries above).
func (s *Service) appendEvents(ex *exchange, lines [][]byte) error {
	l := &ex.log
	l.mu.Lock()
	l.written = true
	done, err := s.journal.AppendAsync(eventLog(ex.id), lines...)
	l.mu.Unlock()
	if err != nil {
		return err
	}
	return <-done
}

// eventsApplied counts n new event lines of ex towards its next snapshot.
func (s *Service) eventsApplied(ex *exchange, n int) {
	if s.cfg.SnapshotEvery < 0 {
		return
	}
	l := &ex.log
	p := l.pending.Add(int64(n))
	if p < int64(s.cfg.SnapshotEvery) || p < l.covered.Load()/4 || !l.queued.CompareAndSwap(false, true) {
		return
	}
	select {
	case s.snapDue <- ex:
	default:
		l.queued.Store(false) // the next event tries again
	}
}

// journalNow is the journal's clock: never at or below the newest object
// name or boundary load saw, so new objects sort after them.
func (s *Service) journalNow() time.Time {
	t := s.cfg.Now()
	if f := s.keyFloor.Load(); uint64(t.UnixMilli()) <= f {
		return time.UnixMilli(int64(f) + 1)
	}
	return t
}

// keyULID returns the ULID that starts key's last segment.
func keyULID(key string) (ulid.ULID, bool) {
	seg := key[strings.LastIndexByte(key, '/')+1:]
	if len(seg) < ulid.EncodedSize {
		return ulid.ULID{}, false
	}
	id, err := ulid.ParseStrict(seg[:ulid.EncodedSize])
	return id, err == nil
}

func ulidKey(key string) bool { _, ok := keyULID(key); return ok }

// raiseKeyFloor keeps journalNow above the time in key's last segment,
// when that is a ULID.
func (s *Service) raiseKeyFloor(key string) {
	id, ok := keyULID(key)
	if !ok {
		return
	}
	for {
		f := s.keyFloor.Load()
		if id.Time() <= f || s.keyFloor.CompareAndSwap(f, id.Time()) {
			return
		}
	}
}

// snapshotLoop writes the snapshots that fall due, one at a time, until
// the service closes.
func (s *Service) snapshotLoop() {
	defer s.bg.Done()
	tick := time.NewTicker(min(s.cfg.SnapshotInterval, time.Minute))
	defer tick.Stop()
	for _, ex := range s.allExchanges() {
		select {
		case <-s.stop:
			return
		default:
		}
		l := &ex.log
		l.snapMu.Lock()
		if err := s.writeLoaded(s.bgCtx, ex); err != nil && s.bgCtx.Err() == nil {
			s.log.Warn("write exchange snapshot; start-up will replay more of the log", "exchange", ex.id, "err", err)
		}
		l.snapMu.Unlock()
	}
	for {
		select {
		case <-s.stop:
			return
		case ex := <-s.snapDue:
			ex.log.queued.Store(false)
			s.snapshotOrWarn(s.bgCtx, ex)
		case <-tick.C:
			for _, ex := range s.allExchanges() {
				select {
				case <-s.stop:
					return
				default:
				}
				if ex.log.pending.Load() > 0 && ex.log.snapshotAge() >= s.cfg.SnapshotInterval {
					s.snapshotOrWarn(s.bgCtx, ex)
				}
			}
		}
	}
}

// snapshotAge is how long ago the newest snapshot was loaded or written,
// or since this was first asked when there is none.
func (l *exchangeLog) snapshotAge() time.Duration {
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
	if l.snapAt.IsZero() {
		l.snapAt = time.Now()
	}
	return time.Since(l.snapAt)
}

func (s *Service) allExchanges() []*exchange {
	s.mu.RLock()
	defer s.mu.RUnlock()
	exs := make([]*exchange, 0, len(s.exchanges))
	for _, ex := range s.exchanges {
		exs = append(exs, ex)
	}
	return exs
}

func (s *Service) snapshotOrWarn(ctx context.Context, ex *exchange) {
	if err := s.snapshot(ctx, ex); err != nil && ctx.Err() == nil {
		s.log.Warn("write exchange snapshot; start-up will replay more of the log", "exchange", ex.id, "err", err)
	}
}

// snapshotAtClose writes a snapshot of every exchange with more than a
// tenth of SnapshotEvery events since its last one: shorter tails replay
// in moments.
func (s *Service) snapshotAtClose(ctx context.Context) {
	if s.cfg.SnapshotEvery < 0 {
		return
	}
	for _, ex := range s.allExchanges() {
		if ctx.Err() != nil {
			return
		}
		if ex.log.pending.Load() > int64(s.cfg.SnapshotEvery/10) {
			s.snapshotOrWarn(ctx, ex)
		}
	}
}

// seal ends the exchange's log where it stands and returns the boundary
// (see the boundaries above).
func (s *Service) seal(ctx context.Context, ex *exchange) (string, error) {
	l := &ex.log
	l.mu.Lock()
	written := l.written
	l.mu.Unlock()
	if !written {
		return "", errNoNewestPart
	}
	return s.journal.Seal(ctx, eventLog(ex.id))
}

// snapshot writes a snapshot of ex covering every event durable now, and
// deletes all older snapshots but one.
func (s *Service) snapshot(ctx context.Context, ex *exchange) error {
	l := &ex.log
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
	if err := s.writeLoaded(ctx, ex); err != nil {
		return err
	}
	n := l.pending.Swap(0)
	if n <= 0 {
		l.pending.Add(n)
		return nil
	}
	b, err := s.seal(ctx, ex)
	if errors.Is(err, errNoNewestPart) {
		return nil
	}
	if err == nil && !strings.HasPrefix(b, eventsPrefix(ex.id)) {
		err = fmt.Errorf("mess: boundary %q is outside the exchange's log", b)
	}
	if err != nil {
		l.pending.Add(n)
		return err
	}
	data, lines, folded, err := s.compact(ctx, ex.id, l.snapKey, b)
	if err != nil {
		l.pending.Add(n)
		return err
	}
	key := snapshotKey(b)
	if _, err := s.store.Create(ctx, key, data); err != nil {
		l.pending.Add(n)
		return fmt.Errorf("mess: write snapshot: %w", err)
	}
	prev := l.snapKey
	if !folded {
		prev = ""
	}
	l.snapKey, l.boundary, l.snapAt = key, b, time.Now()
	l.covered.Store(int64(lines))
	s.pruneSnapshots(ctx, ex.id, key, prev)
	return nil
}

// writeLoaded writes the snapshot load encoded, if any. l.snapMu is held.
func (s *Service) writeLoaded(ctx context.Context, ex *exchange) error {
	l := &ex.log
	ls := l.loaded
	if ls == nil {
		return nil
	}
	key := snapshotKey(ls.boundary)
	if _, err := s.store.Create(ctx, key, ls.data); err != nil {
		return fmt.Errorf("mess: write snapshot: %w", err)
	}
	prev := l.snapKey
	l.loaded = nil
	l.snapKey, l.boundary, l.snapAt = key, ls.boundary, time.Now()
	l.covered.Store(ls.lines)
	l.pending.Add(-ls.tail)
	s.pruneSnapshots(ctx, ex.id, key, prev)
	return nil
}

// compact returns the snapshot of exchange id with boundary b: the
// snapshot at prev with the events between its boundary and b folded in,
// or, when prev is "" or cannot be read, all events before b. Threads no
// new event touched are copied as encoded, so that only the tail and the
// threads it touches are ever decoded. folded says whether prev was used.
func (s *Service) compact(ctx context.Context, id, prev, b string) (data []byte, lines uint64, folded bool, err error) {
	p := newExchange(id)
	var old *snapshotFile
	index := map[string][]byte{} // records of prev not decoded (yet)
	after := ""
	if prev != "" {
		obj, err := s.store.Get(ctx, prev)
		if err == nil {
			old, err = parseSnapshot(obj.Data, id)
		}
		if err == nil {
			err = s.decodeRest(old.rest, p)
		}
		if err == nil {
			err = old.records(func(ref []byte, _ uint64, rec []byte) { index[string(ref)] = rec })
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil, 0, false, ctx.Err()
			}
			s.log.Warn("previous snapshot unreadable; folding the whole log", "key", prev, "err", err)
			return s.compact(ctx, id, "", b)
		}
		p.version, p.useq, after = old.lines, old.useq, old.boundary
	}
	var fillErr error
	fill := func(ref string) {
		rec, ok := index[ref]
		if !ok {
			return
		}
		delete(index, ref)
		t, err := decodeRecord(rec, nil)
		if err != nil {
			fillErr = err
			return
		}
		p.threads[ref] = t
		p.order = append(p.order, orderEntry{t.useq, t})
	}
	if _, err := s.replayInto(ctx, p, after, b, fill); err != nil {
		return nil, 0, false, err
	}
	if fillErr != nil {
		s.log.Warn("previous snapshot unreadable; folding the whole log", "key", prev, "err", fillErr)
		return s.compact(ctx, id, "", b)
	}
	// The threads decoded go in among those copied, in update order.
	changed := liveThreads(p)
	sb := newSnapshotBuilder(id, b, p.version, p.useq)
	if old != nil {
		old.records(func(ref []byte, useq uint64, rec []byte) {
			if _, kept := index[string(ref)]; !kept {
				return // decoded: written from p
			}
			for len(changed) > 0 && changed[0].useq < useq {
				sb.thread(changed[0])
				changed = changed[1:]
			}
			sb.record(rec)
		})
	}
	for _, t := range changed {
		sb.thread(t)
	}
	return sb.finish(p), p.version, old != nil, nil
}

// pruneSnapshots deletes the exchange's snapshots older than newest
// except prev, the one it was folded from (known to be readable), kept in
// case newest cannot be read later.
func (s *Service) pruneSnapshots(ctx context.Context, exchangeID, newest, prev string) {
	var old []string
	for k, err := range storage.Keys(ctx, s.store, snapshotDir+"exchange="+exchangeID+"/") {
		if err != nil {
			s.log.Warn("list snapshots", "exchange", exchangeID, "err", err)
			return
		}
		if k < newest && k != prev {
			old = append(old, k)
		}
	}
	if err := storage.DeleteMany(ctx, s.store, old); err != nil {
		s.log.Warn("delete old snapshots", "exchange", exchangeID, "err", err)
	}
}

// replayStats says what replayInto read.
type replayStats struct {
	lines, malformed, torn int
	last                   string // key of the last object read
}

// replayInto folds the exchange's event objects after the key after, and
// before the key before when it is set, into p, which nobody else uses
// yet. Lines that do not parse (a torn write, a stray edit) or that name
// another exchange are skipped and counted. fill, when set, is called
// with the ref of each thread an event is about that p does not hold,
// before the event is applied.
func (s *Service) replayInto(ctx context.Context, p *exchange, after, before string, fill func(ref string)) (replayStats, error) {
	type decoded struct {
		evs       []Event
		ps        []any
		bad, torn int
	}
	var st replayStats
	// Replay is stopped by cancelling its context, never by an error from
	// Apply or Get: on those it waits for its readers before cancelling
	// them, and a reader blocked on a full read-ahead never returns.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	err := journal.Replay(ctx, cancelOnError{s.store, cancel}, journal.ReplayConfig{
		Prefix:   eventsPrefix(p.id),
		After:    after,
		Parallel: replayParallel,
		Decode: func(key string, data []byte) (any, error) {
			if before != "" && key >= before {
				return nil, nil
			}
			lines, tail := journal.Lines(data)
			d := decoded{evs: make([]Event, 0, len(lines)), ps: make([]any, 0, len(lines)), torn: btoi(tail != nil)}
			for _, l := range lines {
				ev, pl, err := decodeLine(l)
				switch {
				case journalRecord(l):
					// A record of the journal's own (a fence), not an event.
				case err != nil || ev.ExchangeID != p.id:
					d.bad++
				default:
					d.evs, d.ps = append(d.evs, ev), append(d.ps, pl)
				}
			}
			return d, nil
		},
		Apply: func(key string, v any) error {
			if before != "" && key >= before {
				cancel(errReplayDone)
				return nil
			}
			d := v.(decoded)
			st.malformed += d.bad
			st.torn += d.torn
			st.lines += len(d.evs)
			st.last = key
			for i := range d.evs {
				if r := d.evs[i].ThreadRef; fill != nil && r != nil && p.threads[*r] == nil {
					fill(*r)
				}
				s.applyLocked(p, &d.evs[i], d.ps[i])
				p.pushEventLocked(d.evs[i], s.cfg.EventBuffer, s.cfg.EventBufferBytes)
				p.version++
			}
			return nil
		},
	})
	if cause := context.Cause(ctx); cause != nil {
		err = cause
	}
	if err != nil && !errors.Is(err, errReplayDone) {
		return st, fmt.Errorf("mess: replay events of %s: %w", p.id, err)
	}
	return st, nil
}

// cancelOnError is a store whose failed reads cancel a context first.
type cancelOnError struct {
	storage.Store
	cancel context.CancelCauseFunc
}

func (c cancelOnError) Get(ctx context.Context, key string) (storage.Object, error) {
	obj, err := c.Store.Get(ctx, key)
	if err != nil && ctx.Err() == nil {
		c.cancel(fmt.Errorf("read %s: %w", key, err))
	}
	return obj, err
}

// journalRecord reports whether line is a record the journal keeps for
// itself (event_type starting with "_", such as a fence) rather than an
// event.
func journalRecord(line []byte) bool {
	if !bytes.Contains(line, []byte(`"_`)) {
		return false
	}
	var r struct {
		EventType string `json:"event_type"`
	}
	return fastjson.Unmarshal(line, &r) == nil && strings.HasPrefix(r.EventType, "_")
}

// loadEvents rebuilds the projection of every exchange with events, a
// bounded number at a time, each from its newest readable snapshot and
// the events after it.
func (s *Service) loadEvents(ctx context.Context) error {
	snaps := map[string][]string{}
	if s.cfg.SnapshotEvery >= 0 {
		for k, err := range storage.Keys(ctx, s.store, snapshotDir) {
			if err != nil {
				return fmt.Errorf("mess: list snapshots: %w", err)
			}
			if id, ok := exchangeOfKey(k, snapshotDir); ok {
				snaps[id] = append(snaps[id], k)
			}
		}
	}
	ids, err := s.eventExchanges(ctx)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, id := range ids {
		seen[id] = true
	}
	for id := range snaps { // a snapshot without events: load what it has
		if !seen[id] {
			ids = append(ids, id)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	work := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	var malformed, torn int
	for range min(loadParallel, len(ids)) {
		wg.Go(func() {
			for id := range work {
				st, err := s.loadExchangeEvents(ctx, id, snaps[id])
				mu.Lock()
				malformed, torn = malformed+st.malformed, torn+st.torn
				if err != nil && firstErr == nil {
					firstErr = err
					cancel()
				}
				mu.Unlock()
			}
		})
	}
	for _, id := range ids {
		select {
		case work <- id:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if malformed > 0 || torn > 0 {
		s.log.Warn("event log had unreadable lines; skipped them", "malformed", malformed, "torn", torn)
	}
	return ctx.Err()
}

// eventExchanges lists the exchanges with an events/ folder without
// listing every event: it reads a page, notes the exchanges in it, and
// continues after the last one's folder.
func (s *Service) eventExchanges(ctx context.Context) ([]string, error) {
	var ids []string
	after := ""
	for {
		page, err := s.store.List(ctx, "events/", storage.ListOptions{After: after})
		if err != nil {
			return nil, fmt.Errorf("mess: list events: %w", err)
		}
		if len(page.Keys) == 0 {
			return ids, nil
		}
		for _, k := range page.Keys {
			if id, ok := exchangeOfKey(k, "events/"); ok && (len(ids) == 0 || ids[len(ids)-1] != id) {
				ids = append(ids, id)
			}
		}
		if page.Next == "" {
			return ids, nil
		}
		last := page.Keys[len(page.Keys)-1]
		if id, ok := exchangeOfKey(last, "events/"); ok {
			// '~' sorts after every byte a key may hold.
			after = eventsPrefix(id) + "~"
		} else {
			after = last
		}
	}
}

// exchangeOfKey returns the id in a key dir+"exchange={id}/...".
func exchangeOfKey(key, dir string) (string, bool) {
	rest, ok := strings.CutPrefix(key, dir+"exchange=")
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, "/")
	return id, ok && ValidID(id)
}

// loadExchangeEvents builds one exchange's projection apart, from the
// newest of snaps it can read and the events after that one's boundary,
// then installs it.
func (s *Service) loadExchangeEvents(ctx context.Context, id string, snaps []string) (replayStats, error) {
	p := newExchange(id)
	var after, used string
	for i := len(snaps) - 1; i >= 0; i-- {
		b, err := s.readSnapshot(ctx, snaps[i], p)
		if err == nil {
			after, used = b, snaps[i]
			break
		}
		if ctx.Err() != nil {
			return replayStats{}, ctx.Err()
		}
		s.log.Warn("skip unreadable snapshot", "key", snaps[i], "err", err)
		p = newExchange(id)
	}
	if s.cfg.Fence != nil {
		// Claimed and fenced before the events are read, so the replay
		// sees every write of a replaced owner, and it can add none.
		if err := s.cfg.Fence.Claim(ctx, id); err != nil {
			return replayStats{}, fmt.Errorf("mess: claim exchange %s: %w", id, err)
		}
		if err := s.journal.Open(ctx, eventLog(id), after); err != nil {
			return replayStats{}, fmt.Errorf("mess: fence the events of %s: %w", id, err)
		}
		s.fenced.Store(id, true)
	}
	st, err := s.replayInto(ctx, p, after, "", nil)
	if err != nil {
		return st, err
	}
	if p.version == 0 {
		return st, nil // nothing but unreadable lines
	}
	covered := int64(p.version) - int64(st.lines)
	var loaded *loadSnapshot
	if _, ok := partitionOf(st.last, id); ok && ulidKey(st.last) && s.cfg.SnapshotEvery >= 0 &&
		st.lines >= s.cfg.SnapshotEvery && int64(st.lines) >= covered/4 {
		// A long tail, after a crash or on the first start with
		// snapshots. The projection as loaded folds every object up to
		// the last one read, and new objects will sort after that one
		// (see journalNow), so its key is a boundary. Encoded now, before
		// the projection goes live, it spares the snapshot goroutine
		// folding that tail again (for a first snapshot, with a second
		// projection in memory).
		loaded = &loadSnapshot{boundary: st.last, data: encodeSnapshot(p, st.last), lines: int64(p.version), tail: int64(st.lines)}
	}
	ex := s.exchange(id, true)
	ex.mu.Lock()
	ex.threads, ex.order, ex.stale, ex.useq = p.threads, p.order, p.stale, p.useq
	ex.version, ex.ring, ex.ringBytes = p.version, p.ring, p.ringBytes
	ex.idem, ex.attachBytes = p.idem, p.attachBytes
	ex.mu.Unlock()
	l := &ex.log
	l.mu.Lock()
	for _, k := range []string{after, st.last} {
		if _, ok := partitionOf(k, id); ok {
			l.written = true
			s.journal.Observe(eventLog(id), k)
		}
		s.raiseKeyFloor(k)
	}
	l.mu.Unlock()
	l.snapMu.Lock()
	l.snapKey, l.boundary, l.snapAt, l.loaded = used, after, time.Now(), loaded
	l.snapMu.Unlock()
	l.covered.Store(covered)
	l.pending.Store(int64(st.lines))
	return st, nil
}

// partitionOf returns the day partition of an exchange's event key, when
// it is one.
func partitionOf(key, exchangeID string) (string, bool) {
	rest, ok := strings.CutPrefix(key, eventsPrefix(exchangeID))
	// YYYY/MM/DD/name
	if !ok || len(rest) < 12 || rest[4] != '/' || rest[7] != '/' || rest[10] != '/' {
		return "", false
	}
	for _, i := range []int{0, 1, 2, 3, 5, 6, 8, 9} {
		if rest[i] < '0' || rest[i] > '9' {
			return "", false
		}
	}
	return key[:len(key)-len(rest)+10], true
}

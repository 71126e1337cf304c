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
//   - Partitions never go backwards per exchange (appendEvents): an event
//     is written to the partition of its timestamp's day, or to the newest
//     partition the exchange has written if that is later (an event stamped
//     23:59:59.999 that is queued after one stamped 00:00:00.001, or a
//     clock stepped back). No object is ever added to a partition older
//     than the newest, so B, taken in the newest partition, sorts after
//     every object of the older ones.
//   - Object names never go backwards across restarts (journalNow): the
//     journal names objects from its clock, which load raises above every
//     object name and boundary it saw, so a clock stepped back across a
//     restart cannot name a new object below B.
//
// B is the boundary journal.Seal returns for the newest partition: every
// object before it is complete, and every later object sorts after it.
// The partitions written since the previous cut are sealed first, so that
// their last batches are complete too before the cut is read.
//
// # Writing
//
// A snapshot is never taken from the live state. The snapshot goroutine
// seals (the only thing appends wait for), then folds the previous
// snapshot and the events between its boundary and B into a scratch
// projection with the very code replay uses (replayInto, applyLocked), and
// writes that. The live state is only read for counters, so appends never
// pause, and a snapshot always equals what a full replay of the events
// before B gives, even when a write the live process counted as failed
// turned out durable. A snapshot falls due after Config.SnapshotEvery
// events (and at least a quarter of those the last one covered, so that
// rewriting a large exchange stays a fixed fraction of the log's cost),
// after Config.SnapshotInterval for any exchange with newer events, and at
// Close.
//
// # Objects
//
// snapshots/mess/exchange={id}/{YYYY}/{MM}/{DD}/{name}.snap, where the path
// after the exchange is B's, so snapshots sort as their boundaries do. The
// object is written with Create (whole or not at all) and is the format
// below, ending in a CRC-32C of everything before it. Start-up tries the
// newest first and falls back to the one before, then to the whole log,
// when one cannot be read (torn, corrupt, another exchange's, a format
// this build does not know). Once a snapshot is written, all but it and
// the one before it are deleted. Event objects are never deleted.
//
// # Format, version 1
//
// "messsnap", then unsigned varints and length-prefixed strings: format
// version, exchange id, boundary, event lines covered (the exchange's
// version after replaying them), the update counter, the thread count
// and chunks of threads (a length, then the threads, so chunks decode in
// parallel), the idempotency keys, the attachment bytes per member and the
// event buffer; last the CRC. Times are milliseconds when they are UTC
// milliseconds (all the log writes) and time.MarshalBinary otherwise.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"runtime"
	"slices"
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
	snapshotMagic  = "messsnap"
	snapshotFormat = 1
	snapshotDir    = "snapshots/mess/"
	// snapshotChunk is how many threads one independently decodable chunk
	// holds.
	snapshotChunk = 2048
	// loadParallel bounds the exchanges loaded at once; each reads up to
	// 8 objects at a time.
	loadParallel = 8
)

var (
	errSnapshot     = errors.New("mess: unreadable snapshot")
	errReplayDone   = errors.New("mess: replay reached the boundary")
	snapshotCRC     = crc32.MakeTable(crc32.Castagnoli)
	errNoNewestPart = errors.New("mess: nothing to seal")
)

// exchangeLog is what an exchange knows of its share of the event log and
// of its snapshots.
type exchangeLog struct {
	mu       sync.Mutex
	newest   string   // newest partition written; nothing goes to an older one
	unsealed []string // partitions written since the last seal, oldest first

	pending atomic.Int64 // event lines not in the newest snapshot, about
	queued  atomic.Bool  // waiting for the snapshot goroutine

	// Set by load, then under snapMu, held for a whole snapshot.
	snapMu   sync.Mutex
	snapKey  string    // newest snapshot loaded or written; "" for none
	boundary string    // its boundary
	snapAt   time.Time // when it was loaded or written

	covered atomic.Int64 // event lines the newest snapshot covers
}

func eventsPrefix(exchangeID string) string { return "events/exchange=" + exchangeID + "/" }

// snapshotKey is the key of the snapshot with boundary b; the boundary's
// path below the exchange is kept, so snapshots list in boundary order.
func snapshotKey(b string) string {
	return snapshotDir + strings.TrimPrefix(b, "events/") + ".snap"
}

// appendEvents makes lines durable in the exchange's log, in the partition
// of ts unless a newer one was written already (see the boundaries above).
// Choosing the partition and queueing happen under one lock, so no
// partition is queued to after a newer one.
func (s *Service) appendEvents(ex *exchange, ts time.Time, lines [][]byte) error {
	l := &ex.log
	l.mu.Lock()
	p := max(partition(ex.id, ts), l.newest)
	l.newest = p
	if n := len(l.unsealed); n == 0 || l.unsealed[n-1] != p {
		l.unsealed = append(l.unsealed, p)
	}
	done, err := s.journal.AppendAsync(p, lines...)
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

// raiseKeyFloor keeps journalNow above the time in key's last segment,
// when that is a ULID.
func (s *Service) raiseKeyFloor(key string) {
	seg := key[strings.LastIndexByte(key, '/')+1:]
	if len(seg) < ulid.EncodedSize {
		return
	}
	id, err := ulid.ParseStrict(seg[:ulid.EncodedSize])
	if err != nil {
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

func (l *exchangeLog) snapshotAge() time.Duration {
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
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

// seal ends the partitions ex wrote since the last seal and returns the
// boundary of its newest one (see the boundaries above).
func (s *Service) seal(ctx context.Context, ex *exchange) (string, error) {
	l := &ex.log
	l.mu.Lock()
	parts, newest := l.unsealed, l.newest
	l.unsealed = nil
	l.mu.Unlock()
	if newest == "" {
		return "", errNoNewestPart
	}
	b, err := func() (string, error) {
		for _, p := range parts {
			if p != newest {
				if _, err := s.journal.Seal(ctx, p); err != nil {
					return "", err
				}
			}
		}
		return s.journal.Seal(ctx, newest)
	}()
	if err != nil {
		l.mu.Lock()
		l.unsealed = slices.Compact(slices.Sorted(slices.Values(append(parts, l.unsealed...))))
		l.mu.Unlock()
	}
	return b, err
}

// snapshot writes a snapshot of ex covering every event durable now, and
// deletes all older snapshots but one.
func (s *Service) snapshot(ctx context.Context, ex *exchange) error {
	l := &ex.log
	l.snapMu.Lock()
	defer l.snapMu.Unlock()
	n := l.pending.Swap(0)
	if n == 0 {
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
	p := newExchange(ex.id)
	prev, after := l.snapKey, ""
	if prev != "" {
		if after, err = s.readSnapshot(ctx, prev, p); err != nil {
			s.log.Warn("previous snapshot unreadable; folding the whole log", "key", prev, "err", err)
			p, prev, after = newExchange(ex.id), "", ""
		}
	}
	if _, err := s.replayInto(ctx, p, after, b); err != nil {
		l.pending.Add(n)
		return err
	}
	key := snapshotKey(b)
	if _, err := s.store.Create(ctx, key, encodeSnapshot(p, b)); err != nil {
		l.pending.Add(n)
		return fmt.Errorf("mess: write snapshot: %w", err)
	}
	l.snapKey, l.boundary, l.snapAt = key, b, time.Now()
	l.covered.Store(int64(p.version))
	s.pruneSnapshots(ctx, ex.id, key, prev)
	return nil
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
// another exchange are skipped and counted.
func (s *Service) replayInto(ctx context.Context, p *exchange, after, before string) (replayStats, error) {
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
		Prefix: eventsPrefix(p.id),
		After:  after,
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
	st, err := s.replayInto(ctx, p, after, "")
	if err != nil {
		return st, err
	}
	if p.version == 0 {
		return st, nil // nothing but unreadable lines
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
		if part, ok := partitionOf(k, id); ok {
			l.newest = max(l.newest, part)
		}
		s.raiseKeyFloor(k)
	}
	l.snapKey, l.boundary, l.snapAt = used, after, time.Now()
	l.mu.Unlock()
	l.covered.Store(int64(p.version) - int64(st.lines))
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

// readSnapshot reads the snapshot at key into p and returns its boundary.
// On error p may hold part of it.
func (s *Service) readSnapshot(ctx context.Context, key string, p *exchange) (string, error) {
	obj, err := s.store.Get(ctx, key)
	if err != nil {
		return "", err
	}
	b, err := s.decodeSnapshot(obj.Data, p)
	if err != nil {
		return "", err
	}
	if snapshotKey(b) != key {
		return "", fmt.Errorf("%w: boundary %q does not match its key", errSnapshot, b)
	}
	return b, nil
}

// encodeSnapshot encodes the projection p, which covers the events
// before boundary b.
func encodeSnapshot(p *exchange, b string) []byte {
	w := &snapWriter{b: make([]byte, 0, 1<<16)}
	w.b = append(w.b, snapshotMagic...)
	w.uint(snapshotFormat)
	w.str(p.id)
	w.str(b)
	w.uint(p.version)
	w.uint(p.useq)
	var live []*thread
	for _, e := range p.order {
		if e.t.useq == e.useq {
			live = append(live, e.t)
		}
	}
	w.uint(uint64(len(live)))
	var c snapWriter
	for chunk := range slices.Chunk(live, snapshotChunk) {
		c.b = c.b[:0]
		c.count(len(chunk), false)
		for _, t := range chunk {
			c.thread(t)
		}
		w.bytes(c.b)
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k, e := range p.idem {
			if e.ref != "" && !yield(k) {
				return
			}
		}
	})
	w.uint(uint64(len(keys)))
	for _, k := range keys {
		e := p.idem[k]
		w.str(k)
		w.str(e.ref)
		w.time(e.at)
		w.str(e.hash)
	}
	members := slices.Sorted(func(yield func(string) bool) {
		for k := range p.attachBytes {
			if !yield(k) {
				return
			}
		}
	})
	w.uint(uint64(len(members)))
	for _, m := range members {
		w.str(m)
		w.int(p.attachBytes[m])
	}
	w.uint(uint64(len(p.ring)))
	for i := range p.ring {
		w.event(&p.ring[i])
	}
	return binary.LittleEndian.AppendUint32(w.b, crc32.Checksum(w.b, snapshotCRC))
}

// decodeSnapshot decodes a snapshot of p's exchange into p, threads in
// parallel, and returns its boundary.
func (s *Service) decodeSnapshot(data []byte, p *exchange) (string, error) {
	n := len(data) - 4
	if n < len(snapshotMagic) || string(data[:len(snapshotMagic)]) != snapshotMagic {
		return "", fmt.Errorf("%w: not a snapshot", errSnapshot)
	}
	if crc32.Checksum(data[:n], snapshotCRC) != binary.LittleEndian.Uint32(data[n:]) {
		return "", fmt.Errorf("%w: checksum mismatch (torn or corrupt)", errSnapshot)
	}
	r := &snapReader{b: data[len(snapshotMagic):n]}
	if f := r.uint(); f != snapshotFormat {
		return "", fmt.Errorf("%w: format %d; this build reads %d", errSnapshot, f, snapshotFormat)
	}
	if id := r.str(); id != p.id {
		return "", fmt.Errorf("%w: of exchange %q", errSnapshot, id)
	}
	boundary := r.str()
	p.version = r.uint()
	p.useq = r.uint()
	nThreads := r.uint()
	var chunks [][]byte
	for got := uint64(0); got < nThreads && r.err == nil; got += snapshotChunk {
		chunks = append(chunks, r.view())
	}
	if r.err != nil {
		return "", r.err
	}
	decodedChunks := make([][]*thread, len(chunks))
	errs := make([]error, len(chunks))
	var wg sync.WaitGroup
	next := atomic.Int64{}
	for range min(runtime.GOMAXPROCS(0), len(chunks)) {
		wg.Go(func() {
			for i := int(next.Add(1) - 1); i < len(chunks); i = int(next.Add(1) - 1) {
				cr := &snapReader{b: chunks[i], names: map[string]string{}}
				n := cr.count()
				ts := make([]*thread, 0, max(n, 0))
				for ; n > 0 && cr.err == nil; n-- {
					ts = append(ts, cr.thread())
				}
				if cr.err == nil && len(cr.b) != 0 {
					cr.fail()
				}
				decodedChunks[i], errs[i] = ts, cr.err
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	total := 0
	for _, ts := range decodedChunks {
		total += len(ts)
	}
	if uint64(total) != nThreads {
		return "", fmt.Errorf("%w: %d threads, header says %d", errSnapshot, total, nThreads)
	}
	p.threads = make(map[string]*thread, total)
	p.order = make([]orderEntry, 0, total)
	for _, ts := range decodedChunks {
		for _, t := range ts {
			p.threads[t.Ref] = t
			p.order = append(p.order, orderEntry{t.useq, t})
		}
	}
	now := s.now()
	for n := r.uint(); n > 0 && r.err == nil; n-- {
		k, ref, at, hash := r.str(), r.str(), r.time(), r.str()
		// As replay keeps them: only those still within the TTL.
		if r.err == nil && now.Sub(at) < s.cfg.IdempotencyTTL {
			done := make(chan struct{})
			close(done)
			p.idem[k] = &idemEntry{ref: ref, at: at, hash: hash, done: done}
		}
	}
	for n := r.uint(); n > 0 && r.err == nil; n-- {
		m := r.str()
		p.attachBytes[m] = r.int()
	}
	for n := r.uint(); n > 0 && r.err == nil; n-- {
		ev := r.event(p.id)
		p.pushEventLocked(ev, s.cfg.EventBuffer, s.cfg.EventBufferBytes)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail()
	}
	return boundary, r.err
}

// snapWriter appends the snapshot encoding.
type snapWriter struct{ b []byte }

func (w *snapWriter) uint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }
func (w *snapWriter) int(v int64)   { w.b = binary.AppendVarint(w.b, v) }
func (w *snapWriter) str(v string)  { w.uint(uint64(len(v))); w.b = append(w.b, v...) }

// bytes keeps nil apart from empty.
func (w *snapWriter) bytes(v []byte) {
	if v == nil {
		w.uint(0)
		return
	}
	w.uint(uint64(len(v)) + 1)
	w.b = append(w.b, v...)
}

func (w *snapWriter) optStr(v *string) {
	if v == nil {
		w.uint(0)
		return
	}
	w.uint(uint64(len(*v)) + 1)
	w.b = append(w.b, *v...)
}

func (w *snapWriter) bool(v bool) { w.b = append(w.b, byte(btoi(v))) }

// count writes a slice's length, keeping nil apart from empty.
func (w *snapWriter) count(n int, isNil bool) {
	if isNil {
		w.uint(0)
		return
	}
	w.uint(uint64(n) + 1)
}

// time writes t so that it reads back identical (time.Time's ==), zone
// included.
func (w *snapWriter) time(t time.Time) {
	if t.Location() == time.UTC && t.Nanosecond()%int(time.Millisecond) == 0 {
		w.b = append(w.b, 1)
		w.int(t.UnixMilli())
		return
	}
	b, err := t.MarshalBinary()
	if err != nil { // an offset that is not whole seconds: none parses to it
		b, _ = t.UTC().MarshalBinary()
	}
	w.b = append(w.b, 2)
	w.str(string(b))
}

func (w *snapWriter) optTime(t *time.Time) {
	w.bool(t != nil)
	if t != nil {
		w.time(*t)
	}
}

func (w *snapWriter) refs(rs []attachmentRef) {
	w.count(len(rs), rs == nil)
	for _, r := range rs {
		w.str(r.Field)
		w.int(int64(r.Value))
		w.str(r.Name)
		w.str(r.Alias)
		w.str(r.Type)
		w.str(r.Object)
		w.int(r.Size)
	}
}

// thread writes a thread's state. Intent, Priority, NeededBy and Requires
// of its summary are its request's, as replay sets them, so they are not
// written twice.
func (w *snapWriter) thread(t *thread) {
	w.str(t.Ref)
	w.str(string(t.Status))
	w.str(t.RequestorID)
	w.optStr(t.ExecutorID)
	w.time(t.CreatedAt)
	w.time(t.UpdatedAt)
	w.int(t.Seq)
	w.str(t.ExternalID)
	w.uint(t.useq)
	w.str(t.confirmedBy)
	req := t.Request
	w.str(req.Intent)
	w.str(req.ID)
	w.str(string(req.Priority))
	w.bytes(req.Context)
	w.bytes(req.ResponseHint)
	w.bytes(req.Requires)
	w.bytes(req.Constraints)
	w.str(req.Precision)
	w.bytes(req.Compensation)
	w.optTime(req.NeededBy)
	w.bool(req.ConfirmBefore)
	w.refs(req.attachments)
	w.count(len(t.Messages), t.Messages == nil)
	for _, m := range t.Messages {
		w.str(m.From)
		w.time(m.TS)
		w.bytes(m.Mess)
		w.refs(m.attachments)
	}
	w.count(len(t.History), t.History == nil)
	for _, h := range t.History {
		w.int(h.Seq)
		w.time(h.TS)
		w.str(h.ActorID)
		w.str(h.Type)
		w.str(string(h.OldStatus))
		w.str(string(h.NewStatus))
		w.str(h.Message)
	}
}

func (w *snapWriter) event(ev *Event) {
	w.str(ev.EventID)
	w.time(ev.TS)
	w.optStr(ev.ThreadRef)
	w.str(ev.EventType)
	w.str(ev.ActorID)
	w.int(ev.Seq)
	w.bytes(ev.Payload)
}

// snapReader decodes what snapWriter wrote. The first error sticks and
// later reads return zero values.
type snapReader struct {
	b     []byte
	err   error
	names map[string]string // short repeated strings (actors, statuses), shared
}

func (r *snapReader) fail() {
	if r.err == nil {
		r.err = fmt.Errorf("%w: malformed", errSnapshot)
	}
	r.b = nil
}

func (r *snapReader) uint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *snapReader) int() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *snapReader) take(n uint64) []byte {
	if n > uint64(len(r.b)) {
		r.fail()
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *snapReader) str() string { return string(r.take(r.uint())) }

// name is str for strings that repeat across threads.
func (r *snapReader) name() string {
	b := r.take(r.uint())
	if r.names == nil || len(b) > 64 {
		return string(b)
	}
	if s, ok := r.names[string(b)]; ok {
		return s
	}
	s := string(b)
	r.names[s] = s
	return s
}

func (r *snapReader) bytes() []byte { return bytes.Clone(r.view()) }

// view is bytes without the copy.
func (r *snapReader) view() []byte {
	n := r.uint()
	if n == 0 {
		return nil
	}
	return r.take(n - 1)
}

func (r *snapReader) optName() *string {
	n := r.uint()
	if n == 0 {
		return nil
	}
	b := r.take(n - 1)
	s := string(b)
	if r.names != nil && len(b) <= 64 {
		if v, ok := r.names[s]; ok {
			s = v
		} else {
			r.names[s] = s
		}
	}
	return &s
}

func (r *snapReader) bool() bool {
	b := r.take(1)
	if len(b) == 0 || b[0] > 1 {
		r.fail()
		return false
	}
	return b[0] == 1
}

// count reads a slice's length; nil is -1.
func (r *snapReader) count() int {
	n := r.uint()
	if n > uint64(len(r.b))+1 { // every element takes a byte at least
		r.fail()
		return -1
	}
	return int(n) - 1
}

func (r *snapReader) time() time.Time {
	switch tag := r.take(1); {
	case len(tag) == 0:
	case tag[0] == 1:
		return time.UnixMilli(r.int()).UTC()
	case tag[0] == 2:
		var t time.Time
		if err := t.UnmarshalBinary(r.take(r.uint())); err == nil {
			return t
		}
	}
	r.fail()
	return time.Time{}
}

func (r *snapReader) optTime() *time.Time {
	if !r.bool() {
		return nil
	}
	t := r.time()
	return &t
}

func (r *snapReader) refs() []attachmentRef {
	n := r.count()
	if n < 0 {
		return nil
	}
	rs := make([]attachmentRef, n)
	for i := range rs {
		rs[i] = attachmentRef{Field: r.name(), Value: int(r.int()), Name: r.str(), Alias: r.str(), Type: r.name(), Object: r.str(), Size: r.int()}
	}
	return rs
}

// thread reads a thread as replay would have built it: files from its
// messages' attachments, in order, as applyLocked fills them.
func (r *snapReader) thread() *thread {
	t := &thread{ready: true}
	t.Ref = r.str()
	t.Status = Status(r.name())
	t.RequestorID = r.name()
	t.ExecutorID = r.optName()
	t.CreatedAt = r.time()
	t.UpdatedAt = r.time()
	t.Seq = r.int()
	t.ExternalID = r.str()
	t.useq = r.uint()
	t.confirmedBy = r.name()
	req := &Request{}
	req.Intent = r.str()
	req.ID = r.str()
	req.Priority = Priority(r.name())
	req.Context = r.bytes()
	req.ResponseHint = r.bytes()
	req.Requires = r.bytes()
	req.Constraints = r.bytes()
	req.Precision = r.name()
	req.Compensation = r.bytes()
	req.NeededBy = r.optTime()
	req.ConfirmBefore = r.bool()
	req.attachments = r.refs()
	t.Request = req
	t.Intent, t.Priority, t.NeededBy, t.Requires = req.Intent, req.Priority, req.NeededBy, req.Requires
	if t.Priority == "" {
		t.Priority = PriorityNormal
	}
	if n := r.count(); n >= 0 {
		t.Messages = make([]Message, n)
		for i := range t.Messages {
			m := &t.Messages[i]
			m.From = r.name()
			m.TS = r.time()
			m.Mess = r.bytes()
			m.attachments = r.refs()
			for _, a := range m.attachments {
				if t.files == nil {
					t.files = map[string]attachmentRef{}
				}
				for _, name := range []string{a.Name, a.Alias} {
					if _, taken := t.files[name]; !taken && name != "" {
						t.files[name] = a
					}
				}
			}
		}
	}
	if n := r.count(); n >= 0 {
		t.History = make([]HistoryEntry, n)
		for i := range t.History {
			h := &t.History[i]
			h.Seq = r.int()
			h.TS = r.time()
			h.ActorID = r.name()
			h.Type = r.name()
			h.OldStatus = Status(r.name())
			h.NewStatus = Status(r.name())
			h.Message = r.str()
		}
	}
	return t
}

func (r *snapReader) event(exchangeID string) Event {
	ev := Event{ExchangeID: exchangeID}
	ev.EventID = r.str()
	ev.TS = r.time()
	ev.ThreadRef = r.optName()
	ev.EventType = r.name()
	ev.ActorID = r.name()
	ev.Seq = r.int()
	ev.Payload = r.bytes()
	return ev
}

package mess

// The snapshot format, version 1 (see snapshot.go). Unsigned varints,
// signed varints and strings prefixed with their length, in this order:
//
//	"messsnap", format version, exchange id, boundary,
//	event lines covered (the exchange's version), update counter,
//	chunks of threads: count (0 ends them), byte length, and that many
//	  records, each a length and a thread: ref and update counter first,
//	  so a snapshot is folded into the next one without decoding the
//	  threads no new event touched, and chunks decode in parallel;
//	idempotency keys: count, then key, ref, time, request hash;
//	attachment bytes per member: count, then member, bytes;
//	the event buffer: count, then events;
//	CRC-32C (Castagnoli) of all the above, little-endian.
//
// Nil and empty are told apart wherever the projection tells them apart
// (count or length plus one, 0 for nil). Times are milliseconds when they
// are UTC milliseconds (all the log holds) and time.MarshalBinary
// otherwise, so they read back identical, zone included.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

const (
	snapshotMagic  = "messsnap"
	snapshotFormat = 1
	// snapshotChunk is how many threads one chunk holds at most.
	snapshotChunk = 2048
)

var (
	errSnapshot = errors.New("mess: unreadable snapshot")
	snapshotCRC = crc32.MakeTable(crc32.Castagnoli)
)

// snapshotFile is a snapshot checked and split, its threads not decoded.
type snapshotFile struct {
	boundary    string
	lines, useq uint64
	chunks      [][]byte // the records of each chunk
	counts      []int    // how many
	rest        []byte   // idempotency keys, attachment bytes, event buffer
}

// parseSnapshot checks a snapshot of the exchange (magic, checksum,
// format, exchange) and splits it.
func parseSnapshot(data []byte, exchangeID string) (*snapshotFile, error) {
	n := len(data) - 4
	if n < len(snapshotMagic) || string(data[:len(snapshotMagic)]) != snapshotMagic {
		return nil, fmt.Errorf("%w: not a snapshot", errSnapshot)
	}
	if crc32.Checksum(data[:n], snapshotCRC) != binary.LittleEndian.Uint32(data[n:]) {
		return nil, fmt.Errorf("%w: checksum mismatch (torn or corrupt)", errSnapshot)
	}
	r := &snapReader{b: data[len(snapshotMagic):n]}
	if f := r.uint(); f != snapshotFormat {
		return nil, fmt.Errorf("%w: format %d; this build reads %d", errSnapshot, f, snapshotFormat)
	}
	if id := r.str(); id != exchangeID {
		return nil, fmt.Errorf("%w: of exchange %q", errSnapshot, id)
	}
	f := &snapshotFile{boundary: r.str(), lines: r.uint(), useq: r.uint()}
	for r.err == nil {
		c := r.uint()
		if c == 0 {
			break
		}
		if c > snapshotChunk {
			r.fail()
			break
		}
		f.counts = append(f.counts, int(c))
		f.chunks = append(f.chunks, r.take(r.uint()))
	}
	f.rest = r.b
	return f, r.err
}

// records calls fn with every thread record in order, its ref and update
// counter read from its head. ref is only valid during the call.
func (f *snapshotFile) records(fn func(ref []byte, useq uint64, rec []byte)) error {
	for i, chunk := range f.chunks {
		r := &snapReader{b: chunk}
		for range f.counts[i] {
			rec := r.take(r.uint())
			h := &snapReader{b: rec}
			ref := h.take(h.uint())
			useq := h.uint()
			if r.err != nil || h.err != nil {
				return fmt.Errorf("%w: malformed", errSnapshot)
			}
			fn(ref, useq, rec)
		}
		if len(r.b) != 0 {
			return fmt.Errorf("%w: malformed", errSnapshot)
		}
	}
	return nil
}

// decodeRecord decodes one thread record; names shares repeated strings.
func decodeRecord(rec []byte, names map[string]string) (*thread, error) {
	r := &snapReader{b: rec, names: names}
	t := r.thread()
	if r.err == nil && len(r.b) != 0 {
		r.fail()
	}
	return t, r.err
}

// snapshotBuilder writes a snapshot, threads in update order.
type snapshotBuilder struct {
	w, chunk, rec snapWriter
	n             int // records in chunk
}

func newSnapshotBuilder(exchangeID, boundary string, lines, useq uint64) *snapshotBuilder {
	sb := &snapshotBuilder{w: snapWriter{b: make([]byte, 0, 1<<16)}}
	sb.w.b = append(sb.w.b, snapshotMagic...)
	sb.w.uint(snapshotFormat)
	sb.w.str(exchangeID)
	sb.w.str(boundary)
	sb.w.uint(lines)
	sb.w.uint(useq)
	return sb
}

// record adds an encoded thread.
func (sb *snapshotBuilder) record(rec []byte) {
	sb.chunk.blob(rec)
	if sb.n++; sb.n == snapshotChunk {
		sb.flush()
	}
}

func (sb *snapshotBuilder) thread(t *thread) {
	sb.rec.b = sb.rec.b[:0]
	sb.rec.thread(t)
	sb.record(sb.rec.b)
}

func (sb *snapshotBuilder) flush() {
	if sb.n > 0 {
		sb.w.uint(uint64(sb.n))
		sb.w.blob(sb.chunk.b)
		sb.chunk.b, sb.n = sb.chunk.b[:0], 0
	}
}

// finish adds p's idempotency keys, attachment bytes and event buffer and
// returns the snapshot.
func (sb *snapshotBuilder) finish(p *exchange) []byte {
	sb.flush()
	w := &sb.w
	w.uint(0)
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

// liveThreads returns p's threads in update order.
func liveThreads(p *exchange) []*thread {
	var ts []*thread
	for _, e := range p.order {
		if e.t.useq == e.useq {
			ts = append(ts, e.t)
		}
	}
	slices.SortFunc(ts, func(a, b *thread) int { return cmpUint(a.useq, b.useq) })
	return ts
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// encodeSnapshot encodes the projection p, which covers the events
// before boundary b.
func encodeSnapshot(p *exchange, b string) []byte {
	sb := newSnapshotBuilder(p.id, b, p.version, p.useq)
	for _, t := range liveThreads(p) {
		sb.thread(t)
	}
	return sb.finish(p)
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

// decodeSnapshot decodes a snapshot of p's exchange into p, threads in
// parallel, and returns its boundary.
func (s *Service) decodeSnapshot(data []byte, p *exchange) (string, error) {
	f, err := parseSnapshot(data, p.id)
	if err != nil {
		return "", err
	}
	decoded := make([][]*thread, len(f.chunks))
	errs := make([]error, len(f.chunks))
	var wg sync.WaitGroup
	var next atomic.Int64
	for range min(runtime.GOMAXPROCS(0), len(f.chunks)) {
		wg.Go(func() {
			names := map[string]string{}
			for i := int(next.Add(1) - 1); i < len(f.chunks); i = int(next.Add(1) - 1) {
				ts := make([]*thread, 0, f.counts[i])
				errs[i] = (&snapshotFile{chunks: f.chunks[i : i+1], counts: f.counts[i : i+1]}).records(func(_ []byte, _ uint64, rec []byte) {
					if t, err := decodeRecord(rec, names); err != nil {
						errs[i] = err
					} else if errs[i] == nil {
						ts = append(ts, t)
					}
				})
				decoded[i] = ts
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	total := 0
	for _, ts := range decoded {
		total += len(ts)
	}
	p.threads = make(map[string]*thread, total)
	p.order = make([]orderEntry, 0, total)
	for _, ts := range decoded {
		for _, t := range ts {
			if n := len(p.order); n > 0 && p.order[n-1].useq >= t.useq || t.useq > f.useq {
				return "", fmt.Errorf("%w: threads out of update order", errSnapshot)
			}
			p.threads[t.Ref] = t
			p.order = append(p.order, orderEntry{t.useq, t})
		}
	}
	p.version, p.useq = f.lines, f.useq
	return f.boundary, s.decodeRest(f.rest, p)
}

// decodeRest reads the idempotency keys still within the TTL (as replay
// keeps them), the attachment bytes and the event buffer into p.
func (s *Service) decodeRest(rest []byte, p *exchange) error {
	r := &snapReader{b: rest}
	now := s.now()
	for n := r.uint(); n > 0 && r.err == nil; n-- {
		k, ref, at, hash := r.str(), r.str(), r.time(), r.str()
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
	// The buffer's payloads share one allocation.
	n := r.uint()
	if n > uint64(len(r.b)) { // every event takes a byte at least
		r.fail()
		n = 0
	}
	evs := make([]Event, 0, n)
	size := 0
	r.names = map[string]string{}
	for ; n > 0 && r.err == nil; n-- {
		evs = append(evs, r.event(p.id))
		size += len(evs[len(evs)-1].Payload)
	}
	arena := make([]byte, 0, size)
	p.ring = make([]Event, 0, min(len(evs), s.cfg.EventBuffer))
	for _, ev := range evs {
		if ev.Payload != nil {
			start := len(arena)
			arena = append(arena, ev.Payload...)
			ev.Payload = arena[start:len(arena):len(arena)]
		}
		p.pushEventLocked(ev, s.cfg.EventBuffer, s.cfg.EventBufferBytes)
	}
	if r.err == nil && len(r.b) != 0 {
		r.fail()
	}
	return r.err
}

// snapWriter appends the snapshot encoding.
type snapWriter struct{ b []byte }

func (w *snapWriter) uint(v uint64) { w.b = binary.AppendUvarint(w.b, v) }
func (w *snapWriter) int(v int64)   { w.b = binary.AppendVarint(w.b, v) }
func (w *snapWriter) str(v string)  { w.uint(uint64(len(v))); w.b = append(w.b, v...) }
func (w *snapWriter) blob(v []byte) { w.uint(uint64(len(v))); w.b = append(w.b, v...) }

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
	w.uint(t.useq)
	w.str(string(t.Status))
	w.str(t.RequestorID)
	w.optStr(t.ExecutorID)
	w.time(t.CreatedAt)
	w.time(t.UpdatedAt)
	w.int(t.Seq)
	w.str(t.ExternalID)
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
	t.useq = r.uint()
	t.Status = Status(r.name())
	t.RequestorID = r.name()
	t.ExecutorID = r.optName()
	t.CreatedAt = r.time()
	t.UpdatedAt = r.time()
	t.Seq = r.int()
	t.ExternalID = r.str()
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
	ev.Payload = r.view() // the caller copies it
	return ev
}

package mailbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// Storage layout of exchange X:
//
//	mailbus/X/log/{ULID}.jsonl   journal records (messages, acks, subscriptions, cursors)
//	mailbus/X/snap/{LSN}.json    snapshots; the newest one plus the later journal is the state
//
// Records carry a per-exchange log sequence number (LSN). Journal objects
// are written in LSN order, replay skips records a snapshot already covers,
// and compaction deletes objects whose records are all covered.

func (ex *exchange) snapPrefix() string { return "mailbus/" + ex.id + "/snap/" }
func (ex *exchange) logPrefix() string  { return "mailbus/" + ex.id + "/log/" }

type snapshot struct {
	LSN      uint64      `json:"lsn"`
	Messages []snapMsg   `json:"messages"`
	Agents   []snapAgent `json:"agents"`
}

type snapMsg struct {
	Msg  Message `json:"m"`
	Recv int64   `json:"r"`
}

type snapAgent struct {
	ID   string   `json:"id"`
	Subs []string `json:"subs,omitempty"`
	// SubsSet is whether the agent ever set its subscriptions; snapshots
	// written before it existed imply it from a non-empty Subs.
	SubsSet bool      `json:"subsSet,omitempty"`
	Cursor  uint64    `json:"cursor,omitempty"`
	First   uint64    `json:"first"`
	Ents    []snapEnt `json:"ents,omitempty"`
}

type snapEnt struct {
	M       int   `json:"m"`
	Ack     bool  `json:"k,omitempty"`
	AckedAt int64 `json:"t,omitempty"`
}

// load rebuilds the exchange from its newest snapshot and the journal.
func (ex *exchange) load() {
	defer close(ex.ready)
	if ex.prev != nil {
		// Its journal writes and snapshot must be on storage, or not,
		// for good before this reads it.
		ex.prev.committers.Wait()
		ex.prev = nil
	}
	if err := ex.restore(context.Background(), ex.b.cfg.Store); err != nil {
		ex.loadErr = fmt.Errorf("mailbus: load exchange %s: %w", ex.id, err)
		ex.b.cfg.Logger.Error("mailbus: load failed", "exchange", ex.id, "err", err)
		return
	}
	for _, a := range ex.agents {
		a.durable = a.next() - 1
		a.savedCur = a.cursor
	}
	ex.committers.Add(1)
	go ex.committer()
}

func (ex *exchange) restore(ctx context.Context, st storage.Store) error {
	if f := ex.b.cfg.Fence; f != nil {
		// Claimed and fenced before it is read, so the read includes every
		// write of a replaced owner, and that owner can add none after.
		if err := f.Claim(ctx, ex.id); err != nil {
			return err
		}
		if err := ex.b.j.Open(ctx, ex.partition(), ""); err != nil {
			return err
		}
	}
	var last string
	for k, err := range storage.Keys(ctx, st, ex.snapPrefix()) {
		if err != nil {
			return err
		}
		last = k
	}
	if last != "" {
		obj, err := st.Get(ctx, last)
		if err != nil {
			return err
		}
		var s snapshot
		if err := json.Unmarshal(obj.Data, &s); err != nil {
			return fmt.Errorf("decode %s: %w", last, err)
		}
		if err := ex.applySnapshot(&s); err != nil {
			return fmt.Errorf("apply %s: %w", last, err)
		}
	}
	return journal.Replay(ctx, st, journal.ReplayConfig{
		Prefix: ex.logPrefix(),
		Decode: func(key string, data []byte) (any, error) {
			lines, _ := journal.Lines(data) // a torn tail was never acknowledged
			recs := make([]record, 0, len(lines))
			for _, l := range lines {
				var r record
				if err := json.Unmarshal(l, &r); err != nil {
					// A write torn by a crash can leave garbage before its
					// end; nothing after it in this object was acknowledged.
					ex.b.cfg.Logger.Warn("mailbus: journal object ends in a torn write", "key", key)
					break
				}
				if r.Kind == "m" && r.Msg != nil {
					r.raw, r.Msg.Payload = encodeShared(r.Msg)
				}
				recs = append(recs, r)
			}
			return recs, nil
		},
		Apply: func(key string, v any) error {
			for _, r := range v.([]record) {
				if r.LSN <= ex.lsn {
					continue
				}
				ex.applyRecord(&r)
				ex.lsn = r.LSN
				ex.sinceSnap++
			}
			return nil
		},
	})
}

func (ex *exchange) applyRecord(r *record) {
	switch r.Kind {
	case "m":
		if r.Msg == nil {
			return
		}
		ex.applyMessage(&stored{msg: *r.Msg, raw: r.raw, recv: time.UnixMilli(r.Time)}, nil)
	case "a":
		ex.applyAck(r.Agent, r.ID, time.UnixMilli(r.Time))
	case "s":
		ex.setSubs(ex.agent(r.Agent), r.Types)
	case "j":
		ex.agent(r.Agent)
	case "c":
		a := ex.agent(r.Agent)
		a.cursor = max(a.cursor, r.Seq)
	}
}

func (ex *exchange) applySnapshot(s *snapshot) error {
	msgs := make([]*stored, len(s.Messages))
	nums := make([]uint64, len(s.Messages))
	for i, m := range s.Messages {
		st, err := newStored(&m.Msg, time.UnixMilli(m.Recv))
		if err != nil {
			return err
		}
		msgs[i], nums[i] = st, ex.msgs.add(st)
	}
	for _, sa := range s.Agents {
		a := ex.agent(sa.ID)
		if sa.SubsSet || len(sa.Subs) > 0 {
			ex.setSubs(a, sa.Subs)
		}
		a.cursor, a.first = sa.Cursor, max(sa.First, 1)
		a.ents = make([]entry, 0, len(sa.Ents))
		for i, se := range sa.Ents {
			if se.M < 0 || se.M >= len(msgs) {
				return errors.New("entry refers to a missing message")
			}
			if se.Ack {
				seq := a.first + uint64(i)
				ack := &ackState{}
				if se.AckedAt != 0 {
					ack.ackedAt = time.UnixMilli(se.AckedAt)
				}
				a.needAck(msgs[se.M].msg.ID, seq, ack)
			}
			ex.msgs.ref(nums[se.M], 1)
			a.ents = append(a.ents, newEntry(nums[se.M], se.Ack))
			a.size += msgs[se.M].size()
		}
	}
	ex.lsn = s.LSN
	return nil
}

// wantSnapshot reports whether the caller should start a snapshot. Caller
// holds ex.mu.
func (ex *exchange) wantSnapshot() bool {
	// Waiting for as many records as the last snapshot held inbox entries
	// keeps the cost of snapshots proportional to traffic, however much
	// mail is retained.
	if ex.b.cfg.SnapshotEvery < 0 || ex.snapping || ex.closed ||
		ex.sinceSnap < max(ex.b.cfg.SnapshotEvery, ex.snapEntries) {
		return false
	}
	ex.snapping = true
	ex.sinceSnap = 0
	ex.committers.Add(1)
	return true
}

// snapshot writes the exchange state and deletes the journal objects and
// older snapshots it makes redundant.
func (ex *exchange) snapshot() {
	defer ex.committers.Done()
	defer func() {
		ex.mu.Lock()
		ex.snapping = false
		ex.mu.Unlock()
	}()
	s := ex.capture()
	if err := ex.writeSnapshot(context.Background(), s); err != nil {
		ex.b.cfg.Logger.Error("mailbus: snapshot failed", "exchange", ex.id, "err", err)
	}
}

// captured is the state of an exchange at one LSN, ready to be encoded as
// a snapshot: the messages are the stored ones, whose encoding is spliced
// into the snapshot instead of being encoded again.
type captured struct {
	lsn    uint64
	msgs   []*stored
	agents []snapAgent
	// sealed waits for the journal's seal queued at lsn: the objects
	// before its boundary hold exactly the records up to lsn.
	sealed func(context.Context) (string, error)
}

// capture copies the state at one LSN. Only the copy of each inbox (its
// entries hold no pointers, so that is a memmove) is made under the locks;
// looking up the messages happens after, so that a snapshot of a large
// inbox stalls neither publishers nor the agent's deliveries. The message
// table keeps every message meanwhile: trim waits while ex.snapping.
func (ex *exchange) capture() *captured {
	type copied struct {
		sa    snapAgent
		ents  []entry
		acked map[uint64]int64 // seq → ackedAt (unix ms)
	}
	ex.mu.Lock()
	s := &captured{lsn: ex.lsn}
	cs := make([]copied, 0, len(ex.agents))
	ex.snapEntries = 0
	for _, a := range ex.agents {
		a.mu.Lock()
		c := copied{sa: snapAgent{ID: a.id, Subs: a.subs, SubsSet: a.subsSet, Cursor: a.cursor, First: a.first}, ents: slices.Clone(a.ents)}
		for seq, ack := range a.acks {
			if !ack.ackedAt.IsZero() {
				if c.acked == nil {
					c.acked = map[uint64]int64{}
				}
				c.acked[seq] = ack.ackedAt.UnixMilli()
			}
		}
		a.mu.Unlock()
		ex.snapEntries += len(c.ents)
		cs = append(cs, c)
	}
	lo, hi := ex.msgs.span()
	// Records are queued under ex.mu too: the seal splits the journal at
	// exactly this LSN.
	s.sealed = ex.b.j.QueueSeal(ex.part)
	ex.mu.Unlock()

	// Message number → 1 + its index in s.msgs. Every entry refers to a
	// message in the table, whose numbers are dense, so a slice over the
	// table's span (which the table itself holds a slot for) replaces a
	// map.
	index := make([]int32, hi-lo)
	s.agents = make([]snapAgent, 0, len(cs))
	for _, c := range cs {
		sa := c.sa
		sa.Ents = make([]snapEnt, 0, len(c.ents))
		for j, e := range c.ents {
			i := int(index[e.num()-lo]) - 1
			if i < 0 {
				i = len(s.msgs)
				index[e.num()-lo] = int32(i + 1)
				s.msgs = append(s.msgs, ex.msgs.get(e.num()))
			}
			se := snapEnt{M: i, Ack: e.needsAck()}
			if se.Ack {
				se.AckedAt = c.acked[sa.First+uint64(j)]
			}
			sa.Ents = append(sa.Ents, se)
		}
		s.agents = append(s.agents, sa)
	}
	return s
}

// appendJSON encodes s as a snapshot (the JSON of type snapshot) without
// reflection: a snapshot holds every retained message, and encoding them
// through reflection cost as much as taking them in.
func (s *captured) appendJSON(b []byte) []byte {
	return s.encode(b, func(b []byte) []byte { return b })
}

// encode appends s's encoding to b, handing b to flush whenever it holds
// snapPiece bytes or more; flush returns the buffer to go on with.
func (s *captured) encode(b []byte, flush func([]byte) []byte) []byte {
	b = append(b, `{"lsn":`...)
	b = strconv.AppendUint(b, s.lsn, 10)
	b = append(b, `,"messages":[`...)
	for i, st := range s.msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"m":`...)
		b = append(b, st.raw...)
		b = append(b, `,"r":`...)
		b = strconv.AppendInt(b, st.recv.UnixMilli(), 10)
		b = append(b, '}')
		if len(b) >= snapPiece {
			b = flush(b)
		}
	}
	b = append(b, `],"agents":[`...)
	for i, a := range s.agents {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"id":`...)
		b = appendString(b, a.ID)
		if len(a.Subs) > 0 {
			b = append(b, `,"subs":[`...)
			for j, p := range a.Subs {
				if j > 0 {
					b = append(b, ',')
				}
				b = appendString(b, p)
			}
			b = append(b, ']')
		}
		if a.SubsSet {
			b = append(b, `,"subsSet":true`...)
		}
		if a.Cursor != 0 {
			b = append(b, `,"cursor":`...)
			b = strconv.AppendUint(b, a.Cursor, 10)
		}
		b = append(b, `,"first":`...)
		b = strconv.AppendUint(b, a.First, 10)
		if len(a.Ents) > 0 {
			b = append(b, `,"ents":[`...)
			for j, e := range a.Ents {
				if j > 0 {
					b = append(b, ',')
				}
				b = append(b, `{"m":`...)
				b = strconv.AppendInt(b, int64(e.M), 10)
				if e.Ack {
					b = append(b, `,"k":true`...)
				}
				if e.AckedAt != 0 {
					b = append(b, `,"t":`...)
					b = strconv.AppendInt(b, e.AckedAt, 10)
				}
				b = append(b, '}')
				if len(b) >= snapPiece {
					b = flush(b)
				}
			}
			b = append(b, ']')
		}
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// size estimates the length of s's encoding.
func (s *captured) size() int {
	n := 64
	for _, st := range s.msgs {
		n += len(st.raw) + 32
	}
	for _, a := range s.agents {
		n += 128 + 16*len(a.Ents)
		for _, p := range a.Subs {
			n += len(p) + 3
		}
	}
	return n
}

// snapPiece is how much of a snapshot's encoding is written at a time to a
// store that takes a stream.
const snapPiece = 256 << 10

func (ex *exchange) writeSnapshot(ctx context.Context, s *captured) error {
	st := ex.b.cfg.Store
	key := fmt.Sprintf("%s%020d.json", ex.snapPrefix(), s.lsn)
	if sp, ok := st.(storage.Streamer); ok {
		// Written as it is encoded: a snapshot of a busy exchange is
		// tens of megabytes, which would otherwise be a buffer of its own
		// for the collector and a digest the snapshot never uses.
		err := sp.PutStream(ctx, key, func(w io.Writer) error {
			var werr error
			b := s.encode(make([]byte, 0, snapPiece+4096), func(b []byte) []byte {
				if werr == nil {
					_, werr = w.Write(b)
				}
				return b[:0]
			})
			if werr != nil {
				return werr
			}
			_, err := w.Write(b)
			return err
		})
		if err != nil {
			return err
		}
	} else if _, err := st.Put(ctx, key, s.appendJSON(make([]byte, 0, s.size()))); err != nil {
		return err
	}
	// The objects before the boundary of the seal queued at s.lsn hold
	// the records up to s.lsn and no others: the snapshot covers them,
	// and none needs reading to know it.
	bound, err := s.sealed(ctx)
	if err != nil {
		return err
	}
	if f := ex.b.cfg.Fence; f != nil {
		// A process that may have been replaced deletes nothing: the new
		// owner may be reading these objects.
		if err := f.Valid(); err != nil {
			return err
		}
	}
	for k, err := range storage.Keys(ctx, st, ex.logPrefix()) {
		if err != nil {
			return err
		}
		if k >= bound {
			break
		}
		if ex.b.cfg.Fence != nil {
			// Fences stay: they keep replaced writers out. Only a shared
			// store has them, so only there is an object read first.
			obj, err := st.Get(ctx, k)
			if err != nil {
				return err
			}
			if journal.IsControl(obj.Data) {
				continue
			}
		}
		if err := st.Delete(ctx, k); err != nil {
			return err
		}
	}
	return ex.deleteOldSnapshots(ctx, key)
}

func (ex *exchange) deleteOldSnapshots(ctx context.Context, keep string) error {
	st := ex.b.cfg.Store
	for k, err := range storage.Keys(ctx, st, ex.snapPrefix()) {
		if err != nil {
			return err
		}
		if k >= keep {
			break
		}
		if err := st.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

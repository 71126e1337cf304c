package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// Durable state is a journal of records plus, from time to time, a snapshot
// that folds the journal objects it covers (which are then deleted).
//
// A grant record carries the wall-clock deadline and the TTL left when it
// was written; on restart a lease gets min(deadline - now, that TTL), so a
// restart never extends a lease, even if the wall clock stepped back.
//
// Replay does not depend on record order: a grant applies when its token
// is above every token seen for the name (or equals the live one, which is
// a renewal: the later deadline wins because renewals never shorten), and a
// release clears the name only if the token matches, remembering it so an
// earlier-token grant cannot come back.

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
	// Next is a token no lease in the journal objects it replaced could
	// have reached: every token below it was issued before the snapshot
	// was taken, so its effect is in Leases.
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
	next  uint64 // tokens below it are settled by the snapshot
	maxT  uint64 // highest token seen anywhere
	live  map[key]record
	maxAt map[key]uint64 // highest token seen per name
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

func (m *Manager) snapPrefix() string { return m.cfg.Prefix + "/snap/" }

// load restores the state from the newest snapshot and the journal.
func (m *Manager) load(ctx context.Context) error {
	st := &replayState{live: map[key]record{}, maxAt: map[key]uint64{}}
	snapKey, err := m.latestSnapshot(ctx)
	if err != nil {
		return err
	}
	if snapKey != "" {
		obj, err := m.cfg.Store.Get(ctx, snapKey)
		if err != nil {
			return fmt.Errorf("lease: read snapshot: %w", err)
		}
		var sn snapshot
		if err := json.Unmarshal(obj.Data, &sn); err != nil {
			return fmt.Errorf("lease: decode snapshot %s: %w", snapKey, err)
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
	err = journal.Replay(ctx, m.cfg.Store, journal.ReplayConfig{
		Prefix: m.logKey + "/",
		Decode: func(key string, data []byte) (any, error) {
			lines, _ := journal.Lines(data) // a torn tail was never acknowledged
			recs := make([]record, 0, len(lines))
			for _, l := range lines {
				var r record
				if err := json.Unmarshal(l, &r); err != nil {
					// A write torn by a crash can leave garbage before its
					// end; nothing after it in this object was acknowledged.
					m.cfg.Logger.Warn("lease: journal object ends in a torn write", "key", key)
					break
				}
				recs = append(recs, r)
			}
			return recs, nil
		},
		Apply: func(_ string, v any) error {
			for _, r := range v.([]record) {
				st.apply(r)
			}
			return nil
		},
	})
	if err != nil {
		return fmt.Errorf("lease: replay: %w", err)
	}
	m.tokens.Store(st.maxT)
	now := m.cfg.Now()
	for k, r := range st.live {
		// Deadline and LeftMs are both rounded down to the millisecond, so
		// this never lands after the deadline that was granted.
		left := min(time.UnixMilli(r.Deadline).Sub(now), time.Duration(r.LeftMs)*time.Millisecond)
		if left <= 0 || validID(k.x) != nil || validID(r.Holder) != nil {
			continue
		}
		s := m.shard(k)
		s.m[k] = &entry{holder: r.Holder, token: r.Token, deadline: now.Add(left)}
	}
	return nil
}

func (m *Manager) latestSnapshot(ctx context.Context) (string, error) {
	last := ""
	for k, err := range storage.Keys(ctx, m.cfg.Store, m.snapPrefix()) {
		if err != nil {
			return "", fmt.Errorf("lease: list snapshots: %w", err)
		}
		last = k
	}
	return last, nil
}

// compact writes a snapshot of the live leases and deletes the journal
// objects and older snapshots it replaces. It runs every
// Config.CompactInterval and at Close.
func (m *Manager) compact(ctx context.Context) error {
	m.compactMu.Lock()
	defer m.compactMu.Unlock()
	// Order matters. The journal is sealed and the objects before the
	// seal's boundary are listed first: every record in them was applied
	// in memory before it was queued, so the scan below sees it, and they
	// get no more records. The token counter is read before the scan: a token below it
	// was issued under its shard's lock, so the scan sees that grant too.
	bound, err := m.j.Seal(ctx, m.logKey)
	if err != nil {
		return fmt.Errorf("lease: seal journal: %w", err)
	}
	var logs, olds []string
	for k, err := range storage.Keys(ctx, m.cfg.Store, m.logKey+"/") {
		if err != nil {
			return fmt.Errorf("lease: list journal: %w", err)
		}
		if k >= bound {
			break
		}
		logs = append(logs, k)
	}
	for k, err := range storage.Keys(ctx, m.cfg.Store, m.snapPrefix()) {
		if err != nil {
			return fmt.Errorf("lease: list snapshots: %w", err)
		}
		olds = append(olds, k)
	}
	if len(logs) == 0 && len(olds) > 0 {
		return nil
	}
	sn := snapshot{Next: m.tokens.Load() + 1, Leases: []record{}}
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		now := m.cfg.Now()
		for k, e := range s.m {
			if e.live(now) {
				sn.Leases = append(sn.Leases, makeGrantRecord(k, e.grant(k), now))
			}
		}
		s.mu.Unlock()
	}
	data, err := json.Marshal(sn)
	if err != nil {
		return err
	}
	// Snapshots are named by their token high-water mark, which never goes
	// back, so the newest sorts last whatever the wall clock does.
	name := fmt.Sprintf("%s%020d.json", m.snapPrefix(), sn.Next)
	if _, err := m.cfg.Store.Put(ctx, name, data); err != nil {
		return fmt.Errorf("lease: write snapshot: %w", err)
	}
	var errs []error
	for _, k := range olds {
		if k != name {
			errs = append(errs, m.cfg.Store.Delete(ctx, k))
		}
	}
	for _, k := range logs {
		errs = append(errs, m.cfg.Store.Delete(ctx, k))
	}
	return errors.Join(errs...)
}

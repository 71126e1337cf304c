// Package snaplog keeps one journal log (internal/journal) short by
// folding it into a series of snapshots, and loads it back: the newest
// snapshot plus the objects after it. The lease journal and the
// notification outbox of each exchange are such logs.
//
// A snapshot is folded from the journal objects as stored, never from a
// service's memory: memory may hold a change whose write is still in
// flight or will fail, and a snapshot must say exactly what the objects it
// replaces said. Snapshots are named {Snaps}{gen:020d}.json, gen counting
// up from 1, and written with Create: of two processes folding one log
// (an owner that was replaced and has not noticed, and its successor) only
// one writes each generation, and a snapshot the replaced owner writes is
// correct, merely old. Only after a snapshot is written are the objects it
// covers deleted: data objects before its boundary (never a control
// object such as a fence, never the boundary object itself), in key
// order; a failure stops the deletion, and the next compaction goes on
// from there. A load that such a deletion disturbs (an object gone from
// under its replay, or a newer snapshot once it is done) reads again from
// the newer snapshot, which the deleting process wrote first. Compaction
// streams the objects it folds (journal.Replay), so it holds no more of
// them in memory at once than a load does.
//
// In a fenced journal the boundary is a slot key and a load replays only
// the objects after it. Otherwise (one writer, objects named by time) a
// load replays every object left, so a state's Apply must tolerate seeing
// an object of the snapshot again after a deletion failed part way (or
// the process stopped during one): the objects left are then a suffix of
// the folded ones, in key order.
package snaplog

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// State is what a log says, folded. A service provides it.
type State interface {
	// Apply folds one decoded journal object into the state; objects come
	// in key order.
	Apply(key string, v any) error
	// Snapshot encodes the state as a snapshot's payload.
	Snapshot() ([]byte, error)
}

// Config describes one log.
type Config struct {
	// Store holds the log and its snapshots. Required.
	Store storage.Store
	// Journal writes the log. Required.
	Journal *journal.Journal
	// Fence is the journal's Fence, nil for an unfenced journal. A log
	// under a Fence that is no longer Valid writes and deletes nothing.
	Fence storage.Fence
	// Log is the journal partition. Required.
	Log string
	// Snaps is the key prefix of the snapshots, ending in "/". Required.
	Snaps string
	// Base returns the state a snapshot's payload holds, or, for nil, the
	// state before any snapshot. It must return a fresh value each time.
	// Required.
	Base func(payload []byte) (State, error)
	// Decode turns one journal object (never a control object) into what
	// State.Apply takes. It runs concurrently on different objects.
	// Required.
	Decode func(key string, data []byte) (any, error)
}

// Log is one log and its snapshots. Load, then Compact from time to time;
// Touch on every append. Its methods are safe for concurrent use, one
// Load or Compact running at a time.
type Log struct {
	cfg     Config
	touched atomic.Uint64

	mu       sync.Mutex
	folded   uint64    // touched when the last compaction began
	snap     snapState // the newest snapshot known
	leftover []string  // covered objects a failed deletion left, in order
}

// snapState is the newest snapshot as far as this process knows.
type snapState struct {
	known    bool // false: read the store to find out
	key      string
	gen      uint64
	boundary string
	payload  []byte // nil: there is none
}

// stored is a snapshot object.
type stored struct {
	// Boundary is the last log key the snapshot covers (in an unfenced
	// journal, a key sorting after every object it covers).
	Boundary string          `json:"boundary"`
	State    json.RawMessage `json:"state"`
}

// New checks cfg and returns the log, not yet loaded.
func New(cfg Config) (*Log, error) {
	if cfg.Store == nil || cfg.Journal == nil || cfg.Base == nil || cfg.Decode == nil {
		return nil, errors.New("snaplog: Config.Store, Journal, Base and Decode are required")
	}
	if err := storage.ValidKey(cfg.Log); err != nil {
		return nil, fmt.Errorf("snaplog: Config.Log: %w", err)
	}
	if !strings.HasSuffix(cfg.Snaps, "/") || storage.ValidPrefix(cfg.Snaps) != nil {
		return nil, fmt.Errorf("snaplog: Config.Snaps %q is not a key prefix ending in /", cfg.Snaps)
	}
	return &Log{cfg: cfg}, nil
}

// Touch records an append to the log, so that Compact folds it.
func (l *Log) Touch() { l.touched.Add(1) }

// maxAttempts bounds how often Load starts again because another process
// compacted the log under it.
const maxAttempts = 10

// Load fences the log (journal Open, after the newest snapshot's
// boundary) and returns its state: that snapshot plus every object after
// it. A caller under a Fence claims the log's exchange first.
func (l *Log) Load(ctx context.Context) (State, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	opened := false
	for attempt := 1; ; attempt++ {
		snap, err := l.latest(ctx)
		if err != nil {
			return nil, err
		}
		after := l.after(snap)
		if !opened {
			if err := l.cfg.Journal.Open(ctx, l.cfg.Log, after); err != nil {
				return nil, fmt.Errorf("snaplog: open %s: %w", l.cfg.Log, err)
			}
			opened = true
		}
		st, err := l.cfg.Base(snap.payload)
		if err != nil {
			return nil, fmt.Errorf("snaplog: %s: %w", snap.key, err)
		}
		tail := false
		err = journal.Replay(ctx, l.cfg.Store, journal.ReplayConfig{
			Prefix: l.cfg.Log + "/",
			After:  after,
			Decode: l.cfg.Decode,
			Apply: func(key string, v any) error {
				tail = true
				return st.Apply(key, v)
			},
		})
		if errors.Is(err, storage.ErrNotFound) && attempt < maxAttempts {
			continue // compacted meanwhile: read the newer snapshot
		}
		if err != nil {
			return nil, fmt.Errorf("snaplog: replay %s: %w", l.cfg.Log, err)
		}
		again, err := l.latest(ctx)
		if err != nil {
			return nil, err
		}
		if again.key != snap.key {
			if attempt < maxAttempts {
				continue
			}
			return nil, fmt.Errorf("snaplog: the snapshots of %s keep changing while it loads", l.cfg.Log)
		}
		l.snap = snap
		if tail {
			l.touched.Add(1) // fold what the log held at the next compaction
		}
		return st, nil
	}
}

// after is where a load replays from: the snapshot's boundary in a fenced
// log, where slot keys sort in write order; else everything left.
func (l *Log) after(snap snapState) string {
	if journal.IsSlot(l.cfg.Log, snap.boundary) {
		return snap.boundary
	}
	return ""
}

// latest finds the newest snapshot in the store.
func (l *Log) latest(ctx context.Context) (snapState, error) {
	for attempt := 1; ; attempt++ {
		last := ""
		var gen uint64
		for k, err := range storage.Keys(ctx, l.cfg.Store, l.cfg.Snaps) {
			if err != nil {
				return snapState{}, fmt.Errorf("snaplog: list %s: %w", l.cfg.Snaps, err)
			}
			name, ok := strings.CutSuffix(k[len(l.cfg.Snaps):], ".json")
			n, err := strconv.ParseUint(name, 10, 64)
			if ok && err == nil && len(name) == 20 {
				last, gen = k, n
			}
		}
		if last == "" {
			return snapState{known: true}, nil
		}
		obj, err := l.cfg.Store.Get(ctx, last)
		if errors.Is(err, storage.ErrNotFound) && attempt < maxAttempts {
			continue // replaced by a newer one meanwhile
		}
		if err != nil {
			return snapState{}, fmt.Errorf("snaplog: read %s: %w", last, err)
		}
		var sn stored
		if err := json.Unmarshal(obj.Data, &sn); err != nil {
			return snapState{}, fmt.Errorf("snaplog: decode %s: %w", last, err)
		}
		payload := []byte(sn.State)
		if payload == nil {
			payload = []byte("null")
		}
		return snapState{known: true, key: last, gen: gen, boundary: sn.Boundary, payload: payload}, nil
	}
}

// Compact folds the objects written since the newest snapshot into the
// next one and deletes what it covers. It does nothing if nothing was
// appended since the last compaction, or under a Fence no longer Valid.
func (l *Log) Compact(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.invalid() != nil {
		return nil
	}
	touched := l.touched.Load()
	if touched == l.folded {
		return nil
	}
	// Every line queued before the seal is in an object at or before the
	// boundary: in a fenced journal the log's last slot; otherwise a key
	// after every object written so far.
	bound, err := l.cfg.Journal.Seal(ctx, l.cfg.Log)
	if err != nil {
		return fmt.Errorf("snaplog: seal %s: %w", l.cfg.Log, err)
	}
	if !l.snap.known {
		if l.snap, err = l.latest(ctx); err != nil {
			return err
		}
	}
	prev := l.snap
	prevSlot := l.after(prev)
	fenced := l.cfg.Fence != nil
	// Objects an unfenced writer left in a log now fenced (moved from a
	// directory to a bucket, say) sort after every slot, and are folded
	// wherever they sort.
	folds := func(k string) bool { return k <= bound || (fenced && !journal.IsSlot(l.cfg.Log, k)) }
	st, err := l.cfg.Base(prev.payload)
	if err != nil {
		return fmt.Errorf("snaplog: %s: %w", prev.key, err)
	}
	var data []string // folded data objects, in key order
	err = journal.Replay(ctx, l.cfg.Store, journal.ReplayConfig{
		Prefix: l.cfg.Log + "/",
		After:  prevSlot,
		Decode: func(k string, b []byte) (any, error) {
			if !folds(k) {
				return nil, nil
			}
			return l.cfg.Decode(k, b)
		},
		Apply: func(k string, v any) error {
			if !folds(k) {
				return nil
			}
			data = append(data, k)
			return st.Apply(k, v)
		},
	})
	if err != nil {
		l.snap.known = false // compacted by another process meanwhile, perhaps
		return fmt.Errorf("snaplog: fold %s: %w", l.cfg.Log, err)
	}
	var covered []string
	if len(data) > 0 {
		written, err := l.write(ctx, st, bound)
		if err != nil || !written {
			return err
		}
		// prev's boundary is a boundary no more; it may be a fence, though.
		if prevSlot != "" {
			if obj, err := l.cfg.Store.Get(ctx, prevSlot); err == nil && !journal.IsControl(obj.Data) {
				covered = append(covered, prevSlot)
			}
		}
		for _, k := range data {
			if k < bound || (fenced && !journal.IsSlot(l.cfg.Log, k)) {
				covered = append(covered, k)
			}
		}
		for k, err := range storage.Keys(ctx, l.cfg.Store, l.cfg.Snaps) {
			if err != nil {
				return fmt.Errorf("snaplog: list %s: %w", l.cfg.Snaps, err)
			}
			if k >= l.snap.key {
				break
			}
			covered = append(covered, k)
		}
	}
	if err := l.deleteCovered(ctx, append(l.leftover, covered...)); err != nil {
		return err
	}
	l.folded = touched
	return nil
}

// deleteCovered deletes objects a written snapshot covers (never a
// control object), in order, stopping at the first failure: the rest are
// kept for the next compaction to try again.
func (l *Log) deleteCovered(ctx context.Context, keys []string) error {
	for i, k := range keys {
		err := l.invalid()
		if err == nil {
			err = l.cfg.Store.Delete(ctx, k)
		}
		if err != nil {
			l.leftover = slices.Clone(keys[i:])
			return fmt.Errorf("snaplog: delete %s: %w", k, err)
		}
	}
	l.leftover = nil
	return nil
}

// write creates the next snapshot. written is false when another process
// wrote that generation first; the next compaction reads it.
func (l *Log) write(ctx context.Context, st State, bound string) (written bool, err error) {
	payload, err := st.Snapshot()
	if err != nil {
		return false, err
	}
	data, err := json.Marshal(stored{Boundary: bound, State: payload})
	if err != nil {
		return false, err
	}
	gen := l.snap.gen + 1
	name := fmt.Sprintf("%s%020d.json", l.cfg.Snaps, gen)
	if err := l.invalid(); err != nil {
		return false, err
	}
	if _, err := l.cfg.Store.Create(ctx, name, data); err != nil {
		// Taken, or perhaps written although the answer was lost: either
		// way the store now says which snapshot is the newest.
		l.snap = snapState{}
		if errors.Is(err, storage.ErrExists) {
			return false, nil
		}
		return false, fmt.Errorf("snaplog: write %s: %w", name, err)
	}
	l.snap = snapState{known: true, key: name, gen: gen, boundary: bound, payload: payload}
	return true, nil
}

func (l *Log) invalid() error {
	if l.cfg.Fence == nil {
		return nil
	}
	return l.cfg.Fence.Valid()
}

package lease

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// compactParallel is how many exchanges compact at once.
const compactParallel = 8

// compact folds the journal of every exchange written since its last
// compaction into a new snapshot and deletes the objects that snapshot
// covers. It runs every Config.CompactInterval and at Close. An owner
// that may have been replaced compacts nothing.
func (m *Manager) compact(ctx context.Context) error {
	m.compactMu.Lock()
	defer m.compactMu.Unlock()
	if m.cfg.Fence != nil && m.cfg.Fence.Valid() != nil {
		return nil
	}
	var dirty []*exchange
	m.xs.Range(func(_, v any) bool {
		ex := v.(*exchange)
		select {
		case <-ex.ready:
			if ex.err == nil && ex.appended.Load() != ex.folded {
				dirty = append(dirty, ex)
			}
		default: // still loading
		}
		return true
	})
	sem := make(chan struct{}, compactParallel)
	errs := make([]error, len(dirty))
	var wg sync.WaitGroup
	for i, ex := range dirty {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = m.compactExchange(ctx, ex)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// compactExchange writes ex's next snapshot: its newest snapshot plus the
// journal objects after that snapshot's boundary, up to a new boundary.
//
// The snapshot is built from the objects as stored, so it says exactly
// what they said (see durable.go). It is written with Create under the
// next generation's name; if that name is taken, another process has
// compacted this exchange and this one gives up until it has read the
// newer snapshot. Only after the snapshot is written are the objects it
// covers deleted: data objects strictly before the boundary, in key order,
// stopping at the first failure, so that whatever a failure leaves is a
// suffix that applies again without harm. Fences and the boundary object
// are never deleted.
func (m *Manager) compactExchange(ctx context.Context, ex *exchange) error {
	appended := ex.appended.Load()
	// Every record queued before the seal is in an object at or before
	// the boundary: in a fenced journal the log's last slot; otherwise a
	// key after every object written so far.
	bound, err := m.j.Seal(ctx, ex.log)
	if err != nil {
		return fmt.Errorf("lease: seal the journal of %s: %w", ex.id, err)
	}
	if !ex.snap.known {
		if ex.snap, err = m.latestSnapshot(ctx, ex); err != nil {
			return err
		}
	}
	prev := ex.snap
	prevSlot := ""
	if prev.sn != nil && isSlot(ex.log, prev.sn.Boundary) {
		prevSlot = prev.sn.Boundary
	}
	fenced := m.cfg.Fence != nil
	var keys []string
	for k, err := range storage.Keys(ctx, m.cfg.Store, ex.log+"/") {
		if err != nil {
			return fmt.Errorf("lease: list the journal of %s: %w", ex.id, err)
		}
		// Objects an unfenced writer left in a log now fenced (moved from
		// a directory to a bucket, say) sort after every slot, and are
		// folded wherever they sort.
		if ex.controls[k] || (k > bound && (!fenced || isSlot(ex.log, k))) {
			continue
		}
		keys = append(keys, k)
	}
	datas, err := getAll(ctx, m.cfg.Store, keys)
	if err != nil {
		ex.snap.known = false // compacted by another process meanwhile
		return fmt.Errorf("lease: read the journal of %s: %w", ex.id, err)
	}
	st := m.base(ex.id, prev.sn)
	var data []string
	folded := false
	for i, k := range keys {
		if journal.IsControl(datas[i]) {
			ex.controls[k] = true
			continue
		}
		data = append(data, k)
		if prevSlot != "" && isSlot(ex.log, k) && k <= prevSlot {
			continue // covered by prev, its deletion failed or it is prev's boundary
		}
		for _, r := range m.decode(k, datas[i]) {
			if r.Exchange == ex.id {
				st.apply(r)
			}
		}
		folded = true
	}
	boundary := prevSlot
	if folded {
		boundary = bound
		if err := m.writeSnapshot(ctx, ex, st, bound); err != nil {
			return err
		}
		if !ex.snap.known {
			return nil // another process wrote this generation: read it next time
		}
	}
	for _, k := range data {
		if k >= boundary && (!fenced || isSlot(ex.log, k)) {
			continue
		}
		if err := m.deleteCovered(ctx, k); err != nil {
			return fmt.Errorf("lease: delete %s: %w", k, err)
		}
	}
	if folded {
		for k, err := range storage.Keys(ctx, m.cfg.Store, ex.snapDir) {
			if err != nil {
				return fmt.Errorf("lease: list the snapshots of %s: %w", ex.id, err)
			}
			if k >= ex.snap.key {
				break
			}
			if err := m.deleteCovered(ctx, k); err != nil {
				return fmt.Errorf("lease: delete %s: %w", k, err)
			}
		}
	}
	ex.folded = appended
	return nil
}

// writeSnapshot creates ex's next snapshot from st, covering the journal
// up to bound, and records it in ex.snap. If the generation's name is
// taken, ex.snap becomes unknown and nothing is returned.
func (m *Manager) writeSnapshot(ctx context.Context, ex *exchange, st *replayState, bound string) error {
	now := m.cfg.Now().UnixMilli()
	sn := snapshot{Next: st.maxT + 1, Boundary: bound, Leases: []record{}}
	for _, r := range st.live {
		if r.Deadline > now {
			sn.Leases = append(sn.Leases, r)
		}
	}
	sort.Slice(sn.Leases, func(i, j int) bool { return sn.Leases[i].Name < sn.Leases[j].Name })
	data, err := json.Marshal(sn)
	if err != nil {
		return err
	}
	gen := ex.snap.gen + 1
	name := ex.snapKey(gen)
	if m.cfg.Fence != nil {
		if err := m.cfg.Fence.Valid(); err != nil {
			return err
		}
	}
	if _, err := m.cfg.Store.Create(ctx, name, data); err != nil {
		// Taken, or perhaps written although the answer was lost: either
		// way the store now says what the newest snapshot is.
		ex.snap = snapState{}
		if errors.Is(err, storage.ErrExists) {
			return nil
		}
		return fmt.Errorf("lease: write snapshot %s: %w", name, err)
	}
	ex.snap = snapState{known: true, key: name, gen: gen, sn: &sn}
	return nil
}

// deleteCovered deletes an object a written snapshot covers, unless this
// process may have been replaced: a successor loading the exchange copes
// with such deletions (it reads the newer snapshot again), but there is
// no need to make it.
func (m *Manager) deleteCovered(ctx context.Context, key string) error {
	if m.cfg.Fence != nil {
		if err := m.cfg.Fence.Valid(); err != nil {
			return err
		}
	}
	return m.cfg.Store.Delete(ctx, key)
}

// getAll reads keys, a few at a time.
func getAll(ctx context.Context, store storage.Store, keys []string) ([][]byte, error) {
	out := make([][]byte, len(keys))
	errs := make([]error, len(keys))
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	for i, k := range keys {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			obj, err := store.Get(ctx, k)
			out[i], errs[i] = obj.Data, err
		})
	}
	wg.Wait()
	return out, errors.Join(errs...)
}

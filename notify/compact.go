package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/meatspace-exchange/mess/storage"
)

const snapshotKey = "notify/snapshot.json"

// snapshot is the outbox folded up to journal object LastKey.
type snapshot struct {
	LastKey  string               `json:"last_key"`
	Since    time.Time            `json:"since"`
	Pending  []Delivery           `json:"pending"`
	Known    map[string]time.Time `json:"known"`
	Marks    map[string]snapMark  `json:"marks"`
	Failures map[string][]Failure `json:"failures"`
}

type snapMark struct {
	EventID string    `json:"event_id"`
	TS      time.Time `json:"ts"`
}

func (s *Service) loadSnapshot(ctx context.Context) (string, error) {
	obj, err := s.cfg.Store.Get(ctx, snapshotKey)
	if errors.Is(err, storage.ErrNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("notify: read snapshot: %w", err)
	}
	var snap snapshot
	if err := json.Unmarshal(obj.Data, &snap); err != nil {
		return "", fmt.Errorf("notify: decode snapshot: %w", err)
	}
	s.since = snap.Since
	for _, d := range snap.Pending {
		s.addEntryLocked(d)
	}
	for k, v := range snap.Known {
		s.known[k] = v
	}
	for x, m := range snap.Marks {
		s.marks[x] = mark{m.EventID, m.TS}
	}
	for k, v := range snap.Failures {
		s.failures[k] = v
	}
	return snap.LastKey, nil
}

// compact folds the journal into the snapshot and deletes the objects it
// covers. Writers hold compactMu shared across "record, then apply" (or
// "apply, then record"), so under the exclusive lock every listed object
// is reflected in memory; the journal is sealed first, so no listed object
// gets more records.
func (s *Service) compact(ctx context.Context) error {
	s.compactMu.Lock()
	bound, err := s.jr.Seal(ctx, outboxPartition)
	if err != nil {
		s.compactMu.Unlock()
		return err
	}
	var keys []string
	for k, err := range storage.Keys(ctx, s.cfg.Store, outboxPartition+"/") {
		if err != nil {
			s.compactMu.Unlock()
			return err
		}
		if k >= bound {
			break // keys come in order; later ones are not sealed
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		s.compactMu.Unlock()
		return nil
	}
	s.mu.Lock()
	snap := snapshot{LastKey: keys[len(keys)-1], Since: s.since, Known: make(map[string]time.Time, len(s.known)),
		Marks: make(map[string]snapMark, len(s.marks)), Failures: make(map[string][]Failure, len(s.failures))}
	for _, e := range s.pending {
		snap.Pending = append(snap.Pending, e.d)
	}
	for k, v := range s.known {
		snap.Known[k] = v
	}
	for x, m := range s.marks {
		snap.Marks[x] = snapMark{m.eventID, m.ts}
	}
	for k, v := range s.failures {
		snap.Failures[k] = v
	}
	s.mu.Unlock()
	s.compactMu.Unlock()
	data, err := json.Marshal(snap)
	if err != nil {
		return err
	}
	if _, err := s.cfg.Store.Put(ctx, snapshotKey, data); err != nil {
		return err
	}
	for _, k := range keys {
		if err := s.cfg.Store.Delete(ctx, k); err != nil && !errors.Is(err, storage.ErrNotFound) {
			return err
		}
	}
	return nil
}

func (s *Service) compactor() {
	defer s.wg.Done()
	if s.cfg.CompactInterval < 0 {
		return
	}
	t := time.NewTicker(s.cfg.CompactInterval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			if err := s.compact(context.Background()); err != nil {
				s.log.Error("notify: compact outbox", "err", err)
			}
		case <-s.stop:
			return
		}
	}
}

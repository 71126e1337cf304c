package notify

import (
	"context"
	"errors"
	"sync"
	"time"
)

// snapshot is the payload of an outbox snapshot (see internal/snaplog):
// one exchange's state, or in the old layout (notify/snapshot.json) every
// exchange's, folded up to journal object LastKey.
type snapshot struct {
	LastKey  string               `json:"last_key,omitempty"` // the old layout only
	Since    time.Time            `json:"since,omitzero"`     // the old layout only
	Pending  []Delivery           `json:"pending"`
	Known    map[string]time.Time `json:"known"`
	Marks    map[string]snapMark  `json:"marks"`
	Failures map[string][]Failure `json:"failures"`
}

type snapMark struct {
	EventID string    `json:"event_id"`
	TS      time.Time `json:"ts"`
}

// compactParallel is how many outboxes compact at once.
const compactParallel = 8

// compact folds every outbox journal written since its last compaction
// into its next snapshot and deletes the objects that covers. Snapshots
// are folded from the journal as stored, never from memory
// (internal/snaplog), so writers need no lock against compaction.
func (s *Service) compact(ctx context.Context) error {
	s.compactMu.Lock()
	defer s.compactMu.Unlock()
	var obs []*outbox
	s.outboxes.Range(func(_, v any) bool {
		ob := v.(*outbox)
		select {
		case <-ob.ready:
			if ob.err == nil {
				obs = append(obs, ob)
			}
		default: // still loading
		}
		return true
	})
	sem := make(chan struct{}, compactParallel)
	errs := make([]error, len(obs))
	var wg sync.WaitGroup
	for i, ob := range obs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = ob.log.Compact(ctx)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
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

package lease

import (
	"context"
	"errors"
	"sync"
)

// compactParallel is how many exchanges compact at once.
const compactParallel = 8

// compact folds the journal of every exchange written since its last
// compaction into its next snapshot and deletes what that covers
// (internal/snaplog). It runs every Config.CompactInterval and at Close.
func (m *Manager) compact(ctx context.Context) error {
	m.compactMu.Lock()
	defer m.compactMu.Unlock()
	var exs []*exchange
	m.xs.Range(func(_, v any) bool {
		ex := v.(*exchange)
		select {
		case <-ex.ready:
			if ex.err == nil {
				exs = append(exs, ex)
			}
		default: // still loading
		}
		return true
	})
	sem := make(chan struct{}, compactParallel)
	errs := make([]error, len(exs))
	var wg sync.WaitGroup
	for i, ex := range exs {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			errs[i] = ex.log.Compact(ctx)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

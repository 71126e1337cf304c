package mess

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/meatspace-exchange/mess/storage"
)

// load rebuilds state: exchange records, executor profiles and the event
// log (through snapshots, see snapshot.go), all three at once and each
// with a bounded number of reads in flight. Lines that do not parse (a
// torn write, a stray edit) are skipped and counted, never fatal.
func (s *Service) load(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, step := range []func(context.Context) error{s.loadRecords, s.loadExecutors, s.loadEvents} {
		wg.Go(func() {
			if errs[i] = step(ctx); errs[i] != nil {
				cancel()
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil && !errors.Is(err, context.Canceled) {
			return err
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if s.cfg.Fence != nil {
		return s.fenceRest(ctx)
	}
	return nil
}

// fenceRest claims and fences the exchanges whose event logs the load did
// not (those with a record but no events yet, and the open exchanges),
// then loads anything a replaced owner wrote to them meanwhile.
func (s *Service) fenceRest(ctx context.Context) error {
	ids := map[string]bool{}
	for id := range s.openSet {
		ids[id] = true
	}
	for _, ex := range s.allExchanges() {
		ids[ex.id] = true
	}
	work := make(chan string)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var firstErr error
	for range min(loadParallel, len(ids)) {
		wg.Go(func() {
			for id := range work {
				if _, done := s.fenced.Load(id); done {
					continue
				}
				if _, err := s.loadExchangeEvents(ctx, id, nil); err != nil {
					mu.Lock()
					firstErr = cmp.Or(firstErr, err)
					mu.Unlock()
				}
			}
		})
	}
	for id := range ids {
		work <- id
	}
	close(work)
	wg.Wait()
	return firstErr
}

func (s *Service) loadRecords(ctx context.Context) error {
	return s.eachObject(ctx, "exchanges/", func(key string, obj storage.Object) error {
		var m exchangeMeta
		if err := json.Unmarshal(obj.Data, &m); err != nil || !ValidID(m.ID) {
			s.log.Warn("skip unreadable exchange record", "key", key, "err", err)
			return nil
		}
		ex := s.exchange(m.ID, true)
		ex.mu.Lock()
		ex.meta, ex.metaVersion = &m, obj.Version
		ex.mu.Unlock()
		s.nExchanges.Add(1)
		return nil
	})
}

func (s *Service) loadExecutors(ctx context.Context) error {
	return s.eachObject(ctx, "executors/", func(key string, obj storage.Object) error {
		// executors/exchange={x}/{id}.json
		parts := strings.Split(key, "/")
		if len(parts) != 3 || !strings.HasPrefix(parts[1], "exchange=") || !strings.HasSuffix(parts[2], ".json") {
			return nil
		}
		exID := strings.TrimPrefix(parts[1], "exchange=")
		var e Executor
		if err := json.Unmarshal(obj.Data, &e); err != nil || !ValidID(exID) || e.ID+".json" != parts[2] {
			s.log.Warn("skip unreadable executor", "key", key, "err", err)
			return nil
		}
		rec := &executorRec{Executor: e, version: obj.Version, caps: capabilityIDs(e.Capabilities)}
		s.addExecutor(s.exchange(exID, true), rec)
		return nil
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// objectReaders bounds the objects eachObject reads at once.
const objectReaders = 16

// eachObject calls fn with every object under prefix, from several
// goroutines at once. Objects deleted while it runs are skipped.
func (s *Service) eachObject(ctx context.Context, prefix string, fn func(string, storage.Object) error) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	keys := make(chan string)
	var wg sync.WaitGroup
	for range objectReaders {
		wg.Go(func() {
			for k := range keys {
				obj, err := s.store.Get(ctx, k)
				if errors.Is(err, storage.ErrNotFound) {
					continue
				} else if err != nil {
					cancel(fmt.Errorf("mess: read %s: %w", k, err))
				} else if err := fn(k, obj); err != nil {
					cancel(err)
				}
			}
		})
	}
	var listErr error
	for k, err := range storage.Keys(ctx, s.store, prefix) {
		if err != nil {
			listErr = fmt.Errorf("mess: list %s: %w", prefix, err)
			break
		}
		select {
		case keys <- k:
			continue
		case <-ctx.Done():
		}
		break
	}
	close(keys)
	wg.Wait()
	if err := context.Cause(ctx); err != nil {
		return err
	}
	return listErr
}

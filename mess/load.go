package mess

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// load rebuilds state: exchange records and executor profiles first, then
// the event log. Lines that do not parse (a torn write, a stray edit) are
// skipped and counted, never fatal.
func (s *Service) load(ctx context.Context) error {
	if err := s.eachObject(ctx, "exchanges/", func(key string, obj storage.Object) error {
		var m exchangeMeta
		if err := json.Unmarshal(obj.Data, &m); err != nil || !ValidID(m.ID) {
			s.log.Warn("skip unreadable exchange record", "key", key, "err", err)
			return nil
		}
		ex := s.exchange(m.ID, true)
		ex.meta, ex.metaVersion = &m, obj.Version
		s.nExchanges.Add(1)
		return nil
	}); err != nil {
		return err
	}
	if err := s.eachObject(ctx, "executors/", func(key string, obj storage.Object) error {
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
	}); err != nil {
		return err
	}
	if s.cfg.Fence != nil {
		if err := s.fenceLogs(ctx); err != nil {
			return err
		}
	}
	type decodedLine struct {
		ev Event
		p  any
	}
	var skipped, torn int
	err := journal.Replay(ctx, s.store, journal.ReplayConfig{
		Prefix: "events/",
		Decode: func(key string, data []byte) (any, error) {
			lines, tail := journal.Lines(data)
			out := make([]decodedLine, 0, len(lines))
			bad := 0
			for _, l := range lines {
				ev, p, err := decodeLine(l)
				if err != nil || !ValidID(ev.ExchangeID) {
					bad++
					continue
				}
				out = append(out, decodedLine{ev, p})
			}
			return struct {
				lines     []decodedLine
				bad, torn int
			}{out, bad, btoi(tail != nil)}, nil
		},
		Apply: func(key string, v any) error {
			r := v.(struct {
				lines     []decodedLine
				bad, torn int
			})
			skipped += r.bad
			torn += r.torn
			for i := range r.lines {
				d := &r.lines[i]
				ex := s.exchange(d.ev.ExchangeID, true)
				s.applyLocked(ex, &d.ev, d.p)
				ex.pushEventLocked(d.ev, s.cfg.EventBuffer, s.cfg.EventBufferBytes)
				ex.version++
			}
			return nil
		},
	})
	if err != nil {
		return fmt.Errorf("mess: replay events: %w", err)
	}
	if skipped > 0 || torn > 0 {
		s.log.Warn("event log had unreadable lines; skipped them", "malformed", skipped, "torn", torn)
	}
	return nil
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// eachObject calls fn with every object under prefix, in key order.
// Objects deleted while it runs are skipped.
func (s *Service) eachObject(ctx context.Context, prefix string, fn func(string, storage.Object) error) error {
	for k, err := range storage.Keys(ctx, s.store, prefix) {
		if err != nil {
			return fmt.Errorf("mess: list %s: %w", prefix, err)
		}
		obj, err := s.store.Get(ctx, k)
		if errors.Is(err, storage.ErrNotFound) {
			continue
		} else if err != nil {
			return fmt.Errorf("mess: read %s: %w", k, err)
		}
		if err := fn(k, obj); err != nil {
			return err
		}
	}
	return nil
}

// fenceLogs claims every known exchange and fences its event log, so the
// replay that follows sees every write a replaced owner made and that
// owner can make no more. Exchanges are fenced in parallel.
func (s *Service) fenceLogs(ctx context.Context) error {
	ids := map[string]bool{}
	for id := range s.openSet {
		ids[id] = true
	}
	for id := range s.exchanges {
		ids[id] = true
	}
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(16)
	for id := range ids {
		g.Go(func() error {
			if err := s.cfg.Fence.Claim(ctx, id); err != nil {
				return fmt.Errorf("mess: claim exchange %s: %w", id, err)
			}
			if err := s.journal.Open(ctx, eventLog(id), ""); err != nil {
				return fmt.Errorf("mess: fence the events of %s: %w", id, err)
			}
			return nil
		})
	}
	return g.Wait()
}

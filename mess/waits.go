package mess

// Waiting for change: the exchange's version, a thread's seq and the
// buffer of recent events that long-polls and event streams read.

import (
	"context"
	"slices"
)

// WaitForChange blocks until the exchange's version passes version (see
// ListResult.Version) or ctx ends, and returns the current version.
func (s *Service) WaitForChange(ctx context.Context, exchangeID string, version uint64) (uint64, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return 0, err
	}
	return s.waitVersion(ctx, ex, version, nil), nil
}

// waitVersion blocks until ex's version passes version, ctx ends, the
// service closes or stop (which may be nil) is closed, and returns the
// current version.
func (s *Service) waitVersion(ctx context.Context, ex *exchange, version uint64, stop <-chan struct{}) uint64 {
	for {
		ex.mu.RLock()
		v, ch := ex.version, ex.changed
		ex.mu.RUnlock()
		if v > version || s.closed.Load() {
			return v
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return v
		case <-stop:
			return v
		}
	}
}

// Version returns the exchange's current change counter.
func (s *Service) Version(exchangeID string) uint64 {
	ex := s.exchange(exchangeID, false)
	if ex == nil {
		return 0
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	return ex.version
}

// WaitThread blocks until the thread's seq passes afterSeq or ctx ends.
func (s *Service) WaitThread(ctx context.Context, exchangeID, ref string, afterSeq int64) error {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return err
	}
	return s.waitThread(ctx, ex, ref, afterSeq, nil)
}

// waitThread is WaitThread that also ends when stop (which may be nil) is
// closed.
func (s *Service) waitThread(ctx context.Context, ex *exchange, ref string, afterSeq int64, stop <-chan struct{}) error {
	for {
		ex.mu.RLock()
		t := ex.threads[ref]
		ch := ex.changed
		var seq int64
		ok := t != nil && t.ready
		if ok {
			seq = t.Seq
		}
		ex.mu.RUnlock()
		if !ok {
			return errorf(ErrNotFound, "Thread not found")
		}
		if seq > afterSeq || s.closed.Load() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		case <-stop:
			return nil
		}
	}
}

// EventsAfter returns the exchange's buffered events that follow
// lastEventID (all buffered events when it is empty), and the version they
// are current to. found is false when lastEventID is no longer buffered, in
// which case the caller should resynchronise from List.
func (s *Service) EventsAfter(exchangeID, lastEventID string) (evs []Event, version uint64, found bool, err error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return nil, 0, false, err
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	ring := ex.ring
	n := len(ring)
	start := -1
	switch {
	case lastEventID == "":
		start = 0
	case n > 0 && lastEventID == ring[n-1].EventID:
		start = n // nothing newer yet
	case n > 0 && lastEventID > ring[n-1].EventID:
		// Newer than anything written (ids are ULIDs from one monotonic
		// source): not an id of this exchange; the client must resync.
	default:
		for i := n - 1; i >= 0; i-- {
			if ring[i].EventID == lastEventID {
				start = i + 1
				break
			}
		}
	}
	if start < 0 {
		return nil, ex.version, false, nil
	}
	return slices.Clone(ring[start:]), ex.version, true, nil
}

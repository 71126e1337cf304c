package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// EventTest is the event type of a test notification: it has no thread and
// no event in the exchange's log; SendTest makes it up.
const EventTest = "notification_test"

var (
	// ErrNoChannels is returned by SendTest for an executor without
	// enabled notification channels.
	ErrNoChannels = errors.New("notify: no notification channels")
	// ErrTestPending is returned by SendTest while an earlier test of the
	// executor is still waiting to be sent, so tests cannot pile up in
	// the outbox.
	ErrTestPending = errors.New("notify: a test notification is still pending")
)

// TestResult is what became of a test notification on one channel.
type TestResult struct {
	// Type is the channel's type (ntfy, slack, ...).
	Type string `json:"type"`
	// Destination is the channel's scheme and host, never its secrets.
	Destination string `json:"destination,omitempty"`
	// Status is sent, failed, or pending (not sent yet; retried later).
	Status string `json:"status"`
	// Error says why it failed or was not sent yet.
	Error string `json:"error,omitempty"`
}

// SendTest sends a test notification now to each enabled notification
// channel of the executor, ignoring its minimum priority and quiet hours.
// The deliveries go through the outbox like any other (recorded first,
// the same address policy, retries), and SendTest waits for their first
// attempts until ctx ends or three send timeouts pass, reporting each.
func (s *Service) SendTest(ctx context.Context, exchangeID, executorID string) ([]TestResult, error) {
	if err := s.serving(ctx, exchangeID); err != nil {
		return nil, err
	}
	p, err := s.src.DeliveryProfile(ctx, exchangeID, executorID)
	if err != nil {
		return nil, err
	}
	var chans []json.RawMessage
	if len(p.Notifications) > 0 && json.Unmarshal(p.Notifications, &chans) != nil {
		return nil, fmt.Errorf("%w: notifications are not a list", ErrInvalidConfig)
	}
	now := s.cfg.Now()
	s.mu.Lock()
	for _, e := range s.pending {
		if e.d.EventType == EventTest && e.d.ExchangeID == exchangeID && e.d.ExecutorID == executorID {
			s.mu.Unlock()
			return nil, ErrTestPending
		}
	}
	s.seq++
	tag := "test-" + strconv.FormatInt(now.UnixNano(), 36) + "-" + strconv.FormatInt(s.seq, 36)
	s.mu.Unlock()
	var ds []Delivery
	for i, ch := range chans[:min(len(chans), s.cfg.MaxChannels)] {
		var t struct {
			Type    string `json:"type"`
			Enabled *bool  `json:"enabled"`
		}
		if json.Unmarshal(ch, &t) != nil || (t.Enabled != nil && !*t.Enabled) {
			continue
		}
		ds = append(ds, Delivery{
			ID: exchangeID + "|" + tag + "|" + executorID + "|n" + strconv.Itoa(i), EventID: tag, EventType: EventTest,
			TS: now, ExchangeID: exchangeID, ExecutorID: executorID, ActorID: executorID,
			Kind: KindNotification, Type: t.Type, Config: ch,
		})
	}
	if len(ds) == 0 {
		return nil, ErrNoChannels
	}
	recs := make([]record, len(ds))
	for i := range ds {
		recs[i] = record{Op: "add", ID: ds[i].ID, D: &ds[i], Exchange: exchangeID, TS: now}
	}
	if err := s.enqueueDeliveries(ctx, recs, ds); err != nil {
		return nil, err
	}
	wait, cancel := context.WithTimeout(ctx, 3*s.cfg.Timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for !s.allTried(ds) {
		select {
		case <-wait.Done():
			return s.testResults(ds), nil
		case <-tick.C:
		}
	}
	return s.testResults(ds), nil
}

func (s *Service) enqueueDeliveries(ctx context.Context, recs []record, ds []Delivery) error {
	if err := s.appendRecords(ctx, recs); err != nil {
		return err
	}
	s.mu.Lock()
	for _, d := range ds {
		s.queueLocked(s.addEntryLocked(d))
	}
	s.mu.Unlock()
	s.wakeScheduler()
	return nil
}

// allTried reports whether each delivery was sent, given up, or tried
// once and is waiting to be tried again.
func (s *Service) allTried(ds []Delivery) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		if e := s.pending[d.ID]; e != nil && (e.inflight || e.attempts == 0) {
			return false
		}
	}
	return true
}

func (s *Service) testResults(ds []Delivery) []TestResult {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]TestResult, len(ds))
	for i, d := range ds {
		r := TestResult{Type: d.Type, Destination: publicDestination(d.Config), Status: "sent"}
		if e := s.pending[d.ID]; e != nil {
			r.Status, r.Error = "pending", e.lastErr
			if r.Error == "" {
				r.Error = "not tried yet"
			}
		} else {
			for _, f := range s.failures[d.ExchangeID+"/"+d.ExecutorID] {
				if f.ID == d.ID {
					r.Status, r.Error = "failed", f.Error
				}
			}
		}
		out[i] = r
	}
	return out
}

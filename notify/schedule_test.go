package notify

import (
	"fmt"
	"testing"
	"time"
)

// newQueueService is a Service with only what the scheduler's queue uses.
func newQueueService() *Service {
	return &Service{
		cfg:         Config{SlackInterval: time.Second, GoogleChatInterval: time.Second},
		pending:     map[string]*entry{},
		groups:      map[string][]*entry{},
		held:        map[string][]*entry{},
		wakes:       map[string]bool{},
		nextAllowed: map[string]time.Time{},
	}
}

func (s *Service) testEntry(id, order, dest string, next time.Time) *entry {
	s.seq++
	e := &entry{d: Delivery{ID: id}, seq: s.seq, order: order, dest: dest, next: next}
	s.pending[id] = e
	s.queueLocked(e)
	return e
}

// Ensure the queue keeps the scheduler's rules: hooks of one group one at
// a time in order, a retry waits for its time, and everything due for a
// rate-limited webhook goes out as one batch at its next slot.
func TestScheduler_queue(t *testing.T) {
	s := newQueueService()
	now := time.Unix(1_800_000_000, 0)
	h1 := s.testEntry("h1", "g", "", time.Time{})
	s.testEntry("h2", "g", "", time.Time{})
	s.testEntry("n1", "", "", now.Add(time.Minute))
	s.testEntry("c1", "", "slack x", time.Time{})
	s.testEntry("c2", "", "slack x", time.Time{})

	jobs, wait := s.dueLocked(now)
	if got := ids(jobs); got != "[h1] [c1 c2]" {
		t.Fatalf("first wake = %s", got)
	}
	if wait != time.Minute { // n1's time: nothing waits for the webhook
		t.Fatalf("wait = %s, want 1m", wait)
	}
	// h1 fails and is retried in 5s; h2 must wait for it.
	h1.inflight, h1.next = false, now.Add(5*time.Second)
	s.timeLocked(h1)
	s.testEntry("c3", "", "slack x", time.Time{})
	if jobs, wait := s.dueLocked(now.Add(500 * time.Millisecond)); len(jobs) != 0 || wait != 500*time.Millisecond {
		t.Fatalf("wake before the slack slot = %s, wait %s; want nothing until the slot", ids(jobs), wait)
	}
	if jobs, _ := s.dueLocked(now.Add(time.Second)); ids(jobs) != "[c3]" {
		t.Fatalf("wake at the slack slot = %s", ids(jobs))
	}
	if jobs, _ := s.dueLocked(now.Add(5 * time.Second)); ids(jobs) != "[h1]" {
		t.Fatalf("wake at h1's retry = %s", ids(jobs))
	}
	delete(s.pending, "h1")
	s.finishedLocked(h1)
	if jobs, _ := s.dueLocked(now.Add(5 * time.Second)); ids(jobs) != "[h2]" {
		t.Fatalf("wake after h1 finished = %s", ids(jobs))
	}
	if jobs, _ := s.dueLocked(now.Add(time.Minute)); ids(jobs) != "[n1]" {
		t.Fatalf("wake at n1's time = %s", ids(jobs))
	}
}

func ids(jobs [][]*entry) string {
	out := ""
	for i, j := range jobs {
		if i > 0 {
			out += " "
		}
		out += "["
		for k, e := range j {
			if k > 0 {
				out += " "
			}
			out += e.d.ID
		}
		out += "]"
	}
	return out
}

// BenchmarkScheduler_wake measures one scheduler wake that hands out one
// delivery, while many others are pending: queued behind it in its hook
// group, or waiting for a retry. It stays O(log n) in the pending count;
// it used to scan every pending delivery.
func BenchmarkScheduler_wake(b *testing.B) {
	for _, pending := range []int{100, 10_000, 100_000} {
		b.Run(fmt.Sprintf("pending=%d", pending), func(b *testing.B) {
			s := newQueueService()
			now := time.Unix(1_800_000_000, 0)
			for i := range pending / 2 {
				s.testEntry(fmt.Sprint("r", i), "", "", now.Add(time.Hour+time.Duration(i)))
			}
			for i := range pending / 2 {
				s.testEntry(fmt.Sprint("g", i), "group", "", time.Time{})
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				jobs, _ := s.dueLocked(now)
				if len(jobs) != 1 {
					b.Fatalf("%d jobs", len(jobs))
				}
				e := jobs[0][0]
				delete(s.pending, e.d.ID)
				s.finishedLocked(e)
				// Keep the group as long as it was.
				s.testEntry(fmt.Sprint("n", i), "group", "", time.Time{})
				i++
			}
		})
	}
}

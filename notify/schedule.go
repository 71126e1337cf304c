package notify

import (
	"container/heap"
	"slices"
	"time"
)

// The scheduler's queue. A wake costs O(log n) for each delivery it hands
// out, however many are pending: every pending delivery is in exactly one
// of these places.
//
//   - timed: in s.timed until its next attempt (e.next), as are the heads
//     of the hook groups;
//   - behind: a hook waiting in s.groups for the hooks before it, of the
//     same executor on the same thread, to finish (they run in order so a
//     "complete" hook sees the id its "create" hook produced);
//   - held: a chat notification that is due while its webhook's rate limit
//     is not, in s.held until the webhook's next slot, when everything held
//     for it goes out as one post;
//   - in flight: with a worker.

// slot is one item of the timed heap: an entry due at at, or, when e is
// nil, the moment dest's rate limit lets the next post through.
type slot struct {
	at   time.Time
	seq  int64
	e    *entry
	dest string
}

type slotHeap []slot

func (h slotHeap) Len() int { return len(h) }
func (h slotHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}
func (h slotHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *slotHeap) Push(x any)   { *h = append(*h, x.(slot)) }
func (h *slotHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = slot{}
	*h = old[:len(old)-1]
	return it
}

// timeLocked puts e in the timed heap for its next attempt.
func (s *Service) timeLocked(e *entry) {
	heap.Push(&s.timed, slot{at: e.next, seq: e.seq, e: e})
}

// queueLocked makes a newly pending entry wait for its turn.
func (s *Service) queueLocked(e *entry) {
	if e.order == "" {
		s.timeLocked(e)
		return
	}
	g := s.groups[e.order]
	s.groups[e.order] = append(g, e)
	if len(g) == 0 {
		s.timeLocked(e)
	}
}

// finishedLocked is called when e, in flight, is delivered or given up:
// the next hook of its group, if any, gets its turn.
func (s *Service) finishedLocked(e *entry) {
	if e.order == "" {
		return
	}
	g := s.groups[e.order]
	if len(g) == 0 || g[0] != e {
		return // not queued (cannot happen: entries are queued when added)
	}
	g[0] = nil
	if g = g[1:]; len(g) == 0 {
		delete(s.groups, e.order)
		return
	}
	s.groups[e.order] = g
	s.timeLocked(g[0])
}

// rebuildQueueLocked queues every pending entry in the order they were
// recorded, after a restart.
func (s *Service) rebuildQueueLocked() {
	all := make([]*entry, 0, len(s.pending))
	for _, e := range s.pending {
		all = append(all, e)
	}
	slices.SortFunc(all, func(a, b *entry) int { return int(a.seq - b.seq) })
	for _, e := range all {
		s.queueLocked(e)
	}
}

// dueLocked takes everything due at now off the queue, marks it in flight
// and returns it as jobs (one entry each, or everything held for one chat
// webhook), with how long until something else falls due.
func (s *Service) dueLocked(now time.Time) (jobs [][]*entry, wait time.Duration) {
	var touched []string
	for len(s.timed) > 0 && !s.timed[0].at.After(now) {
		it := heap.Pop(&s.timed).(slot)
		if it.e == nil {
			delete(s.wakes, it.dest)
			touched = append(touched, it.dest)
			continue
		}
		e := it.e
		if e.dest == "" {
			e.inflight = true
			jobs = append(jobs, []*entry{e})
			continue
		}
		s.held[e.dest] = append(s.held[e.dest], e)
		touched = append(touched, e.dest)
	}
	for _, dest := range touched {
		batch := s.held[dest]
		if len(batch) == 0 {
			continue
		}
		if at := s.nextAllowed[dest]; at.After(now) {
			if !s.wakes[dest] {
				s.wakes[dest] = true
				heap.Push(&s.timed, slot{at: at, dest: dest})
			}
			continue
		}
		delete(s.held, dest)
		slices.SortFunc(batch, func(a, b *entry) int { return int(a.seq - b.seq) })
		for _, e := range batch {
			e.inflight = true
		}
		s.nextAllowed[dest] = now.Add(s.intervalFor(dest))
		jobs = append(jobs, batch)
	}
	wait = time.Hour
	if len(s.timed) > 0 {
		wait = min(wait, s.timed[0].at.Sub(now))
	}
	return jobs, wait
}

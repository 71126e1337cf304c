package notify

import (
	"cmp"
	"slices"
)

// Outcomes of a delivery attempt, as ChannelStats counts them.
const (
	outcomeSent    = "sent"
	outcomeRetried = "retried"
	outcomeFailed  = "failed"
)

type outcomeKey struct{ typ, outcome string }

// ChannelStats are the delivery counts of one channel type ("webhook",
// "email", ...), for monitoring.
type ChannelStats struct {
	// Type is the channel type.
	Type string
	// Pending counts recorded deliveries not yet sent or given up.
	Pending int
	// Sent counts deliveries sent since the process started.
	Sent uint64
	// Retried counts failed attempts that are tried again.
	Retried uint64
	// Failed counts deliveries given up.
	Failed uint64
}

// countLocked adds one outcome; s.mu must be held.
func (s *Service) countLocked(typ, outcome string) {
	if s.outcomes == nil {
		s.outcomes = map[outcomeKey]uint64{}
	}
	s.outcomes[outcomeKey{typ, outcome}]++
}

// ChannelStats returns the counts of every channel type seen, by type.
func (s *Service) ChannelStats() []ChannelStats {
	s.mu.Lock()
	by := map[string]*ChannelStats{}
	get := func(t string) *ChannelStats {
		c := by[t]
		if c == nil {
			c = &ChannelStats{Type: t}
			by[t] = c
		}
		return c
	}
	for _, e := range s.pending {
		get(e.d.Type).Pending++
	}
	for k, n := range s.outcomes {
		c := get(k.typ)
		switch k.outcome {
		case outcomeSent:
			c.Sent = n
		case outcomeRetried:
			c.Retried = n
		case outcomeFailed:
			c.Failed = n
		}
	}
	s.mu.Unlock()
	out := make([]ChannelStats, 0, len(by))
	for _, c := range by {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b ChannelStats) int { return cmp.Compare(a.Type, b.Type) })
	return out
}

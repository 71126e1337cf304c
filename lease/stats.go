package lease

// Stats are a Manager's gauges and counters, for monitoring.
type Stats struct {
	// Held counts leases live now.
	Held int
	// Waiters counts AcquireWait calls queued for a held lease.
	Waiters int
	// Expired counts leases that ran out without being released or
	// renewed (seen when next acquired, handed on or swept).
	Expired uint64
}

// Stats walks the shards under their locks, one at a time: a scrape costs
// the hot path nothing but a brief wait on one shard.
func (m *Manager) Stats() Stats {
	var st Stats
	for i := range m.shards {
		s := &m.shards[i]
		s.mu.Lock()
		now := m.cfg.Now()
		for _, e := range s.m {
			if e.live(now) {
				st.Held++
			}
			st.Waiters += len(e.waiters)
		}
		s.mu.Unlock()
	}
	st.Expired = m.expired.Load()
	return st
}

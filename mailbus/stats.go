package mailbus

// Stats are the bus's gauges, read at the time of the call, for monitoring.
type Stats struct {
	// Exchanges counts exchanges loaded in memory.
	Exchanges int
	// Agents counts agents known in those exchanges.
	Agents int
	// Connections counts live sessions (WebSocket connections and local
	// clients).
	Connections int
	// InboxDepth counts durable inbox messages not yet handed to a
	// session, over every agent.
	InboxDepth uint64
	// AwaitingAck counts delivered ackRequired messages not yet
	// acknowledged.
	AwaitingAck int
	// Redeliveries counts overdue ackRequired messages queued to be sent
	// again.
	Redeliveries int
	// Delivered counts messages (live, stored and redelivered) handed to
	// sessions since the bus started; one message to N sessions counts N.
	Delivered uint64
	// Redelivered counts the redeliveries among them.
	Redelivered uint64
}

// Stats walks the loaded exchanges, taking each lock briefly: a scrape
// costs the message path nothing but a short wait.
func (b *Bus) Stats() Stats {
	b.mu.Lock()
	exs := make([]*exchange, 0, len(b.exs))
	for _, ex := range b.exs {
		exs = append(exs, ex)
	}
	b.mu.Unlock()
	st := Stats{Delivered: b.delivered.Load(), Redelivered: b.redelivered.Load()}
	st.Exchanges = len(exs)
	for _, ex := range exs {
		ex.mu.Lock()
		agents := make([]*agent, 0, len(ex.agents))
		for _, a := range ex.agents {
			agents = append(agents, a)
		}
		ex.mu.Unlock()
		st.Agents += len(agents)
		for _, a := range agents {
			a.mu.Lock()
			st.Connections += len(a.sessions)
			st.AwaitingAck += len(a.pending)
			next := max(a.cursor+1, a.first)
			for _, s := range a.sessions {
				next = max(next, s.next)
				st.Redeliveries += len(s.redeliver)
			}
			if a.durable >= next {
				st.InboxDepth += a.durable - next + 1
			}
			a.mu.Unlock()
		}
	}
	return st
}

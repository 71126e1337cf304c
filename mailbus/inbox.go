package mailbus

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// ackState is the per-recipient acknowledgement state of an ackRequired
// message.
type ackState struct {
	ackedAt time.Time
	due     time.Time // redelivery deadline once sent; zero while unsent or queued
}

// entry is one inbox slot: the number of its message in the exchange's
// msgTable, and whether the message requires an acknowledgement (its state
// is then in agent.acks). It holds no pointer, which is what keeps retained
// mail out of the garbage collector's marking.
type entry uint64

func newEntry(num uint64, ack bool) entry {
	e := entry(num << 1)
	if ack {
		e |= 1
	}
	return e
}

func (e entry) num() uint64 { return uint64(e) >> 1 }

func (e entry) needsAck() bool { return e&1 != 0 }

// agent is one agent's inbox and presence. Lock order: exchange.mu, then
// agent.mu.
type agent struct {
	id string
	// Guarded by exchange.mu. An agent that never set its subscriptions
	// (subsSet false) gets every broadcast, as Jetpack's clients, which
	// cannot state any, expect.
	subs    []string
	subsSet bool

	tab      *msgTable // the exchange's
	mu       sync.Mutex
	first    uint64 // seq of ents[0]; seqs start at 1
	ents     []entry
	size     int64                // sum of the sizes of ents' messages
	durable  uint64               // highest seq known durable
	pending  map[string]uint64    // message id → seq of ackRequired entries
	acks     map[uint64]*ackState // seq → state of ackRequired entries
	cursor   uint64               // highest seq handed to a session
	savedCur uint64               // cursor last written to the journal
	sessions []*session           // live connections, oldest first
	beat     time.Time            // last heartbeat
	connAt   time.Time
}

func (a *agent) next() uint64 { return a.first + uint64(len(a.ents)) }

// at returns the message of inbox entry seq and, when the message requires
// an acknowledgement, the entry's state; st is nil when seq is not in the
// inbox. Caller holds a.mu.
func (a *agent) at(seq uint64) (st *stored, ack *ackState) {
	if seq < a.first || seq >= a.next() {
		return nil, nil
	}
	e := a.ents[seq-a.first]
	if e.needsAck() {
		ack = a.acks[seq]
	}
	return a.tab.get(e.num()), ack
}

// needAck records that entry seq, message id, awaits an acknowledgement.
// The maps are made on first use: most agents never get such mail, and
// ten thousand idle connections should not each carry two empty maps.
// Caller holds a.mu.
func (a *agent) needAck(id string, seq uint64, ack *ackState) {
	if a.pending == nil {
		a.pending, a.acks = map[string]uint64{}, map[uint64]*ackState{}
	}
	a.pending[id] = seq
	a.acks[seq] = ack
}

// deliver appends message num, st, to a's inbox and applies count
// retention. The caller counts the reference (msgTable.ref).
func (ex *exchange) deliver(a *agent, num uint64, st *stored) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	seq := a.next()
	if st.msg.AckRequired {
		a.needAck(st.msg.ID, seq, &ackState{})
	}
	a.ents = append(a.ents, newEntry(num, st.msg.AckRequired))
	a.size += st.size()
	a.retain(ex.b.cfg.RetentionCount, ex.b.cfg.RetentionBytes)
	return seq
}

// retain drops the oldest entries until at most count are left and they
// hold at most bytes, keeping the newest entry whatever its size. Replay
// applies it to the same messages in the same order, so it drops the same
// entries. Caller holds a.mu.
func (a *agent) retain(count int, bytes int64) {
	over := max(len(a.ents)-count, 0)
	if a.size > bytes {
		size := a.size
		for i, e := range a.ents[:len(a.ents)-1] {
			if i >= over && size <= bytes {
				break
			}
			size -= a.tab.get(e.num()).size()
			over = max(over, i+1)
		}
	}
	if over > 0 {
		a.drop(over)
	}
}

// drop removes the n oldest entries. Caller holds a.mu.
func (a *agent) drop(n int) {
	for i, e := range a.ents[:n] {
		if e.needsAck() {
			seq := a.first + uint64(i)
			id := a.tab.get(e.num()).msg.ID
			if s, ok := a.pending[id]; ok && s == seq {
				delete(a.pending, id)
			}
			delete(a.acks, seq)
		}
		a.size -= a.tab.get(e.num()).size()
		a.tab.unref(e.num())
	}
	a.ents = a.ents[n:]
	a.first += uint64(n)
	if a.durable < a.first-1 {
		a.durable = a.first - 1
	}
}

func (ex *exchange) ack(ctx context.Context, agentID, id string) error {
	result, err := ex.ackAsync(agentID, id)
	if err != nil || result == nil {
		return err
	}
	return wait(ctx, result)
}

// ackAsync records the acknowledgement; the channel (nil when there was
// nothing to do) reports once it is durable.
func (ex *exchange) ackAsync(agentID, id string) (<-chan error, error) {
	now := ex.b.cfg.Now()
	ex.mu.Lock()
	defer ex.mu.Unlock()
	a := ex.agents[agentID]
	if a == nil {
		return nil, fmt.Errorf("%w: no acknowledgeable message %q for agent %s", ErrNotFound, id, agentID)
	}
	a.mu.Lock()
	_, ack := a.at(a.pending[id])
	if ack == nil {
		a.mu.Unlock()
		return nil, fmt.Errorf("%w: no acknowledgeable message %q for agent %s", ErrNotFound, id, agentID)
	}
	acked := !ack.ackedAt.IsZero()
	a.mu.Unlock()
	if acked {
		return nil, nil
	}
	c, err := ex.write(&record{Kind: "a", Agent: agentID, ID: id, Time: now.UnixMilli()})
	if err != nil {
		return nil, err
	}
	a.mu.Lock()
	ack.ackedAt = now
	a.mu.Unlock()
	result := make(chan error, 1)
	ex.commit(c, func(err error) {
		if err != nil {
			err = fmt.Errorf("mailbus: store acknowledgement: %w", err)
		}
		result <- err
	})
	return result, nil
}

// applyAck is the replay side of ack.
func (ex *exchange) applyAck(agentID, id string, at time.Time) {
	a := ex.agent(agentID)
	a.mu.Lock()
	if _, ack := a.at(a.pending[id]); ack != nil && ack.ackedAt.IsZero() {
		ack.ackedAt = at
	}
	a.mu.Unlock()
}

func (ex *exchange) inbox(agentID string, since int64, limit int) ([]Message, uint64, error) {
	if limit <= 0 || limit > 1000 {
		limit = 1000
	}
	now := ex.b.cfg.Now()
	ex.mu.Lock()
	a := ex.join(agentID)
	ex.mu.Unlock()
	a.mu.Lock()
	from := a.cursor
	if since >= 0 {
		from = uint64(since)
		if from > a.cursor && from <= a.durable {
			a.cursor = from
		}
	}
	var out []Message
	// Unacknowledged ackRequired messages the caller already saw come back
	// once their visibility timeout expired.
	for _, seq := range a.sortedPending() {
		if seq > from || len(out) >= limit {
			break
		}
		st, ack := a.at(seq)
		if ack == nil || !ack.ackedAt.IsZero() || st.failed.Load() {
			continue
		}
		if ack.due.IsZero() || now.After(ack.due) {
			ack.due = now.Add(ex.b.cfg.VisibilityTimeout)
			out = append(out, a.view(seq, st, ack))
		}
	}
	seq := max(from+1, a.first)
	for ; seq <= a.durable && len(out) < limit; seq++ {
		st, ack := a.at(seq)
		if st.failed.Load() {
			continue
		}
		if ack != nil && ack.ackedAt.IsZero() {
			ack.due = now.Add(ex.b.cfg.VisibilityTimeout)
		}
		out = append(out, a.view(seq, st, ack))
	}
	a.mu.Unlock()
	if since >= 0 {
		ex.saveCursor(a)
	}
	return out, seq - 1, nil
}

// view returns the recipient's copy of entry seq. Caller holds a.mu.
func (a *agent) view(seq uint64, st *stored, ack *ackState) Message {
	m := st.msg
	m.Seq = seq
	if ack != nil && !ack.ackedAt.IsZero() {
		t := ack.ackedAt.UTC()
		m.AckedAt, m.AckedBy = &t, a.id
	}
	return m
}

func (a *agent) sortedPending() []uint64 {
	out := make([]uint64, 0, len(a.pending))
	for _, s := range a.pending {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func (ex *exchange) presence() []Presence {
	now := ex.b.cfg.Now()
	ex.mu.Lock()
	agents := make([]*agent, 0, len(ex.agents))
	for _, a := range ex.agents {
		agents = append(agents, a)
	}
	ex.mu.Unlock()
	out := make([]Presence, 0, len(agents))
	for _, a := range agents {
		a.mu.Lock()
		p := Presence{AgentID: a.id, Connected: len(a.sessions) > 0}
		last := a.beat
		if !a.beat.IsZero() {
			t := a.beat.UTC()
			p.LastHeartbeat = &t
		}
		if len(a.sessions) > 0 {
			t := a.connAt.UTC()
			p.ConnectedAt = &t
			if a.connAt.After(last) {
				last = a.connAt
			}
			next := a.sessions[0].next
			for _, s := range a.sessions[1:] {
				next = max(next, s.next)
			}
			if a.durable >= next {
				p.Pending = a.durable - next + 1
			}
		} else if a.durable > a.cursor {
			p.Pending = a.durable - max(a.cursor, a.first-1)
		}
		p.Online = !last.IsZero() && now.Sub(last) < ex.b.cfg.PresenceTimeout
		a.mu.Unlock()
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AgentID < out[j].AgentID })
	return out
}

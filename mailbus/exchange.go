package mailbus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meatspace-exchange/mess/internal/journal"
)

type subOp int

const (
	subAdd subOp = iota
	subRemove
	subSet
)

// stored is one accepted message, shared by all its recipients' inboxes.
type stored struct {
	msg    Message // immutable once stored
	raw    []byte  // JSON of msg without seq or ack fields
	recv   time.Time
	failed atomic.Bool // the journal write failed: never deliver
}

// commit is the effect of one journal record, applied by the committer in
// journal order once the journal reports the record durable.
type commit struct {
	wake  chan<- struct{} // the exchange's durable: told after done is set
	done  atomic.Bool     // the record is durable, or its write failed
	err   error           // why it failed; written before done
	apply func(error)     // the effect of any record but a message

	// A message's effect (apply nil): st is in recips' inboxes, and
	// result is told once they can deliver it.
	st     *stored
	recips []recipient
	one    [1]recipient // recips of a direct message, without a slice of its own
	result chan error
}

// Durable is the journal's report on c's record (journal.Notifier).
func (c *commit) Durable(err error) {
	c.err = err
	c.done.Store(true)
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

// ready reports whether c's record is durable (or failed) already, without
// waiting.
func (c *commit) ready() bool { return c.done.Load() }

type exchange struct {
	b       *Bus
	id      string
	ready   chan struct{}
	loadErr error

	// A journal write that fails breaks the exchange: memory then holds
	// seqs the journal does not, and a restart would number what follows
	// differently from what agents were told. It stops taking writes, its
	// sessions are kicked, and the next use loads a fresh exchange from
	// storage once this one's writes and snapshot have finished (prev).
	broken atomic.Bool
	prev   *exchange

	mu          sync.Mutex
	closed      bool
	failure     error // why it broke; closed is set too
	lsn         uint64
	msgs        msgTable
	agents      map[string]*agent
	routes      map[string][]*agent // message type → subscribed agents
	sinceSnap   int
	snapEntries int // inbox entries in the last snapshot
	snapping    bool
	commits     chan *commit
	part        string        // the journal partition
	durable     chan struct{} // capacity 1: a commit became ready

	committers sync.WaitGroup

	// Owned by the committer goroutine.
	toWake   []*session
	lastWake int    // len(toWake) at the last wake: the next one's likely size
	wakeRun  uint64 // sessions with wokenIn == wakeRun are in toWake
}

func newExchange(b *Bus, id string) *exchange {
	return &exchange{
		b: b, id: id, ready: make(chan struct{}),
		agents:  map[string]*agent{},
		commits: make(chan *commit, 1<<16),
		part:    "mailbus/" + id + "/log",
		durable: make(chan struct{}, 1),
		wakeRun: 1, // not a new session's wokenIn
	}
}

func (ex *exchange) partition() string { return ex.part }

// agent returns (creating) the state of id. Caller holds ex.mu.
func (ex *exchange) agent(id string) *agent {
	a := ex.agents[id]
	if a == nil {
		a = &agent{id: id, tab: &ex.msgs, first: 1}
		ex.agents[id] = a
		ex.routes = nil // it gets every broadcast until it subscribes
	}
	return a
}

// join returns (creating) the state of id on a live path. A new agent gets
// every broadcast until it sets subscriptions, so its arrival is journaled:
// replay must create it at the same point, or it would number the agent's
// inbox differently from what the agent was told. Caller holds ex.mu.
func (ex *exchange) join(id string) *agent {
	if a := ex.agents[id]; a != nil {
		return a
	}
	a := ex.agent(id)
	if c, err := ex.write(&record{Kind: "j", Agent: id}); err == nil {
		ex.commit(c, func(error) {})
	}
	return a
}

// committer applies the effects of journal records in journal order once
// each is durable, so an agent never sees seq n+1 before seq n is safe.
//
// Sessions to wake are collected (wakeLater) and woken once the commits
// whose records are already durable have all been applied: those of one
// group commit. A connection then gets all of their messages in one write.
func (ex *exchange) committer() {
	defer ex.committers.Done()
	var next *commit
	var failure error
	run := 0 // commits applied since the last wake
	for {
		c := next
		next = nil
		run++
		if c == nil {
			var ok bool
			if c, ok = <-ex.commits; !ok {
				return
			}
		}
		for !c.done.Load() {
			<-ex.durable
		}
		err := c.err
		if failure == nil && err != nil {
			failure = err
			ex.fail(err)
		}
		if failure != nil && err == nil {
			// Durable, but ordered after a write that is not: a restart
			// would give it other seqs than memory did. Its sender is
			// told it failed, as at-least-once allows.
			err = fmt.Errorf("%w (after an earlier write failed: %v)", errReload, failure)
		}
		if c.apply != nil {
			c.apply(err)
		} else {
			ex.delivered(c, err)
		}
		select {
		case n, ok := <-ex.commits:
			// Bounded, so that a committer that never catches up with
			// the journal still wakes sessions.
			if ok && n.ready() && run < maxWakeRun {
				next = n
				continue
			}
			ex.wake()
			run = 0
			if !ok {
				return
			}
			next = n
		default:
			ex.wake()
			run = 0
		}
	}
}

// maxWakeRun is the most commits applied between two wakes.
const maxWakeRun = 256

// wakeLater has s woken at the end of the committer's current run of
// durable commits. Only the committer calls it.
func (ex *exchange) wakeLater(s *session) {
	if s.wokenIn != ex.wakeRun {
		s.wokenIn = ex.wakeRun
		if ex.toWake == nil {
			ex.toWake = make([]*session, 0, ex.lastWake)
		}
		ex.toWake = append(ex.toWake, s)
	}
}

func (ex *exchange) wake() {
	ss := ex.toWake
	ex.toWake = nil // notifyAll's goroutines keep ss
	ex.lastWake = len(ss)
	ex.wakeRun++
	// The committer is one of ex.committers, so adding to it cannot race
	// with shutdown's Wait.
	notifyAll(ss, &ex.committers)
}

// errReload is why sessions of a broken exchange end, and what writes
// ordered after its failed one report.
var errReload = errors.New("mailbus: exchange reloading after a storage failure")

// fail breaks the exchange (see exchange.broken). Only the committer calls
// it.
func (ex *exchange) fail(err error) {
	ex.b.cfg.Logger.Error("mailbus: journal write failed; the exchange reloads from storage", "exchange", ex.id, "err", err)
	ex.close(err, errReload)
}

func (ex *exchange) shutdown() {
	<-ex.ready
	ex.close(nil, ErrClosed)
}

// close stops taking writes, has the committer end once it has applied
// those queued, and ends every session with why. A failure marks the
// exchange broken. Closing twice does nothing.
func (ex *exchange) close(failure, why error) {
	ex.mu.Lock()
	if ex.closed {
		ex.mu.Unlock()
		return
	}
	ex.closed = true
	if failure != nil {
		ex.failure = failure
		ex.broken.Store(true)
	}
	var sessions []*session
	for _, a := range ex.agents {
		a.mu.Lock()
		sessions = append(sessions, a.sessions...)
		a.mu.Unlock()
	}
	if ex.loadErr == nil {
		close(ex.commits)
	}
	ex.mu.Unlock()
	for _, s := range sessions {
		s.kick(why)
	}
}

// record is one journal line. Short keys keep the journal small.
type record struct {
	LSN   uint64   `json:"l"`
	Kind  string   `json:"k"` // m message, a ack, s subscriptions, c cursor, j agent joined
	Agent string   `json:"a,omitempty"`
	Msg   *Message `json:"m,omitempty"`
	Types []string `json:"t,omitempty"`
	ID    string   `json:"i,omitempty"`
	Seq   uint64   `json:"q,omitempty"`
	Time  int64    `json:"ts,omitempty"` // unix ms

	raw []byte // replay only: the encoded message
}

// write queues rec in the journal and returns its commit. Caller holds
// ex.mu, which is what makes journal order equal to the order of state
// changes, and must then make the record's change in memory and hand the
// commit to ex.commit.
func (ex *exchange) write(rec *record) (*commit, error) {
	if err := ex.closedErr(); err != nil {
		return nil, err
	}
	rec.LSN = ex.lsn + 1
	line, err := json.Marshal(rec)
	if err != nil {
		return nil, fmt.Errorf("mailbus: encode record: %w", err)
	}
	c := &commit{}
	return c, ex.writeLine(append(line, '\n'), c)
}

// closedErr is what a write to a closed exchange fails with. Caller holds
// ex.mu.
func (ex *exchange) closedErr() error {
	if !ex.closed {
		return nil
	}
	if ex.failure != nil {
		return fmt.Errorf("%w: %v", errReload, ex.failure)
	}
	return ErrClosed
}

// writeLine queues line, the record of LSN ex.lsn+1 with its newline, in
// the journal, to report to c. Caller holds ex.mu.
func (ex *exchange) writeLine(line []byte, c *commit) error {
	c.wake = ex.durable
	if err := ex.b.j.AppendLine(ex.part, line, c); err != nil {
		if errors.Is(err, journal.ErrClosed) {
			return ErrClosed
		}
		return fmt.Errorf("mailbus: journal: %w", err)
	}
	ex.lsn++
	ex.sinceSnap++
	return nil
}

// commit has the committer run apply (nil for a message: delivered), in
// journal order, once c's record is durable. Caller holds ex.mu.
func (ex *exchange) commit(c *commit, apply func(error)) {
	c.apply = apply
	ex.commits <- c
}

func wait(ctx context.Context, result <-chan error) error {
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// submit stores m and routes it; the returned channel reports once it is
// durable. The order of submit calls is the delivery order.
func (ex *exchange) submit(m *Message) (<-chan error, error) {
	st, line, err := newStoredLine(m, ex.b.cfg.Now())
	if err != nil {
		return nil, err
	}
	c := &commit{st: st, result: make(chan error, 1)}
	ex.mu.Lock()
	if m.AckRequired {
		if who := ex.pendingID(m); who != "" {
			ex.mu.Unlock()
			return nil, fmt.Errorf("%w: agent %s has not acknowledged an earlier message with id %q", ErrConflict, who, m.ID)
		}
	}
	if err := ex.closedErr(); err != nil {
		ex.mu.Unlock()
		return nil, err
	}
	line = strconv.AppendUint(line, ex.lsn+1, 10)
	if err := ex.writeLine(append(line, '}', '\n'), c); err != nil {
		ex.mu.Unlock()
		return nil, err
	}
	c.recips = ex.applyMessage(st, c.one[:0])
	ex.commit(c, nil)
	if ex.msgs.next&(chunkSize-1) == 0 && !ex.snapping {
		// A chunk just filled: free those retention has emptied since,
		// rather than at the next sweep. A bus taking a quarter of a
		// million messages a second otherwise holds every one of them
		// until the sweep, and the collector marks them all.
		ex.msgs.trim()
	}
	snap := ex.wantSnapshot()
	ex.mu.Unlock()
	if snap {
		go ex.snapshot()
	}
	return c.result, nil
}

// delivered is the committer's side of submit: c's message is durable (or
// failed with err), so its recipients may be sent it.
func (ex *exchange) delivered(c *commit, err error) {
	if err != nil {
		c.st.failed.Store(true)
		ex.b.cfg.Logger.Error("mailbus: journal write failed", "exchange", ex.id, "err", err)
		err = fmt.Errorf("mailbus: store message: %w", err)
	}
	// Inboxes first, so a sender that reads one after its ack sees the
	// message; the sender is told before the subscribers are woken,
	// because waking a thousand takes longer.
	for _, r := range c.recips {
		r.a.mu.Lock()
		if r.seq > r.a.durable {
			r.a.durable = r.seq
		}
		for _, s := range r.a.sessions {
			ex.wakeLater(s)
		}
		r.a.mu.Unlock()
	}
	c.result <- err
}

func newStored(m *Message, recv time.Time) (*stored, error) {
	if err := checkTimestamp(m); err != nil {
		return nil, err
	}
	st := &stored{msg: *m, recv: recv}
	st.raw, st.msg.Payload = encodeShared(m)
	return st, nil
}

func checkTimestamp(m *Message) error {
	if m.Timestamp.Year() < 0 || m.Timestamp.Year() > 9999 {
		return fmt.Errorf("%w: timestamp year outside 0..9999", ErrInvalid)
	}
	return nil
}

// newStoredLine is newStored for a message about to be journaled: it also
// returns the start of the message's journal record, which holds the
// stored encoding (st.raw is part of it, so a message is encoded and held
// once) and ends where the record's LSN goes, with room for it and the
// record's end: `,"l":` + the LSN + "}\n". Keys in that order (the LSN
// last) read back as any other record.
func newStoredLine(m *Message, recv time.Time) (*stored, []byte, error) {
	if err := checkTimestamp(m); err != nil {
		return nil, nil, err
	}
	st := &stored{msg: *m, recv: recv}
	const head, tail = len(`{"k":"m","ts":-9223372036854775808,"m":`), len(`,"l":18446744073709551615}` + "\n")
	n := head + len(m.ID) + len(m.Type) + len(m.From) + len(m.To) + len(m.Payload) + len(m.CorrelationID) + 160 + tail
	line := make([]byte, 0, n)
	line = append(line, `{"k":"m","ts":`...)
	line = strconv.AppendInt(line, recv.UnixMilli(), 10)
	line = append(line, `,"m":`...)
	start := len(line)
	line = m.appendJSON(line)
	end := len(line)
	line = append(line, `,"l":`...)
	line = slices.Grow(line, tail)
	st.raw = line[start:end:end]
	st.msg.Payload = payloadOf(st.raw, m)
	return st, line, nil
}

// encodeShared encodes m as stored (without seq or ack fields) and
// returns the payload as a slice of that encoding: a stored message's
// payload, up to the frame limit, is then held once, not twice.
func encodeShared(m *Message) (raw []byte, payload json.RawMessage) {
	raw = m.appendJSON(make([]byte, 0, len(m.Payload)+256))
	return raw, payloadOf(raw, m)
}

// payloadOf returns m's payload as the slice of raw, m's encoding, that
// holds it.
func payloadOf(raw []byte, m *Message) json.RawMessage {
	if len(m.Payload) == 0 {
		return m.Payload
	}
	// The first key "payload" is the field: in a string a quote is
	// escaped.
	i := bytes.Index(raw, []byte(`,"payload":`)) + len(`,"payload":`)
	return raw[i : i+len(m.Payload) : i+len(m.Payload)]
}

// size is what a message counts for against Config.RetentionBytes: what it
// holds in memory.
func (st *stored) size() int64 { return int64(len(st.raw)) + 128 }

// pendingID returns a recipient of m that still has to acknowledge a
// message with m's id, or "". Caller holds ex.mu.
func (ex *exchange) pendingID(m *Message) string {
	check := func(a *agent) bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		seq, ok := a.pending[m.ID]
		if !ok {
			return false
		}
		_, ack := a.at(seq)
		return ack != nil && ack.ackedAt.IsZero()
	}
	if m.To != "" {
		if a := ex.agents[m.To]; a != nil && check(a) {
			return a.id
		}
		return ""
	}
	for _, a := range ex.subscribers(m.Type) {
		if a.id != m.From && check(a) {
			return a.id
		}
	}
	return ""
}

type recipient struct {
	a   *agent
	seq uint64
}

// applyMessage puts st in its recipients' inboxes and appends them to out.
// It is the same code for live traffic and journal replay, so replay
// assigns the same seqs. Caller holds ex.mu.
func (ex *exchange) applyMessage(st *stored, out []recipient) []recipient {
	m := &st.msg
	num := ex.msgs.add(st)
	if m.To != "" {
		a := ex.agent(m.To)
		ex.msgs.ref(num, 1)
		return append(out, recipient{a, ex.deliver(a, num, st)})
	}
	subs := ex.subscribers(m.Type)
	out = slices.Grow(out, len(subs))
	for _, a := range subs {
		if a.id != m.From {
			out = append(out, recipient{a, ex.deliver(a, num, st)})
		}
	}
	ex.msgs.ref(num, len(out))
	return out
}

// subscribers returns the agents whose subscriptions match typ. Caller
// holds ex.mu. Matching every agent's patterns on every broadcast was a
// third of the time a broadcast held ex.mu; the result is kept per type
// until a subscription changes (setSubs).
func (ex *exchange) subscribers(typ string) []*agent {
	if as, ok := ex.routes[typ]; ok {
		return as
	}
	var as []*agent
	for _, a := range ex.agents {
		if !a.subsSet || matchAny(a.subs, typ) {
			as = append(as, a)
		}
	}
	// Types are chosen by clients: bound what they can make us keep.
	if ex.routes == nil || len(ex.routes) >= maxRoutes {
		ex.routes = map[string][]*agent{}
	}
	ex.routes[typ] = as
	return as
}

// maxRoutes bounds exchange.routes.
const maxRoutes = 256

// setSubs replaces a's subscriptions. Caller holds ex.mu.
func (ex *exchange) setSubs(a *agent, subs []string) {
	a.subs, a.subsSet = subs, true
	ex.routes = nil
}

func matchAny(patterns []string, t string) bool {
	for _, p := range patterns {
		if Match(p, t) {
			return true
		}
	}
	return false
}

func (ex *exchange) changeSubs(ctx context.Context, agentID string, patterns []string, op subOp) error {
	result := make(chan error, 1)
	ex.mu.Lock()
	a := ex.join(agentID)
	var next []string
	switch op {
	case subSet:
		next = slices.Clone(patterns)
	case subAdd:
		next = append(slices.Clone(a.subs), patterns...)
	case subRemove:
		next = slices.DeleteFunc(slices.Clone(a.subs), func(s string) bool { return slices.Contains(patterns, s) })
	}
	slices.Sort(next)
	next = slices.Compact(next)
	if len(next) > maxSubscriptions {
		ex.mu.Unlock()
		return fmt.Errorf("%w: more than %d subscriptions", ErrInvalid, maxSubscriptions)
	}
	if a.subsSet && slices.Equal(next, a.subs) {
		ex.mu.Unlock()
		return nil
	}
	c, err := ex.write(&record{Kind: "s", Agent: agentID, Types: next})
	if err != nil {
		ex.mu.Unlock()
		return err
	}
	ex.setSubs(a, next)
	ex.commit(c, func(err error) {
		if err != nil {
			err = fmt.Errorf("mailbus: store subscriptions: %w", err)
		}
		result <- err
	})
	ex.mu.Unlock()
	select {
	case err := <-result:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// saveCursor journals a's delivery cursor without waiting; losing the
// latest value in a crash only causes redelivery, which receivers dedupe.
func (ex *exchange) saveCursor(a *agent) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	a.mu.Lock()
	cur, saved := a.cursor, a.savedCur
	a.savedCur = cur
	a.mu.Unlock()
	if cur <= saved || ex.closed {
		return
	}
	if c, err := ex.write(&record{Kind: "c", Agent: a.id, Seq: cur}); err == nil {
		ex.commit(c, func(error) {})
	}
}

func (ex *exchange) heartbeat(from string, m *Message) {
	now := ex.b.cfg.Now()
	st, err := newStored(m, now)
	if err != nil {
		return
	}
	ex.mu.Lock()
	a := ex.join(from)
	a.mu.Lock()
	a.beat = now
	a.mu.Unlock()
	targets := ex.subscribers(m.Type)
	if m.To != "" {
		targets = nil
		if o := ex.agents[m.To]; o != nil {
			targets = []*agent{o}
		}
	}
	var live []*session
	for _, o := range targets {
		if o == a {
			continue
		}
		o.mu.Lock()
		for _, s := range o.sessions {
			if len(s.live) < 1024 {
				s.live = append(s.live, st)
				live = append(live, s)
			}
		}
		o.mu.Unlock()
	}
	ex.mu.Unlock()
	notifyAll(live, nil)
}

// sweep queues redeliveries of overdue unacknowledged messages and applies
// age retention.
func (ex *exchange) sweep() {
	now := ex.b.cfg.Now()
	cutoff := now.Add(-ex.b.cfg.RetentionAge)
	ex.mu.Lock()
	// What the last sweep and count retention dropped, unless a snapshot
	// is still looking messages up.
	if !ex.snapping {
		ex.msgs.trim()
	}
	agents := make([]*agent, 0, len(ex.agents))
	for _, a := range ex.agents {
		agents = append(agents, a)
	}
	ex.mu.Unlock()
	for _, a := range agents {
		a.mu.Lock()
		n := 0
		for n < len(a.ents) && a.first+uint64(n) <= a.durable && a.tab.get(a.ents[n].num()).recv.Before(cutoff) {
			n++
		}
		if n > 0 {
			a.drop(n)
		}
		// An overdue message goes again to every connection of the agent
		// that was sent it: whichever handles it acknowledges for all.
		var queued []*session
		if len(a.sessions) > 0 && len(a.pending) > 0 {
			for _, seq := range a.sortedPending() {
				_, ack := a.at(seq)
				if ack == nil || !ack.ackedAt.IsZero() || ack.due.IsZero() || !now.After(ack.due) {
					continue
				}
				ack.due = time.Time{}
				for _, s := range a.sessions {
					if seq < s.next {
						s.redeliver = append(s.redeliver, seq)
						if !slices.Contains(queued, s) {
							queued = append(queued, s)
						}
					}
				}
			}
		}
		a.mu.Unlock()
		for _, s := range queued {
			s.notify()
		}
	}
}

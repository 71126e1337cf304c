package mailbus

import (
	"encoding/json"
	"slices"
	"strconv"
	"sync"
	"time"
)

// session is one live connection of an agent (WebSocket or in-process).
// It holds no message queue of its own: its transport pulls from the
// agent's inbox from position next, so a slow reader never blocks a
// publisher and never grows memory, and replay on reconnect is the same
// code as live delivery.
type session struct {
	ex *exchange
	a  *agent

	// Guarded by a.mu.
	detached  bool
	next      uint64    // next inbox seq to send
	redeliver []uint64  // overdue ackRequired seqs to send again
	live      []*stored // heartbeats: delivered live, never stored

	wokenIn uint64 // the committer's wake run that has s (exchange.wakeLater)

	wake chan struct{} // capacity 1: "there may be something to take"
	gone chan struct{} // closed by kick
	// hook, when set, is called on every notify and kick instead of the
	// transport keeping a goroutine parked on wake and gone.
	hook func()
	once sync.Once
	err  error // why the session was kicked; read after gone is closed
}

// delivery is one message as a recipient sees it.
type delivery struct {
	seq     uint64
	st      *stored
	ackedAt time.Time
}

// attach opens a session for agentID starting after since (negative: after
// the agent's cursor, the last seq any of its sessions was sent).
// Unacknowledged ackRequired messages at or before the start are sent again
// first. Other sessions of the agent go on: each gets every message from
// its own start.
func (ex *exchange) attach(agentID string, since int64, hook func()) (*session, error) {
	ex.mu.Lock()
	if ex.closed {
		err := ErrClosed
		if ex.failure != nil {
			err = errReload
		}
		ex.mu.Unlock()
		return nil, err
	}
	a := ex.join(agentID)
	ex.mu.Unlock()
	s := &session{ex: ex, a: a, wake: make(chan struct{}, 1), gone: make(chan struct{}), hook: hook}
	a.mu.Lock()
	a.sessions = append(a.sessions, s)
	a.connAt = ex.b.cfg.Now()
	start := a.cursor
	if since >= 0 {
		// Past the last seq there is (a client's stale or wrong since):
		// taken as "all seen", not as a promise to skip mail to come.
		start = min(uint64(since), a.durable)
	}
	s.next = max(start+1, a.first)
	for _, seq := range a.sortedPending() {
		if seq >= s.next {
			break
		}
		if _, ack := a.at(seq); ack != nil && ack.ackedAt.IsZero() {
			ack.due = time.Time{}
			s.redeliver = append(s.redeliver, seq)
		}
	}
	a.mu.Unlock()
	s.notify()
	return s, nil
}

// startAt makes agentID known to the exchange and returns the position a
// session of it that asks for since should start after: since itself, or
// for a negative since the agent's cursor now.
func (ex *exchange) startAt(agentID string, since int64) (int64, error) {
	ex.mu.Lock()
	defer ex.mu.Unlock()
	if ex.closed {
		if ex.failure != nil {
			return 0, errReload
		}
		return 0, ErrClosed
	}
	a := ex.join(agentID)
	if since < 0 {
		a.mu.Lock()
		since = int64(a.cursor)
		a.mu.Unlock()
	}
	return since, nil
}

// detach ends s and saves the agent's cursor.
func (s *session) detach() {
	s.kick(nil)
	s.a.mu.Lock()
	s.detached = true
	s.a.sessions = slices.DeleteFunc(s.a.sessions, func(o *session) bool { return o == s })
	s.a.mu.Unlock()
	s.ex.saveCursor(s.a)
}

func (s *session) kick(err error) {
	s.once.Do(func() {
		s.err = err
		close(s.gone)
		if s.hook != nil {
			s.hook()
		}
	})
}

func (s *session) notify() {
	if s.hook != nil {
		s.hook()
		return
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// notifyAll notifies every session in ss. A WebSocket session writes to its
// socket during notify when the socket takes the frame at once, so a
// broadcast's sessions are split over a few goroutines of notifyBatch
// each: the system calls use every core, and no goroutine the broadcast
// did not start waits behind a thousand that it did. A non-nil wg counts
// those goroutines, so that shutdown waits for them.
func notifyAll(ss []*session, wg *sync.WaitGroup) {
	for len(ss) > notifyBatch {
		part := ss[:notifyBatch]
		ss = ss[notifyBatch:]
		if wg != nil {
			wg.Go(func() { notifyEach(part) })
		} else {
			go notifyEach(part)
		}
	}
	notifyEach(ss)
}

// notifyBatch is about 0.3 ms of system calls.
const notifyBatch = 128

func notifyEach(ss []*session) {
	for _, s := range ss {
		s.notify()
	}
}

// take appends up to n deliveries to out: redeliveries, then heartbeats,
// then new durable inbox entries in seq order. more reports whether it
// left any behind, so a caller that got everything need not lock the
// inbox again only to find it empty: a notify follows anything new.
func (s *session) take(n int, out []delivery) (_ []delivery, more bool) {
	a := s.a
	now := s.ex.b.cfg.Now()
	vis := s.ex.b.cfg.VisibilityTimeout
	a.mu.Lock()
	defer a.mu.Unlock()
	if s.detached {
		return out, false
	}
	before := len(out)
	defer func() {
		if added := len(out) - before; added > 0 {
			s.ex.b.delivered.Add(uint64(added))
		}
	}()
	redone := 0
	for len(s.redeliver) > 0 && len(out) < n {
		seq := s.redeliver[0]
		s.redeliver = s.redeliver[1:]
		st, ack := a.at(seq)
		if ack == nil || !ack.ackedAt.IsZero() || st.failed.Load() {
			continue
		}
		ack.due = now.Add(vis)
		out = append(out, delivery{seq: seq, st: st})
		redone++
	}
	if redone > 0 {
		s.ex.b.redelivered.Add(uint64(redone))
	}
	for len(s.live) > 0 && len(out) < n {
		out = append(out, delivery{st: s.live[0]})
		s.live[0] = nil
		s.live = s.live[1:]
	}
	if s.next < a.first {
		s.next = a.first
	}
	for s.next <= a.durable && len(out) < n {
		if st, ack := a.at(s.next); !st.failed.Load() {
			d := delivery{seq: s.next, st: st}
			if ack != nil {
				if ack.ackedAt.IsZero() {
					ack.due = now.Add(vis)
				} else {
					d.ackedAt = ack.ackedAt
				}
			}
			out = append(out, d)
		}
		s.next++
	}
	if s.next-1 > a.cursor {
		a.cursor = s.next - 1
	}
	return out, len(s.redeliver) > 0 || len(s.live) > 0 || s.next <= a.durable
}

// appendJSON encodes d as the recipient's copy of the message. The common
// case splices the seq into the stored encoding instead of re-encoding.
func (d *delivery) appendJSON(buf []byte, agentID string) []byte {
	if !d.ackedAt.IsZero() {
		m := d.st.msg
		m.Seq = d.seq
		t := d.ackedAt.UTC()
		m.AckedAt, m.AckedBy = &t, agentID
		b, _ := json.Marshal(&m)
		return append(buf, b...)
	}
	if d.seq == 0 {
		return append(buf, d.st.raw...)
	}
	buf = append(buf, `{"seq":`...)
	buf = strconv.AppendUint(buf, d.seq, 10)
	buf = append(buf, ',')
	return append(buf, d.st.raw[1:]...)
}

// message returns the recipient's copy of d as a value.
func (d *delivery) message(agentID string) Message {
	m := d.st.msg
	m.Seq = d.seq
	if !d.ackedAt.IsZero() {
		t := d.ackedAt.UTC()
		m.AckedAt, m.AckedBy = &t, agentID
	}
	return m
}

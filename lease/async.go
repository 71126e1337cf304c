package lease

import (
	"fmt"
	"time"
)

// The operations below are the lease's own WebSocket's fast path: they
// take the shard lock and queue their record on the caller's goroutine
// (the connection's reader) and return at once, and the journal's flusher
// finishes them once the record is durable, so an operation costs no
// goroutine and no hand-over between goroutines of its own. Each reports
// false, having changed nothing, when the operation would have to wait
// (its exchange is not loaded yet, or the lease's grant is still being
// written): the caller then runs the blocking method on a goroutine.
// Otherwise done is called exactly once: on the flusher, or on the caller's
// goroutine when nothing needs writing (a refusal), never under a lock.
// done must not block.

// pendingOp is an operation waiting for its record: the journal's Notifier.
type pendingOp struct {
	m       *Manager
	k       key
	g       Grant
	out     outcome
	prev    time.Time
	writing chan struct{}
	release bool
	done    func(Grant, error)
}

// Durable finishes the operation: as commitGrant, or Release, would.
func (o *pendingOp) Durable(err error) {
	defer o.m.leave()
	if o.release {
		if err != nil {
			err = fmt.Errorf("lease: record release of %q: %w", o.k.n, err)
		}
		o.done(Grant{}, err)
		return
	}
	o.done(o.m.settleGrant(o.k, o.g, o.out, o.prev, o.writing, err))
}

// loaded returns exchange x if it is loaded, without waiting for a load.
func (m *Manager) loaded(x string) *exchange {
	v, ok := m.xs.Load(x)
	if !ok {
		return nil
	}
	ex := v.(*exchange)
	select {
	case <-ex.ready:
	default:
		return nil
	}
	if ex.err != nil {
		return nil
	}
	return ex
}

// queue records o's line, with the shard lock held, for the flusher to
// finish o. A line the journal refuses is finished by the caller once the
// lock is released (o.Durable(err)).
func (m *Manager) queue(ex *exchange, line []byte, o *pendingOp) error {
	ex.log.Touch()
	return m.j.AppendLine(ex.part, append(line, '\n'), o)
}

// begun is how begin left a fast-path operation.
type begun int

const (
	begunLocked   begun = iota // admitted: the manager entered, the shard locked
	begunAnswered              // refused, and done told so
	begunWait                  // nothing done: the operation must wait
)

// fastOp is an operation begin admitted.
type fastOp struct {
	m    *Manager
	k    key
	ex   *exchange
	s    *shard
	now  time.Time
	done func(Grant, error)
}

// begin validates an operation by agentID on name (check, when set, after
// the ids), admits it and locks its shard.
func (m *Manager) begin(exchangeID, agentID, name string, check func() error, done func(Grant, error)) (fastOp, begun) {
	k, err := validate(exchangeID, agentID, name)
	switch {
	case err != nil:
	case agentID == "":
		err = fmt.Errorf("%w: empty agent id", ErrInvalidID)
	case check != nil:
		err = check()
	}
	if err == nil {
		err = m.enter()
	}
	if err != nil {
		done(Grant{}, err)
		return fastOp{}, begunAnswered
	}
	ex := m.loaded(k.x)
	if ex == nil {
		m.leave()
		return fastOp{}, begunWait
	}
	op := fastOp{m: m, k: k, ex: ex, s: m.shard(k), done: done}
	op.s.mu.Lock()
	op.now = m.cfg.Now()
	return op, begunLocked
}

// refuse ends op, still locked, with err.
func (op fastOp) refuse(err error) bool {
	op.s.mu.Unlock()
	op.m.leave()
	op.done(Grant{}, err)
	return true
}

// record queues o's line and unlocks; freeing, when set, runs after the
// line is queued and before the unlock.
func (op fastOp) record(line []byte, o *pendingOp, freeing func()) bool {
	err := op.m.queue(op.ex, line, o)
	if freeing != nil {
		freeing()
	}
	op.s.mu.Unlock()
	if err != nil {
		o.Durable(err)
	}
	return true
}

// startAcquire is Acquire without waiting: see above.
func (m *Manager) startAcquire(exchangeID, agentID, name string, ttl time.Duration, done func(Grant, error)) bool {
	op, b := m.begin(exchangeID, agentID, name, func() error { return m.checkTTL(ttl) }, done)
	if b != begunLocked {
		return b == begunAnswered
	}
	k := op.k
	e, out, prev := m.tryLocked(op.s, op.ex, k, agentID, ttl, op.now)
	if out == outHeld {
		// AcquireWait answers an acquire that does not wait once the
		// holder's grant is settled: that takes waiting.
		if e.writing != nil {
			op.s.mu.Unlock()
			m.leave()
			return false
		}
		return op.refuse(e.heldError(k))
	}
	o := &pendingOp{m: m, k: k, g: e.grant(k), out: out, prev: prev, done: done}
	if out == outGranted {
		o.writing = e.writing
	}
	return op.record(grantRecord(k, o.g, op.now), o, nil)
}

// startRenew is Renew without waiting: see above.
func (m *Manager) startRenew(exchangeID, agentID, name string, token uint64, ttl time.Duration, done func(Grant, error)) bool {
	op, b := m.begin(exchangeID, agentID, name, func() error {
		if token == 0 {
			return ErrInvalidToken
		}
		return m.checkTTL(ttl)
	}, done)
	if b != begunLocked {
		return b == begunAnswered
	}
	k := op.k
	e := op.s.m[k]
	if err := checkHeld(e, k, agentID, token, op.now); err != nil {
		return op.refuse(err)
	}
	o := &pendingOp{m: m, k: k, out: outRenewed, prev: e.deadline, done: done}
	if d := op.now.Add(ttl); d.After(e.deadline) {
		e.deadline = d
	}
	o.g = e.grant(k)
	return op.record(grantRecord(k, o.g, op.now), o, nil)
}

// startRelease is Release without waiting: see above.
func (m *Manager) startRelease(exchangeID, agentID, name string, token uint64, done func(Grant, error)) bool {
	op, b := m.begin(exchangeID, agentID, name, nil, done)
	if b != begunLocked {
		return b == begunAnswered
	}
	k := op.k
	e := op.s.m[k]
	if err := checkHeld(e, k, agentID, token, op.now); err != nil {
		return op.refuse(err)
	}
	// Queued before freeLocked, which may hand the lease on and queue the
	// next grant.
	return op.record(releaseRecord(k, e.token), &pendingOp{m: m, k: k, release: true, done: done},
		func() { m.freeLocked(op.s, e, k, op.now) })
}

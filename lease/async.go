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

// startAcquire is Acquire without waiting: see above.
func (m *Manager) startAcquire(exchangeID, agentID, name string, ttl time.Duration, done func(Grant, error)) bool {
	k, err := validate(exchangeID, agentID, name)
	switch {
	case err != nil:
	case agentID == "":
		err = fmt.Errorf("%w: empty agent id", ErrInvalidID)
	default:
		err = m.checkTTL(ttl)
	}
	if err == nil {
		err = m.enter()
	}
	if err != nil {
		done(Grant{}, err)
		return true
	}
	ex := m.loaded(k.x)
	if ex == nil {
		m.leave()
		return false
	}
	s := m.shard(k)
	s.mu.Lock()
	now := m.cfg.Now()
	e, out, prev := m.tryLocked(s, ex, k, agentID, ttl, now)
	if out == outHeld {
		// AcquireWait answers an acquire that does not wait once the
		// holder's grant is settled: that takes waiting.
		if e.writing != nil {
			s.mu.Unlock()
			m.leave()
			return false
		}
		he := e.heldError(k)
		s.mu.Unlock()
		m.leave()
		done(Grant{}, he)
		return true
	}
	o := &pendingOp{m: m, k: k, g: e.grant(k), out: out, prev: prev, done: done}
	if out == outGranted {
		o.writing = e.writing
	}
	err = m.queue(ex, grantRecord(k, o.g, now), o)
	s.mu.Unlock()
	if err != nil {
		o.Durable(err)
	}
	return true
}

// startRenew is Renew without waiting: see above.
func (m *Manager) startRenew(exchangeID, agentID, name string, token uint64, ttl time.Duration, done func(Grant, error)) bool {
	k, err := validate(exchangeID, agentID, name)
	switch {
	case err != nil:
	case agentID == "":
		err = fmt.Errorf("%w: empty agent id", ErrInvalidID)
	case token == 0:
		err = ErrInvalidToken
	default:
		err = m.checkTTL(ttl)
	}
	if err == nil {
		err = m.enter()
	}
	if err != nil {
		done(Grant{}, err)
		return true
	}
	ex := m.loaded(k.x)
	if ex == nil {
		m.leave()
		return false
	}
	s := m.shard(k)
	s.mu.Lock()
	now := m.cfg.Now()
	e := s.m[k]
	if err := checkHeld(e, k, agentID, token, now); err != nil {
		s.mu.Unlock()
		m.leave()
		done(Grant{}, err)
		return true
	}
	o := &pendingOp{m: m, k: k, out: outRenewed, prev: e.deadline, done: done}
	if d := now.Add(ttl); d.After(e.deadline) {
		e.deadline = d
	}
	o.g = e.grant(k)
	err = m.queue(ex, grantRecord(k, o.g, now), o)
	s.mu.Unlock()
	if err != nil {
		o.Durable(err)
	}
	return true
}

// startRelease is Release without waiting: see above.
func (m *Manager) startRelease(exchangeID, agentID, name string, token uint64, done func(Grant, error)) bool {
	k, err := validate(exchangeID, agentID, name)
	if err == nil && agentID == "" {
		err = fmt.Errorf("%w: empty agent id", ErrInvalidID)
	}
	if err == nil {
		err = m.enter()
	}
	if err != nil {
		done(Grant{}, err)
		return true
	}
	ex := m.loaded(k.x)
	if ex == nil {
		m.leave()
		return false
	}
	s := m.shard(k)
	s.mu.Lock()
	now := m.cfg.Now()
	e := s.m[k]
	if err := checkHeld(e, k, agentID, token, now); err != nil {
		s.mu.Unlock()
		m.leave()
		done(Grant{}, err)
		return true
	}
	o := &pendingOp{m: m, k: k, release: true, done: done}
	// Queued before freeLocked, which may hand the lease on and queue the
	// next grant.
	err = m.queue(ex, releaseRecord(k, e.token), o)
	m.freeLocked(s, e, k, now)
	s.mu.Unlock()
	if err != nil {
		o.Durable(err)
	}
	return true
}

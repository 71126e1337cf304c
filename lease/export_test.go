package lease

import "context"

// CanonicalName and MaxNameLen are open to the tests of the name rules.
var CanonicalName = canonicalName

const MaxNameLen = maxNameLen

// Compact folds the journal into a snapshot now, as the background loop
// does every Config.CompactInterval.
func (m *Manager) Compact(ctx context.Context) error {
	if err := m.enter(); err != nil {
		return err
	}
	defer m.leave()
	return m.compact(ctx)
}

// Crash stops m the way a killed process would: background work stops and
// queued journal writes finish, but no snapshot is written and nothing else
// is tidied up.
func (m *Manager) Crash() {
	m.closeOnce.Do(func() { close(m.done) })
	m.closeMu.Lock()
	m.closed = true
	m.closeMu.Unlock()
	m.wg.Wait()
	_ = m.j.Close(context.Background())
}

// Waiters reports how many blocking acquires are queued on name.
func (m *Manager) Waiters(exchangeID, name string) int {
	n, _ := canonicalName(name)
	k := key{exchangeID, n}
	s := m.shard(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	if e := s.m[k]; e != nil {
		return len(e.waiters)
	}
	return 0
}

// Connected reports whether the client's calls go over its lease
// WebSocket now.
func (c *Client) Connected() bool { return c.fc.Load() != nil }

// AppendString is the JSON string encoder of the lease frames' answers.
var AppendString = appendString

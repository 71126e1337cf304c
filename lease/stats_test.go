package lease_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/lease"
)

func TestManager_Stats(t *testing.T) {
	ctx := context.Background()
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	m, err := lease.New(ctx, lease.Config{Now: clock, CompactInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(ctx)

	if _, err := m.Acquire(ctx, "x", "alice", "a", time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Acquire(ctx, "x", "alice", "b", time.Minute); err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Held != 2 || st.Waiters != 0 || st.Expired != 0 {
		t.Fatalf("two held: %+v", st)
	}
	now.Add(int64(2 * time.Second)) // "a" runs out
	if st := m.Stats(); st.Held != 1 {
		t.Fatalf("after a's deadline: %+v", st)
	}
	if _, err := m.Acquire(ctx, "x", "bob", "a", time.Minute); err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Held != 2 || st.Expired != 1 {
		t.Fatalf("bob took the expired lease: %+v", st)
	}

	// A waiter is counted while it waits, and not once it is served.
	var wg sync.WaitGroup
	wg.Go(func() {
		if _, err := m.AcquireWait(ctx, "x", "carol", "b", time.Minute, 30*time.Second); err != nil {
			t.Error(err)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); m.Stats().Waiters != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waiter never counted: %+v", m.Stats())
		}
	}
	g, err := m.Acquire(ctx, "x", "alice", "b", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Release(ctx, "x", "alice", "b", g.Token); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if st := m.Stats(); st.Held != 2 || st.Waiters != 0 || st.Expired != 1 {
		t.Fatalf("carol served: %+v", st)
	}
}

// Stats is what a metrics scrape reads: leases live now, callers waiting
// in line, and leases that ran out.
func ExampleManager_Stats() {
	ctx := context.Background()
	m, _ := lease.New(ctx, lease.Config{})
	defer m.Close(ctx)
	m.Acquire(ctx, "home", "alice", "src/main.go", time.Minute)
	st := m.Stats()
	fmt.Println(st.Held, st.Waiters, st.Expired)
	// Output: 1 0 0
}

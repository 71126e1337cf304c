package mailbus

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Messages leave the exchange's table once no inbox refers to them, a
// whole chunk at a time, whichever retention dropped them (count retention
// as soon as the next chunk fills, age retention at a sweep); those still
// in an inbox stay readable.
func TestMsgTableFreesWhatNoInboxHolds(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	// Only this test sweeps: the bus's own sweeper would trim the table
	// before the first look.
	sweepEvery = time.Hour
	defer func() { sweepEvery = 0 }()
	b, err := New(context.Background(), Config{RetentionCount: 5, RetentionAge: time.Hour, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	if err := b.Subscribe(ctx, "x1", "b", "task.*"); err != nil {
		t.Fatal(err)
	}
	if err := b.Subscribe(ctx, "x1", "c", "task.*"); err != nil {
		t.Fatal(err)
	}
	const total = 3*chunkSize + 1
	for i := range total {
		m := Message{Type: "task.created", Payload: []byte(fmt.Sprintf(`{"n":%d}`, i))}
		switch i % 3 {
		case 1:
			m.Type = "status.update" // reaches nobody
		case 2:
			m.AckRequired = true
		}
		if _, err := b.Publish(ctx, "x1", "a", m); err != nil {
			t.Fatal(err)
		}
	}
	ex, err := b.exchange(ctx, "x1")
	if err != nil {
		t.Fatal(err)
	}
	live := func() int {
		ex.mu.Lock()
		defer ex.mu.Unlock()
		return ex.msgs.live()
	}
	// Count retention kept the last 5 task messages of each inbox: they sit
	// in the last full chunk and the partial one after it. The chunks
	// before were freed as each next one filled, with no sweep: a busy
	// bus does not hold a sweep interval's worth of mail.
	if got := live(); got != chunkSize+1 {
		t.Fatalf("before any sweep the table holds %d messages, want %d", got, chunkSize+1)
	}
	ex.sweep()
	if got := live(); got != chunkSize+1 {
		t.Errorf("after count retention the table holds %d messages, want %d", got, chunkSize+1)
	}
	for _, agent := range []string{"b", "c"} {
		msgs, _, err := b.Inbox(ctx, "x1", agent, 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != 5 {
			t.Fatalf("%s's inbox has %d messages, want 5", agent, len(msgs))
		}
		last := msgs[len(msgs)-1]
		if want := fmt.Sprintf(`{"n":%d}`, total-1); string(last.Payload) != want || last.Seq != 2*chunkSize+1 {
			t.Errorf("%s's last message is %s seq %d, want %s seq %d", agent, last.Payload, last.Seq, want, 2*chunkSize+1)
		}
		if err := b.Acknowledge(ctx, "x1", agent, msgs[len(msgs)-2].ID); err != nil {
			t.Errorf("acknowledge a retained message: %v", err)
		}
	}

	// Age retention empties the inboxes; the chunk still being filled
	// stays.
	mu.Lock()
	now = now.Add(2 * time.Hour)
	mu.Unlock()
	ex.sweep()
	ex.sweep()
	if got := live(); got != 1 {
		t.Errorf("after age retention the table holds %d messages, want 1", got)
	}
	if _, err := b.Publish(ctx, "x1", "a", Message{Type: "task.created"}); err != nil {
		t.Fatal(err)
	}
	if msgs, _, err := b.Inbox(ctx, "x1", "b", 0, 100); err != nil || len(msgs) != 1 {
		t.Errorf("inbox after new mail: %d messages, %v; want 1", len(msgs), err)
	}
}

// live reports how many messages the table holds.
func (t *msgTable) live() int {
	d := t.dir.Load()
	if d == nil {
		return 0
	}
	n := 0
	for _, c := range d.chunks {
		if c != nil {
			for _, st := range c.msgs {
				if st != nil {
					n++
				}
			}
		}
	}
	return n
}

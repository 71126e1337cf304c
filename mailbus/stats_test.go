package mailbus_test

import (
	"context"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mailbus"
)

func TestBus_Stats(t *testing.T) {
	ctx := context.Background()
	bus, err := mailbus.New(ctx, mailbus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer bus.Close(ctx)
	for range 2 {
		if _, err := bus.SendTo(ctx, "sx", "alice", "bob", mailbus.Message{Type: "task.assigned"}); err != nil {
			t.Fatal(err)
		}
	}
	if st := bus.Stats(); st.Exchanges != 1 || st.Connections != 0 || st.InboxDepth != 2 {
		t.Fatalf("two messages for bob, offline: %+v", st)
	}
	bob, err := bus.Agent(mailbus.LocalConfig{Exchange: "sx", Agent: "bob"})
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	// Once connected, bob's inbox is handed to his session.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		st := bus.Stats()
		if st.Connections == 1 && st.InboxDepth == 0 && st.Delivered == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("bob connected: %+v", st)
		}
	}
	if err := bob.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := bus.Stats(); st.Connections != 0 || st.Delivered != 2 || st.Redelivered != 0 {
		t.Fatalf("bob gone: %+v, want 2 delivered, none again", st)
	}
}

package mailbus_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/meatspace-exchange/mess/internal/backends"
	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/storage"
)

var owner = backends.Owner

// On both backends: an offline agent's inbox survives a restart, and a
// bus replaced by a new owner (while it still believes it owns the store)
// acknowledges no more mail, while the new owner serves everything the
// old one acknowledged, in seq order.
func TestBackends_InboxAndTakeover(t *testing.T) {
	backends.Each(t, func(t *testing.T, open backends.Opener) {
		ctx := context.Background()
		st := open(t)
		oa := owner(t, st, "a")
		a, err := mailbus.New(ctx, mailbus.Config{Store: st, Fence: oa, SnapshotEvery: 7})
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close(ctx)
		const sent = 25
		for i := range sent {
			if _, err := a.SendTo(ctx, "x", "alice", "bob", mailbus.Message{Type: "note", Payload: fmt.Appendf(nil, `{"n":%d}`, i)}); err != nil {
				t.Fatal(err)
			}
		}
		if err := oa.Release(ctx); err != nil { // the standby may take over
			t.Fatal(err)
		}
		ob := owner(t, open(t), "b")
		b, err := mailbus.New(ctx, mailbus.Config{Store: open(t), Fence: ob})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close(ctx)
		msgs, _, err := b.Inbox(ctx, "x", "bob", 0, 100) // loads, so fences, the exchange
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != sent {
			t.Fatalf("the new owner has %d of %d messages", len(msgs), sent)
		}
		for i, m := range msgs {
			if want := fmt.Sprintf(`{"n":%d}`, i); string(m.Payload) != want || (i > 0 && m.Seq <= msgs[i-1].Seq) {
				t.Fatalf("message %d: %s seq %d", i, m.Payload, m.Seq)
			}
		}
		if _, err := a.SendTo(ctx, "x", "alice", "bob", mailbus.Message{Type: "note", Payload: []byte(`{"n":"late"}`)}); err == nil {
			t.Fatal("the replaced bus acknowledged a message")
		}
		if _, err := b.SendTo(ctx, "x", "alice", "bob", mailbus.Message{Type: "note", Payload: []byte(`{"n":"new"}`)}); err != nil {
			t.Fatal(err)
		}
		prev := msgs[sent-1].Seq
		msgs, _, err = b.Inbox(ctx, "x", "bob", 0, 100)
		if err != nil {
			t.Fatal(err)
		}
		if len(msgs) != sent+1 || string(msgs[sent].Payload) != `{"n":"new"}` || msgs[sent].Seq <= prev {
			t.Fatalf("after the takeover the inbox holds %d messages", len(msgs))
		}
		if _, err := journal.Audit(ctx, open(t), "mailbus/x/log", true); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(oa.Valid(), storage.ErrFenced) {
			t.Fatal("the replaced owner is still valid after its write met the fence")
		}
	})
}

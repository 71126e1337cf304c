package mailbus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/storage"
)

// Ensure an inbox is bounded by bytes: the oldest messages go first,
// acknowledged or not, the newest stays even when it alone is over the
// bound, and a restart drops the same ones.
func TestBus_RetentionBytes(t *testing.T) {
	const limit = 10 << 10
	dir := t.TempDir()
	e := startEnvDir(t, mailbus.Config{RetentionBytes: limit}, dir)
	ids := make([]string, 20)
	for i := range ids {
		var sent mailbus.Message
		m := mailbus.Message{Type: "j", Payload: json.RawMessage(fmt.Sprintf(`{"i":%d,"pad":%q}`, i, strings.Repeat("x", 2000))), AckRequired: true}
		if code := post(t, "POST", e.url("ex", "send"), key("ex", "b"), mailbus.SendRequest{TargetAgent: "w", Message: m}, &sent); code != 200 {
			t.Fatalf("send %d = %d", i, code)
		}
		ids[i] = sent.ID
	}
	check := func(e *testEnv) {
		t.Helper()
		var res mailbus.InboxResponse
		post(t, "GET", e.url("ex", "inbox?since=0&limit=1000"), key("ex", "w"), nil, &res)
		n := len(res.Messages)
		if n < 2 || n > 5 || res.Messages[n-1].Seq != 20 || res.Messages[0].Seq != uint64(21-n) {
			t.Fatalf("inbox holds %d messages, seqs %d..%d; want the newest 2..5 (10 KiB of 2 KiB)", n, res.Messages[0].Seq, res.Messages[n-1].Seq)
		}
		// Dropped unacknowledged: gone for good, not redelivered.
		if code := post(t, "POST", e.url("ex", "acknowledge"), key("ex", "w"), mailbus.AckRequest{MessageID: ids[0]}, nil); code != 404 {
			t.Errorf("acknowledge a dropped message = %d, want 404", code)
		}
		if code := post(t, "POST", e.url("ex", "acknowledge"), key("ex", "w"), mailbus.AckRequest{MessageID: ids[19]}, nil); code != 200 {
			t.Errorf("acknowledge a kept message = %d, want 200", code)
		}
	}
	check(e)
	e.stop()
	check(startEnvDir(t, mailbus.Config{RetentionBytes: limit}, dir))

	// One message over the bound on its own is still delivered and kept.
	e3 := startEnv(t, mailbus.Config{RetentionBytes: 100})
	m := mailbus.Message{Type: "j", Payload: json.RawMessage(`{"pad":"` + strings.Repeat("y", 500) + `"}`)}
	for range 3 {
		if code := post(t, "POST", e3.url("ex", "send"), key("ex", "b"), mailbus.SendRequest{TargetAgent: "w", Message: m}, nil); code != 200 {
			t.Fatalf("send = %d", code)
		}
	}
	var res mailbus.InboxResponse
	post(t, "GET", e3.url("ex", "inbox?since=0"), key("ex", "w"), nil, &res)
	if len(res.Messages) != 1 || res.Messages[0].Seq != 3 {
		t.Fatalf("inbox %+v, want only the newest", res.Messages)
	}
}

// Ensure a message published to many agents is held once, and its
// payload once: the heap grows by about the payloads sent, not by that
// times the recipients.
func TestBus_BroadcastHeldOnce(t *testing.T) {
	st, err := storage.NewFS(t.TempDir()) // the journal stays off the heap
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	ctx := context.Background()
	b, err := mailbus.New(ctx, mailbus.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	const recipients, msgs, size = 20, 40, 1 << 20
	for i := range recipients {
		if err := b.SetSubscriptions(ctx, "ex", fmt.Sprintf("a%d", i), []string{"big"}); err != nil {
			t.Fatal(err)
		}
	}
	payload := json.RawMessage(`{"pad":"` + strings.Repeat("z", size-10) + `"}`)
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	for range msgs {
		if _, err := b.Publish(ctx, "ex", "sender", mailbus.Message{Type: "big", Payload: payload}); err != nil {
			t.Fatal(err)
		}
	}
	grew := int64(heap()) - int64(before)
	// Held once per recipient would be 20x; payload held twice, 2x.
	if sent := int64(msgs * size); grew > sent*3/2+8<<20 {
		t.Errorf("heap grew %d MiB for %d MiB of mail to %d agents", grew>>20, sent>>20, recipients)
	}
	msgsIn, _, err := b.Inbox(ctx, "ex", "a7", -1, 1000)
	if err != nil || len(msgsIn) != msgs {
		t.Fatalf("a7's inbox: %d messages, %v", len(msgsIn), err)
	}
	runtime.KeepAlive(payload)
}

package mailbus

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// A snapshot encoded by hand decodes to what the same state encoded
// through reflection decodes to: messages with escapes, non-ASCII text,
// correlation ids and acknowledgements, and agents with and without
// subscriptions.
func TestSnapshotEncodingMatchesReflection(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 3, 4, 5, 6, 7, 891234567, time.UTC)
	b, err := New(ctx, Config{SnapshotEvery: -1, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	if err := b.SetSubscriptions(ctx, "x", "subbed", []string{"task.*", "a.b"}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetSubscriptions(ctx, "x", "none", nil); err != nil {
		t.Fatal(err)
	}
	msgs := []Message{
		{Type: "task.created", Payload: json.RawMessage(`{"s":"quote \" backslash \\ tab \t <html> & é ✓","n":[1,2.5,null]}`)},
		{Type: "task.updated", To: "w", CorrelationID: "corr \"1\" é", AckRequired: true},
		{Type: "a.b", ID: "given-id_1", To: "w", AckRequired: true, Timestamp: now.Add(-time.Hour)},
		{Type: "other.kind", Payload: json.RawMessage(`{}`)},
	}
	var ackID string
	for i, m := range msgs {
		out, err := b.Publish(ctx, "x", "sender", m)
		if err != nil {
			t.Fatal(err)
		}
		if i == 1 {
			ackID = out.ID
		}
	}
	if err := b.Acknowledge(ctx, "x", "w", ackID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Inbox(ctx, "x", "w", 1, 10); err != nil { // moves w's cursor
		t.Fatal(err)
	}
	ex, err := b.exchange(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	c := ex.capture()
	if len(c.msgs) != len(msgs) {
		t.Fatalf("captured %d messages, want %d", len(c.msgs), len(msgs))
	}
	data := c.appendJSON(nil)
	if !json.Valid(data) {
		t.Fatalf("invalid JSON: %s", data)
	}
	var got snapshot
	if err := json.Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	want := snapshot{LSN: c.lsn, Agents: c.agents}
	for _, st := range c.msgs {
		want.Messages = append(want.Messages, snapMsg{Msg: st.msg, Recv: st.recv.UnixMilli()})
	}
	ref, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var wantDecoded snapshot
	if err := json.Unmarshal(ref, &wantDecoded); err != nil {
		t.Fatal(err)
	}
	// Equal up to the encoding of equal payloads (reflection escapes <, >
	// and &) and empty lists against absent ones.
	normalizeSnapshot(t, &got)
	normalizeSnapshot(t, &wantDecoded)
	if !reflect.DeepEqual(got, wantDecoded) {
		t.Errorf("hand-encoded snapshot decodes to\n%+v\nwant\n%+v", got, wantDecoded)
	}
	acked := false
	for _, a := range got.Agents {
		for _, e := range a.Ents {
			acked = acked || e.AckedAt != 0
		}
	}
	if !acked || got.LSN == 0 {
		t.Errorf("snapshot lacks the acknowledgement or the LSN: %s", data)
	}
}

func normalizeSnapshot(t *testing.T, s *snapshot) {
	t.Helper()
	for i := range s.Messages {
		var p any
		if err := json.Unmarshal(s.Messages[i].Msg.Payload, &p); err != nil {
			t.Fatal(err)
		}
		s.Messages[i].Msg.Payload, _ = json.Marshal(p)
	}
	for i := range s.Agents {
		if len(s.Agents[i].Subs) == 0 {
			s.Agents[i].Subs = nil
		}
		if len(s.Agents[i].Ents) == 0 {
			s.Agents[i].Ents = nil
		}
	}
}

package mailbus_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mailbus"
)

// Ensure an agent that never set its subscriptions gets every broadcast
// (Jetpack's clients cannot state any), while one that set them gets only
// what they match, an empty set included; and that this holds after a
// restart, replayed from the journal or from a snapshot.
func TestBus_NeverSubscribedGetsEveryBroadcast(t *testing.T) {
	for _, every := range []int{-1, 1} {
		t.Run(fmt.Sprint("SnapshotEvery=", every), func(t *testing.T) {
			dir := t.TempDir()
			cfg := mailbus.Config{SnapshotEvery: every}
			e := startEnvDir(t, cfg, dir)
			ctx := ctxT(t)
			if err := e.bus.Touch(ctx, "ex", "all"); err != nil {
				t.Fatal(err)
			}
			if err := e.bus.SetSubscriptions(ctx, "ex", "none", nil); err != nil {
				t.Fatal(err)
			}
			if err := e.bus.SetSubscriptions(ctx, "ex", "some", []string{"task.*"}); err != nil {
				t.Fatal(err)
			}
			publish := func(e *testEnv) {
				for _, typ := range []string{"task.created", "agent.ready", "heartbeat"} {
					if _, err := e.bus.Publish(ctx, "ex", "b", mailbus.Message{Type: typ}); err != nil {
						t.Fatal(err)
					}
				}
			}
			check := func(e *testEnv, n int) {
				t.Helper()
				for agent, want := range map[string]int{"all": 2 * n, "none": 0, "some": n, "b": 0} {
					msgs, _, err := e.bus.Inbox(ctx, "ex", agent, 0, 100)
					if err != nil || len(msgs) != want {
						t.Errorf("%s: %d messages, %v; want %d", agent, len(msgs), err, want)
					}
				}
			}
			publish(e)
			check(e, 1)
			e.stop()
			e2 := startEnvDir(t, cfg, dir)
			publish(e2)
			check(e2, 2)
		})
	}
}

// Ensure a coordination.response with action "ack", Jetpack HttpMailBus's
// only way to acknowledge, acknowledges that message for its sender and is
// still published; one naming nothing to acknowledge is published alone.
func TestBus_CoordinationResponseAcknowledges(t *testing.T) {
	clk := newFakeClock()
	e := startEnv(t, mailbus.Config{VisibilityTimeout: 40 * time.Millisecond, Now: clk.Now})
	ctx := ctxT(t)
	boss := dialRaw(t, e, "ex", "boss", "")
	job, err := e.bus.SendTo(ctx, "ex", "boss", "w", mailbus.Message{Type: "task.assigned", AckRequired: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"msg-0-00000000", job.ID} {
		p := fmt.Sprintf(`{"messageId":%q,"action":"ack"}`, id)
		if _, err := e.bus.Publish(ctx, "ex", "w", mailbus.Message{Type: mailbus.TypeCoordinationResponse, Payload: json.RawMessage(p)}); err != nil {
			t.Fatalf("ack of %s: %v", id, err)
		}
		if m := boss.message(); m.Type != mailbus.TypeCoordinationResponse || string(m.Payload) != p {
			t.Errorf("boss got %+v", m)
		}
	}
	msgs, _, err := e.bus.Inbox(ctx, "ex", "w", 0, 10)
	if err != nil || len(msgs) != 1 || msgs[0].AckedAt == nil || msgs[0].AckedBy != "w" {
		t.Fatalf("w's inbox %+v, %v; want the job acknowledged", msgs, err)
	}
	// Acknowledged: w's first connection, after the visibility timeout,
	// gets the job once, marked acknowledged, and no copy after.
	clk.Add(time.Minute)
	w := dialRaw(t, e, "ex", "w", "")
	if m := w.message(); m.ID != job.ID || m.AckedAt == nil {
		t.Errorf("w got %+v", m)
	}
	clk.Add(time.Minute)
	w.quiet(200 * time.Millisecond)
}

// Ensure a message's timestamp may be RFC 3339 or epoch milliseconds, over
// HTTP and in frames, and anything else is refused.
func TestHandler_TimestampForms(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	want := time.Date(2026, 1, 19, 17, 20, 3, 123e6, time.UTC)
	for _, ts := range []string{`1768843203123`, `1768843203123.0`, `"2026-01-19T17:20:03.123Z"`, `"2026-01-19T18:20:03.123+01:00"`} {
		var out mailbus.Message
		body := `{"id":"","type":"x.y","from":"a","payload":{},"timestamp":` + ts + `}`
		if code := post(t, "POST", e.url("ex", "publish"), key("ex", "a"), body, &out); code != http.StatusOK || !out.Timestamp.Equal(want) {
			t.Errorf("timestamp %s: %d, stored %v", ts, code, out.Timestamp)
		}
	}
	for _, ts := range []string{`"yesterday"`, `true`, `1e300`, `{}`} {
		var out map[string]any
		body := `{"type":"x.y","timestamp":` + ts + `}`
		if code := post(t, "POST", e.url("ex", "publish"), key("ex", "a"), body, &out); code != http.StatusBadRequest {
			t.Errorf("timestamp %s: %d %v, want 400", ts, code, out)
		}
	}
	r := dialRaw(t, e, "ex", "a", "")
	r.send(map[string]any{"action": "send", "ref": "1", "targetAgent": "a", "message": map[string]any{"type": "x.y", "timestamp": 1768843203123}})
	// The reply and the delivery to oneself come in either order.
	for range 2 {
		var m struct {
			mailbus.Message
			Action string
		}
		if err := json.Unmarshal(r.next(), &m); err != nil {
			t.Fatal(err)
		}
		if m.Action == "" && !m.Timestamp.Equal(want) {
			t.Errorf("delivered timestamp %v, want %v", m.Timestamp, want)
		} else if m.Action != "" && m.Action != "accepted" {
			t.Errorf("reply %+v", m)
		}
	}
}

package mailbus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/mailbus"
)

func TestHandler_Routing(t *testing.T) {
	forEachFramePath(t, func(t *testing.T) {
		e := startEnv(t, mailbus.Config{})
		const ex = "ex1"
		all := dialRaw(t, e, ex, "all", "types=*")
		tasks := dialRaw(t, e, ex, "tasks", "types=task.*")
		created := dialRaw(t, e, ex, "created", "types=task.created")
		sender := dialRaw(t, e, ex, "sender", "types=*")

		var out mailbus.Message
		if code := post(t, "POST", e.url(ex, "publish"), key(ex, "sender"), mailbus.Message{Type: "task.created", Payload: json.RawMessage(`{"n":1}`)}, &out); code != 200 {
			t.Fatalf("publish: %d", code)
		}
		if !strings.HasPrefix(out.ID, "msg-") || len(out.ID) != len("msg-")+13+1+8 {
			t.Errorf("assigned id %q, want msg-<ms>-<8hex>", out.ID)
		}
		for name, c := range map[string]*rawConn{"all": all, "tasks": tasks, "created": created} {
			m := c.message()
			if m.ID != out.ID || m.Type != "task.created" || m.From != "sender" || m.Seq != 1 || string(m.Payload) != `{"n":1}` {
				t.Errorf("%s got %+v", name, m)
			}
		}
		// Ensure the sender does not receive its own broadcast.
		sender.quiet(100 * time.Millisecond)

		// Ensure a prefix pattern does not match a different type.
		post(t, "POST", e.url(ex, "publish"), key(ex, "sender"), mailbus.Message{Type: "agent.status"}, nil)
		if m := all.message(); m.Type != "agent.status" {
			t.Errorf("all got %s", m.Type)
		}
		tasks.quiet(100 * time.Millisecond)
		created.quiet(10 * time.Millisecond)

		// Ensure a direct message reaches only its target, by either endpoint.
		if code := post(t, "POST", e.url(ex, "send"), key(ex, "sender"), mailbus.SendRequest{TargetAgent: "created", Message: mailbus.Message{Type: "task.assigned"}}, nil); code != 200 {
			t.Fatalf("send: %d", code)
		}
		if code := post(t, "POST", e.url(ex, "publish"), key(ex, "sender"), mailbus.Message{Type: "task.assigned", To: "created"}, nil); code != 200 {
			t.Fatalf("publish with to: %d", code)
		}
		for range 2 {
			if m := created.message(); m.Type != "task.assigned" || m.To != "created" {
				t.Errorf("created got %+v", m)
			}
		}
		all.quiet(100 * time.Millisecond)
		tasks.quiet(10 * time.Millisecond)
	})
}

func TestHandler_SpoofedFromIgnored(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	r := dialRaw(t, e, "ex", "b", "types=*")
	var out mailbus.Message
	post(t, "POST", e.url("ex", "publish"), key("ex", "a"), mailbus.Message{Type: "x.y", From: "boss"}, &out)
	if out.From != "a" {
		t.Errorf("stored from %q, want a", out.From)
	}
	if m := r.message(); m.From != "a" {
		t.Errorf("received from %q, want a", m.From)
	}
	// Ensure the socket path stamps from too.
	w := dialRaw(t, e, "ex", "c", "")
	w.send(map[string]any{"action": "publish", "ref": "1", "message": map[string]any{"type": "x.y", "from": "boss"}})
	if f := w.frame(); f.Action != "accepted" || f.Ref != "1" {
		t.Fatalf("got %+v", f)
	}
	if m := r.message(); m.From != "c" {
		t.Errorf("received from %q, want c", m.From)
	}
}

func TestHandler_Auth(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	tests := []struct {
		name, key string
		want      int
	}{
		{"NoKey", "", http.StatusUnauthorized},
		{"BadKey", "nope", http.StatusUnauthorized},
		{"OtherExchange", key("other", "a"), http.StatusForbidden},
		{"Good", key("ex", "a"), http.StatusOK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body map[string]any
			if got := post(t, "POST", e.url("ex", "publish"), tc.key, mailbus.Message{Type: "a.b"}, &body); got != tc.want {
				t.Errorf("publish: %d, want %d (%v)", got, tc.want, body)
			}
			if tc.want != 200 && (body["code"] == nil || body["error"] == nil) {
				t.Errorf("error body %v", body)
			}
			u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http")
			hdr := http.Header{}
			if tc.key != "" {
				hdr.Set("Authorization", "Bearer "+tc.key)
			}
			c, resp, err := websocket.Dial(ctxT(t), u, &websocket.DialOptions{HTTPHeader: hdr})
			if tc.want == 200 {
				if err != nil {
					t.Fatal(err)
				}
				c.CloseNow()
				return
			}
			if err == nil || resp == nil || resp.StatusCode != tc.want {
				t.Errorf("subscribe: err %v resp %v, want %d", err, resp, tc.want)
			}
		})
	}
}

// Ensure a refused WebSocket handshake is answered with a JSON error and
// changes nothing, not even the subscriptions its query names.
func TestHandler_RefusedHandshake(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	ctx := ctxT(t)
	k := key("ex", "a")
	if err := e.bus.SetSubscriptions(ctx, "ex", "a", []string{"keep"}); err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if got := post(t, "GET", e.url("ex", "subscribe")+"?types=a.b", k, "", &body); got != http.StatusUpgradeRequired {
		t.Errorf("plain GET: %d %v, want 426", got, body)
	}
	if body["code"] != "upgrade_required" || body["error"] == "" {
		t.Errorf("plain GET: body %v", body)
	}
	u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http") + "?types=a.b"
	hdr := http.Header{"Authorization": {"Bearer " + k}, "Origin": {"https://evil.example"}}
	if _, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: hdr}); err == nil || resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("foreign origin: err %v resp %v, want 403", err, resp)
	} else if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("foreign origin: Content-Type %q", ct)
	}
	if got, _ := e.bus.Subscriptions(ctx, "ex", "a"); !slices.Equal(got, []string{"keep"}) {
		t.Errorf("subscriptions after refused handshakes: %v", got)
	}
	if got := post(t, "GET", e.url("ex", "subscribe")+"?types=a%20b", k, "", &body); got != http.StatusBadRequest {
		t.Errorf("bad pattern: %d %v, want 400", got, body)
	}
}

func TestHandler_BadInput(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	k := key("ex", "a")
	tests := []struct {
		name, method, op string
		body             any
		want             int
	}{
		{"MalformedJSON", "POST", "publish", `{"type":`, 400},
		{"BadType", "POST", "publish", mailbus.Message{Type: "bad type"}, 400},
		{"PayloadNotObject", "POST", "publish", `{"type":"a.b","payload":[1]}`, 400},
		{"BadTarget", "POST", "send", mailbus.SendRequest{TargetAgent: "../x", Message: mailbus.Message{Type: "a"}}, 400},
		{"TooLarge", "POST", "publish", `{"type":"a.b","payload":{"x":"` + strings.Repeat("x", 2<<20) + `"}}`, 413},
		{"AckOther", "POST", "acknowledge", mailbus.AckRequest{MessageID: "m", AgentID: "b"}, 403},
		{"AckUnknown", "POST", "acknowledge", mailbus.AckRequest{MessageID: "m"}, 404},
		{"WrongMethod", "GET", "publish", nil, 405},
		{"NoEndpoint", "POST", "nope", `{}`, 404},
		{"BadSince", "GET", "inbox?since=-1", nil, 400},
		{"BadPattern", "PUT", "subscriptions", mailbus.SubscriptionsBody{Types: []string{"a.*.b"}}, 400},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body map[string]any
			if got := post(t, tc.method, e.url("ex", tc.op), k, tc.body, &body); got != tc.want {
				t.Errorf("got %d, want %d (%v)", got, tc.want, body)
			}
			if body["code"] == nil {
				t.Errorf("no code in %v", body)
			}
		})
	}
}

func TestHandler_MalformedFrames(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	r := dialRaw(t, e, "ex", "a", "types=*")
	for _, bad := range []string{`{nope`, `{"action":"fly"}`, `{"action":"subscribe","type":"a b"}`, `{"action":"send","targetAgent":"b"}`, `{"action":"publish","message":{"type":""}}`,
		`{"action":"publish","ref":"` + strings.Repeat("r", 129) + `","message":{"type":"t"}}`} {
		if err := r.c.Write(ctxT(t), websocket.MessageText, []byte(bad)); err != nil {
			t.Fatal(err)
		}
		if f := r.frame(); f.Action != "error" || f.Code == "" {
			t.Errorf("%s: got %+v, want an error frame", bad, f)
		} else {
			t.Log(bad, f)
		}
	}
	// Ensure the connection still works.
	r.send(map[string]any{"action": "send", "ref": "x", "targetAgent": "a", "message": map[string]any{"type": "t"}})
	var accepted, delivered bool
	for !accepted || !delivered {
		var f mailbus.Frame
		json.Unmarshal(r.next(), &f)
		switch {
		case f.Action == "accepted" && f.Ref == "x" && f.ID != "":
			accepted = true
		case f.Action == "" && f.Type == "t":
			delivered = true
		default:
			t.Fatalf("unexpected frame %+v", f)
		}
	}
}

func TestHandler_SubscribeFrames(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	r := dialRaw(t, e, "ex", "a", "")
	r.send(map[string]any{"action": "subscribe", "type": "task.*"})
	if f := r.frame(); f.Action != "subscribed" {
		t.Fatalf("got %+v", f)
	}
	post(t, "POST", e.url("ex", "publish"), key("ex", "b"), mailbus.Message{Type: "task.created"}, nil)
	if m := r.message(); m.Type != "task.created" {
		t.Fatalf("got %+v", m)
	}
	r.send(map[string]any{"action": "unsubscribe", "type": "task.*"})
	if f := r.frame(); f.Action != "unsubscribed" {
		t.Fatalf("got %+v", f)
	}
	post(t, "POST", e.url("ex", "publish"), key("ex", "b"), mailbus.Message{Type: "task.created"}, nil)
	r.quiet(150 * time.Millisecond)
}

func TestHandler_OfflineInOrder(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	// The subscription is durable: it holds while the agent is offline.
	if code := post(t, "PUT", e.url("ex", "subscriptions"), key("ex", "w"), mailbus.SubscriptionsBody{Types: []string{"task.*"}}, nil); code != 200 {
		t.Fatal(code)
	}
	const n = 50
	for i := range n {
		m := mailbus.Message{Type: "task.created", Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))}
		if i%2 == 1 {
			post(t, "POST", e.url("ex", "send"), key("ex", "boss"), mailbus.SendRequest{TargetAgent: "w", Message: m}, nil)
		} else {
			post(t, "POST", e.url("ex", "publish"), key("ex", "boss"), m, nil)
		}
	}
	post(t, "POST", e.url("ex", "publish"), key("ex", "boss"), mailbus.Message{Type: "other.thing"}, nil)
	r := dialRaw(t, e, "ex", "w", "")
	for i := range n {
		m := r.message()
		var p struct{ I int }
		json.Unmarshal(m.Payload, &p)
		if p.I != i || m.Seq != uint64(i+1) {
			t.Fatalf("message %d: got i=%d seq=%d", i, p.I, m.Seq)
		}
	}
	r.quiet(100 * time.Millisecond)

	// Resuming with since gives exactly what follows.
	r.c.CloseNow()
	r2 := dialRaw(t, e, "ex", "w", "since=45")
	for i := 46; i <= n; i++ {
		if m := r2.message(); m.Seq != uint64(i) {
			t.Fatalf("got seq %d, want %d", m.Seq, i)
		}
	}
	r2.quiet(100 * time.Millisecond)
}

func TestHandler_Batch(t *testing.T) {
	forEachFramePath(t, func(t *testing.T) {
		e := startEnv(t, mailbus.Config{})
		for range 20 {
			post(t, "POST", e.url("ex", "send"), key("ex", "a"), mailbus.SendRequest{TargetAgent: "b", Message: mailbus.Message{Type: "x"}}, nil)
		}
		r := dialRaw(t, e, "ex", "b", "batch=1")
		var got []mailbus.Message
		for len(got) < 20 {
			data := r.next()
			if data[0] == '[' {
				var ms []mailbus.Message
				if err := json.Unmarshal(data, &ms); err != nil {
					t.Fatal(err)
				}
				got = append(got, ms...)
			} else {
				var m mailbus.Message
				json.Unmarshal(data, &m)
				got = append(got, m)
			}
		}
		for i, m := range got {
			if m.Seq != uint64(i+1) {
				t.Fatalf("message %d has seq %d", i, m.Seq)
			}
		}
	})
}

func TestHandler_AckRedelivery(t *testing.T) {
	forEachFramePath(t, func(t *testing.T) {
		clk := newFakeClock()
		e := startEnv(t, mailbus.Config{VisibilityTimeout: 40 * time.Millisecond, Now: clk.Now})
		r := dialRaw(t, e, "ex", "w", "")
		var sent mailbus.Message
		post(t, "POST", e.url("ex", "send"), key("ex", "boss"), mailbus.SendRequest{TargetAgent: "w", Message: mailbus.Message{Type: "job", AckRequired: true}}, &sent)
		first := r.message()
		if first.ID != sent.ID || !first.AckRequired {
			t.Fatalf("got %+v", first)
		}
		// Not acknowledged: it comes again, same id and seq.
		clk.Add(time.Minute)
		again := r.message()
		if again.ID != sent.ID || again.Seq != first.Seq {
			t.Fatalf("redelivery %+v", again)
		}
		if st := e.bus.Stats(); st.Delivered != 2 || st.Redelivered != 1 {
			t.Errorf("stats after one redelivery: %+v, want 2 delivered, 1 again", st)
		}
		r.send(map[string]any{"action": "ack", "messageId": sent.ID, "ref": "k"})
		if f := r.frame(); f.Action != "acked" || f.MessageID != sent.ID {
			t.Fatalf("got %+v", f)
		}
		clk.Add(time.Minute)
		r.quiet(200 * time.Millisecond)
		// Acknowledging again is fine; the HTTP path works too.
		if code := post(t, "POST", e.url("ex", "acknowledge"), key("ex", "w"), mailbus.AckRequest{MessageID: sent.ID, AgentID: "w"}, nil); code != 200 {
			t.Errorf("second ack: %d", code)
		}
		// A reconnect from the start shows the acknowledged copy.
		r.c.CloseNow()
		r2 := dialRaw(t, e, "ex", "w", "since=0")
		if m := r2.message(); m.AckedAt == nil || m.AckedBy != "w" {
			t.Errorf("replayed copy %+v, want ackedAt/ackedBy", m)
		}
	})
}

func TestHandler_AckPerRecipient(t *testing.T) {
	clk := newFakeClock()
	e := startEnv(t, mailbus.Config{VisibilityTimeout: 40 * time.Millisecond, Now: clk.Now})
	a := dialRaw(t, e, "ex", "a", "types=job")
	b := dialRaw(t, e, "ex", "b", "types=job")
	var sent mailbus.Message
	post(t, "POST", e.url("ex", "publish"), key("ex", "boss"), mailbus.Message{Type: "job", AckRequired: true}, &sent)
	a.message()
	b.message()
	a.send(map[string]any{"action": "ack", "messageId": sent.ID})
	a.frame()
	// b did not acknowledge, so only b gets it again.
	clk.Add(time.Minute)
	if m := b.message(); m.ID != sent.ID {
		t.Fatalf("b got %+v", m)
	}
	a.quiet(200 * time.Millisecond)
}

// Ensure an ackRequired message cannot reuse the id of one a recipient has
// not acknowledged: the ack could not tell them apart, and the earlier one
// would stop being redelivered.
// Ensure a since beyond the last seq does not make the server skip the
// mail that comes next.
func TestHandler_SinceBeyondInbox(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	r := dialRaw(t, e, "ex", "w", "since=1000")
	post(t, "POST", e.url("ex", "send"), key("ex", "boss"), mailbus.SendRequest{TargetAgent: "w", Message: mailbus.Message{Type: "job"}}, nil)
	if m := r.message(); m.Type != "job" || m.Seq != 1 {
		t.Errorf("got %+v, want the job as seq 1", m)
	}
}

func TestHandler_PendingIDConflict(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	job := mailbus.SendRequest{TargetAgent: "c", Message: mailbus.Message{ID: "x", Type: "job", AckRequired: true}}
	if got := post(t, "POST", e.url("ex", "send"), key("ex", "b"), job, nil); got != http.StatusOK {
		t.Fatalf("first send: %d", got)
	}
	var body map[string]any
	if got := post(t, "POST", e.url("ex", "send"), key("ex", "d"), job, &body); got != http.StatusConflict || body["code"] != "conflict" {
		t.Fatalf("second send with a pending id: %d %v, want 409 conflict", got, body)
	}
	bcast := mailbus.Message{ID: "x", Type: "job", AckRequired: true}
	if err := e.bus.Subscribe(ctxT(t), "ex", "c", "job"); err != nil {
		t.Fatal(err)
	}
	if got := post(t, "POST", e.url("ex", "publish"), key("ex", "d"), bcast, nil); got != http.StatusConflict {
		t.Fatalf("broadcast reaching c with a pending id: %d, want 409", got)
	}
	// Without ackRequired there is nothing to confuse.
	if got := post(t, "POST", e.url("ex", "send"), key("ex", "d"), mailbus.SendRequest{TargetAgent: "c", Message: mailbus.Message{ID: "x", Type: "note"}}, nil); got != http.StatusOK {
		t.Errorf("plain message with the same id: %d", got)
	}
	if got := post(t, "POST", e.url("ex", "acknowledge"), key("ex", "c"), mailbus.AckRequest{MessageID: "x"}, nil); got != http.StatusOK {
		t.Fatalf("ack: %d", got)
	}
	if got := post(t, "POST", e.url("ex", "send"), key("ex", "d"), job, nil); got != http.StatusOK {
		t.Errorf("send after the first was acknowledged: %d", got)
	}
}

func TestHandler_UnackedRedeliveredOnReconnect(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	r := dialRaw(t, e, "ex", "w", "")
	var sent mailbus.Message
	post(t, "POST", e.url("ex", "send"), key("ex", "boss"), mailbus.SendRequest{TargetAgent: "w", Message: mailbus.Message{Type: "job", AckRequired: true}}, &sent)
	m := r.message()
	r.c.CloseNow()
	r2 := dialRaw(t, e, "ex", "w", fmt.Sprintf("since=%d", m.Seq))
	if got := r2.message(); got.ID != sent.ID {
		t.Fatalf("got %+v", got)
	}
}

// Ensure a second connection of an agent is served alongside the first:
// both get every message, neither is closed, the inbox holds each message
// once, and an acknowledgement on one stops redelivery on both.
func TestHandler_SecondConnection(t *testing.T) {
	clk := newFakeClock()
	e := startEnv(t, mailbus.Config{VisibilityTimeout: 40 * time.Millisecond, Now: clk.Now})
	first := dialRaw(t, e, "ex", "a", "")
	second := dialRaw(t, e, "ex", "a", "")
	var sent [3]mailbus.Message
	for i := range sent {
		m := mailbus.Message{Type: "x", AckRequired: i == 2}
		post(t, "POST", e.url("ex", "send"), key("ex", "b"), mailbus.SendRequest{TargetAgent: "a", Message: m}, &sent[i])
		for _, c := range []*rawConn{first, second} {
			if m := c.message(); m.ID != sent[i].ID || m.Seq != uint64(i+1) {
				t.Fatalf("message %d: got %+v, want %s as seq %d", i, m, sent[i].ID, i+1)
			}
		}
	}
	msgs, _, err := e.bus.Inbox(ctxT(t), "ex", "a", 0, 100)
	if err != nil || len(msgs) != len(sent) {
		t.Fatalf("inbox: %d messages, %v; want %d", len(msgs), err, len(sent))
	}
	// Unacknowledged, the last one comes again on both; acknowledged on
	// one, on neither.
	clk.Add(time.Minute)
	for _, c := range []*rawConn{first, second} {
		if m := c.message(); m.ID != sent[2].ID {
			t.Fatalf("redelivery: got %+v", m)
		}
	}
	second.send(map[string]any{"action": "ack", "messageId": sent[2].ID})
	if f := second.frame(); f.Action != "acked" {
		t.Fatalf("ack: %+v", f)
	}
	clk.Add(time.Minute)
	first.quiet(200 * time.Millisecond)
	second.quiet(10 * time.Millisecond)
	ps, _ := e.bus.Presence(ctxT(t), "ex")
	if i := slices.IndexFunc(ps, func(p mailbus.Presence) bool { return p.AgentID == "a" }); i < 0 || !ps[i].Connected {
		t.Errorf("presence %+v, want a connected", ps)
	}
}

func TestHandler_InboxPull(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	for range 5 {
		post(t, "POST", e.url("ex", "send"), key("ex", "a"), mailbus.SendRequest{TargetAgent: "b", Message: mailbus.Message{Type: "x"}}, nil)
	}
	var res mailbus.InboxResponse
	if code := post(t, "GET", e.url("ex", "inbox?since=0&limit=3"), key("ex", "b"), nil, &res); code != 200 {
		t.Fatal(code)
	}
	if len(res.Messages) != 3 || res.Next != 3 || res.Messages[2].Seq != 3 {
		t.Fatalf("got %+v", res)
	}
	post(t, "GET", e.url("ex", fmt.Sprintf("inbox?since=%d", res.Next)), key("ex", "b"), nil, &res)
	if len(res.Messages) != 2 || res.Next != 5 {
		t.Fatalf("got %+v", res)
	}
	// Without since, the pull continues from the last confirmed position.
	post(t, "GET", e.url("ex", "inbox"), key("ex", "b"), nil, &res)
	if len(res.Messages) != 2 || res.Messages[0].Seq != 4 {
		t.Fatalf("got %+v", res)
	}
}

func TestHandler_Presence(t *testing.T) {
	clk := newFakeClock()
	e := startEnv(t, mailbus.Config{PresenceTimeout: 300 * time.Millisecond, Now: clk.Now})
	watcher := dialRaw(t, e, "ex", "watch", "types=heartbeat")
	r := dialRaw(t, e, "ex", "a", "")
	r.send(map[string]any{"action": "heartbeat"})
	if m := watcher.message(); m.Type != "heartbeat" || m.From != "a" || m.Seq != 0 {
		t.Errorf("watcher got %+v", m)
	}
	presence := func() map[string]mailbus.Presence {
		var res struct{ Agents []mailbus.Presence }
		post(t, "GET", e.url("ex", "presence"), key("ex", "watch"), nil, &res)
		out := map[string]mailbus.Presence{}
		for _, p := range res.Agents {
			out[p.AgentID] = p
		}
		return out
	}
	if p := presence()["a"]; !p.Online || !p.Connected || p.LastHeartbeat == nil {
		t.Errorf("presence %+v", p)
	}
	clk.Add(time.Second)
	if p := presence()["a"]; p.Online || !p.Connected {
		t.Errorf("after heartbeats stopped: %+v, want offline but connected", p)
	}
	// A direct heartbeat reaches its target only, live, and counts as the
	// sender's presence.
	other := dialRaw(t, e, "ex", "other", "types=heartbeat")
	post(t, "POST", e.url("ex", "send"), key("ex", "a"), mailbus.SendRequest{TargetAgent: "watch", Message: mailbus.Message{Type: "heartbeat"}}, nil)
	if m := watcher.message(); m.Type != "heartbeat" || m.From != "a" || m.Seq != 0 {
		t.Errorf("watcher got %+v from a direct heartbeat", m)
	}
	other.quiet(200 * time.Millisecond)
	if p := presence()["a"]; !p.Online {
		t.Errorf("after a direct heartbeat: %+v, want online", p)
	}
	// Heartbeats are not stored mail.
	var res mailbus.InboxResponse
	post(t, "GET", e.url("ex", "inbox?since=0"), key("ex", "watch"), nil, &res)
	if len(res.Messages) != 0 {
		t.Errorf("heartbeat stored: %+v", res.Messages)
	}
}

func TestHandler_ExchangesIsolated(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	r := dialRaw(t, e, "one", "a", "types=*")
	post(t, "POST", e.url("two", "publish"), key("two", "b"), mailbus.Message{Type: "x"}, nil)
	post(t, "POST", e.url("two", "send"), key("two", "b"), mailbus.SendRequest{TargetAgent: "a", Message: mailbus.Message{Type: "x"}}, nil)
	r.quiet(150 * time.Millisecond)
}

func TestHandler_PipelinedSends(t *testing.T) {
	forEachFramePath(t, func(t *testing.T) {
		e := startEnv(t, mailbus.Config{})
		for _, batch := range []bool{false, true} {
			t.Run(fmt.Sprint("batch=", batch), func(t *testing.T) {
				q := ""
				if batch {
					q = "batch=1"
				}
				r := dialRaw(t, e, "ex", "s", q)
				const n = 200
				for i := range n {
					r.send(map[string]any{"action": "send", "ref": fmt.Sprint(i), "targetAgent": "t", "message": map[string]any{"type": "x"}})
				}
				seen := map[string]bool{}
				for len(seen) < n {
					data := r.next()
					var fs []mailbus.Frame
					if data[0] == '[' {
						if !batch {
							t.Fatalf("array frame without batch=1: %s", data)
						}
						json.Unmarshal(data, &fs)
					} else {
						var f mailbus.Frame
						json.Unmarshal(data, &f)
						fs = []mailbus.Frame{f}
					}
					for _, f := range fs {
						if f.Action != "accepted" || seen[f.Ref] {
							t.Fatalf("unexpected reply %+v", f)
						}
						seen[f.Ref] = true
					}
				}
				// Delivered in the order the frames were read.
				var res mailbus.InboxResponse
				post(t, "GET", e.url("ex", "inbox?since=0&limit=1000"), key("ex", "t"), nil, &res)
				if len(res.Messages)%n != 0 || len(res.Messages) == 0 {
					t.Fatalf("target has %d messages", len(res.Messages))
				}
			})
		}
	})
}

func TestHandler_DeadConnectionDropped(t *testing.T) {
	forEachFramePath(t, func(t *testing.T) {
		b, err := mailbus.New(context.Background(), mailbus.Config{})
		if err != nil {
			t.Fatal(err)
		}
		h, _ := mailbus.NewHandler(b, mailbus.HandlerConfig{Auth: keyAuth{}, PingInterval: 200 * time.Millisecond})
		e := &testEnv{bus: b, srv: newServer(h)}
		defer e.stop()
		u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http")
		// A client that never reads never answers pings, like a dead peer.
		c, _, err := websocket.Dial(ctxT(t), u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key("ex", "zombie")}}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		connected := func() bool {
			ps, _ := b.Presence(ctxT(t), "ex")
			return len(ps) == 1 && ps[0].Connected
		}
		for deadline := time.Now().Add(5 * time.Second); !connected(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("never connected")
			}
		}
		for deadline := time.Now().Add(5 * time.Second); connected(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("dead connection still registered after 5s")
			}
		}
	})
}

// Ensure a client that stops reading is disconnected once a write has
// been blocked for WriteTimeout, even with pings far off, and that what it
// missed stays in its inbox.
func TestHandler_StalledReaderDropped(t *testing.T) {
	forEachFramePath(t, func(t *testing.T) {
		b, err := mailbus.New(context.Background(), mailbus.Config{})
		if err != nil {
			t.Fatal(err)
		}
		h, _ := mailbus.NewHandler(b, mailbus.HandlerConfig{Auth: keyAuth{}, PingInterval: time.Hour, WriteTimeout: 200 * time.Millisecond})
		e := &testEnv{bus: b, srv: newServer(h)}
		defer e.stop()
		u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http")
		c, _, err := websocket.Dial(ctxT(t), u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key("ex", "slow")}}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		payload := []byte(`{"blob":"` + strings.Repeat("x", 64<<10) + `"}`)
		// 16 MiB is more than loopback socket buffers hold.
		for range 256 {
			if _, err := b.SendTo(ctxT(t), "ex", "sender", "slow", mailbus.Message{Type: "bulk.data", Payload: payload}); err != nil {
				t.Fatal(err)
			}
		}
		connected := func() bool {
			ps, _ := b.Presence(ctxT(t), "ex")
			for _, p := range ps {
				if p.AgentID == "slow" {
					return p.Connected
				}
			}
			return false
		}
		for deadline := time.Now().Add(10 * time.Second); connected(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("stalled reader still connected after 10s")
			}
		}
		msgs, _, err := b.Inbox(ctxT(t), "ex", "slow", 0, 1000)
		if err != nil || len(msgs) != 256 {
			t.Fatalf("inbox after the drop: %d messages, %v; want 256", len(msgs), err)
		}
	})
}

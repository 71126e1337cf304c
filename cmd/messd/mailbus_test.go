package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
)

func mailClient(t *testing.T, ts *testServer, exchange, apiKey string) *mailbus.Client {
	t.Helper()
	c, err := mailbus.NewClient(mailbus.ClientConfig{URL: ts.URL, Exchange: exchange, APIKey: apiKey, MinBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

type inbox chan mailbus.Message

func (in inbox) handle(ctx context.Context, m mailbus.Message) error { in <- m; return nil }

func (in inbox) next(t *testing.T) mailbus.Message {
	t.Helper()
	select {
	case m := <-in:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no message within 10s")
	}
	return mailbus.Message{}
}

func (in inbox) none(t *testing.T, d time.Duration) {
	t.Helper()
	select {
	case m := <-in:
		t.Fatalf("unexpected message %+v", m)
	case <-time.After(d):
	}
}

// Ensure broadcast, direct and pattern routing work through the real
// server with WebSocket clients, and from cannot be spoofed.
func TestMailbus_Routing(t *testing.T) {
	ts := startServer(t)
	ctx := context.Background()
	keys := map[string]string{}
	for _, a := range []string{"boss", "w1", "w2", "obs"} {
		keys[a] = ts.register(t, "mb", a)
	}
	boxes := map[string]inbox{}
	clients := map[string]*mailbus.Client{}
	for a, pattern := range map[string]string{"boss": "*", "w1": "task.*", "w2": "task.created", "obs": "agent.*"} {
		boxes[a] = make(inbox, 100)
		clients[a] = mailClient(t, ts, "mb", keys[a])
		if _, err := clients[a].Subscribe(ctx, pattern, boxes[a].handle); err != nil {
			t.Fatal(err)
		}
		if err := clients[a].Connect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	pub, err := clients["boss"].Publish(ctx, mailbus.Message{Type: "task.created", From: "w1", Payload: json.RawMessage(`{"task":"T1"}`)})
	if err != nil {
		t.Fatal(err)
	}
	if pub.From != "boss" {
		t.Errorf("from %q, want boss", pub.From)
	}
	for _, a := range []string{"w1", "w2"} {
		if m := boxes[a].next(t); m.ID != pub.ID || m.From != "boss" {
			t.Errorf("%s got %+v", a, m)
		}
	}
	// A direct message of a type w1 subscribes to still reaches only w2.
	if _, err := clients["boss"].SendTo(ctx, "w2", mailbus.Message{Type: "task.created"}); err != nil {
		t.Fatal(err)
	}
	if m := boxes["w2"].next(t); m.Type != "task.created" || m.To != "w2" {
		t.Errorf("w2 got %+v", m)
	}
	boxes["w1"].none(t, 100*time.Millisecond)
	boxes["obs"].none(t, 10*time.Millisecond)
	boxes["boss"].none(t, 10*time.Millisecond)

	// An agent that is not an executor of the exchange gets no mail.
	if _, err := clients["boss"].SendTo(ctx, "ghost", mailbus.Message{Type: "x"}); !errors.Is(err, mailbus.ErrNotFound) {
		t.Errorf("send to unknown agent: %v, want ErrNotFound", err)
	}
}

// Ensure keys of another exchange and unknown keys are rejected.
func TestMailbus_Auth(t *testing.T) {
	ts := startServer(t)
	k1 := ts.register(t, "mba", "a")
	ts.register(t, "mbb", "b")
	tests := []struct {
		name, exchange, key string
		want                int
	}{
		{"WrongExchange", "mbb", k1, http.StatusForbidden},
		{"BadKey", "mba", "mess_mba_nope", http.StatusUnauthorized},
		{"NoKey", "mba", "", http.StatusUnauthorized},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var body map[string]any
			if got := ts.do(t, "POST", ts.api(tc.exchange)+"/mailbus/publish", tc.key, map[string]any{"type": "a.b"}, &body); got != tc.want {
				t.Errorf("publish: %d, want %d", got, tc.want)
			}
			hdr := http.Header{}
			if tc.key != "" {
				hdr.Set("Authorization", "Bearer "+tc.key)
			}
			u := "ws" + strings.TrimPrefix(ts.api(tc.exchange), "http") + "/mailbus/subscribe"
			c, resp, err := websocket.Dial(context.Background(), u, &websocket.DialOptions{HTTPHeader: hdr})
			if err == nil {
				c.CloseNow()
				t.Fatal("WebSocket accepted")
			}
			if resp == nil || resp.StatusCode != tc.want {
				t.Errorf("subscribe: %v, want %d", resp, tc.want)
			}
		})
	}
}

// Ensure an offline agent gets everything, in order, when it reconnects,
// including across a server restart.
func TestMailbus_OfflineAndRestart(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, withDataDir(dir))
	ctx := context.Background()
	boss, w := ts.register(t, "mbo", "boss"), ts.register(t, "mbo", "w")
	wc := mailClient(t, ts, "mbo", w)
	box := make(inbox, 1000)
	wc.Subscribe(ctx, "task.*", box.handle)
	if err := wc.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	wc.Close(ctx)
	bc := mailClient(t, ts, "mbo", boss)
	for i := range 40 {
		m := mailbus.Message{Type: "task.created", Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)), AckRequired: i%5 == 0}
		var err error
		if i%2 == 0 {
			_, err = bc.Publish(ctx, m)
		} else {
			_, err = bc.SendTo(ctx, "w", m)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	ts.Stop()
	ts = startServer(t, withDataDir(dir))
	wc = mailClient(t, ts, "mbo", w)
	wc.Subscribe(ctx, "task.*", box.handle)
	if err := wc.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		m := box.next(t)
		var p struct{ I int }
		json.Unmarshal(m.Payload, &p)
		if p.I != i {
			t.Fatalf("message %d: got i=%d", i, p.I)
		}
	}
	box.none(t, 200*time.Millisecond)
}

// Ensure a message the server accepted survives a SIGKILL that comes
// before its delivery.
func TestMailbus_Crash(t *testing.T) {
	dir := t.TempDir()
	start := func() (*exec.Cmd, *testServer) { return startChild(t, dir) }
	cmd, ts := start()
	var keys []string
	for _, a := range []string{"w", "s1", "s2", "s3", "s4"} {
		keys = append(keys, ts.register(t, "mbc", a))
	}
	ts.do(t, "PUT", ts.api("mbc")+"/mailbus/subscriptions", keys[0], map[string]any{"types": []string{"job.*"}}, nil)
	var mu sync.Mutex
	accepted := map[string]bool{}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, k := range keys[1:] {
		wg.Go(func() {
			c, _ := mailbus.NewClient(mailbus.ClientConfig{URL: ts.URL, Exchange: "mbc", APIKey: k})
			defer c.Close(context.Background())
			for i := 0; ctx.Err() == nil; i++ {
				var m mailbus.Message
				var err error
				if i%2 == 0 {
					m, err = c.Publish(ctx, mailbus.Message{Type: "job.new", AckRequired: i%4 == 0})
				} else {
					m, err = c.SendTo(ctx, "w", mailbus.Message{Type: "job.direct"})
				}
				if err != nil {
					return
				}
				mu.Lock()
				accepted[m.ID] = true
				mu.Unlock()
			}
		})
	}
	time.Sleep(300 * time.Millisecond)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	cancel()
	wg.Wait()
	if len(accepted) == 0 {
		t.Fatal("nothing accepted before the kill")
	}

	cmd, ts = start()
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	got := map[string]bool{}
	var since uint64
	for {
		var res struct{ Messages []mailbus.Message }
		if code := ts.do(t, "GET", fmt.Sprintf("%s/mailbus/inbox?since=%d&limit=1000", ts.api("mbc"), since), keys[0], nil, &res); code != 200 {
			t.Fatal(code)
		}
		if len(res.Messages) == 0 {
			break
		}
		for _, m := range res.Messages {
			if m.Seq != since+1 {
				t.Fatalf("gap: seq %d after %d", m.Seq, since)
			}
			since = m.Seq
			got[m.ID] = true
		}
	}
	lost := 0
	for id := range accepted {
		if !got[id] {
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d accepted messages lost", lost, len(accepted))
	}
}

// Ensure unacknowledged mail comes back after the visibility timeout and
// stops once acknowledged; malformed frames get an error frame and the
// connection stays up.
func TestMailbus_AckAndFrames(t *testing.T) {
	ts := startServer(t, withEnv("MAILBUS_VISIBILITY_TIMEOUT", "200ms"))
	boss, w := ts.register(t, "mbk", "boss"), ts.register(t, "mbk", "w")
	u := "ws" + strings.TrimPrefix(ts.api("mbk"), "http") + "/mailbus/subscribe"
	c, _, err := websocket.Dial(context.Background(), u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + w}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	read := func() map[string]any {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var v map[string]any
		json.Unmarshal(data, &v)
		return v
	}
	if f := read(); f["action"] != "welcome" || f["agentId"] != "w" {
		t.Fatalf("welcome %v", f)
	}
	c.Write(context.Background(), websocket.MessageText, []byte(`{"action":`))
	if f := read(); f["action"] != "error" || f["code"] != "malformed_json" {
		t.Fatalf("got %v", f)
	}
	var sent mailbus.Message
	ts.do(t, "POST", ts.api("mbk")+"/mailbus/send", boss, map[string]any{"targetAgent": "w", "message": mailbus.Message{Type: "job", AckRequired: true}}, &sent)
	for range 2 { // first delivery, then the redelivery
		if m := read(); m["id"] != sent.ID {
			t.Fatalf("got %v", m)
		}
	}
	c.Write(context.Background(), websocket.MessageText, []byte(`{"action":"ack","messageId":"`+sent.ID+`"}`))
	if f := read(); f["action"] != "acked" {
		t.Fatalf("got %v", f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, data, err := c.Read(ctx); err == nil {
		t.Errorf("delivery after ack: %s", data)
	}
}

// Ensure the bus's lease calls reach the lease service with the same key
// and release with the token the grant returned: as frames on the mail bus
// WebSocket while the client is connected, over HTTP before.
func TestMailbus_Leases(t *testing.T) {
	forEachLeaseTransport(t, func(t *testing.T, tr leaseTransport) {
		ts := startServer(t)
		ctx := context.Background()
		paths := mailLeasePaths{paths: make(chan string, 64)}
		client := func(agent string) *mailbus.Client {
			c, err := mailbus.NewClient(mailbus.ClientConfig{URL: ts.URL, Exchange: "mbl", APIKey: ts.register(t, "mbl", agent),
				HTTPClient: &http.Client{Transport: paths}, MinBackoff: 10 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close(context.Background()) })
			if tr == viaWS {
				if err := c.Connect(ctx); err != nil {
					t.Fatal(err)
				}
			}
			return c
		}
		a, b := client("a"), client("b")
		g, err := a.AcquireLease(ctx, "src/config.ts", time.Minute)
		if err != nil || g.Token == 0 {
			t.Fatalf("a acquire: %+v %v", g, err)
		}
		if _, err := b.AcquireLease(ctx, "src/config.ts", time.Minute); !errors.Is(err, lease.ErrHeld) {
			t.Fatalf("b acquire of a held lease: %v, want lease.ErrHeld", err)
		}
		st, err := b.IsLeased(ctx, "src/config.ts")
		if err != nil || !st.IsLeased || st.AgentID != "a" || st.Token != g.Token {
			t.Fatalf("status %+v %v", st, err)
		}
		if err := a.ReleaseLease(ctx, "src/config.ts"); err != nil {
			t.Fatal(err)
		}
		if st, _ := b.IsLeased(ctx, "src/config.ts"); st.IsLeased {
			t.Errorf("still leased after release: %+v", st)
		}
		if err := a.ReleaseLease(ctx, "src/config.ts"); !errors.Is(err, mailbus.ErrNotFound) {
			t.Errorf("second release: %v, want ErrNotFound", err)
		}
		err = paths.none()
		if tr == viaWS && err != nil {
			t.Errorf("connected: %v", err)
		}
		if tr == viaHTTP && err == nil {
			t.Error("not connected, yet no lease call went over HTTP")
		}
	})
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// These tests speak to messd exactly as Jetpack's two mail clients do
// (cf-mail-adapter 0.1.0), as the reference description of their wire behaviour gives it:
// HttpMailBus against the worker API (/api/mail/...), and CloudflareMailBus
// through the stand-in that maps https://mailbox/X to the exchange's mailbus
// API. Bodies are written byte for byte as those clients write them.

// isoNow is a JavaScript Date as JSON.stringify writes it.
func isoNow() string { return time.Now().UTC().Format("2006-01-02T15:04:05.000Z") }

// jetpackMsg writes a message as Jetpack's callers build it: id, type,
// from, to when set, payload, timestamp, then the optional keys.
func jetpackMsg(id, typ, from, to, payload string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, `{"id":%q,"type":%q,"from":%q`, id, typ, from)
	if to != "" {
		fmt.Fprintf(&b, `,"to":%q`, to)
	}
	fmt.Fprintf(&b, `,"payload":%s,"timestamp":%q`, payload, isoNow())
	for _, e := range extra {
		b.WriteString("," + e)
	}
	b.WriteString("}")
	return b.String()
}

// httpMailBus is Jetpack's HttpMailBus on the wire.
type httpMailBus struct {
	t       *testing.T
	url     string // workerUrl
	token   string // apiToken
	agentID string
}

// request sends what HttpMailBus sends: JSON content type and the bearer
// token on every request, GET and DELETE included. Like HttpMailBus it
// fails on a non-2xx and on a 2xx whose body is not JSON.
func (c *httpMailBus) request(method, path, body string) (map[string]any, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.url+path, rd)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+c.token)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := http.DefaultClient.Do(req.WithContext(ctx))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var out map[string]any
	jerr := json.Unmarshal(data, &out)
	if resp.StatusCode/100 != 2 {
		msg, _ := out["error"].(string)
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		return out, fmt.Errorf("HTTP %d: %s", resp.StatusCode, msg)
	}
	if jerr != nil {
		return nil, fmt.Errorf("2xx with a body that is not JSON: %q", data)
	}
	return out, nil
}

func (c *httpMailBus) publish(msg string) {
	c.t.Helper()
	if _, err := c.request("POST", "/api/mail/publish", msg); err != nil {
		c.t.Fatalf("publish %s: %v", msg, err)
	}
}

// acknowledge is HttpMailBus's only way to acknowledge: a broadcast.
func (c *httpMailBus) acknowledge(id string) {
	c.publish(jetpackMsg("", "coordination.response", c.agentID, "", fmt.Sprintf(`{"messageId":%q,"action":"ack"}`, id)))
}

func (c *httpMailBus) sendHeartbeat() {
	c.publish(jetpackMsg("", "heartbeat", c.agentID, "", fmt.Sprintf(`{"timestamp":%q}`, isoNow())))
}

// acquireLease returns false on any failure, as HttpMailBus does.
func (c *httpMailBus) acquireLease(file string, ttlMs int) bool {
	out, err := c.request("POST", "/api/mail/lease", fmt.Sprintf(`{"file":%q,"agentId":%q,"ttlMs":%d}`, file, c.agentID, ttlMs))
	acquired, _ := out["acquired"].(bool)
	return err == nil && acquired
}

func (c *httpMailBus) releaseLease(file string) map[string]any {
	c.t.Helper()
	out, err := c.request("DELETE", "/api/mail/lease", fmt.Sprintf(`{"file":%q,"agentId":%q}`, file, c.agentID))
	if err != nil {
		c.t.Fatalf("release %s: %v", file, err)
	}
	return out
}

func (c *httpMailBus) isLeased(file string) map[string]any {
	c.t.Helper()
	out, err := c.request("GET", "/api/mail/lease?file="+url.QueryEscape(file), "")
	if err != nil {
		c.t.Fatalf("status of %s: %v", file, err)
	}
	return out
}

// socket is the receiving side both clients share: every text frame must
// be one JSON object, handed over with its type.
type socket struct {
	t *testing.T
	// welcome: the first frame may be the mailbus API's welcome, which
	// CloudflareMailBus drops as a frame without a type.
	welcome bool
	c       *websocket.Conn
	msgs    chan map[string]any
	errs    chan error
}

// initialize opens HttpMailBus's WebSocket.
func (c *httpMailBus) initialize() *socket {
	c.t.Helper()
	u := "ws" + strings.TrimPrefix(c.url, "http") + "/api/mail/subscribe?agentId=" + url.QueryEscape(c.agentID)
	return dialSocket(c.t, u, c.token, false)
}

func dialSocket(t *testing.T, u, token string, welcome bool) *socket {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + token}}})
	if err != nil {
		t.Fatalf("open %s: %v", u, err)
	}
	s := &socket{t: t, welcome: welcome, c: conn, msgs: make(chan map[string]any, 1000), errs: make(chan error, 1)}
	go func() {
		for {
			typ, data, err := conn.Read(context.Background())
			if err != nil {
				s.errs <- err
				close(s.msgs)
				return
			}
			var m map[string]any
			if typ != websocket.MessageText || json.Unmarshal(data, &m) != nil {
				s.errs <- fmt.Errorf("frame %q is not one JSON object", data)
				continue
			}
			s.msgs <- m
		}
	}()
	t.Cleanup(func() { conn.CloseNow() })
	return s
}

// next returns the next message whose type is one of types; others are
// dropped, as the clients drop types they have no handler for.
func (s *socket) next(types ...string) map[string]any {
	s.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case m, ok := <-s.msgs:
			if !ok {
				s.t.Fatalf("connection closed: %v", <-s.errs)
			}
			if _, control := m["action"]; control {
				if s.welcome && m["action"] == "welcome" {
					s.welcome = false
					continue
				}
				s.t.Fatalf("control frame %v sent to a Jetpack client", m)
			}
			s.welcome = false
			for _, typ := range types {
				if m["type"] == typ {
					return m
				}
			}
		case err := <-s.errs:
			s.t.Fatal(err)
		case <-timeout:
			s.t.Fatalf("no %v within 10s", types)
		}
	}
}

// Ensure broadcasts of Jetpack's types reach an agent that never stated any
// subscription (neither client can), but not their sender; that a message
// with "to" is direct, also to oneself (the supervisor's task.assigned
// through the agent's own key); that a direct message to an offline agent
// is replayed when it connects; and that timestamps may be epoch ms.
func TestJetpack_HttpMailBusRouting(t *testing.T) {
	ts := startServer(t)
	a := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jp", "agent-a"), agentID: "agent-a"}
	b := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jp", "agent-b"), agentID: "agent-b"}
	c := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jp", "agent-c"), agentID: "agent-c"}

	// agent-c is offline (never connected) when this is sent to it.
	a.publish(jetpackMsg("", "task.assigned", "supervisor", "agent-c", `{"taskId":"bd-1","title":"T","description":"D","requiredSkills":[]}`))

	sa, sb := a.initialize(), b.initialize()
	b.publish(jetpackMsg("", "task.created", "agent-b", "", `{"taskId":"bd-2","title":"x","requiredSkills":["go"]}`))
	b.publish(jetpackMsg("", "agent.ready", "agent-b", "", `{"name":"b"}`))
	b.sendHeartbeat()
	// A heartbeat is live, not stored mail: it may overtake the others.
	got := map[any]bool{}
	for range 3 {
		m := sa.next("task.created", "agent.ready", "heartbeat")
		got[m["type"]] = true
		if m["from"] != "agent-b" || m["id"] == "" {
			t.Errorf("got %v", m)
		}
		if _, err := time.Parse(time.RFC3339, m["timestamp"].(string)); err != nil {
			t.Errorf("timestamp %v", m["timestamp"])
		}
	}
	if len(got) != 3 {
		t.Errorf("a got %v, want each of task.created, agent.ready and heartbeat", got)
	}
	// The supervisor publishes through the target's own bus, to itself.
	a.publish(jetpackMsg("", "task.assigned", "supervisor", "agent-a", `{"taskId":"bd-3"}`))
	if m := sa.next("task.assigned"); m["to"] != "agent-a" || m["payload"].(map[string]any)["taskId"] != "bd-3" {
		t.Errorf("self-addressed task.assigned: %v", m)
	}
	// A timestamp in epoch milliseconds is accepted.
	a.publish(`{"id":"","type":"task.updated","from":"agent-a","payload":{"taskId":"bd-3"},"timestamp":1768843203123}`)
	if m := sb.next("task.updated"); m["timestamp"] != "2026-01-19T17:20:03.123Z" {
		t.Errorf("epoch-ms timestamp came out as %v", m["timestamp"])
	}
	// Neither sees its own broadcast: each one's next message is the
	// other's marker.
	b.publish(jetpackMsg("", "task.progress", "agent-b", "", `{"taskId":"bd-2"}`))
	a.publish(jetpackMsg("", "task.failed", "agent-a", "", `{"taskId":"bd-3"}`))
	if m := sa.next("task.created", "agent.ready", "heartbeat", "task.updated", "task.progress", "task.failed"); m["type"] != "task.progress" {
		t.Errorf("a got %v, want b's task.progress", m)
	}
	if m := sb.next("task.created", "agent.ready", "heartbeat", "task.progress", "task.assigned", "task.failed"); m["type"] != "task.failed" {
		t.Errorf("b got %v, want a's task.failed", m)
	}

	// The offline agent gets its direct message on connect, and only its
	// own: not a's self-addressed one.
	sc := c.initialize()
	if m := sc.next("task.assigned"); m["to"] != "agent-c" || m["payload"].(map[string]any)["taskId"] != "bd-1" {
		t.Errorf("replayed %v", m)
	}
	a.publish(jetpackMsg("", "task.completed", "agent-a", "", `{"taskId":"bd-3"}`))
	if m := sc.next("task.assigned", "task.completed"); m["type"] != "task.completed" {
		t.Errorf("c got %v, want a's task.completed", m)
	}
}

// Ensure an ackRequired message is redelivered until acknowledged, and not
// after, whichever way the agent acknowledges: HttpMailBus's
// coordination.response broadcast or CloudflareMailBus's POST /acknowledge.
// Waiting past the visibility timeout is made certain by a second,
// unacknowledged message: its redelivery comes after any of the first's.
func TestJetpack_AckStopsRedelivery(t *testing.T) {
	ts := startServer(t, withEnv("MAILBUS_VISIBILITY_TIMEOUT", "300ms"))
	boss := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jpk", "boss"), agentID: "boss"}
	w := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jpk", "worker"), agentID: "worker"}
	cfAck := func(id string) {
		var out map[string]any
		body := fmt.Sprintf(`{"messageId":%q,"agentId":"worker"}`, id)
		if code := ts.do(t, "POST", ts.api("jpk")+"/mailbus/acknowledge", w.token, body, &out); code != http.StatusOK {
			t.Fatalf("POST /acknowledge: %d %v", code, out)
		}
	}
	sw := w.initialize()
	for i, ack := range []func(string){w.acknowledge, cfAck} {
		boss.publish(jetpackMsg("", "task.assigned", "boss", "worker", fmt.Sprintf(`{"taskId":"t%d"}`, i), `"ackRequired":true`))
		first := sw.next("task.assigned")
		id, _ := first["id"].(string)
		if first["ackRequired"] != true || id == "" {
			t.Fatalf("got %v", first)
		}
		// Not acknowledged: it comes again, same id.
		if again := sw.next("task.assigned"); again["id"] != id {
			t.Fatalf("redelivered %v, want %s", again, id)
		}
		ack(id)
		boss.publish(jetpackMsg("", "task.assigned", "boss", "worker", `{"taskId":"marker"}`, `"ackRequired":true`))
		marker := sw.next("task.assigned")
		for marker["id"] == id {
			marker = sw.next("task.assigned") // sent before the ack landed
		}
		if p := marker["payload"].(map[string]any); p["taskId"] != "marker" {
			t.Fatalf("got %v, want the marker", marker)
		}
		if m := sw.next("task.assigned"); m["id"] != marker["id"] {
			t.Fatalf("after the acknowledgement: %v, want only the marker's redelivery", m)
		}
		w.acknowledge(marker["id"].(string))
	}
}

// Ensure a file passes from one agent to the other at once: the holder's
// release needs no token, and the other's next acquire succeeds without
// waiting for the TTL.
func TestJetpack_LeaseHandOver(t *testing.T) {
	ts := startServer(t)
	a := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jpl", "agent-a"), agentID: "agent-a"}
	b := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jpl", "agent-b"), agentID: "agent-b"}
	const file = "src/config.ts"
	if !a.acquireLease(file, 120000) {
		t.Fatal("a could not acquire a free file")
	}
	if b.acquireLease(file, 120000) {
		t.Fatal("b acquired a's file")
	}
	st := b.isLeased(file)
	if st["isLeased"] != true || st["agentId"] != "agent-a" || st["expiresAt"].(float64) < float64(time.Now().UnixMilli()+100000) {
		t.Fatalf("status %v", st)
	}
	if out := b.releaseLease(file); out["released"] != false {
		t.Errorf("b's release of a's file: %v", out)
	}
	if out := a.releaseLease(file); out["released"] != true {
		t.Errorf("a's release: %v", out)
	}
	if st := b.isLeased(file); st["isLeased"] != false || len(st) != 1 {
		t.Errorf("status after release %v, want only isLeased false", st)
	}
	if !b.acquireLease(file, 120000) {
		t.Fatal("b could not acquire the released file")
	}
	if st := a.isLeased(file); st["agentId"] != "agent-b" {
		t.Errorf("status %v, want agent-b", st)
	}
}

// Ensure two connections of one agent (two processes, an overlapping
// reconnect) are both served for many ping rounds, each getting every
// message, and neither is closed.
func TestJetpack_TwoConnectionsOfOneAgent(t *testing.T) {
	// Many ping rounds; a busy machine may take its time with the pongs.
	ts := startServer(t, withEnv("MAILBUS_PING_INTERVAL", "100ms"), withEnv("MAILBUS_PONG_TIMEOUT", "30s"))
	a := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jp2", "agent-a"), agentID: "agent-a"}
	b := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jp2", "agent-b"), agentID: "agent-b"}
	first, second := a.initialize(), a.initialize()
	const n = 40 // 100ms apart: about 40 pings on each connection
	for i := range n {
		b.publish(jetpackMsg("", "agent.status", "agent-b", "", fmt.Sprintf(`{"i":%d}`, i)))
		for _, s := range []*socket{first, second} {
			m := s.next("agent.status")
			if i2 := m["payload"].(map[string]any)["i"]; i2 != float64(i) {
				t.Fatalf("message %d: got %v", i, m)
			}
		}
		time.Sleep(100 * time.Millisecond) // time for pings, not ordering
	}
	var res struct{ Agents []map[string]any }
	ts.do(t, "GET", ts.api("jp2")+"/mailbus/presence", b.token, nil, &res)
	for _, p := range res.Agents {
		if p["agentId"] == "agent-a" && p["connected"] != true {
			t.Errorf("presence %v", p)
		}
	}
}

// Ensure the worker API answers as Jetpack's worker did where clients look
// at the answer: every answer is JSON, with the worker's error texts.
func TestJetpack_WorkerAPIErrors(t *testing.T) {
	ts := startServer(t)
	a := &httpMailBus{t: t, url: ts.URL, token: ts.register(t, "jpe", "agent-a"), agentID: "agent-a"}
	other := ts.register(t, "jpe", "agent-b")
	tests := []struct {
		name, method, path, token, body string
		status                          int
		err                             string
	}{
		{"SubscribeWithoutAgent", "GET", "/api/mail/subscribe", a.token, "", 400, "agentId is required"},
		{"SubscribeAsAnother", "GET", "/api/mail/subscribe?agentId=agent-b", a.token, "", 403, ""},
		{"AcquireWithoutTTL", "POST", "/api/mail/lease", a.token, `{"file":"f","agentId":"agent-a"}`, 400, "file, agentId, and ttlMs are required"},
		{"AcquireWithoutAgent", "POST", "/api/mail/lease", a.token, `{"file":"f","ttlMs":1000}`, 400, "file, agentId, and ttlMs are required"},
		{"AcquireAsAnother", "POST", "/api/mail/lease", other, `{"file":"f","agentId":"agent-a","ttlMs":1000}`, 403, ""},
		{"ReleaseWithoutFile", "DELETE", "/api/mail/lease", a.token, `{"agentId":"agent-a"}`, 400, "file and agentId are required"},
		{"StatusWithoutFile", "GET", "/api/mail/lease", a.token, "", 400, "file is required"},
		{"WrongToken", "POST", "/api/mail/publish", "mess_jpe_00000000000000000000000000000000", jetpackMsg("", "heartbeat", "agent-a", "", "{}"), 401, ""},
		{"NotAKey", "POST", "/api/mail/publish", "nope", jetpackMsg("", "heartbeat", "agent-a", "", "{}"), 401, ""},
		{"BadTimestamp", "POST", "/api/mail/publish", a.token, `{"id":"","type":"x.y","from":"agent-a","payload":{},"timestamp":"yesterday"}`, 400, ""},
		{"DirectToStranger", "POST", "/api/mail/publish", a.token, jetpackMsg("", "task.assigned", "agent-a", "ghost", "{}"), 404, ""},
		{"WrongMethod", "PUT", "/api/mail/lease", a.token, "{}", 405, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &httpMailBus{t: t, url: ts.URL, token: tc.token, agentID: "agent-a"}
			out, err := c.request(tc.method, tc.path, tc.body)
			want := fmt.Sprintf("HTTP %d: ", tc.status)
			if err == nil || !strings.HasPrefix(err.Error(), want) {
				t.Fatalf("got %v %v, want %s...", out, err, want)
			}
			if out["error"] == nil || out["code"] == nil {
				t.Errorf("error body %v", out)
			}
			if tc.err != "" && out["error"] != tc.err {
				t.Errorf("error %q, want %q", out["error"], tc.err)
			}
		})
	}
	// The successful answers are JSON too.
	if out, err := a.request("POST", "/api/mail/publish", jetpackMsg("", "agent.started", "agent-a", "", `{"name":"a","skills":[]}`)); err != nil || out["published"] != true {
		t.Errorf("publish: %v %v", out, err)
	}
	if out, err := a.request("DELETE", "/api/mail/lease", `{"file":"never-held","agentId":"agent-a"}`); err != nil || out["released"] != false {
		t.Errorf("release of a file never held: %v %v", out, err)
	}
}

// Ensure CloudflareMailBus works through the stand-in for its Durable
// Object bindings: https://mailbox/X becomes the exchange's mailbus/X with
// the agent's key, method, query and body unchanged.
func TestJetpack_CloudflareMailBus(t *testing.T) {
	ts := startServer(t)
	keys := map[string]string{"agent-a": ts.register(t, "jcf", "agent-a"), "agent-b": ts.register(t, "jcf", "agent-b")}
	mailbox := func(agent, method, path, body string) {
		t.Helper()
		var out map[string]any
		if code := ts.do(t, method, ts.api("jcf")+"/mailbus"+path, keys[agent], body, &out); code/100 != 2 {
			t.Fatalf("%s %s: %d %v", method, path, code, out)
		}
	}
	// initialize: the agentId is not URL-encoded.
	sa := dialSocket(t, "ws"+strings.TrimPrefix(ts.api("jcf"), "http")+"/mailbus/subscribe?agentId=agent-a", keys["agent-a"], true)
	mailbox("agent-b", "POST", "/publish", jetpackMsg("msg-1768843203123-9f3a07c2", "task.created", "agent-b", "", `{"taskId":"bd-9"}`))
	if m := sa.next("task.created"); m["id"] != "msg-1768843203123-9f3a07c2" || m["from"] != "agent-b" {
		t.Errorf("got %v", m)
	}
	send := fmt.Sprintf(`{"targetAgent":"agent-a","message":%s}`, jetpackMsg("msg-1768843203124-0a1b2c3d", "task.assigned", "agent-b", "agent-a", `{"taskId":"bd-9"}`, `"ackRequired":true`))
	mailbox("agent-b", "POST", "/send", send)
	if m := sa.next("task.assigned"); m["id"] != "msg-1768843203124-0a1b2c3d" || m["ackRequired"] != true {
		t.Errorf("got %v", m)
	}
	mailbox("agent-a", "POST", "/acknowledge", `{"messageId":"msg-1768843203124-0a1b2c3d","agentId":"agent-a"}`)
	// Another agent's socket path is refused.
	u := "ws" + strings.TrimPrefix(ts.api("jcf"), "http") + "/mailbus/subscribe?agentId=agent-b"
	if c, resp, err := websocket.Dial(context.Background(), u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + keys["agent-a"]}}}); err == nil {
		c.CloseNow()
		t.Error("agent-a opened agent-b's socket")
	} else if resp == nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("agent-a opening agent-b's socket: %v", resp)
	}
}

package mcpserver_test

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/google/jsonschema-go/jsonschema"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/mess"
)

type updated struct {
	Ref        string  `json:"ref"`
	Status     string  `json:"status"`
	ExecutorID *string `json:"executor_id"`
	Seq        int64   `json:"seq"`
}

type threadOut struct {
	Thread mess.Thread `json:"thread"`
	URI    string      `json:"uri"`
}

type waited struct {
	Changed     bool    `json:"changed"`
	Status      string  `json:"status"`
	ExecutorID  *string `json:"executor_id"`
	Seq         int64   `json:"seq"`
	NewMessages []struct {
		Seq  int64           `json:"seq"`
		From string          `json:"from"`
		Mess json.RawMessage `json:"mess"`
	} `json:"new_messages"`
	NewHistory []mess.HistoryEntry `json:"new_history"`
	Version    uint64              `json:"version"`
	Threads    []mess.Summary      `json:"threads"`
}

// TestTools_schemas checks that every tool's results match the output
// schema it advertises: clients (the TypeScript SDK's among them) validate
// structured results against it.
func TestTools_schemas(t *testing.T) {
	e := newEnv(t)
	cs := connect(t, e.URL, e.register(t, "ex1", "alice"), nil)
	schemas := map[string]*jsonschema.Resolved{}
	for tl, err := range cs.Tools(context.Background(), nil) {
		if err != nil {
			t.Fatal(err)
		}
		if tl.Description == "" || tl.InputSchema == nil || tl.OutputSchema == nil {
			t.Errorf("%s: description, input or output schema missing", tl.Name)
		}
		var s jsonschema.Schema
		b, _ := json.Marshal(tl.OutputSchema)
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		r, err := s.Resolve(nil)
		if err != nil {
			t.Fatalf("%s: output schema: %v", tl.Name, err)
		}
		schemas[tl.Name] = r
	}
	if len(schemas) != 25 {
		t.Errorf("got %d tools, want 25", len(schemas))
	}
	check := func(name string, args map[string]any) map[string]any {
		t.Helper()
		out := call[map[string]any](t, cs, name, args)
		if err := schemas[name].Validate(out); err != nil {
			t.Errorf("%s result %v does not match its output schema: %v", name, out, err)
		}
		return out
	}
	ref := check("create_request", map[string]any{"intent": "photo of the shelf", "context": []any{"aisle 4", map[string]any{"url": "https://example.com"}},
		"priority": "urgent", "needed_by": time.Now().Add(time.Hour).Format(time.RFC3339), "constraints": map[string]any{"location": "Berlin"}})["ref"]
	check("get_request", map[string]any{"ref": ref})
	check("list_requests", map[string]any{"statuses": []string{"pending"}})
	check("post_message", map[string]any{"ref": ref, "mess": []any{map[string]any{"status": map[string]any{"re": ref, "code": "pending"}}}})
	check("wait_for_change", map[string]any{"ref": ref, "after_seq": 0, "timeout_seconds": 0})
	check("wait_for_change", map[string]any{"timeout_seconds": 0})
	check("claim_request", map[string]any{"ref": ref, "estimate": "PT5M"})
	check("update_request", map[string]any{"ref": ref, "status": "in_progress", "message": "on it"})
	check("complete_request", map[string]any{"ref": ref, "text": "here", "structured": map[string]any{"n": 3}})
	check("send_mail", map[string]any{"to": "alice", "type": "task.note", "payload": map[string]any{"x": 1}})
	check("publish_mail", map[string]any{"type": "task.note"})
	check("read_inbox", map[string]any{})
	check("list_presence", nil)
	check("heartbeat", nil)
	check("set_subscriptions", map[string]any{"types": []string{"task.*"}})
	g := check("acquire_lease", map[string]any{"file": "a.go"})
	check("renew_lease", map[string]any{"file": "a.go", "token": g["token"]})
	check("lease_status", map[string]any{"file": "a.go"})
	check("list_leases", map[string]any{})
	check("release_lease", map[string]any{"file": "a.go", "token": g["token"]})
}

// TestTools_exchange drives a request through its life with the tools of
// both sides, and checks that the exchange's rules hold over MCP.
func TestTools_exchange(t *testing.T) {
	e := newEnv(t)
	alice := connect(t, e.URL, e.register(t, "ex1", "alice"), nil)
	bob := connect(t, e.URL, e.register(t, "ex1", "bob"), nil)
	carol := connect(t, e.URL, e.register(t, "ex1", "carol"), nil)

	create := map[string]any{
		"intent": "Is the back door locked?", "id": "door-1", "response_hint": []string{"confirmation"},
		"requires": []string{"home:access"}, "precision": "exact", "compensation": map[string]any{"shells": 2},
		"confirm_before": true, "idempotency_key": "k1"}
	created := call[map[string]any](t, alice, "create_request", create)
	ref := created["ref"].(string)
	if created["status"] != "pending" || created["uri"] != "mess://ex1/requests/"+ref {
		t.Fatalf("create: %v", created)
	}
	again := call[map[string]any](t, alice, "create_request", create)
	if again["ref"] != ref || again["replayed"] != true {
		t.Fatalf("idempotent retry: %v, want ref %s replayed", again, ref)
	}
	if e := callErr(t, alice, "create_request", map[string]any{"intent": "Something else", "idempotency_key": "k1"}); e.Code != "unprocessable" {
		t.Fatalf("the key reused for another request: %+v, want unprocessable", e)
	}
	th := call[threadOut](t, bob, "get_request", map[string]any{"ref": ref}).Thread
	if th.Request == nil || !th.Request.ConfirmBefore || th.Request.Precision != "exact" || string(th.Request.Requires) != `["home:access"]` {
		t.Fatalf("the request lost fields: %+v", th.Request)
	}
	list := call[mess.ListResult](t, bob, "list_requests", map[string]any{"statuses": []string{"pending"}, "requestor_id": "alice"})
	if len(list.Threads) != 1 || list.Threads[0].Ref != ref {
		t.Fatalf("list: %+v", list)
	}

	// Exactly one claim wins; the loser learns who holds it.
	if u := call[updated](t, bob, "claim_request", map[string]any{"ref": ref, "note": "5 minutes"}); u.Status != "claimed" || *u.ExecutorID != "bob" {
		t.Fatalf("claim: %+v", u)
	}
	if e := callErr(t, carol, "claim_request", map[string]any{"ref": ref}); e.Code != "conflict" || e.ExecutorID != "bob" {
		t.Fatalf("second claim: %+v, want conflict naming bob", e)
	}
	// confirm_before: no completion before the requestor's go-ahead.
	if e := callErr(t, bob, "complete_request", map[string]any{"ref": ref, "text": "locked"}); e.Code != "conflict" {
		t.Fatalf("complete before confirmation: %+v", e)
	}
	// Only the requestor cancels.
	if e := callErr(t, bob, "cancel_request", map[string]any{"ref": ref}); e.Code != "forbidden" {
		t.Fatalf("executor cancels: %+v", e)
	}
	q := call[updated](t, bob, "update_request", map[string]any{"ref": ref, "status": "needs_input",
		"mess": []any{map[string]any{"status": map[string]any{"re": ref, "code": "needs_input", "questions": []any{map[string]any{"id": "which", "question": "Which door?"}}}}}})
	w := call[waited](t, alice, "wait_for_change", map[string]any{"ref": ref, "after_seq": q.Seq - 2, "timeout_seconds": 5})
	if !w.Changed || w.Status != "needs_input" || len(w.NewMessages) != 1 || w.NewMessages[0].From != "bob" || len(w.NewHistory) != 2 {
		t.Fatalf("wait saw %+v, want needs_input with bob's question", w)
	}
	a := call[updated](t, alice, "answer_request", map[string]any{"ref": ref, "answer": "the garden one", "answers": map[string]any{"which": "garden"}})
	if a.Status != "in_progress" {
		t.Fatalf("answer: %+v", a)
	}
	call[updated](t, bob, "update_request", map[string]any{"ref": ref, "status": "needs_confirmation", "message": "may I open it to check?"})
	if c := call[updated](t, alice, "confirm_request", map[string]any{"ref": ref, "note": "yes"}); c.Status != "in_progress" {
		t.Fatalf("confirm: %+v", c)
	}
	call[updated](t, bob, "post_message", map[string]any{"ref": ref, "mess": []any{map[string]any{"status": map[string]any{"re": ref, "code": "in_progress"}}}})
	done := call[updated](t, bob, "complete_request", map[string]any{"ref": ref, "text": "locked", "content": []any{map[string]any{"confirmation": true}}})
	if done.Status != "completed" {
		t.Fatalf("complete: %+v", done)
	}
	th = call[threadOut](t, alice, "get_request", map[string]any{"ref": ref}).Thread
	var last []map[string]map[string]any
	json.Unmarshal(th.Messages[len(th.Messages)-1].Mess, &last)
	if th.Status != "completed" || last[0]["response"]["content"].([]any)[0] != "locked" {
		t.Fatalf("final thread: %s %s", th.Status, th.Messages[len(th.Messages)-1].Mess)
	}
	if e := callErr(t, alice, "cancel_request", map[string]any{"ref": ref}); e.Code != "conflict" {
		t.Fatalf("cancel a completed request: %+v", e)
	}

	// Decline, fail and cancel end other requests.
	for _, c := range []struct {
		tool, status string
		by           *mcp.ClientSession
		args         map[string]any
	}{
		{"decline_request", "declined", bob, map[string]any{"reason": "too far"}},
		{"fail_request", "failed", bob, map[string]any{"reason": "no key", "recoverable": true}},
		{"cancel_request", "cancelled", alice, map[string]any{"reason": "not needed"}},
	} {
		r := call[map[string]any](t, alice, "create_request", map[string]any{"intent": "another"})["ref"]
		if c.tool != "cancel_request" {
			call[updated](t, bob, "claim_request", map[string]any{"ref": r})
		}
		c.args["ref"] = r
		if u := call[updated](t, c.by, c.tool, c.args); u.Status != c.status {
			t.Errorf("%s: %+v, want %s", c.tool, u, c.status)
		}
	}
}

func TestTools_errors(t *testing.T) {
	e := newEnv(t)
	alice := connect(t, e.URL, e.register(t, "ex1", "alice"), nil)
	ref := call[map[string]any](t, alice, "create_request", map[string]any{"intent": "x"})["ref"]
	for _, c := range []struct {
		tool string
		args map[string]any
		code string
	}{
		{"create_request", map[string]any{}, "invalid_input"},
		{"create_request", map[string]any{"intent": "x", "priority": "whenever"}, "invalid_input"},
		{"create_request", map[string]any{"intent": "x", "bogus": 1}, "invalid_input"},
		{"create_request", map[string]any{"intent": 7}, "invalid_input"},
		{"create_request", map[string]any{"intent": "x", "needed_by": "tomorrow"}, "invalid_input"},
		{"get_request", map[string]any{"ref": "2025-01-01-ZZZZ"}, "not_found"},
		{"get_request", map[string]any{"ref": "../../etc"}, "not_found"},
		{"update_request", map[string]any{"ref": ref, "status": "nonsense"}, "invalid_input"},
		{"update_request", map[string]any{"ref": ref}, "invalid_input"},
		{"list_requests", map[string]any{"limit": -1}, "invalid_input"},
		{"wait_for_change", map[string]any{"ref": ref, "timeout_seconds": -1}, "invalid_input"},
		{"send_mail", map[string]any{"to": "nobody here", "type": "a.b"}, "invalid_input"},
		{"send_mail", map[string]any{"to": "bob", "type": "not a type!"}, "invalid_input"},
		{"read_inbox", map[string]any{"limit": 5000}, "invalid_input"},
		{"ack_mail", map[string]any{"message_id": "msg-1-deadbeef"}, "not_found"},
		{"set_subscriptions", map[string]any{}, "invalid_input"},
		{"acquire_lease", map[string]any{"file": ""}, "invalid_input"},
		{"acquire_lease", map[string]any{"file": "a", "ttl_ms": 1}, "invalid_input"},
		{"renew_lease", map[string]any{"file": "never.go", "token": 5}, "not_held"},
		{"release_lease", map[string]any{"file": "a"}, "not_held"},
	} {
		got := callErr(t, alice, c.tool, c.args)
		if got.Code != c.code || got.Error == "" {
			t.Errorf("%s %v: got %+v, want code %s", c.tool, c.args, got, c.code)
		}
	}
}

func TestTools_mail(t *testing.T) {
	e := newEnv(t)
	alice := connect(t, e.URL, e.register(t, "ex1", "alice"), nil)
	bob := connect(t, e.URL, e.register(t, "ex1", "bob"), nil)
	if s := call[map[string][]string](t, bob, "set_subscriptions", map[string]any{"types": []string{"task.*"}}); !slices.Equal(s["types"], []string{"task.*"}) {
		t.Fatalf("subscriptions: %v", s)
	}
	sent := call[map[string]any](t, alice, "send_mail", map[string]any{"to": "bob", "type": "coordination.request",
		"payload": map[string]any{"q": "lunch?"}, "ack_required": true, "correlation_id": "c1"})
	if sent["from"] != "alice" || sent["id"] == "" {
		t.Fatalf("send: %v", sent)
	}
	call[map[string]any](t, alice, "publish_mail", map[string]any{"type": "task.created", "payload": map[string]any{"n": 1}})
	call[map[string]any](t, alice, "publish_mail", map[string]any{"type": "agent.status"}) // bob is not subscribed

	type inbox struct {
		Messages []struct {
			ID, Type, From string
			Seq            uint64
		} `json:"messages"`
		Next uint64 `json:"next"`
	}
	in := call[inbox](t, bob, "read_inbox", map[string]any{})
	if len(in.Messages) != 2 || in.Messages[0].Type != "coordination.request" || in.Messages[1].Type != "task.created" || in.Next != 2 {
		t.Fatalf("inbox: %+v", in)
	}
	if a := call[map[string]any](t, bob, "ack_mail", map[string]any{"message_id": sent["id"]}); a["acknowledged"] != true {
		t.Fatalf("ack: %v", a)
	}
	if in := call[inbox](t, bob, "read_inbox", map[string]any{"since": in.Next}); len(in.Messages) != 0 || in.Next != 2 {
		t.Fatalf("inbox after since: %+v", in)
	}
	call[map[string]any](t, bob, "heartbeat", nil)
	p := call[struct {
		Agents []struct {
			AgentID string `json:"agentId"`
			Online  bool   `json:"online"`
		} `json:"agents"`
	}](t, alice, "list_presence", nil)
	if !slices.ContainsFunc(p.Agents, func(a struct {
		AgentID string `json:"agentId"`
		Online  bool   `json:"online"`
	}) bool {
		return a.AgentID == "bob" && a.Online
	}) {
		t.Fatalf("presence: %+v, want bob online", p)
	}
}

func TestTools_leases(t *testing.T) {
	e := newEnv(t)
	alice := connect(t, e.URL, e.register(t, "ex1", "alice"), nil)
	bob := connect(t, e.URL, e.register(t, "ex1", "bob"), nil)
	type grant struct {
		File      string `json:"file"`
		AgentID   string `json:"agent_id"`
		Token     uint64 `json:"token"`
		ExpiresAt int64  `json:"expires_at"`
	}
	g := call[grant](t, alice, "acquire_lease", map[string]any{"file": "./src//app.go", "ttl_ms": 5000})
	if g.File != "src/app.go" || g.AgentID != "alice" || g.Token == 0 {
		t.Fatalf("acquire: %+v", g)
	}
	if e := callErr(t, bob, "acquire_lease", map[string]any{"file": "src/app.go"}); e.Code != "conflict" || e.Holder != "alice" {
		t.Fatalf("acquire a held lease: %+v", e)
	}
	r := call[grant](t, alice, "renew_lease", map[string]any{"file": "src/app.go", "token": g.Token, "ttl_ms": 60000})
	if r.Token != g.Token || r.ExpiresAt <= g.ExpiresAt {
		t.Fatalf("renew: %+v after %+v", r, g)
	}
	st := call[map[string]any](t, bob, "lease_status", map[string]any{"file": "src/app.go"})
	if st["is_leased"] != true || st["agent_id"] != "alice" {
		t.Fatalf("status: %v", st)
	}
	ls := call[struct{ Leases []grant }](t, bob, "list_leases", map[string]any{"agent_id": "alice"})
	if len(ls.Leases) != 1 {
		t.Fatalf("list: %+v", ls)
	}
	if e := callErr(t, bob, "release_lease", map[string]any{"file": "src/app.go", "token": g.Token}); e.Code != "not_held" {
		t.Fatalf("bob releasing alice's lease: %+v, want not_held", e)
	}

	// A waiting acquire gets the lease once its holder releases it.
	got := make(chan grant, 1)
	go func() {
		res, err := bob.CallTool(context.Background(), &mcp.CallToolParams{Name: "acquire_lease",
			Arguments: map[string]any{"file": "src/app.go", "wait_ms": 30000}})
		var g grant
		if err == nil && !res.IsError {
			b, _ := json.Marshal(res.StructuredContent)
			json.Unmarshal(b, &g)
		}
		got <- g
	}()
	// Whether bob queued before the release or asks after it, the lease
	// is his, under a newer token.
	if rel := call[map[string]bool](t, alice, "release_lease", map[string]any{"file": "src/app.go", "token": g.Token}); !rel["released"] {
		t.Fatal("alice could not release")
	}
	bg := <-got
	if bg.AgentID != "bob" || bg.Token <= g.Token {
		t.Fatalf("waiting acquire: %+v, want bob with a token above %d", bg, g.Token)
	}
	if e := callErr(t, alice, "renew_lease", map[string]any{"file": "src/app.go", "token": g.Token}); e.Code != "stale_token" {
		t.Fatalf("renew with a stale token: %+v", e)
	}
}

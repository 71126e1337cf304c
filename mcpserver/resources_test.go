package mcpserver_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mess"
)

// notified collects the URIs of resources/updated notifications.
type notified chan string

func (n notified) options() *mcp.ClientOptions {
	return &mcp.ClientOptions{ResourceUpdatedHandler: func(_ context.Context, r *mcp.ResourceUpdatedNotificationRequest) {
		n <- r.Params.URI
	}}
}

// expect waits for a notification about uri, skipping others.
func (n notified) expect(t *testing.T, uri string) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-n:
			if got == uri {
				return
			}
		case <-timeout:
			t.Fatalf("no resources/updated for %s in 10s", uri)
		}
	}
}

func TestResources_threads(t *testing.T) {
	e := newEnv(t)
	n := make(notified, 16)
	alice := connect(t, e.URL, e.register(t, "ex1", "alice"), n.options())
	bob := connect(t, e.URL, e.register(t, "ex1", "bob"), nil)
	ctx := context.Background()

	var templates []string
	for rt, err := range alice.ResourceTemplates(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		templates = append(templates, rt.URITemplate)
	}
	if strings.Join(templates, " ") != "mess://{exchange}/inbox/{agent} mess://{exchange}/requests/{ref}" {
		t.Fatalf("templates: %v", templates)
	}

	created := call[map[string]any](t, alice, "create_request", map[string]any{"intent": "water the plants"})
	uri := created["uri"].(string)
	res, err := alice.ReadResource(ctx, &mcp.ReadResourceParams{URI: uri})
	if err != nil {
		t.Fatal(err)
	}
	var th threadOut
	if err := json.Unmarshal([]byte(res.Contents[0].Text), &th); err != nil || th.Thread.Status != "pending" || res.Contents[0].MIMEType != "application/json" {
		t.Fatalf("read %s: %v %+v", uri, err, res.Contents[0])
	}

	if err := alice.Subscribe(ctx, &mcp.SubscribeParams{URI: uri}); err != nil {
		t.Fatal(err)
	}
	call[updated](t, bob, "claim_request", map[string]any{"ref": created["ref"]})
	n.expect(t, uri)
	// A change made outside MCP notifies too.
	if _, err := e.Svc.Update(ctx, "ex1", "bob", created["ref"].(string), mess.Update{Status: "in_progress"}); err != nil {
		t.Fatal(err)
	}
	n.expect(t, uri)
	if err := alice.Unsubscribe(ctx, &mcp.UnsubscribeParams{URI: uri}); err != nil {
		t.Fatal(err)
	}

	for _, bad := range []string{"mess://ex1/requests/2025-01-01-NOPE", "mess://ex1/other/x", "http://example.com/"} {
		if err := alice.Subscribe(ctx, &mcp.SubscribeParams{URI: bad}); err == nil {
			t.Errorf("subscribing to %s succeeded", bad)
		}
	}
}

func TestResources_inbox(t *testing.T) {
	e := newEnv(t)
	n := make(notified, 16)
	alice := connect(t, e.URL, e.register(t, "ex1", "alice"), nil)
	bob := connect(t, e.URL, e.register(t, "ex1", "bob"), n.options())
	ctx := context.Background()
	uri := "mess://ex1/inbox/bob"

	if err := bob.Subscribe(ctx, &mcp.SubscribeParams{URI: uri}); err != nil {
		t.Fatal(err)
	}
	call[map[string]any](t, alice, "send_mail", map[string]any{"to": "bob", "type": "note.hello"})
	n.expect(t, uri)
	// Mail that does not pass through MCP is found by the poll.
	if _, err := e.Bus.SendTo(ctx, "ex1", "alice", "bob", mailbus.Message{Type: "note.again"}); err != nil {
		t.Fatal(err)
	}
	n.expect(t, uri)

	res, err := bob.ReadResource(ctx, &mcp.ReadResourceParams{URI: uri})
	if err != nil {
		t.Fatal(err)
	}
	var in struct {
		Messages []mailbus.Message `json:"messages"`
	}
	if err := json.Unmarshal([]byte(res.Contents[0].Text), &in); err != nil || len(in.Messages) != 2 {
		t.Fatalf("inbox resource: %v %s", err, res.Contents[0].Text)
	}
	// Nobody reads or watches another agent's inbox.
	if _, err := alice.ReadResource(ctx, &mcp.ReadResourceParams{URI: uri}); !isCode(err, "forbidden") {
		t.Errorf("alice reads bob's inbox: %v", err)
	}
	if err := alice.Subscribe(ctx, &mcp.SubscribeParams{URI: uri}); !isCode(err, "forbidden") {
		t.Errorf("alice watches bob's inbox: %v", err)
	}
}

// isCode reports whether err is a JSON-RPC error whose data carries the
// HTTP API's code.
func isCode(err error, code string) bool {
	we, ok := errors.AsType[*jsonrpc.Error](err)
	if !ok {
		return false
	}
	var body struct{ Code string }
	return json.Unmarshal(we.Data, &body) == nil && body.Code == code
}

func TestPrompt_askAPerson(t *testing.T) {
	e := newEnv(t)
	cs := connect(t, e.URL, e.register(t, "ex1", "alice"), nil)
	res, err := cs.GetPrompt(context.Background(), &mcp.GetPromptParams{Name: "ask_a_person",
		Arguments: map[string]string{"task": "check the mailbox", "answer": "a photo", "deadline": "in 2 hours"}})
	if err != nil {
		t.Fatal(err)
	}
	text := res.Messages[0].Content.(*mcp.TextContent).Text
	for _, want := range []string{"check the mailbox", "create_request", "a photo", "needed_by", "wait_for_change", "answer_request"} {
		if !strings.Contains(text, want) {
			t.Errorf("prompt lacks %q:\n%s", want, text)
		}
	}
	if _, err := cs.GetPrompt(context.Background(), &mcp.GetPromptParams{Name: "ask_a_person"}); err == nil {
		t.Error("prompt without task succeeded")
	}
}

package mcpserver_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/mcpserver"
	"github.com/meatspace-exchange/mess/mess"
)

const initialize = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}`

// post sends one JSON-RPC message as the Streamable HTTP transport does.
func post(t *testing.T, url, auth, session, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("POST", url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	if session != "" {
		req.Header.Set("Mcp-Session-Id", session)
		req.Header.Set("Mcp-Protocol-Version", "2025-06-18")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestAuth_rejectedBeforeMCP(t *testing.T) {
	e := newEnv(t)
	key := e.register(t, "ex1", "alice")
	e.register(t, "ex2", "mallory")
	for _, c := range []struct{ name, auth string }{
		{"no header", ""},
		{"not bearer", "Basic " + key},
		{"empty key", "Bearer "},
		{"not a mess key", "Bearer hunter2"},
		{"unknown key", "Bearer mess_ex1_00000000000000000000000000000000"},
		{"forged exchange", "Bearer mess_ex2_" + key[len("mess_ex1_"):]},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, body := post(t, e.URL, c.auth, "", initialize)
			var got struct{ Error, Code string }
			if resp.StatusCode != http.StatusUnauthorized || json.Unmarshal([]byte(body), &got) != nil || got.Code != "unauthorized" || got.Error == "" {
				t.Fatalf("got %d %s, want 401 {error, code: unauthorized}", resp.StatusCode, body)
			}
			if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
		})
	}
	// Any case of the scheme is accepted, as by the HTTP API.
	if resp, body := post(t, e.URL, "bearer "+key, "", initialize); resp.StatusCode != http.StatusOK {
		t.Fatalf("lower-case bearer: %d %s", resp.StatusCode, body)
	}
}

// TestAuth_sessionBoundToItsAgent checks that a session id is no
// credential: another agent's key cannot use it.
func TestAuth_sessionBoundToItsAgent(t *testing.T) {
	e := newEnv(t)
	alice := "Bearer " + e.register(t, "ex1", "alice")
	bob := "Bearer " + e.register(t, "ex1", "bob")
	resp, body := post(t, e.URL, alice, "", initialize)
	session := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != http.StatusOK || session == "" {
		t.Fatalf("initialize: %d %s", resp.StatusCode, body)
	}
	post(t, e.URL, alice, session, `{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	list := `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`
	if resp, body := post(t, e.URL, alice, session, list); resp.StatusCode != http.StatusOK || !strings.Contains(body, "create_request") {
		t.Fatalf("alice lists tools: %d %s", resp.StatusCode, body)
	}
	if resp, _ := post(t, e.URL, bob, session, list); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("bob used alice's session: %d, want 403", resp.StatusCode)
	}
}

// TestAuth_exchangeIsolation checks that another exchange's key cannot
// touch this exchange: its tools act in its own exchange only and this
// exchange's resources are forbidden to it.
func TestAuth_exchangeIsolation(t *testing.T) {
	e := newEnv(t)
	alice := connect(t, e.URL, e.register(t, "ex1", "alice"), nil)
	mallory := connect(t, e.URL, e.register(t, "ex2", "alice"), nil) // the same id, elsewhere
	ctx := context.Background()

	created := call[map[string]any](t, alice, "create_request", map[string]any{"intent": "ex1 only"})
	ref := created["ref"].(string)
	for _, tool := range []string{"get_request", "claim_request", "cancel_request", "complete_request"} {
		if got := callErr(t, mallory, tool, map[string]any{"ref": ref}); got.Code != "not_found" {
			t.Errorf("%s on ex1's request from ex2: %+v, want not_found", tool, got)
		}
	}
	if l := call[struct{ Threads []any }](t, mallory, "list_requests", map[string]any{}); len(l.Threads) != 0 {
		t.Errorf("ex2 lists ex1's requests: %v", l.Threads)
	}
	for _, uri := range []string{created["uri"].(string), "mess://ex1/inbox/alice"} {
		if _, err := mallory.ReadResource(ctx, &mcp.ReadResourceParams{URI: uri}); !isCode(err, "forbidden") {
			t.Errorf("ex2 reads %s: %v", uri, err)
		}
		if err := mallory.Subscribe(ctx, &mcp.SubscribeParams{URI: uri}); !isCode(err, "forbidden") {
			t.Errorf("ex2 watches %s: %v", uri, err)
		}
	}
	// Mail and leases stay apart too.
	call[map[string]any](t, mallory, "send_mail", map[string]any{"to": "alice", "type": "a.b"})
	if in := call[struct{ Messages []any }](t, alice, "read_inbox", map[string]any{}); len(in.Messages) != 0 {
		t.Errorf("mail crossed exchanges: %v", in.Messages)
	}
	call[map[string]any](t, mallory, "acquire_lease", map[string]any{"file": "shared.go"})
	call[map[string]any](t, alice, "acquire_lease", map[string]any{"file": "shared.go"})
}

func TestServer_close(t *testing.T) {
	e := newEnv(t)
	key := e.register(t, "ex1", "alice")
	cs := connect(t, e.URL, key, nil)
	ref := call[map[string]any](t, cs, "create_request", map[string]any{"intent": "x"})["ref"]
	// A waiting tool ends when the server closes.
	done := make(chan error, 1)
	go func() {
		_, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: "wait_for_change",
			Arguments: map[string]any{"ref": ref, "timeout_seconds": 120}})
		done <- err
	}()
	if err := e.Server.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-done
	if resp, body := post(t, e.URL, "Bearer "+key, "", initialize); resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, `"unavailable"`) {
		t.Fatalf("after Close: %d %s", resp.StatusCode, body)
	}
}

func TestNew_config(t *testing.T) {
	if _, err := mcpserver.New(mcpserver.Config{}); err == nil {
		t.Error("New without services succeeded")
	}
	e := newEnv(t)
	if _, err := mcpserver.New(mcpserver.Config{Bus: e.Bus}); err == nil {
		t.Error("New without Exchange or Auth succeeded")
	}
}

func TestKeyExchange(t *testing.T) {
	for _, c := range []struct {
		key, exchange string
		ok            bool
	}{
		{"mess_home_0123456789abcdef0123456789abcdef", "home", true},
		{"mess_my_team_0123456789abcdef0123456789abcdef", "my_team", true},
		{"mess_home_", "", false},
		{"mess__abc", "", false},
		{"mess_abc", "", false},
		{"home_abc", "", false},
		{"mess_../x_abc", "", false},
	} {
		ex, ok := mess.KeyExchange(c.key)
		if ex != c.exchange || ok != c.ok {
			t.Errorf("KeyExchange(%q) = %q, %v; want %q, %v", c.key, ex, ok, c.exchange, c.ok)
		}
	}
}

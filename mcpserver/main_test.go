package mcpserver_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"go.uber.org/goleak"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mcpserver"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// env is an MCP server over real HTTP in front of an in-memory exchange,
// mail bus and lease manager.
type env struct {
	URL    string
	Svc    *mess.Service
	Bus    *mailbus.Bus
	Leases *lease.Manager
	Server *mcpserver.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	svc, err := mess.New(ctx, mess.Config{Store: storage.NewMemory(), OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	bus, err := mailbus.New(context.Background(), mailbus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	leases, err := lease.New(context.Background(), lease.Config{})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := mcpserver.New(mcpserver.Config{Exchange: svc, Bus: bus, Leases: leases, InboxPollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(func() {
		// The server first: its sessions hold GET streams open, which
		// httptest's Close waits for.
		if err := srv.Close(ctx); err != nil {
			t.Errorf("close: %v", err)
		}
		ts.Close()
		leases.Close(ctx)
		bus.Close(ctx)
		svc.Close(ctx)
	})
	return &env{URL: ts.URL, Svc: svc, Bus: bus, Leases: leases, Server: srv}
}

// register adds an executor to exchange and returns its API key.
func (e *env) register(t *testing.T, exchange, id string) string {
	t.Helper()
	r, err := e.Svc.Register(context.Background(), exchange, mess.Registration{ExecutorID: id})
	if err != nil {
		t.Fatal(err)
	}
	return r.APIKey
}

// bearer adds an API key to every request.
type bearer struct {
	key  string
	next http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.key)
	return b.next.RoundTrip(r)
}

// connect opens an MCP session with the Go SDK's client as the agent key
// belongs to. opts may be nil.
func connect(t *testing.T, url, key string, opts *mcp.ClientOptions) *mcp.ClientSession {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, opts)
	cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: url,
		HTTPClient: &http.Client{Transport: bearer{key, tr}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// call runs a tool that must succeed and decodes its structured result.
func call[T any](t *testing.T, cs *mcp.ClientSession, name string, args any) T {
	t.Helper()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if res.IsError {
		t.Fatalf("%s: tool error %s", name, text(res))
	}
	var out T
	b, _ := json.Marshal(res.StructuredContent)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: decoding %s: %v", name, b, err)
	}
	return out
}

// toolErr is a tool error's JSON body.
type toolErr struct {
	Error      string `json:"error"`
	Code       string `json:"code"`
	ExecutorID string `json:"executor_id"`
	Holder     string `json:"holder"`
}

// callErr runs a tool that must fail and returns its error body.
func callErr(t *testing.T, cs *mcp.ClientSession, name string, args any) toolErr {
	t.Helper()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if !res.IsError {
		t.Fatalf("%s: succeeded with %s, want an error", name, text(res))
	}
	var e toolErr
	if err := json.Unmarshal([]byte(text(res)), &e); err != nil {
		t.Fatalf("%s: error is not JSON: %s", name, text(res))
	}
	return e
}

func text(res *mcp.CallToolResult) string {
	if len(res.Content) == 0 {
		return ""
	}
	if tc, ok := res.Content[0].(*mcp.TextContent); ok {
		return tc.Text
	}
	return ""
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// authTransport adds an API key to every request.
type authTransport struct {
	key  string
	next http.RoundTripper
}

func (a authTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+a.key)
	return a.next.RoundTrip(r)
}

// mcpSession connects the Go SDK's client to the server's /mcp as the
// agent key belongs to.
func mcpSession(t *testing.T, ts *testServer, key string, opts *mcp.ClientOptions) *mcp.ClientSession {
	t.Helper()
	tr := &http.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	c := mcp.NewClient(&mcp.Implementation{Name: "messd-test", Version: "1"}, opts)
	cs, err := c.Connect(context.Background(), &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp",
		HTTPClient: &http.Client{Transport: authTransport{key, tr}}, MaxRetries: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// callTool runs a tool that must succeed and decodes its structured result.
func callTool[T any](t *testing.T, cs *mcp.ClientSession, name string, args map[string]any) T {
	t.Helper()
	res, err := cs.CallTool(context.Background(), &mcp.CallToolParams{Name: name, Arguments: args})
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if res.IsError {
		t.Fatalf("%s: %s", name, res.Content[0].(*mcp.TextContent).Text)
	}
	var out T
	b, _ := json.Marshal(res.StructuredContent)
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}

type mcpWaited struct {
	Changed     bool   `json:"changed"`
	Status      string `json:"status"`
	Seq         int64  `json:"seq"`
	NewMessages []struct {
		From string          `json:"from"`
		Mess json.RawMessage `json:"mess"`
	} `json:"new_messages"`
}

// TestMCP_waitWokenByHTTP follows a request over MCP while its executor
// works through the HTTP API.
func TestMCP_waitWokenByHTTP(t *testing.T) {
	ts := startServer(t)
	requestor := mcpSession(t, ts, ts.register(t, "home", "agent"), nil)
	bob := ts.register(t, "home", "bob")

	created := callTool[map[string]any](t, requestor, "create_request", map[string]any{"intent": "feed the cat"})
	ref := created["ref"].(string)
	first := callTool[mcpWaited](t, requestor, "wait_for_change", map[string]any{"ref": ref, "timeout_seconds": 0.05})
	if first.Changed || first.Status != "pending" {
		t.Fatalf("nothing changed yet, got %+v", first)
	}
	got := make(chan mcpWaited, 1)
	go func() {
		res, err := requestor.CallTool(context.Background(), &mcp.CallToolParams{Name: "wait_for_change",
			Arguments: map[string]any{"ref": ref, "after_seq": first.Seq, "timeout_seconds": 60}})
		var w mcpWaited
		if err == nil && !res.IsError {
			b, _ := json.Marshal(res.StructuredContent)
			json.Unmarshal(b, &w)
		}
		got <- w
	}()
	body := map[string]any{"status": "completed", "mess": []any{map[string]any{"response": map[string]any{"re": ref, "content": []string{"fed"}}}}}
	if code := ts.do(t, "PATCH", ts.api("home")+"/requests/"+ref, bob, body, nil); code != http.StatusOK {
		t.Fatalf("PATCH: %d", code)
	}
	w := <-got
	if !w.Changed || w.Status != "completed" || len(w.NewMessages) != 1 || w.NewMessages[0].From != "bob" {
		t.Fatalf("wait_for_change returned %+v, want completed with bob's response", w)
	}
	// The HTTP API and MCP see the same request.
	if tr := ts.thread(t, "home", bob, ref); tr.Thread.Status != "completed" || tr.Thread.RequestorID != "agent" {
		t.Fatalf("HTTP view: %+v", tr.Thread)
	}
}

// TestMCP_unauthorized checks that /mcp answers a missing key like the
// HTTP API does.
func TestMCP_unauthorized(t *testing.T) {
	ts := startServer(t)
	var body struct{ Error, Code string }
	if code := ts.do(t, "POST", ts.URL+"/mcp", "", `{"jsonrpc":"2.0","id":1,"method":"tools/list"}`, &body); code != http.StatusUnauthorized || body.Code != "unauthorized" {
		t.Fatalf("got %d %+v", code, body)
	}
}

// TestMCP_typeScriptClient runs the official TypeScript SDK's client (a
// client nobody here wrote) against a real messd: it lists the tools and
// makes a request go from create to claim to complete. It installs the
// pinned SDK with npm ci into a cache directory on first use.
func TestMCP_typeScriptClient(t *testing.T) {
	dir := tsClientDir(t)
	ts := startServer(t)
	requestor := ts.register(t, "home", "agent")
	executor := ts.register(t, "home", "robot")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", "client.mjs", ts.URL+"/mcp", requestor, executor)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node client.mjs: %v\n%s", err, stderr.String())
	}
	var got struct {
		Tools     []string `json:"tools"`
		Ref       string   `json:"ref"`
		Claimed   string   `json:"claimed"`
		Completed string   `json:"completed"`
		Final     string   `json:"final"`
		Executor  string   `json:"executor"`
		Messages  int      `json:"messages"`
		Waited    struct {
			Changed     bool   `json:"changed"`
			Status      string `json:"status"`
			NewMessages int    `json:"new_messages"`
		} `json:"waited"`
		Conflict struct {
			IsError bool `json:"isError"`
			Body    struct {
				Error      string `json:"error"`
				Code       string `json:"code"`
				ExecutorID string `json:"executor_id"`
			} `json:"body"`
		} `json:"conflict"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	for _, want := range []string{"create_request", "claim_request", "complete_request", "wait_for_change", "send_mail", "acquire_lease"} {
		if !slices.Contains(got.Tools, want) {
			t.Errorf("tools/list lacks %s: %v", want, got.Tools)
		}
	}
	if got.Claimed != "claimed" || got.Completed != "completed" || got.Final != "completed" || got.Executor != "robot" || got.Messages != 3 {
		t.Errorf("round trip: %+v", got)
	}
	if !got.Waited.Changed || got.Waited.Status != "completed" || got.Waited.NewMessages != 3 {
		t.Errorf("wait_for_change: %+v", got.Waited)
	}
	if !got.Conflict.IsError || got.Conflict.Body.Code != "conflict" || got.Conflict.Body.Error == "" {
		t.Errorf("claiming a completed request: %+v", got.Conflict)
	}
	// The HTTP API agrees.
	if tr := ts.thread(t, "home", requestor, got.Ref); tr.Thread.Status != "completed" {
		t.Errorf("HTTP view: %s", tr.Thread.Status)
	}
}

// tsClientDir returns a directory holding testdata/tsclient with its
// dependencies installed. The install (npm ci from the committed lock file)
// lives in the user's cache directory, keyed by the lock file, so it stays
// out of the source tree and is done once per machine.
func tsClientDir(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: this test runs the official MCP TypeScript SDK client and needs Node.js and npm (apt-get install nodejs npm)", tool)
		}
	}
	src := filepath.Join("testdata", "tsclient")
	lock, err := os.ReadFile(filepath.Join(src, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(lock)
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "mess-test", "tsclient-"+hex.EncodeToString(sum[:8]))
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil {
		// Install beside the final place and rename, so concurrent test
		// runs never see a half-installed directory.
		if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
		tmp, err := os.MkdirTemp(filepath.Dir(dir), "install-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(tmp)
		for _, f := range []string{"package.json", "package-lock.json"} {
			copyFile(t, filepath.Join(src, f), filepath.Join(tmp, f))
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
		cmd.Dir = tmp
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("npm ci (installing @modelcontextprotocol/sdk for the TypeScript client test): %v\n%s", err, out)
		}
		if err := os.Rename(tmp, dir); err != nil {
			if _, serr := os.Stat(filepath.Join(dir, "node_modules")); serr != nil {
				t.Fatal(err)
			}
		}
	}
	// The script may change without the lock: copy it every time.
	copyFile(t, filepath.Join(src, "client.mjs"), filepath.Join(dir, "client.mjs"))
	return dir
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

var (
	messdBinOnce sync.Once
	messdBin     string
	messdBinErr  error
)

// buildMessd builds this command once per test run: the bridge test runs
// "messd mcp" as a separate process, as an MCP client would.
func buildMessd(t *testing.T) string {
	t.Helper()
	messdBinOnce.Do(func() {
		dir, err := os.MkdirTemp("", "messd-bin-")
		if err != nil {
			messdBinErr = err
			return
		}
		messdBin = filepath.Join(dir, "messd")
		out, err := exec.Command("go", "build", "-o", messdBin, ".").CombinedOutput()
		if err != nil {
			messdBinErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if messdBinErr != nil {
		t.Fatal(messdBinErr)
	}
	return messdBin
}

// stdioClient speaks JSON-RPC to the bridge over its stdin and stdout.
type stdioClient struct {
	t     *testing.T
	in    io.WriteCloser
	lines chan map[string]json.RawMessage
	held  []map[string]json.RawMessage // read, not yet asked for
}

func startBridge(t *testing.T, url, key string) (*stdioClient, *exec.Cmd) {
	t.Helper()
	cmd := exec.Command(buildMessd(t), "mcp", "-url", url)
	cmd.Env = append(os.Environ(), "MESS_API_KEY="+key)
	var stderr syncBuffer
	cmd.Stderr = &stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &stdioClient{t: t, in: in, lines: make(chan map[string]json.RawMessage, 64)}
	go func() {
		defer close(c.lines)
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			var m map[string]json.RawMessage
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				t.Errorf("bridge wrote a line that is not JSON: %q", sc.Bytes())
				continue
			}
			c.lines <- m
		}
	}()
	t.Cleanup(func() {
		in.Close()
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Error("the bridge did not exit after its stdin closed")
		}
		if t.Failed() {
			t.Logf("bridge stderr:\n%s", stderr.String())
		}
	})
	return c, cmd
}

// syncBuffer is a bytes.Buffer a process writes to while a test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func (c *stdioClient) send(msg string) {
	c.t.Helper()
	if _, err := io.WriteString(c.in, msg+"\n"); err != nil {
		c.t.Fatal(err)
	}
}

// next returns the first message the bridge wrote whose key has value (a
// response by id, a notification by method); others are kept for later.
func (c *stdioClient) next(key, value string) map[string]json.RawMessage {
	c.t.Helper()
	match := func(m map[string]json.RawMessage) bool {
		v, has := m[key]
		return has && strings.Trim(string(v), `"`) == value
	}
	if i := slices.IndexFunc(c.held, match); i >= 0 {
		m := c.held[i]
		c.held = slices.Delete(c.held, i, i+1)
		return m
	}
	timeout := time.After(20 * time.Second)
	for {
		select {
		case m, ok := <-c.lines:
			if !ok {
				c.t.Fatal("the bridge closed its stdout")
			}
			if match(m) {
				return m
			}
			c.held = append(c.held, m)
		case <-timeout:
			c.t.Fatalf("no message with %s=%s in 20s", key, value)
		}
	}
}

// TestMCP_stdioBridge drives "messd mcp" as a stdio MCP client would:
// initialize, tools/list, a tools/call, and a resource subscription whose
// notification arrives through the bridge.
func TestMCP_stdioBridge(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "home", "agent")
	bob := ts.register(t, "home", "bob")
	c, _ := startBridge(t, ts.URL, key)

	c.send(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"stdio-test","version":"1"}}}`)
	var init struct {
		ProtocolVersion string `json:"protocolVersion"`
		ServerInfo      struct{ Name string }
		Capabilities    struct {
			Resources struct{ Subscribe bool }
		}
	}
	json.Unmarshal(c.next("id", "1")["result"], &init)
	if init.ProtocolVersion != "2025-06-18" || init.ServerInfo.Name != "mess" || !init.Capabilities.Resources.Subscribe {
		t.Fatalf("initialize: %+v", init)
	}
	c.send(`{"jsonrpc":"2.0","method":"notifications/initialized"}`)
	c.send(`{"jsonrpc":"2.0","id":2,"method":"tools/list"}`)
	var list struct{ Tools []struct{ Name string } }
	json.Unmarshal(c.next("id", "2")["result"], &list)
	if len(list.Tools) != 25 {
		t.Fatalf("tools/list: %d tools", len(list.Tools))
	}
	c.send(`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"create_request","arguments":{"intent":"bring in the washing"}}}`)
	var created struct {
		IsError           bool
		StructuredContent struct{ Ref, URI string }
	}
	json.Unmarshal(c.next("id", "3")["result"], &created)
	if created.IsError || created.StructuredContent.Ref == "" {
		t.Fatalf("create_request: %+v", created)
	}
	ref := created.StructuredContent.Ref

	c.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":30,"method":"tools/call","params":{"name":"get_request","arguments":{"ref":%q}}}`, ref))
	var got struct {
		StructuredContent struct{ Thread struct{ Seq int64 } }
	}
	json.Unmarshal(c.next("id", "30")["result"], &got)
	// A long wait does not hold up the calls after it.
	c.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"wait_for_change","arguments":{"ref":%q,"after_seq":%d,"timeout_seconds":60}}}`,
		ref, got.StructuredContent.Thread.Seq))
	c.send(fmt.Sprintf(`{"jsonrpc":"2.0","id":5,"method":"resources/subscribe","params":{"uri":%q}}`, created.StructuredContent.URI))
	c.next("id", "5")
	if code := ts.do(t, "PATCH", ts.api("home")+"/requests/"+ref, bob, map[string]any{"status": "claimed"}, nil); code != http.StatusOK {
		t.Fatalf("PATCH: %d", code)
	}
	var updated struct{ URI string }
	json.Unmarshal(c.next("method", "notifications/resources/updated")["params"], &updated)
	if updated.URI != created.StructuredContent.URI {
		t.Fatalf("notification for %s", updated.URI)
	}
	var waited struct{ StructuredContent mcpWaited }
	json.Unmarshal(c.next("id", "4")["result"], &waited)
	if !waited.StructuredContent.Changed || waited.StructuredContent.Status != "claimed" {
		t.Fatalf("wait_for_change through the bridge: %+v", waited)
	}
}

// TestMCP_stdioBridgeBadKey checks that a bridge with a wrong key answers
// the client's initialize with an error instead of leaving it waiting.
func TestMCP_stdioBridgeBadKey(t *testing.T) {
	ts := startServer(t)
	c, _ := startBridge(t, ts.URL, "mess_home_00000000000000000000000000000000")
	c.send(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"x","version":"1"}}}`)
	var e struct{ Message string }
	json.Unmarshal(c.next("id", "1")["error"], &e)
	if !strings.Contains(e.Message, "401") || !strings.Contains(e.Message, "unauthorized") {
		t.Fatalf("error %q, want the server's 401", e.Message)
	}
}

// TestMCP_stdioBridgeGoClient connects the Go SDK's stdio client through
// the bridge: it first tries the sessionless protocol revision, which a
// stateful endpoint refuses, and must fall back to initialize.
func TestMCP_stdioBridgeGoClient(t *testing.T) {
	ts := startServer(t)
	cmd := exec.Command(buildMessd(t), "mcp", "-url", ts.URL, "-key", ts.register(t, "home", "agent"))
	var stderr syncBuffer
	cmd.Stderr = &stderr
	c := mcp.NewClient(&mcp.Implementation{Name: "stdio-go", Version: "1"}, nil)
	cs, err := c.Connect(context.Background(), &mcp.CommandTransport{Command: cmd}, nil)
	if err != nil {
		t.Fatalf("connect: %v\n%s", err, stderr.String())
	}
	defer cs.Close()
	g := callTool[map[string]any](t, cs, "acquire_lease", map[string]any{"file": "notes.md"})
	if g["agent_id"] != "agent" || g["token"] == nil {
		t.Fatalf("acquire_lease through the bridge: %v", g)
	}
}

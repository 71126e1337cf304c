package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain doubles as the server binary: with MESSD_TEST_CHILD set it runs
// messd itself, so crash tests can SIGKILL a real server process. As the
// test binary it checks that no goroutine outlives the tests.
func TestMain(m *testing.M) {
	if os.Getenv("MESSD_TEST_CHILD") != "" {
		ready := make(chan string, 1)
		go func() {
			addr := <-ready
			os.WriteFile(os.Getenv("MESSD_TEST_CHILD"), []byte(addr), 0o644)
		}()
		// Signals end it as they end messd's main.
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := run(ctx, os.Args[1:], os.Getenv, os.Stderr, ready); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	goleak.VerifyTestMain(closeIdle{m})
}

// closeIdle closes the default client's idle connections after the tests,
// before goleak looks: their reader goroutines belong to the tests' client,
// not to a server that failed to stop.
type closeIdle struct{ m *testing.M }

func (c closeIdle) Run() int {
	code := c.m.Run()
	stopMinio()
	http.DefaultClient.CloseIdleConnections()
	return code
}

// startChild runs messd as a separate process on dataDir, so a test can
// SIGKILL it. extraEnv adds KEY=VALUE settings.
func startChild(t testing.TB, dataDir string, extraEnv ...string) (*exec.Cmd, *testServer) {
	t.Helper()
	addrFile := filepath.Join(t.TempDir(), "addr")
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "MESSD_TEST_CHILD="+addrFile, "ADDR=127.0.0.1:0", "STORAGE_PATH="+dataDir,
		"MESS_OPEN_REGISTRATION=true", "LOG_LEVEL=warn")
	cmd.Env = append(cmd.Env, extraEnv...)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if b, err := os.ReadFile(addrFile); err == nil && len(b) > 0 {
			return cmd, &testServer{URL: "http://" + string(b), DataDir: dataDir}
		}
	}
	cmd.Process.Kill()
	cmd.Wait()
	t.Fatal("child server did not start")
	return nil, nil
}

// testServer is a real messd on a loopback port with its own data directory.
type testServer struct {
	URL     string // http://127.0.0.1:port
	DataDir string
	stop    func()
}

// serverOption changes the environment a test server starts with.
type serverOption func(env map[string]string)

// withEnv sets an environment variable for the server.
func withEnv(k, v string) serverOption { return func(env map[string]string) { env[k] = v } }

// withDataDir reuses a data directory (for restart tests).
func withDataDir(dir string) serverOption {
	return func(env map[string]string) { env["STORAGE_PATH"] = dir }
}

// startServer runs the real server in-process on 127.0.0.1:0. Exchanges are
// open to registration unless MESS_OPEN_REGISTRATION is overridden.
func startServer(t testing.TB, opts ...serverOption) *testServer {
	t.Helper()
	return startServerLogs(t, io.Discard, opts...)
}

// startServerLogs is startServer with the server's log written to logs.
func startServerLogs(t testing.TB, logs io.Writer, opts ...serverOption) *testServer {
	t.Helper()
	env := map[string]string{
		"ADDR":                   "127.0.0.1:0",
		"STORAGE_PATH":           t.TempDir(),
		"MESS_OPEN_REGISTRATION": "true",
		"LOG_LEVEL":              "warn",
	}
	for _, o := range opts {
		o(env)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, nil, func(k string) string { return env[k] }, logs, ready)
	}()
	var addr string
	select {
	case addr = <-ready:
	case err := <-done:
		cancel()
		t.Fatalf("server did not start: %v", err)
	case <-time.After(30 * time.Second):
		cancel()
		t.Fatal("server did not start in 30s")
	}
	ts := &testServer{URL: "http://" + addr, DataDir: env["STORAGE_PATH"]}
	stopped := false
	ts.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("server exited: %v", err)
		}
	}
	t.Cleanup(ts.stop)
	return ts
}

// Stop shuts the server down gracefully and waits for it.
func (ts *testServer) Stop() { ts.stop() }

// api returns the base URL of an exchange.
func (ts *testServer) api(exchange string) string { return ts.URL + "/api/v1/exchanges/" + exchange }

// do sends a JSON request and decodes the JSON answer into out (if not nil).
func (ts *testServer) do(t testing.TB, method, url, key string, body any, out any) int {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode >= 400 && !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s %s: error with Content-Type %q: %s", method, url, ct, data)
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: decode %s: %v", method, url, data, err)
		}
	}
	return resp.StatusCode
}

// register adds an executor and returns its API key.
func (ts *testServer) register(t testing.TB, exchange, executorID string) string {
	t.Helper()
	var res struct {
		APIKey string `json:"api_key"`
		Error  string `json:"error"`
	}
	if code := ts.do(t, "POST", ts.api(exchange)+"/register", "", map[string]any{"executor_id": executorID}, &res); code != http.StatusCreated {
		t.Fatalf("register %s/%s: %d %s", exchange, executorID, code, res.Error)
	}
	return res.APIKey
}

// create posts a request and returns its ref.
func (ts *testServer) create(t testing.TB, exchange, key string, body map[string]any) string {
	t.Helper()
	var res struct {
		Ref    string `json:"ref"`
		Status string `json:"status"`
		Error  string `json:"error"`
	}
	if code := ts.do(t, "POST", ts.api(exchange)+"/requests", key, body, &res); code != http.StatusCreated {
		t.Fatalf("create: %d %s", code, res.Error)
	}
	if res.Status != "pending" {
		t.Fatalf("new request status = %q, want pending", res.Status)
	}
	return res.Ref
}

type threadResp struct {
	Thread struct {
		Ref         string  `json:"ref"`
		Status      string  `json:"status"`
		Intent      string  `json:"intent"`
		RequestorID string  `json:"requestor_id"`
		ExecutorID  *string `json:"executor_id"`
		Priority    string  `json:"priority"`
		Seq         int64   `json:"seq"`
		Request     map[string]json.RawMessage
		Messages    []struct {
			From string          `json:"from"`
			Mess json.RawMessage `json:"mess"`
		} `json:"messages"`
		History []struct {
			Type      string `json:"type"`
			OldStatus string `json:"old_status"`
			NewStatus string `json:"new_status"`
			Message   string `json:"message"`
			ActorID   string `json:"actor_id"`
		} `json:"history"`
	} `json:"thread"`
}

func (ts *testServer) thread(t testing.TB, exchange, key, ref string) threadResp {
	t.Helper()
	var tr threadResp
	if code := ts.do(t, "GET", ts.api(exchange)+"/requests/"+ref, key, nil, &tr); code != http.StatusOK {
		t.Fatalf("get %s: %d", ref, code)
	}
	return tr
}

// nextEvent reads a server-sent event stream up to the end of the next
// event and returns its id and type.
func nextEvent(t testing.TB, r *bufio.Reader) (id, typ string) {
	t.Helper()
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		line = strings.TrimSuffix(line, "\n")
		switch {
		case strings.HasPrefix(line, "id: "):
			id = line[4:]
		case strings.HasPrefix(line, "event: "):
			typ = line[7:]
		case line == "" && typ != "":
			return id, typ
		}
	}
}

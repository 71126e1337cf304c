package mailbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/internal/backends"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/storage"
)

// TestMain fails the run if goroutines outlive the tests, and doubles as a
// crash-test server when MAILBUS_TEST_SERVE names a data directory.
func TestMain(m *testing.M) {
	if dir := os.Getenv("MAILBUS_TEST_SERVE"); dir != "" {
		serveChild(dir)
		return
	}
	backends.Main(m)
}

// keyAuth accepts keys "key-<exchange>-<agent>".
type keyAuth struct{}

func (keyAuth) Authenticate(ctx context.Context, exchangeID, token string) (string, error) {
	rest, ok := strings.CutPrefix(token, "key-")
	if !ok {
		return "", mailbus.ErrUnauthorized
	}
	ex, agent, ok := strings.Cut(rest, "-")
	if !ok {
		return "", mailbus.ErrUnauthorized
	}
	if ex != exchangeID {
		return "", mailbus.ErrForbidden
	}
	return agent, nil
}

func key(ex, agent string) string { return "key-" + ex + "-" + agent }

type testEnv struct {
	bus *mailbus.Bus
	srv *httptest.Server
	dir string
}

// startEnv runs a bus on a temp directory behind a real HTTP server.
func startEnv(t *testing.T, cfg mailbus.Config) *testEnv {
	t.Helper()
	dir := t.TempDir()
	return startEnvDir(t, cfg, dir)
}

func startEnvDir(t *testing.T, cfg mailbus.Config, dir string) *testEnv {
	t.Helper()
	if cfg.Store == nil {
		st, err := storage.NewFS(dir)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		cfg.Store = st
	}
	b, err := mailbus.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	h, err := mailbus.NewHandler(b, mailbus.HandlerConfig{Auth: keyAuth{}, PingInterval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	env := &testEnv{bus: b, srv: srv, dir: dir}
	t.Cleanup(env.stop)
	return env
}

func (e *testEnv) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	e.bus.Close(ctx)
	e.srv.Close()
}

func (e *testEnv) url(ex, op string) string {
	return e.srv.URL + "/api/v1/exchanges/" + ex + "/mailbus/" + op
}

// rawConn is a plain WebSocket client, for checking the wire protocol.
type rawConn struct {
	t    *testing.T
	c    *websocket.Conn
	msgs chan json.RawMessage
	err  chan error
}

func dialRaw(t *testing.T, e *testEnv, ex, agent, query string) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(e.url(ex, "subscribe"), "http") + "?" + query
	hdr := http.Header{"Authorization": {"Bearer " + key(ex, agent)}}
	c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatalf("dial %s: %v", agent, err)
	}
	r := &rawConn{t: t, c: c, msgs: make(chan json.RawMessage, 10000), err: make(chan error, 1)}
	go func() {
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				r.err <- err
				close(r.msgs)
				return
			}
			r.msgs <- data
		}
	}()
	t.Cleanup(func() { c.CloseNow() })
	w := r.next()
	var f mailbus.Frame
	if err := json.Unmarshal(w, &f); err != nil || f.Action != "welcome" {
		t.Fatalf("first frame %s, want welcome", w)
	}
	return r
}

func (r *rawConn) next() json.RawMessage {
	r.t.Helper()
	select {
	case m, ok := <-r.msgs:
		if !ok {
			r.t.Fatalf("connection closed: %v", <-r.err)
		}
		return m
	case <-time.After(10 * time.Second):
		r.t.Fatal("no frame within 10s")
	}
	return nil
}

// message reads frames until a message (not a control frame) arrives.
func (r *rawConn) message() mailbus.Message {
	r.t.Helper()
	for {
		data := r.next()
		var probe map[string]any
		json.Unmarshal(data, &probe)
		if _, ok := probe["action"]; ok {
			continue
		}
		var m mailbus.Message
		if err := json.Unmarshal(data, &m); err != nil {
			r.t.Fatalf("decode %s: %v", data, err)
		}
		return m
	}
}

// frame reads frames until a control frame arrives.
func (r *rawConn) frame() mailbus.Frame {
	r.t.Helper()
	for {
		data := r.next()
		var f mailbus.Frame
		if err := json.Unmarshal(data, &f); err != nil {
			r.t.Fatalf("decode %s: %v", data, err)
		}
		if f.Action != "" {
			return f
		}
	}
}

// quiet asserts no message arrives for d.
func (r *rawConn) quiet(d time.Duration) {
	r.t.Helper()
	select {
	case m, ok := <-r.msgs:
		if ok {
			r.t.Fatalf("unexpected frame %s", m)
		}
	case <-time.After(d):
	}
}

func (r *rawConn) send(v any) {
	r.t.Helper()
	b, _ := json.Marshal(v)
	if err := r.c.Write(context.Background(), websocket.MessageText, b); err != nil {
		r.t.Fatal(err)
	}
}

// post sends a JSON request as agent and decodes the answer.
func post(t *testing.T, method, url, apiKey string, body any, out any) int {
	t.Helper()
	var rd *strings.Reader
	switch b := body.(type) {
	case string:
		rd = strings.NewReader(b)
	default:
		data, _ := json.Marshal(b)
		rd = strings.NewReader(string(data))
	}
	req, _ := http.NewRequest(method, url, rd)
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("%s %s: Content-Type %q", method, url, ct)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("%s %s: decode: %v", method, url, err)
		}
	}
	return resp.StatusCode
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newServer(h http.Handler) *httptest.Server { return httptest.NewServer(h) }

// forEachFramePath runs test once with data frames written by hand and
// once through the WebSocket library.
func forEachFramePath(t *testing.T, test func(t *testing.T)) {
	for _, raw := range []bool{true, false} {
		name := "library"
		if raw {
			name = "raw"
		}
		t.Run(name, func(t *testing.T) {
			t.Cleanup(mailbus.SetWriteRaw(raw))
			test(t)
		})
	}
}

// fakeClock is a Config.Now that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 19, 12, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

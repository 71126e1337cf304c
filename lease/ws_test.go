package lease_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/storage"
)

// rawWS is a plain WebSocket client of the lease endpoint, for checking
// the wire protocol.
type rawWS struct {
	t *testing.T
	c *websocket.Conn
}

func wsURL(srv *httptest.Server, x string) string {
	return "ws" + strings.TrimPrefix(srv.URL, "http") + "/api/v1/exchanges/" + x + "/leases/ws"
}

func dialWS(t *testing.T, srv *httptest.Server, agent string) *rawWS {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, wsURL(srv, "x1"), &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer key-" + agent}}})
	if err != nil {
		t.Fatalf("dial as %s: %v", agent, err)
	}
	t.Cleanup(func() { c.CloseNow() })
	return &rawWS{t: t, c: c}
}

func (r *rawWS) send(frame string) {
	r.t.Helper()
	if err := r.c.Write(context.Background(), websocket.MessageText, []byte(frame)); err != nil {
		r.t.Fatalf("write %s: %v", frame, err)
	}
}

// next reads the next answer.
func (r *rawWS) next() map[string]any {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, data, err := r.c.Read(ctx)
	if err != nil {
		r.t.Fatalf("read: %v", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		r.t.Fatalf("answer %s is not a JSON object: %v", data, err)
	}
	return m
}

// closeStatus reads until the connection ends and returns its close code.
func (r *rawWS) closeStatus() websocket.StatusCode {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		if _, _, err := r.c.Read(ctx); err != nil {
			return websocket.CloseStatus(err)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Ensure every malformed or refused frame gets an error frame with the
// HTTP API's code and field, echoing the ref when there is one to echo,
// that the connection then still works, and that a frame over the limit
// closes it with 1009.
func TestWS_malformedFrames(t *testing.T) {
	_, srv := MustServer(t, lease.Config{})
	r := dialWS(t, srv, "alice")
	long := strings.Repeat("r", lease.MaxRefLen+1)
	tests := []struct {
		name, frame      string
		binary           bool
		code, field, ref string
	}{
		{"bad JSON", `{nope`, false, "malformed_json", "", ""},
		{"member of the wrong type", `{"action":"lease.acquire","ref":"r1","file":1}`, false, "malformed_json", "", "r1"},
		{"unknown lease action", `{"action":"lease.fly","ref":"r2"}`, false, "invalid_input", "action", "r2"},
		{"mail bus action", `{"action":"publish","ref":"r3"}`, false, "invalid_input", "action", "r3"},
		{"no action", `{"ref":"r4"}`, false, "invalid_input", "action", "r4"},
		{"missing ref", `{"action":"lease.status","file":"f"}`, false, "invalid_input", "ref", ""},
		{"overlong ref", `{"action":"lease.status","ref":"` + long + `","file":"f"}`, false, "invalid_input", "ref", ""},
		{"not UTF-8", "{\"action\":\"lease.status\",\"ref\":\"r5\",\"file\":\"\xff\"}", false, "invalid_input", "frame", "r5"},
		{"binary frame", `{"action":"lease.status","ref":"r6","file":"f"}`, true, "invalid_input", "frame", ""},
		{"array holding no object", `[1]`, false, "malformed_json", "", ""},
		{"broken array", `[{"action":"lease.status","ref":"r7","file":"f"}`, false, "malformed_json", "", ""},
		{"another agent's acquire", `{"action":"lease.acquire","ref":"r8","file":"f","ttlMs":1000,"agentId":"bob"}`, false, "forbidden", "", "r8"},
		{"TTL out of bounds", `{"action":"lease.acquire","ref":"r9","file":"f","ttlMs":1}`, false, "invalid_input", "ttlMs", "r9"},
		{"no TTL", `{"action":"lease.acquire","ref":"r10","file":"f"}`, false, "invalid_input", "ttlMs", "r10"},
		{"empty name", `{"action":"lease.acquire","ref":"r11","file":"","ttlMs":1000}`, false, "invalid_input", "file", "r11"},
		{"renew without token", `{"action":"lease.renew","ref":"r12","file":"f","ttlMs":1000}`, false, "invalid_input", "token", "r12"},
		{"release not held", `{"action":"lease.release","ref":"r13","file":"f"}`, false, "not_held", "", "r13"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			typ := websocket.MessageText
			if tt.binary {
				typ = websocket.MessageBinary
			}
			if err := r.c.Write(context.Background(), typ, []byte(tt.frame)); err != nil {
				t.Fatal(err)
			}
			a := r.next()
			ref, _ := a["ref"].(string)
			field, _ := a["field"].(string)
			if a["action"] != "error" || a["code"] != tt.code || field != tt.field || ref != tt.ref || a["error"] == "" {
				t.Fatalf("answer %v, want an error frame with code %s, field %q, ref %q", a, tt.code, tt.field, tt.ref)
			}
		})
	}
	r.send(`{"action":"lease.acquire","ref":"ok","file":"f","ttlMs":1000}`)
	if a := r.next(); a["action"] != "lease.acquired" || a["ref"] != "ok" || a["acquired"] != true {
		t.Fatalf("acquire after the bad frames: %v", a)
	}
	// A frame may hold an array of requests, each answered on its own.
	r.send(` [{"action":"lease.status","ref":"a1","file":"f"}, {"action":"lease.status","ref":"a2"}]`)
	got := map[string]any{}
	for range 2 {
		a := r.next()
		got[a["ref"].(string)] = a["action"]
	}
	if got["a1"] != "lease.status" || got["a2"] != "error" {
		t.Fatalf("answers to an array of requests: %v", got)
	}
	r.send(`{"action":"lease.status","ref":"big","file":"` + strings.Repeat("a", 5000) + `"}`)
	if got := r.closeStatus(); got != websocket.StatusMessageTooBig {
		t.Fatalf("frame over the limit: close status %d, want %d", got, websocket.StatusMessageTooBig)
	}
}

// Ensure the same calls get the same answers over HTTP and as frames:
// bodies, codes, fields and messages, on two servers in the same state.
func TestWS_sameAnswersAsHTTP(t *testing.T) {
	steps := []struct{ agent, op, body string }{
		{"alice", "acquire", `{"file":"./src//a.go","ttlMs":60000}`},
		{"bob", "acquire", `{"file":"src/a.go","ttlMs":60000}`},
		{"alice", "acquire", `{"file":"src/a.go","ttlMs":1000}`},
		{"alice", "renew", `{"file":"src/a.go","token":1,"ttlMs":60000}`},
		{"alice", "renew", `{"file":"src/a.go","token":2,"ttlMs":60000}`},
		{"alice", "renew", `{"file":"src/a.go","ttlMs":60000}`},
		{"bob", "renew", `{"file":"src/a.go","token":1,"ttlMs":60000}`},
		{"bob", "status", `{"file":"src/a.go"}`},
		{"bob", "status", `{"file":"src/b.go"}`},
		{"bob", "release", `{"file":"src/a.go"}`},
		{"alice", "release", `{"file":"src/a.go","token":7}`},
		{"alice", "release", `{"file":"src/a.go","agentId":"bob"}`},
		{"alice", "acquire", `{"file":"src/b.go","ttlMs":1000,"agentId":"bob"}`},
		{"alice", "release", `{"file":"src/a.go","agentId":"alice"}`},
		{"alice", "release", `{"file":"src/a.go"}`},
		{"bob", "acquire", `{"file":"src/a.go","ttlMs":1000}`},
		{"bob", "release", `{"file":"src/a.go","token":2}`},
		{"bob", "acquire", `{"file":"src/a.go","ttlMs":99999999}`},
		{"bob", "acquire", `{"file":"a\u0001b","ttlMs":1000}`},
		{"bob", "acquire", `{"file":"src/a.go","ttlMs":1000,"waitMs":-5}`},
		{"bob", "status", `{"file":""}`},
	}
	_, httpSrv := MustServer(t, lease.Config{})
	_, wsSrv := MustServer(t, lease.Config{})
	conns := map[string]*rawWS{"alice": dialWS(t, wsSrv, "alice"), "bob": dialWS(t, wsSrv, "bob")}
	// Deadlines are compared only as present or not: the two servers
	// grant at slightly different times.
	timeless := func(m map[string]any) map[string]any {
		for _, k := range []string{"expiresAt", "remainingMs"} {
			if _, ok := m[k]; ok {
				m[k] = "set"
			}
		}
		return m
	}
	for i, st := range steps {
		_, viaHTTP := post(t, httpSrv, st.agent, st.op, st.body)
		ref := fmt.Sprint(i)
		conns[st.agent].send(`{"action":"lease.` + st.op + `","ref":"` + ref + `",` + st.body[1:])
		viaWS := conns[st.agent].next()
		if viaWS["ref"] != ref {
			t.Fatalf("step %d: answer %v, want ref %s", i, viaWS, ref)
		}
		delete(viaWS, "ref")
		delete(viaWS, "action")
		if got, want := fmt.Sprint(timeless(viaWS)), fmt.Sprint(timeless(viaHTTP)); got != want {
			t.Errorf("step %d, %s %s %s:\n frame %s\n HTTP  %s", i, st.agent, st.op, st.body, got, want)
		}
	}
}

// gateStore holds up the lease journal's writes while a test says so and
// counts them. It is no storage.Appender, so the journal makes one Create
// per group commit.
type gateStore struct {
	storage.Store
	mu      sync.Mutex
	writes  int
	entered chan struct{} // a held write arrived
	release chan struct{} // closed to let it go
}

func newGateStore() *gateStore { return &gateStore{Store: storage.NewMemory()} }

// hold makes the next journal write wait for the returned release.
func (s *gateStore) hold() (entered chan struct{}, release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.entered, s.release = make(chan struct{}), make(chan struct{})
	return s.entered, sync.OnceFunc(func() { close(s.release) })
}

func (s *gateStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}

func (s *gateStore) Create(ctx context.Context, key string, data []byte) (string, error) {
	if strings.HasPrefix(key, "leases/") && strings.Contains(key, "/log/") {
		s.mu.Lock()
		s.writes++
		entered, release := s.entered, s.release
		s.entered = nil
		s.mu.Unlock()
		if entered != nil {
			close(entered)
			<-release
		}
	}
	return s.Store.Create(ctx, key, data)
}

// Ensure frames pipelined on one connection run concurrently and share
// group commits: while the first acquire's write is held, the reader goes
// on and the next acquires are granted in memory, and once the write is let
// go they all become durable in about one more write.
func TestWS_pipelinedFramesShareCommits(t *testing.T) {
	const n = 50
	store := newGateStore()
	m, srv := MustServer(t, lease.Config{Store: store})
	r := dialWS(t, srv, "alice")
	entered, release := store.hold()
	defer release()
	r.send(`{"action":"lease.acquire","ref":"0","file":"f0","ttlMs":60000}`)
	<-entered
	for i := 1; i < n; i++ {
		r.send(fmt.Sprintf(`{"action":"lease.acquire","ref":"%d","file":"f%d","ttlMs":60000}`, i, i))
	}
	// Status waits for a grant's write; Stats counts grants in memory.
	waitFor(t, "the pipelined acquires to be granted in memory", func() bool { return m.Stats().Held == n })
	before := store.count()
	release()
	seen := map[string]bool{}
	for range n {
		a := r.next()
		if a["action"] != "lease.acquired" || a["acquired"] != true {
			t.Fatalf("answer %v", a)
		}
		seen[a["ref"].(string)] = true
	}
	if len(seen) != n {
		t.Fatalf("%d distinct refs answered, want %d", len(seen), n)
	}
	// The rest were queued while the held write waited, so they go in one
	// group commit, give or take a grant that had not reached the journal
	// yet when the write was let go.
	if got := store.count(); before != 1 || got-before > 3 {
		t.Fatalf("%d journal writes before the held one was let go and %d after; want 1, then a few for the other %d grants", before, got, n-1)
	} else {
		t.Logf("%d grants pipelined on one connection took %d journal writes", n, got)
	}
}

// Ensure answers come in order of completion: a status sent behind a
// waiting acquire is answered first, and the acquire once the holder
// releases.
func TestWS_answersInCompletionOrder(t *testing.T) {
	ctx := context.Background()
	m, srv := MustServer(t, lease.Config{})
	g := MustAcquire(t, m, "alice", "f", time.Hour)
	r := dialWS(t, srv, "bob")
	r.send(`{"action":"lease.acquire","ref":"wait","file":"f","ttlMs":60000,"waitMs":60000}`)
	waitFor(t, "bob to queue", func() bool { return m.Waiters("x1", "f") == 1 })
	r.send(`{"action":"lease.status","ref":"st","file":"f"}`)
	if a := r.next(); a["ref"] != "st" || a["action"] != "lease.status" || a["agentId"] != "alice" {
		t.Fatalf("first answer %v, want the status showing alice", a)
	}
	if err := m.Release(ctx, "x1", "alice", "f", g.Token); err != nil {
		t.Fatal(err)
	}
	if a := r.next(); a["ref"] != "wait" || a["acquired"] != true || a["agentId"] != "bob" {
		t.Fatalf("second answer %v, want bob's grant", a)
	}
}

// Ensure a waiting acquire ends when the client cancels it, and when its
// connection goes, and leaves the queue either way.
func TestWS_waitingAcquireEnds(t *testing.T) {
	m, srv := MustServer(t, lease.Config{})
	MustAcquire(t, m, "alice", "f", time.Hour)
	r := dialWS(t, srv, "bob")
	r.send(`{"action":"lease.acquire","ref":"w1","file":"f","ttlMs":60000,"waitMs":60000}`)
	waitFor(t, "bob to queue", func() bool { return m.Waiters("x1", "f") == 1 })
	r.send(`{"action":"lease.acquire","ref":"w1","file":"g","ttlMs":60000,"waitMs":60000}`)
	if a := r.next(); a["ref"] != "w1" || a["code"] != "invalid_input" || a["field"] != "ref" {
		t.Fatalf("second waiting acquire with a ref in use: %v", a)
	}
	r.send(`{"action":"lease.cancel","ref":"w1"}`)
	if a := r.next(); a["ref"] != "w1" || a["action"] != "error" || a["code"] != "unavailable" {
		t.Fatalf("cancelled acquire answered %v, want unavailable", a)
	}
	if n := m.Waiters("x1", "f"); n != 0 {
		t.Fatalf("%d waiters after the cancel", n)
	}

	r.send(`{"action":"lease.acquire","ref":"w2","file":"f","ttlMs":60000,"waitMs":60000}`)
	waitFor(t, "bob to queue again", func() bool { return m.Waiters("x1", "f") == 1 })
	r.c.Close(websocket.StatusNormalClosure, "")
	waitFor(t, "the waiter to leave with its connection", func() bool { return m.Waiters("x1", "f") == 0 })
}

// Ensure the endpoint is authenticated like the rest of the lease API and
// refuses what is no WebSocket handshake with a JSON error.
func TestWS_handshake(t *testing.T) {
	_, srv := MustServer(t, lease.Config{})
	tests := []struct {
		name, exchange, auth string
		plain                bool
		status               int
		code                 string
	}{
		{"no key", "x1", "", false, 401, "unauthorized"},
		{"unknown key", "x1", "Bearer nope", false, 401, "unauthorized"},
		{"another exchange", "x2", "Bearer key-alice", false, 403, "forbidden"},
		{"bad exchange", "-x", "Bearer key-alice", false, 400, "invalid_input"},
		{"no upgrade", "x1", "Bearer key-alice", true, 426, "upgrade_required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var resp *http.Response
			var err error
			hdr := http.Header{}
			if tt.auth != "" {
				hdr.Set("Authorization", tt.auth)
			}
			if tt.plain {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"/api/v1/exchanges/x1/leases/ws", nil)
				req.Header = hdr
				resp, err = srv.Client().Do(req)
			} else {
				_, resp, err = websocket.Dial(context.Background(), wsURL(srv, tt.exchange), &websocket.DialOptions{HTTPHeader: hdr})
				if err == nil {
					t.Fatal("handshake accepted")
				}
				err = nil
			}
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct{ Error, Code string }
			if err := decodeJSON(resp, &body); err != nil {
				t.Fatalf("%d answer is no JSON: %v", resp.StatusCode, err)
			}
			if resp.StatusCode != tt.status || body.Code != tt.code || body.Error == "" {
				t.Fatalf("got %d %+v, want %d %s", resp.StatusCode, body, tt.status, tt.code)
			}
		})
	}
}

// watchedKeys is keys whose WatchKey channels the test closes.
type watchedKeys struct {
	keys
	mu      sync.Mutex
	revoked map[string]chan struct{}
}

func (w *watchedKeys) WatchKey(_, key string) (<-chan struct{}, func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.revoked[key] == nil {
		w.revoked[key] = make(chan struct{})
	}
	return w.revoked[key], func() {}
}

func (w *watchedKeys) revoke(key string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	close(w.revoked[key])
}

// Ensure a connection whose key is revoked is closed with 1008 at once,
// and its waiting acquire leaves the queue.
func TestWS_revokedKey(t *testing.T) {
	m := MustNew(t, lease.Config{})
	auth := &watchedKeys{revoked: map[string]chan struct{}{}}
	h, err := lease.NewHandler(m, lease.HandlerConfig{Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	MustAcquire(t, m, "alice", "f", time.Hour)
	r := dialWS(t, srv, "bob")
	r.send(`{"action":"lease.acquire","ref":"w","file":"f","ttlMs":60000,"waitMs":60000}`)
	waitFor(t, "bob to queue", func() bool { return m.Waiters("x1", "f") == 1 })
	auth.revoke("key-bob")
	if got := r.closeStatus(); got != websocket.StatusPolicyViolation {
		t.Fatalf("close status %d, want %d", got, websocket.StatusPolicyViolation)
	}
	waitFor(t, "the revoked waiter to leave", func() bool { return m.Waiters("x1", "f") == 0 })
}

// Ensure connections are closed with 1001 when the lease service shuts
// down, and that a client then gets ErrClosed over HTTP.
func TestWS_managerClose(t *testing.T) {
	m, srv := MustServer(t, lease.Config{})
	r := dialWS(t, srv, "bob")
	c := connectedClient(t, srv, "alice")
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := r.closeStatus(); got != websocket.StatusGoingAway {
		t.Fatalf("close status %d, want %d", got, websocket.StatusGoingAway)
	}
	waitFor(t, "the client to notice", func() bool { return !c.Connected() })
	if _, err := c.Status(context.Background(), "f"); !errors.Is(err, lease.ErrClosed) {
		t.Fatalf("status after shutdown: %v, want ErrClosed", err)
	}
}

// connectedClient is agent's client with its lease WebSocket open, free to
// fall back to HTTP.
func connectedClient(t *testing.T, srv *httptest.Server, agent string) *lease.Client {
	t.Helper()
	c, err := lease.NewClient(lease.ClientConfig{BaseURL: srv.URL, Exchange: "x1", APIKey: "key-" + agent})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	if err := c.Connect(context.Background()); err != nil {
		t.Fatal(err)
	}
	return c
}

// hijackedConns records the server side of every WebSocket, so a test can
// cut them.
type hijackedConns struct {
	mu    sync.Mutex
	conns []net.Conn
}

func (h *hijackedConns) track(c net.Conn, s http.ConnState) {
	if s == http.StateHijacked {
		h.mu.Lock()
		h.conns = append(h.conns, c)
		h.mu.Unlock()
	}
}

func (h *hijackedConns) n() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.conns)
}

func (h *hijackedConns) cutLast() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.conns[len(h.conns)-1].Close()
}

// Ensure a client whose connection is cut redials it, and what becomes of
// the calls in flight: an acquire is repeated over HTTP and returns the
// grant the first one made, a release reports that its outcome is unknown.
func TestClient_connectionCut(t *testing.T) {
	ctx := context.Background()
	store := newGateStore()
	m := MustNew(t, lease.Config{Store: store})
	h, err := lease.NewHandler(m, lease.HandlerConfig{Auth: keys{}})
	if err != nil {
		t.Fatal(err)
	}
	var conns hijackedConns
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = conns.track
	srv.Start()
	defer srv.Close()
	c, err := lease.NewClient(lease.ClientConfig{BaseURL: srv.URL, Exchange: "x1", APIKey: "key-alice"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}

	entered, release := store.hold()
	type result struct {
		g   lease.Grant
		err error
	}
	got := make(chan result, 1)
	go func() {
		g, err := c.Acquire(ctx, "f", time.Minute)
		got <- result{g, err}
	}()
	<-entered // granted, being written
	conns.cutLast()
	waitFor(t, "the client to notice the cut", func() bool { return !c.Connected() })
	release()
	res := <-got
	if res.err != nil || res.g.Holder != "alice" || res.g.Token != 1 {
		t.Fatalf("acquire cut off in flight = %+v, %v; want alice's grant with token 1", res.g, res.err)
	}

	waitFor(t, "the client to redial", func() bool { return c.Connected() && conns.n() == 2 })
	entered, release = store.hold()
	defer release()
	done := make(chan error, 1)
	go func() { done <- c.Release(ctx, "f", res.g.Token) }()
	<-entered
	conns.cutLast()
	if err := <-done; !errors.Is(err, lease.ErrDisconnected) {
		t.Fatalf("release cut off in flight: %v, want ErrDisconnected", err)
	}
	release()
	waitFor(t, "the release to be done anyway", func() bool {
		st, _ := m.Status(ctx, "x1", "f")
		return !st.IsLeased
	})
}

// Ensure Close lets a call in flight finish before it closes the
// connection, and that calls after Close go over HTTP.
func TestClient_closeDrains(t *testing.T) {
	ctx := context.Background()
	m, srv := MustServer(t, lease.Config{})
	g := MustAcquire(t, m, "bob", "f", time.Hour)
	c := connectedClient(t, srv, "alice")
	got := make(chan error, 1)
	go func() {
		_, err := c.AcquireWait(ctx, "f", time.Minute, time.Minute)
		got <- err
	}()
	waitFor(t, "alice to queue", func() bool { return m.Waiters("x1", "f") == 1 })
	closed := make(chan error, 1)
	go func() { closed <- c.Close(ctx) }()
	if err := m.Release(ctx, "x1", "bob", "f", g.Token); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatalf("acquire in flight during Close: %v", err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if st, err := c.Status(ctx, "f"); err != nil || st.AgentID != "alice" {
		t.Fatalf("status over HTTP after Close = %+v, %v", st, err)
	}
}

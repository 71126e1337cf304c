package lease_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/lease/leasetest"
)

// keys authenticates "key-<agent>" as <agent> in exchange x1 and rejects
// every key for any other exchange as forbidden.
type keys struct{}

func (keys) Authenticate(_ context.Context, x, tok string) (string, error) {
	agent, ok := strings.CutPrefix(tok, "key-")
	if !ok {
		return "", lease.ErrUnauthorized
	}
	if x != "x1" {
		return "", fmt.Errorf("key of x1 used for %s: %w", x, lease.ErrForbidden)
	}
	return agent, nil
}

func MustServer(tb testing.TB, cfg lease.Config) (*lease.Manager, *httptest.Server) {
	tb.Helper()
	m := MustNew(tb, cfg)
	h, err := lease.NewHandler(m, lease.HandlerConfig{Auth: keys{}, MaxBodyBytes: 4096})
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return m, srv
}

func MustClient(tb testing.TB, srv *httptest.Server, x, agent string) *lease.Client {
	tb.Helper()
	return MustClientVia(tb, srv, x, agent, viaHTTP)
}

// transport is how a Client reaches the server in a test.
type transport string

const (
	viaHTTP transport = "HTTP"      // one HTTP request per call
	viaWS   transport = "WebSocket" // lease frames on the lease WebSocket (Connect)
)

var transports = []transport{viaHTTP, viaWS}

// forEachTransport runs f as a subtest per transport.
func forEachTransport(t *testing.T, f func(t *testing.T, tr transport)) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) { f(t, tr) })
	}
}

// MustClientVia returns agent's client reaching srv over tr. Over the
// WebSocket, any HTTP request other than the handshake, list and
// release-all fails the test: the calls must really go as frames.
func MustClientVia(tb testing.TB, srv *httptest.Server, x, agent string, tr transport) *lease.Client {
	tb.Helper()
	hc := &http.Client{Transport: &onlyWS{tb: tb, ws: tr == viaWS, rt: srv.Client().Transport}}
	c, err := lease.NewClient(lease.ClientConfig{BaseURL: srv.URL, Exchange: x, APIKey: "key-" + agent, HTTPClient: hc})
	if err != nil {
		tb.Fatal(err)
	}
	if tr == viaWS {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Connect(ctx); err != nil {
			tb.Fatalf("connect %s: %v", agent, err)
		}
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Close(ctx); err != nil {
			tb.Errorf("close %s: %v", agent, err)
		}
	})
	return c
}

// onlyWS fails the test on lease calls made over HTTP by a client that
// should make them as frames.
type onlyWS struct {
	tb testing.TB
	ws bool
	rt http.RoundTripper
}

func (o *onlyWS) RoundTrip(r *http.Request) (*http.Response, error) {
	op := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]
	if o.ws && op != "ws" && op != "list" && op != "release-all" {
		o.tb.Errorf("%s %s over HTTP, with the WebSocket connected", r.Method, r.URL.Path)
	}
	return o.rt.RoundTrip(r)
}

// post sends body to the lease endpoint op as agent and returns the status
// and the decoded answer.
func post(t *testing.T, srv *httptest.Server, agent, op, body string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/exchanges/x1/leases/"+op, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer key-"+agent)
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	if err := decodeJSON(resp, &out); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, out
}

func TestNewHandler_needsAuth(t *testing.T) {
	m := MustNew(t, lease.Config{})
	if h, err := lease.NewHandler(m, lease.HandlerConfig{}); err == nil || h != nil {
		t.Fatalf("NewHandler without Auth = %v, %v; want an error", h, err)
	}
	if h, err := lease.NewHandler(nil, lease.HandlerConfig{Auth: keys{}}); err == nil || h != nil {
		t.Fatalf("NewHandler without a Manager = %v, %v; want an error", h, err)
	}
}

func TestNewClient_invalid(t *testing.T) {
	tests := []struct {
		name string
		cfg  lease.ClientConfig
	}{
		{"no url", lease.ClientConfig{Exchange: "x1", APIKey: "k"}},
		{"not http", lease.ClientConfig{BaseURL: "ftp://h", Exchange: "x1", APIKey: "k"}},
		{"bad exchange", lease.ClientConfig{BaseURL: "http://h", Exchange: "-x", APIKey: "k"}},
		{"no key", lease.ClientConfig{BaseURL: "http://h", Exchange: "x1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if c, err := lease.NewClient(tt.cfg); err == nil || c != nil {
				t.Fatalf("NewClient(%+v) = %v, %v; want an error", tt.cfg, c, err)
			}
		})
	}
}

// Ensure a holder can release by name alone, as mail bus clients send
// {file, agentId}, and that the file then goes at once to the agent queued
// for it; a token, when sent, must still be current.
func TestHandler_releaseWithoutToken(t *testing.T) {
	forEachTransport(t, testReleaseWithoutToken)
}

func testReleaseWithoutToken(t *testing.T, tr transport) {
	ctx := context.Background()
	m, srv := MustServer(t, lease.Config{})
	alice, bob := MustClientVia(t, srv, "x1", "alice", tr), MustClientVia(t, srv, "x1", "bob", tr)
	g, err := alice.Acquire(ctx, "f", time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	status, body := post(t, srv, "bob", "release", `{"file":"f","agentId":"bob"}`)
	if status != http.StatusConflict || body["code"] != "not_held" {
		t.Fatalf("token-less release by a non-holder = %d %v, want 409 not_held", status, body)
	}
	status, body = post(t, srv, "alice", "release", fmt.Sprintf(`{"file":"f","token":%d}`, g.Token+1))
	if status != http.StatusConflict || body["code"] != "stale_token" {
		t.Fatalf("release with a wrong token = %d %v, want 409 stale_token", status, body)
	}
	if err := bob.Release(ctx, "f", 0); !errors.Is(err, lease.ErrNotHeld) {
		t.Fatalf("client release by a non-holder: %v, want ErrNotHeld", err)
	}
	if err := alice.Release(ctx, "f", g.Token+1); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("client release with a wrong token: %v, want ErrStaleToken", err)
	}

	waited := make(chan error, 1)
	var bg lease.Grant
	go func() {
		var err error
		bg, err = bob.AcquireWait(ctx, "f", time.Minute, time.Minute)
		waited <- err
	}()
	for deadline := time.Now().Add(10 * time.Second); m.Waiters("x1", "f") == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("bob never queued")
		}
	}
	status, body = post(t, srv, "alice", "release", `{"file":"f","agentId":"alice"}`)
	if status != http.StatusOK || body["released"] != true {
		t.Fatalf("token-less release by the holder = %d %v, want 200 released", status, body)
	}
	// alice's lease had an hour to run: only the release can have handed
	// the file to bob.
	if err := <-waited; err != nil || bg.Holder != "bob" || bg.Token <= g.Token {
		t.Fatalf("bob's queued acquire = %+v, %v", bg, err)
	}
	if err := bob.Release(ctx, "f", 0); err != nil {
		t.Fatalf("client token-less release by the holder = %v", err)
	}
}

func TestClient_lifecycle(t *testing.T) { forEachTransport(t, testClientLifecycle) }

func testClientLifecycle(t *testing.T, tr transport) {
	ctx := context.Background()
	_, srv := MustServer(t, lease.Config{Store: MustFS(t, t.TempDir())})
	alice, bob := MustClientVia(t, srv, "x1", "alice", tr), MustClientVia(t, srv, "x1", "bob", tr)

	g, err := alice.Acquire(ctx, "./src//a.go", 10*time.Second)
	if err != nil || g.Name != "src/a.go" || g.Holder != "alice" || g.Token == 0 {
		t.Fatalf("acquire = %+v, %v", g, err)
	}
	_, err = bob.Acquire(ctx, "src/a.go", time.Second)
	var he *lease.HeldError
	if !errors.As(err, &he) || !errors.Is(err, lease.ErrHeld) || he.Holder != "alice" || he.ExpiresAt.UnixMilli() != g.ExpiresAt.UnixMilli() {
		t.Fatalf("bob acquire: %v (%+v)", err, he)
	}
	st, err := bob.Status(ctx, "src/a.go")
	if err != nil || !st.IsLeased || st.AgentID != "alice" || st.Token != g.Token || st.ExpiresAt != g.ExpiresAt.UnixMilli() || st.RemainingMs <= 0 {
		t.Fatalf("status = %+v, %v", st, err)
	}
	r, err := alice.Renew(ctx, "src/a.go", g.Token, 20*time.Second)
	if err != nil || r.Token != g.Token || !r.ExpiresAt.After(g.ExpiresAt) {
		t.Fatalf("renew = %+v, %v", r, err)
	}
	if _, err := alice.Renew(ctx, "src/a.go", g.Token+1, time.Second); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("stale renew: %v", err)
	}
	if _, err := bob.Renew(ctx, "src/a.go", g.Token, time.Second); !errors.Is(err, lease.ErrNotHeld) {
		t.Fatalf("renew by non-holder: %v", err)
	}
	if ls, err := bob.List(ctx, "alice"); err != nil || len(ls) != 1 || ls[0].Token != g.Token {
		t.Fatalf("list = %+v, %v", ls, err)
	}
	if err := bob.Release(ctx, "src/a.go", g.Token); !errors.Is(err, lease.ErrNotHeld) {
		t.Fatalf("release by bob = %v", err)
	}
	if err := alice.Release(ctx, "src/a.go", g.Token); err != nil {
		t.Fatalf("release by alice = %v", err)
	}
	if st, err := bob.Status(ctx, "src/a.go"); err != nil || st != (lease.Status{}) {
		t.Fatalf("status after release = %+v, %v", st, err)
	}
	alice.Acquire(ctx, "x", time.Minute)
	alice.Acquire(ctx, "y", time.Minute)
	if n, err := alice.ReleaseAll(ctx); n != 2 || err != nil {
		t.Fatalf("ReleaseAll = %d, %v", n, err)
	}
}

func TestClient_staleAfterExpiry(t *testing.T) { forEachTransport(t, testClientStaleAfterExpiry) }

func testClientStaleAfterExpiry(t *testing.T, tr transport) {
	ctx := context.Background()
	_, srv := MustServer(t, lease.Config{MinTTL: 10 * time.Millisecond})
	alice, bob := MustClientVia(t, srv, "x1", "alice", tr), MustClientVia(t, srv, "x1", "bob", tr)
	g, err := alice.Acquire(ctx, "f", 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bob.AcquireWait(ctx, "f", time.Minute, 10*time.Second)
	if err != nil || b.Token <= g.Token {
		t.Fatalf("bob = %+v, %v", b, err)
	}
	if _, err := alice.Renew(ctx, "f", g.Token, time.Second); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("renew with stale token: %v", err)
	}
	if err := alice.Release(ctx, "f", g.Token); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("release with stale token = %v", err)
	}
}

func TestHandler_errors(t *testing.T) {
	_, srv := MustServer(t, lease.Config{})
	tests := []struct {
		name, path, auth, body string
		status                 int
		code, field            string
		want                   error // what Client maps the answer to
	}{
		{"no auth", "/api/v1/exchanges/x1/leases/status", "", `{"file":"f"}`, 401, "unauthorized", "", lease.ErrUnauthorized},
		{"bad key", "/api/v1/exchanges/x1/leases/status", "Bearer nope", `{"file":"f"}`, 401, "unauthorized", "", lease.ErrUnauthorized},
		{"lower-case scheme", "/api/v1/exchanges/x1/leases/status", "bearer nope", `{"file":"f"}`, 401, "unauthorized", "", lease.ErrUnauthorized},
		{"other exchange", "/api/v1/exchanges/x2/leases/status", "Bearer key-a", `{"file":"f"}`, 403, "forbidden", "", lease.ErrForbidden},
		{"bad json", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":`, 400, "malformed_json", "", nil},
		{"wrong type", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":1}`, 400, "malformed_json", "", nil},
		{"bad ttl", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"f","ttlMs":0}`, 400, "invalid_input", "ttlMs", lease.ErrInvalidTTL},
		{"negative ttl", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"f","ttlMs":-5}`, 400, "invalid_input", "ttlMs", lease.ErrInvalidTTL},
		{"bad name", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"","ttlMs":1000}`, 400, "invalid_input", "file", lease.ErrInvalidName},
		{"agent mismatch", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"f","ttlMs":1000,"agentId":"b"}`, 403, "forbidden", "", lease.ErrForbidden},
		{"release agent mismatch", "/api/v1/exchanges/x1/leases/release", "Bearer key-a", `{"file":"f","agentId":"b"}`, 403, "forbidden", "", lease.ErrForbidden},
		{"renew without token", "/api/v1/exchanges/x1/leases/renew", "Bearer key-a", `{"file":"f","ttlMs":1000}`, 400, "invalid_input", "token", lease.ErrInvalidToken},
		{"release not held", "/api/v1/exchanges/x1/leases/release", "Bearer key-a", `{"file":"f"}`, 409, "not_held", "", lease.ErrNotHeld},
		{"not held", "/api/v1/exchanges/x1/leases/renew", "Bearer key-a", `{"file":"f","token":3,"ttlMs":1000}`, 409, "not_held", "", lease.ErrNotHeld},
		{"too large", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"` + strings.Repeat("a", 5000) + `"}`, 413, "too_large", "", nil},
		{"bad exchange", "/api/v1/exchanges/-x/leases/status", "Bearer key-a", `{}`, 400, "invalid_input", "exchange_id", lease.ErrInvalidID},
		{"bad agent filter", "/api/v1/exchanges/x1/leases/list?agent=-a", "Bearer key-a", ``, 400, "invalid_input", "agentId", lease.ErrInvalidID},
		{"unknown", "/api/v1/exchanges/x1/leases/nope", "Bearer key-a", `{}`, 404, "not_found", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := http.MethodPost
			if strings.Contains(tt.path, "/list") {
				method = http.MethodGet
			}
			req, _ := http.NewRequest(method, srv.URL+tt.path, strings.NewReader(tt.body))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct{ Error, Code, Field string }
			if err := decodeJSON(resp, &body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || body.Code != tt.code || body.Field != tt.field || body.Error == "" {
				t.Fatalf("got %d %+v, want %d %s %s", resp.StatusCode, body, tt.status, tt.code, tt.field)
			}
			apiErr := &lease.APIError{StatusCode: resp.StatusCode, Code: body.Code, Field: body.Field, Message: body.Error}
			if got := errors.Unwrap(apiErr); got != tt.want {
				t.Fatalf("the client maps it to %v, want %v", got, tt.want)
			}
		})
	}
}

// Ensure the wire format is the LeaseStatus of the lease API v1: a free
// lease is exactly {"isLeased":false}.
func TestHandler_statusWire(t *testing.T) {
	_, srv := MustServer(t, lease.Config{})
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/v1/exchanges/x1/leases/status", strings.NewReader(`{"file":"f"}`))
	req.Header.Set("Authorization", "Bearer key-a")
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw map[string]any
	if err := decodeJSON(resp, &raw); err != nil {
		t.Fatal(err)
	}
	if len(raw) != 1 || raw["isLeased"] != false {
		t.Fatalf("free status = %v", raw)
	}
}

func TestManager_linearizable(t *testing.T) {
	m := MustNew(t, lease.Config{Store: MustFS(t, t.TempDir())})
	var agents []leasetest.Agent
	for i := range 8 {
		id := fmt.Sprintf("agent%d", i)
		agents = append(agents, leasetest.Agent{ID: id, Target: leasetest.ManagerTarget(m, "x1", id)})
	}
	leasetest.CheckLinearizable(t, agents, leasetest.Config{Ops: 300})
}

func TestClient_linearizable(t *testing.T) {
	forEachTransport(t, func(t *testing.T, tr transport) {
		_, srv := MustServer(t, lease.Config{Store: MustFS(t, t.TempDir())})
		var agents []leasetest.Agent
		for i := range 8 {
			id := fmt.Sprintf("agent%d", i)
			agents = append(agents, leasetest.Agent{ID: id, Target: MustClientVia(t, srv, "x1", id, tr)})
		}
		leasetest.CheckLinearizable(t, agents, leasetest.Config{Ops: 150})
	})
}

// Ensure calls from many goroutines sharing one connected client, whose
// frames the client combines into arrays when they coincide, are
// linearizable too.
func TestClient_linearizableSharedConnection(t *testing.T) {
	_, srv := MustServer(t, lease.Config{Store: MustFS(t, t.TempDir())})
	var agents []leasetest.Agent
	for i := range 4 {
		id := fmt.Sprintf("agent%d", i)
		c := MustClientVia(t, srv, "x1", id, viaWS)
		for range 4 {
			agents = append(agents, leasetest.Agent{ID: id, Target: c})
		}
	}
	leasetest.CheckLinearizable(t, agents, leasetest.Config{Ops: 100})
}

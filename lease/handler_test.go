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
	srv := httptest.NewServer(lease.NewHandler(m, lease.HandlerConfig{Auth: keys{}, MaxBodyBytes: 4096}))
	tb.Cleanup(srv.Close)
	return m, srv
}

func MustClient(tb testing.TB, srv *httptest.Server, x, agent string) *lease.Client {
	c := lease.NewClient(srv.URL, x, "key-"+agent, nil)
	tb.Cleanup(c.CloseIdleConnections)
	return c
}

func TestClient_lifecycle(t *testing.T) {
	ctx := context.Background()
	_, srv := MustServer(t, lease.Config{Store: MustFS(t, t.TempDir())})
	alice, bob := MustClient(t, srv, "x1", "alice"), MustClient(t, srv, "x1", "bob")

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
	if ok, err := bob.Release(ctx, "src/a.go", g.Token); ok || err != nil {
		t.Fatalf("release by bob = %v, %v", ok, err)
	}
	if ok, err := alice.Release(ctx, "src/a.go", g.Token); !ok || err != nil {
		t.Fatalf("release by alice = %v, %v", ok, err)
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

func TestClient_staleAfterExpiry(t *testing.T) {
	ctx := context.Background()
	_, srv := MustServer(t, lease.Config{MinTTL: 10 * time.Millisecond})
	alice, bob := MustClient(t, srv, "x1", "alice"), MustClient(t, srv, "x1", "bob")
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
	if ok, err := alice.Release(ctx, "f", g.Token); ok || err != nil {
		t.Fatalf("release with stale token = %v, %v", ok, err)
	}
}

func TestHandler_errors(t *testing.T) {
	_, srv := MustServer(t, lease.Config{})
	tests := []struct {
		name, path, auth, body string
		status                 int
		code                   string
	}{
		{"no auth", "/api/v1/exchanges/x1/leases/status", "", `{"file":"f"}`, 401, "unauthorized"},
		{"bad key", "/api/v1/exchanges/x1/leases/status", "Bearer nope", `{"file":"f"}`, 401, "unauthorized"},
		{"other exchange", "/api/v1/exchanges/x2/leases/status", "Bearer key-a", `{"file":"f"}`, 403, "forbidden"},
		{"bad json", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":`, 400, "invalid_json"},
		{"bad ttl", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"f","ttlMs":0}`, 400, "invalid_ttl"},
		{"negative ttl", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"f","ttlMs":-5}`, 400, "invalid_ttl"},
		{"bad name", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"","ttlMs":1000}`, 400, "invalid_name"},
		{"agent mismatch", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"f","ttlMs":1000,"agentId":"b"}`, 403, "forbidden"},
		{"no token", "/api/v1/exchanges/x1/leases/release", "Bearer key-a", `{"file":"f"}`, 400, "invalid_token"},
		{"not held", "/api/v1/exchanges/x1/leases/renew", "Bearer key-a", `{"file":"f","token":3,"ttlMs":1000}`, 409, "not_held"},
		{"too large", "/api/v1/exchanges/x1/leases/acquire", "Bearer key-a", `{"file":"` + strings.Repeat("a", 5000) + `"}`, 413, "body_too_large"},
		{"bad exchange", "/api/v1/exchanges/-x/leases/status", "Bearer key-a", `{}`, 400, "invalid_exchange"},
		{"unknown", "/api/v1/exchanges/x1/leases/nope", "Bearer key-a", `{}`, 404, "not_found"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, srv.URL+tt.path, strings.NewReader(tt.body))
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct{ Error, Code string }
			if err := decodeJSON(resp, &body); err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tt.status || body.Code != tt.code || body.Error == "" {
				t.Fatalf("got %d %+v, want %d %s", resp.StatusCode, body, tt.status, tt.code)
			}
		})
	}
}

// Ensure the wire format matches the seed's LeaseStatus: a free lease is
// exactly {"isLeased":false}.
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
	_, srv := MustServer(t, lease.Config{Store: MustFS(t, t.TempDir())})
	var agents []leasetest.Agent
	for i := range 8 {
		id := fmt.Sprintf("agent%d", i)
		agents = append(agents, leasetest.Agent{ID: id, Target: MustClient(t, srv, "x1", id)})
	}
	leasetest.CheckLinearizable(t, agents, leasetest.Config{Ops: 150})
}

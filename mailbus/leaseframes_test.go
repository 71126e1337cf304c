package mailbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
)

// leaseAuth is keyAuth for the lease service.
type leaseAuth struct{}

func (leaseAuth) Authenticate(ctx context.Context, exchangeID, token string) (string, error) {
	agent, err := keyAuth{}.Authenticate(ctx, exchangeID, token)
	switch {
	case errors.Is(err, mailbus.ErrUnauthorized):
		return "", lease.ErrUnauthorized
	case errors.Is(err, mailbus.ErrForbidden):
		return "", lease.ErrForbidden
	}
	return agent, err
}

// startLeaseEnv serves a bus whose WebSocket carries lease frames (when
// frames is set) and the lease service's HTTP API beside it, as messd does.
func startLeaseEnv(t *testing.T, frames bool) (*testEnv, *lease.Manager) {
	t.Helper()
	return startLeaseEnvAuth(t, frames, keyAuth{})
}

func startLeaseEnvAuth(t *testing.T, frames bool, auth mailbus.Authenticator) (*testEnv, *lease.Manager) {
	t.Helper()
	m, err := lease.New(context.Background(), lease.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close(context.Background()) })
	b, err := mailbus.New(context.Background(), mailbus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	hcfg := mailbus.HandlerConfig{Auth: auth, PingInterval: time.Second}
	if frames {
		hcfg.Leases = m
	}
	bh, err := mailbus.NewHandler(b, hcfg)
	if err != nil {
		t.Fatal(err)
	}
	lh, err := lease.NewHandler(m, lease.HandlerConfig{Auth: leaseAuth{}})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/exchanges/{exchange_id}/mailbus/", bh)
	mux.Handle("/api/v1/exchanges/{exchange_id}/leases/", lh)
	e := &testEnv{bus: b, srv: httptest.NewServer(mux)}
	t.Cleanup(e.stop)
	return e, m
}

// leaseFrame reads frames until an answer to a lease frame (or an error)
// arrives, skipping mail.
func (r *rawConn) leaseFrame() map[string]any {
	r.t.Helper()
	for {
		var f map[string]any
		if err := json.Unmarshal(r.next(), &f); err != nil {
			r.t.Fatal(err)
		}
		if a, _ := f["action"].(string); a == "error" || lease.IsFrameAction(a) {
			return f
		}
	}
}

// Ensure the mail bus WebSocket carries lease frames beside mail: the
// welcome says so, answers come in order of completion, a waiting acquire
// is handed the lease on release, and mail goes on flowing.
func TestLeaseFrames_onMailConnection(t *testing.T) {
	e, m := startLeaseEnv(t, true)
	ctx := ctxT(t)
	u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http") + "?types=*"
	c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key("ex", "b")}}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	_, w, err := c.Read(ctx)
	if err != nil || !strings.Contains(string(w), `"leases":true`) {
		t.Fatalf("welcome %s (%v), want leases: true", w, err)
	}
	c.CloseNow()

	g, err := m.Acquire(ctx, "ex", "a", "src/a.go", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r := dialRaw(t, e, "ex", "b", "types=*")
	r.send(map[string]any{"action": "lease.acquire", "ref": "w", "file": "src/a.go", "ttlMs": 60000, "waitMs": 60000})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		if st := m.Stats(); st.Waiters == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("b never queued")
		}
	}
	r.send(map[string]any{"action": "lease.status", "ref": "s", "file": "src/a.go"})
	if f := r.leaseFrame(); f["action"] != "lease.status" || f["ref"] != "s" || f["agentId"] != "a" {
		t.Fatalf("first answer %v, want the status showing a", f)
	}
	r.send(map[string]any{"action": "send", "ref": "m", "targetAgent": "b", "message": map[string]any{"type": "note"}})
	if msg := r.message(); msg.Type != "note" {
		t.Fatalf("mail beside lease frames: %+v", msg)
	}
	if err := m.Release(ctx, "ex", "a", "src/a.go", g.Token); err != nil {
		t.Fatal(err)
	}
	f := r.leaseFrame()
	if f["action"] != "lease.acquired" || f["ref"] != "w" || f["acquired"] != true || f["agentId"] != "b" {
		t.Fatalf("queued acquire answered %v, want b's grant", f)
	}
	r.send(map[string]any{"action": "lease.release", "ref": "r", "file": "src/a.go"})
	if f := r.leaseFrame(); f["action"] != "lease.released" || f["ref"] != "r" || f["released"] != true {
		t.Fatalf("token-less release answered %v", f)
	}
}

// Ensure bad lease frames on the mail bus WebSocket get error frames with
// the lease service's codes and leave the connection working, and that a
// bus serving no lease frames refuses them as unknown actions.
func TestLeaseFrames_malformed(t *testing.T) {
	e, _ := startLeaseEnv(t, true)
	r := dialRaw(t, e, "ex", "a", "")
	for _, tt := range []struct{ frame, code, field, ref string }{
		{`{"action":"lease.acquire","ref":"1","file":`, "malformed_json", "", ""},
		{`{"action":"lease.acquire","ref":"2","file":true}`, "malformed_json", "", "2"},
		{`{"action":"lease.steal","ref":"3"}`, "invalid_input", "action", "3"},
		{`{"action":"lease.status","file":"f"}`, "invalid_input", "ref", ""},
		{`{"action":"lease.status","ref":"` + strings.Repeat("r", lease.MaxRefLen+1) + `","file":"f"}`, "invalid_input", "ref", ""},
		{`{"action":"lease.acquire","ref":"4","file":"f","ttlMs":5}`, "invalid_input", "ttlMs", "4"},
		{`{"action":"lease.renew","ref":"5","file":"f","token":9,"ttlMs":1000}`, "not_held", "", "5"},
	} {
		if err := r.c.Write(ctxT(t), websocket.MessageText, []byte(tt.frame)); err != nil {
			t.Fatal(err)
		}
		f := r.leaseFrame()
		ref, _ := f["ref"].(string)
		field, _ := f["field"].(string)
		if f["action"] != "error" || f["code"] != tt.code || field != tt.field || ref != tt.ref {
			t.Errorf("%s: answer %v, want code %s field %q ref %q", tt.frame, f, tt.code, tt.field, tt.ref)
		}
	}
	r.send(map[string]any{"action": "lease.acquire", "ref": "ok", "file": "f", "ttlMs": 1000})
	if f := r.leaseFrame(); f["action"] != "lease.acquired" || f["acquired"] != true {
		t.Fatalf("acquire after the bad frames: %v", f)
	}

	plain, _ := startLeaseEnv(t, false)
	r = dialRaw(t, plain, "ex", "a", "")
	r.send(map[string]any{"action": "lease.status", "ref": "1", "file": "f"})
	if f := r.frame(); f.Action != "error" || f.Code != "invalid_input" || f.Ref != "1" {
		t.Fatalf("lease frame to a bus without leases: %+v, want an unknown action error", f)
	}
}

// Ensure a connection whose key is revoked ends its waiting acquire before
// it closes: the lease is not handed to the revoked key's agent.
func TestLeaseFrames_revokedKey(t *testing.T) {
	auth := &watchAuth{revoked: map[string]chan struct{}{}}
	e, m := startLeaseEnvAuth(t, true, auth)
	ctx := ctxT(t)
	g, err := m.Acquire(ctx, "ex", "a", "f", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	r := dialRaw(t, e, "ex", "b", "")
	r.send(map[string]any{"action": "lease.acquire", "ref": "w", "file": "f", "ttlMs": 60000, "waitMs": 60000})
	for deadline := time.Now().Add(10 * time.Second); m.Stats().Waiters != 1; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("b never queued")
		}
	}
	auth.revoke(key("ex", "b"))
	for deadline := time.Now().Add(10 * time.Second); m.Stats().Waiters != 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the revoked key's acquire still waits")
		}
	}
	if err := m.Release(ctx, "ex", "a", "f", g.Token); err != nil {
		t.Fatal(err)
	}
	if st, _ := m.Status(ctx, "ex", "f"); st.IsLeased {
		t.Fatalf("after the release: %+v, want free", st)
	}
	select {
	case err := <-r.err:
		if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
			t.Fatalf("connection ended with %v, want 1008", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the revoked key's connection is still open")
	}
}

// pathLog records the lease API paths a client calls over HTTP.
type pathLog struct {
	mu    sync.Mutex
	paths []string
}

func (p *pathLog) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/leases/") {
		p.mu.Lock()
		p.paths = append(p.paths, r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:])
		p.mu.Unlock()
	}
	return http.DefaultTransport.RoundTrip(r)
}

func (p *pathLog) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.paths
	p.paths = nil
	return out
}

// Ensure Client's lease calls travel as frames on its connection while it
// is connected, over HTTP before, and that they behave the same either way.
func TestClient_LeasesOverConnection(t *testing.T) {
	e, _ := startLeaseEnv(t, true)
	ctx := ctxT(t)
	log := &pathLog{}
	newClient := func(agent string) *mailbus.Client {
		c, err := mailbus.NewClient(mailbus.ClientConfig{URL: e.srv.URL, Exchange: "ex", APIKey: key("ex", agent),
			HTTPClient: &http.Client{Transport: log}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		return c
	}
	a, b := newClient("a"), newClient("b")
	round := func() {
		t.Helper()
		g, err := a.AcquireLease(ctx, "src/a.go", time.Minute)
		if err != nil || g.Holder != "a" {
			t.Fatalf("a acquire: %+v %v", g, err)
		}
		var held *lease.HeldError
		if _, err := b.AcquireLease(ctx, "src/a.go", time.Minute); !errors.As(err, &held) || held.Holder != "a" {
			t.Fatalf("b acquire of a's lease: %v, want a HeldError naming a", err)
		}
		if st, err := b.IsLeased(ctx, "src/a.go"); err != nil || !st.IsLeased || st.Token != g.Token {
			t.Fatalf("status %+v %v", st, err)
		}
		if err := a.ReleaseLease(ctx, "src/a.go"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.AcquireLease(ctx, "", time.Minute); !errors.Is(err, lease.ErrInvalidName) {
			t.Fatalf("acquire of no name: %v, want ErrInvalidName", err)
		}
		if err := b.ReleaseLease(ctx, "src/a.go"); !errors.Is(err, mailbus.ErrNotFound) {
			t.Fatalf("release of a lease never taken: %v, want ErrNotFound", err)
		}
	}
	round()
	if got := log.take(); len(got) != 5 {
		t.Fatalf("before Connect the lease calls made HTTP requests %v, want 5", got)
	}
	for _, c := range []*mailbus.Client{a, b} {
		if err := c.Connect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	round()
	if got := log.take(); len(got) != 0 {
		t.Fatalf("connected, the lease calls made HTTP requests %v, want none", got)
	}
}

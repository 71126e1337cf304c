package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/lease/leasetest"
)

func leaseClient(t testing.TB, ts *testServer, exchange, agent string) *lease.Client {
	t.Helper()
	return leaseClientVia(t, ts, exchange, agent, viaHTTP)
}

// leaseTransport is how a lease.Client reaches the server in a test.
type leaseTransport string

const (
	viaHTTP leaseTransport = "HTTP"      // one HTTP request per call
	viaWS   leaseTransport = "WebSocket" // lease frames on the lease WebSocket
)

// forEachLeaseTransport runs f as a subtest per transport.
func forEachLeaseTransport(t *testing.T, f func(t *testing.T, tr leaseTransport)) {
	for _, tr := range []leaseTransport{viaHTTP, viaWS} {
		t.Run(string(tr), func(t *testing.T) { f(t, tr) })
	}
}

// leaseClientVia registers agent and returns its client over tr.
func leaseClientVia(t testing.TB, ts *testServer, exchange, agent string, tr leaseTransport) *lease.Client {
	t.Helper()
	return newLeaseClientVia(t, ts.URL, exchange, ts.register(t, exchange, agent), nil, tr)
}

// newLeaseClientVia is key's client over tr. Over the WebSocket, a lease
// call made over HTTP instead fails the test.
func newLeaseClientVia(t testing.TB, url, exchange, key string, hc *http.Client, tr leaseTransport) *lease.Client {
	t.Helper()
	if tr == viaWS {
		base := http.DefaultTransport
		if hc != nil && hc.Transport != nil {
			base = hc.Transport
		}
		hc = &http.Client{Transport: framesOnly{t: t, rt: base}}
	}
	c := newLeaseClient(t, url, exchange, key, hc)
	if tr == viaWS {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := c.Connect(ctx); err != nil {
			t.Fatalf("connect: %v", err)
		}
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c.Close(ctx)
	})
	return c
}

// framesOnly fails the test on a lease call sent over HTTP; the handshake,
// list and release-all are HTTP requests by design.
type framesOnly struct {
	t  testing.TB
	rt http.RoundTripper
}

func (f framesOnly) RoundTrip(r *http.Request) (*http.Response, error) {
	switch op := r.URL.Path[strings.LastIndexByte(r.URL.Path, '/')+1:]; op {
	case "ws", "list", "release-all":
	default:
		f.t.Errorf("%s %s over HTTP with the lease WebSocket connected", r.Method, r.URL.Path)
	}
	return f.rt.RoundTrip(r)
}

func newLeaseClient(t testing.TB, url, exchange, key string, hc *http.Client) *lease.Client {
	t.Helper()
	c, err := lease.NewClient(lease.ClientConfig{BaseURL: url, Exchange: exchange, APIKey: key, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLease_lifecycle(t *testing.T) { forEachLeaseTransport(t, testLeaseLifecycle) }

func testLeaseLifecycle(t *testing.T, tr leaseTransport) {
	ctx := context.Background()
	ts := startServer(t)
	alice, bob := leaseClientVia(t, ts, "lx", "alice", tr), leaseClientVia(t, ts, "lx", "bob", tr)

	g, err := alice.Acquire(ctx, "./src//main.go", 30*time.Second)
	if err != nil || g.Holder != "alice" || g.Name != "src/main.go" || g.Token == 0 {
		t.Fatalf("acquire = %+v, %v", g, err)
	}
	_, err = bob.Acquire(ctx, "src/main.go", time.Second)
	var he *lease.HeldError
	if !errors.As(err, &he) || he.Holder != "alice" || he.ExpiresAt.UnixMilli() != g.ExpiresAt.UnixMilli() {
		t.Fatalf("bob acquire: %v", err)
	}
	st, err := bob.Status(ctx, "src/main.go")
	if err != nil || !st.IsLeased || st.AgentID != "alice" || st.Token != g.Token || st.ExpiresAt != g.ExpiresAt.UnixMilli() {
		t.Fatalf("status = %+v, %v", st, err)
	}
	// Ensure a re-acquire with a shorter TTL does not shorten the lease.
	r, err := alice.Acquire(ctx, "src/main.go", time.Second)
	if err != nil || r.Token != g.Token || r.ExpiresAt.Before(g.ExpiresAt) {
		t.Fatalf("re-acquire = %+v, %v; want deadline >= %v", r, err, g.ExpiresAt)
	}
	r, err = alice.Renew(ctx, "src/main.go", g.Token, time.Minute)
	if err != nil || !r.ExpiresAt.After(g.ExpiresAt) {
		t.Fatalf("renew = %+v, %v", r, err)
	}
	if ls, err := bob.List(ctx, "alice"); err != nil || len(ls) != 1 {
		t.Fatalf("list = %+v, %v", ls, err)
	}
	if err := bob.Release(ctx, "src/main.go", g.Token); !errors.Is(err, lease.ErrNotHeld) {
		t.Fatalf("release by bob = %v", err)
	}
	if err := alice.Release(ctx, "src/main.go", g.Token); err != nil {
		t.Fatalf("release by alice = %v", err)
	}
	if st, _ := bob.Status(ctx, "src/main.go"); st.IsLeased {
		t.Fatalf("still leased after release: %+v", st)
	}

	// Ensure keys are checked: none, unknown, and another exchange's.
	other := leaseClientVia(t, ts, "ly", "carol", tr)
	keyOfLy := ts.register(t, "ly", "dave")
	for _, tt := range []struct {
		name, key string
		want      error
	}{
		{"no key", "", lease.ErrUnauthorized},
		{"unknown key", "mess_lx_bogus", lease.ErrUnauthorized},
		{"key of another exchange", keyOfLy, lease.ErrForbidden},
	} {
		if tt.key == "" {
			if _, err := lease.NewClient(lease.ClientConfig{BaseURL: ts.URL, Exchange: "lx"}); err == nil {
				t.Errorf("%s: NewClient accepted no key", tt.name)
			}
			continue
		}
		c := newLeaseClient(t, ts.URL, "lx", tt.key, nil)
		if tr == viaWS {
			if err := c.Connect(ctx); !errors.Is(err, tt.want) {
				t.Errorf("%s: connect: %v, want %v", tt.name, err, tt.want)
			}
		}
		if _, err := c.Status(ctx, "f"); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
		c.Close(ctx)
	}
	if _, err := other.Acquire(ctx, "src/main.go", time.Second); err != nil {
		t.Fatalf("same name in another exchange: %v", err)
	}
}

// Ensure a lease is never handed over before its deadline, and the old
// holder's token is refused once the name is granted again.
func TestLease_expiry(t *testing.T) { forEachLeaseTransport(t, testLeaseExpiry) }

func testLeaseExpiry(t *testing.T, tr leaseTransport) {
	ctx := context.Background()
	ts := startServer(t, withEnv("LEASE_MIN_TTL", "10ms"))
	alice, bob := leaseClientVia(t, ts, "le", "alice", tr), leaseClientVia(t, ts, "le", "bob", tr)
	g, err := alice.Acquire(ctx, "f", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bob.AcquireWait(ctx, "f", time.Minute, 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// The server reports deadlines in epoch ms; bob's grant was made at
	// b.ExpiresAt - 1 minute, which must not precede alice's deadline.
	if granted := b.ExpiresAt.Add(-time.Minute); granted.Before(g.ExpiresAt) {
		t.Fatalf("bob granted at %v, before alice's deadline %v", granted, g.ExpiresAt)
	}
	if b.Token <= g.Token {
		t.Fatalf("token %d after %d", b.Token, g.Token)
	}
	if _, err := alice.Renew(ctx, "f", g.Token, time.Second); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("renew with stale token: %v", err)
	}
	if err := alice.Release(ctx, "f", g.Token); err == nil {
		t.Fatal("released with a stale token")
	}
	if _, err := alice.Acquire(ctx, "f", time.Hour+time.Millisecond); !errors.Is(err, lease.ErrInvalidTTL) {
		t.Fatalf("ttl above max: %v", err)
	}
}

func TestLease_linearizable(t *testing.T) {
	forEachLeaseTransport(t, func(t *testing.T, tr leaseTransport) {
		ts := startServer(t)
		var agents []leasetest.Agent
		for i := range 8 {
			id := fmt.Sprintf("agent%d", i)
			agents = append(agents, leasetest.Agent{ID: id, Target: leaseClientVia(t, ts, "lin", id, tr)})
		}
		leasetest.CheckLinearizable(t, agents, leasetest.Config{Ops: 150})
	})
}

type leaseSnapshot struct {
	grants []lease.Grant
	max    uint64
}

// leaseRound grants, renews and releases a few leases and returns those
// still held and the highest token seen.
func leaseRound(t *testing.T, alice, bob *lease.Client) leaseSnapshot {
	t.Helper()
	ctx := context.Background()
	var s leaseSnapshot
	held, err := alice.Acquire(ctx, "held", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	renewed, err := bob.Acquire(ctx, "renewed", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if renewed, err = bob.Renew(ctx, "renewed", renewed.Token, 50*time.Second); err != nil {
		t.Fatal(err)
	}
	gone, err := bob.Acquire(ctx, "released", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := bob.Release(ctx, "released", gone.Token); err != nil {
		t.Fatalf("release: %v", err)
	}
	s.grants = []lease.Grant{held, renewed}
	s.max = max(held.Token, renewed.Token, gone.Token)
	return s
}

func checkAfterRestart(t *testing.T, before leaseSnapshot, alice, bob *lease.Client) {
	t.Helper()
	ctx := context.Background()
	for _, g := range before.grants {
		st, err := alice.Status(ctx, g.Name)
		if err != nil || !st.IsLeased || st.AgentID != g.Holder || st.Token != g.Token {
			t.Fatalf("%s after restart: %+v, %v; want %s with token %d", g.Name, st, err, g.Holder, g.Token)
		}
		if st.ExpiresAt > g.ExpiresAt.UnixMilli() {
			t.Fatalf("%s: restart extended the deadline from %d to %d", g.Name, g.ExpiresAt.UnixMilli(), st.ExpiresAt)
		}
	}
	if st, _ := alice.Status(ctx, "released"); st.IsLeased {
		t.Fatalf("released lease came back: %+v", st)
	}
	if _, err := bob.Acquire(ctx, "held", time.Second); !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("held lease granted to another after restart: %v", err)
	}
	g, err := bob.Acquire(ctx, "released", time.Second)
	if err != nil || g.Token <= before.max {
		t.Fatalf("token after restart = %d, %v; want > %d", g.Token, err, before.max)
	}
}

func TestLease_restart(t *testing.T) { forEachLeaseTransport(t, testLeaseRestart) }

func testLeaseRestart(t *testing.T, tr leaseTransport) {
	dir := t.TempDir()
	ts := startServer(t, withDataDir(dir))
	aliceKey, bobKey := ts.register(t, "lr", "alice"), ts.register(t, "lr", "bob")
	clients := func(ts *testServer) (*lease.Client, *lease.Client) {
		return newLeaseClientVia(t, ts.URL, "lr", aliceKey, nil, tr), newLeaseClientVia(t, ts.URL, "lr", bobKey, nil, tr)
	}
	a, b := clients(ts)
	before := leaseRound(t, a, b)
	ts.Stop()
	ts = startServer(t, withDataDir(dir))
	alice, bob := clients(ts)
	checkAfterRestart(t, before, alice, bob)
}

// Ensure grants acknowledged before a SIGKILL survive it.
func TestLease_crash(t *testing.T) { forEachLeaseTransport(t, testLeaseCrash) }

func testLeaseCrash(t *testing.T, tr leaseTransport) {
	dir := t.TempDir()
	start := func() (*exec.Cmd, *testServer) { return startChild(t, dir, "LEASE_COMPACT_INTERVAL=-1s") }
	cmd, ts := start()
	aliceKey, bobKey := ts.register(t, "lc", "alice"), ts.register(t, "lc", "bob")
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	before := leaseRound(t, newLeaseClientVia(t, ts.URL, "lc", aliceKey, hc, tr), newLeaseClientVia(t, ts.URL, "lc", bobKey, hc, tr))
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	cmd, ts = start()
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	checkAfterRestart(t, before, newLeaseClientVia(t, ts.URL, "lc", aliceKey, hc, tr), newLeaseClientVia(t, ts.URL, "lc", bobKey, hc, tr))
}

// BenchmarkLease_status measures status calls through the real server
// (echo, authentication, handler) and the lease Client in one process.
func BenchmarkLease_status(b *testing.B) {
	ts := startServer(b)
	key := ts.register(b, "lb", "alice")
	c := newLeaseClient(b, ts.URL, "lb", key, nil)
	b.Cleanup(c.CloseIdleConnections)
	ctx := context.Background()
	if _, err := c.Acquire(ctx, "f", time.Hour); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Status(ctx, "f"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

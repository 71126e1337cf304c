package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/lease/leasetest"
)

func leaseClient(t testing.TB, ts *testServer, exchange, agent string) *lease.Client {
	t.Helper()
	c := newLeaseClient(t, ts.URL, exchange, ts.register(t, exchange, agent), nil)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func newLeaseClient(t testing.TB, url, exchange, key string, hc *http.Client) *lease.Client {
	t.Helper()
	c, err := lease.NewClient(lease.ClientConfig{BaseURL: url, Exchange: exchange, APIKey: key, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLease_lifecycle(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t)
	alice, bob := leaseClient(t, ts, "lx", "alice"), leaseClient(t, ts, "lx", "bob")

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
	other := leaseClient(t, ts, "ly", "carol")
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
		if _, err := c.Status(ctx, "f"); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
		c.CloseIdleConnections()
	}
	if _, err := other.Acquire(ctx, "src/main.go", time.Second); err != nil {
		t.Fatalf("same name in another exchange: %v", err)
	}
}

// Ensure a lease is never handed over before its deadline, and the old
// holder's token is refused once the name is granted again.
func TestLease_expiry(t *testing.T) {
	ctx := context.Background()
	ts := startServer(t, withEnv("LEASE_MIN_TTL", "10ms"))
	alice, bob := leaseClient(t, ts, "le", "alice"), leaseClient(t, ts, "le", "bob")
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
	ts := startServer(t)
	var agents []leasetest.Agent
	for i := range 8 {
		id := fmt.Sprintf("agent%d", i)
		agents = append(agents, leasetest.Agent{ID: id, Target: leaseClient(t, ts, "lin", id)})
	}
	leasetest.CheckLinearizable(t, agents, leasetest.Config{Ops: 150})
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

func TestLease_restart(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, withDataDir(dir))
	aliceKey, bobKey := ts.register(t, "lr", "alice"), ts.register(t, "lr", "bob")
	clients := func(ts *testServer) (*lease.Client, *lease.Client) {
		a, b := newLeaseClient(t, ts.URL, "lr", aliceKey, nil), newLeaseClient(t, ts.URL, "lr", bobKey, nil)
		t.Cleanup(a.CloseIdleConnections)
		t.Cleanup(b.CloseIdleConnections)
		return a, b
	}
	a, b := clients(ts)
	before := leaseRound(t, a, b)
	ts.Stop()
	ts = startServer(t, withDataDir(dir))
	alice, bob := clients(ts)
	checkAfterRestart(t, before, alice, bob)
}

// Ensure grants acknowledged before a SIGKILL survive it.
func TestLease_crash(t *testing.T) {
	dir := t.TempDir()
	start := func() (*exec.Cmd, *testServer) { return startChild(t, dir, "LEASE_COMPACT_INTERVAL=-1s") }
	cmd, ts := start()
	aliceKey, bobKey := ts.register(t, "lc", "alice"), ts.register(t, "lc", "bob")
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	before := leaseRound(t, newLeaseClient(t, ts.URL, "lc", aliceKey, hc), newLeaseClient(t, ts.URL, "lc", bobKey, hc))
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	cmd, ts = start()
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	checkAfterRestart(t, before, newLeaseClient(t, ts.URL, "lc", aliceKey, hc), newLeaseClient(t, ts.URL, "lc", bobKey, hc))
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

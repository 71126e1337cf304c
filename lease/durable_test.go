package lease_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/lease"
)

func TestManager_restart(t *testing.T) {
	for _, tt := range []struct {
		name  string
		clean bool // Close (snapshot) rather than crash
	}{{"crash", false}, {"close", true}} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			clk := newClock()
			cfg := lease.Config{Store: MustFS(t, dir), Now: clk.Now, CompactInterval: -1}
			m1, err := lease.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			held := MustAcquire(t, m1, "alice", "held", 20*time.Second)
			renewed := MustAcquire(t, m1, "alice", "renewed", 10*time.Second)
			clk.Advance(2 * time.Second)
			if renewed, err = m1.Renew(ctx, "x1", "alice", "renewed", renewed.Token, 30*time.Second); err != nil {
				t.Fatal(err)
			}
			rel := MustAcquire(t, m1, "bob", "released", 20*time.Second)
			if ok, err := m1.Release(ctx, "x1", "bob", "released", rel.Token); !ok || err != nil {
				t.Fatalf("release: %v %v", ok, err)
			}
			short := MustAcquire(t, m1, "bob", "short", time.Second)
			var maxToken uint64
			for _, g := range []lease.Grant{held, renewed, rel, short} {
				maxToken = max(maxToken, g.Token)
			}
			if tt.clean {
				if err := m1.Close(ctx); err != nil {
					t.Fatal(err)
				}
			} else {
				m1.Crash()
			}

			clk.Advance(3 * time.Second)
			m2 := MustNew(t, cfg)
			// Ensure holders and deadlines survive, never extended.
			for _, g := range []lease.Grant{held, renewed} {
				st, err := m2.Status(ctx, "x1", g.Name)
				if err != nil || !st.IsLeased || st.AgentID != g.Holder || st.Token != g.Token {
					t.Fatalf("%s after restart: %+v, %v; want held by %s with token %d", g.Name, st, err, g.Holder, g.Token)
				}
				if st.ExpiresAt > g.ExpiresAt.UnixMilli() {
					t.Fatalf("%s: deadline %d after restart, later than granted %d", g.Name, st.ExpiresAt, g.ExpiresAt.UnixMilli())
				}
				if want := g.ExpiresAt.Sub(clk.Now()).Milliseconds(); st.RemainingMs != want {
					t.Fatalf("%s: remaining %d ms, want %d", g.Name, st.RemainingMs, want)
				}
			}
			for _, name := range []string{"released", "short"} {
				if st, _ := m2.Status(ctx, "x1", name); st.IsLeased {
					t.Fatalf("%s leased after restart: %+v", name, st)
				}
			}
			// Ensure alice can still renew with her token and bob cannot take it.
			if _, err := m2.Renew(ctx, "x1", "alice", "held", held.Token, 20*time.Second); err != nil {
				t.Fatalf("renew after restart: %v", err)
			}
			if _, err := m2.Acquire(ctx, "x1", "bob", "held", time.Second); !errors.Is(err, lease.ErrHeld) {
				t.Fatalf("bob took a held lease after restart: %v", err)
			}
			// Ensure tokens never go back.
			g := MustAcquire(t, m2, "carol", "released", time.Second)
			if g.Token <= maxToken {
				t.Fatalf("token after restart %d, want > %d", g.Token, maxToken)
			}
		})
	}
}

// A wall clock that steps back across a restart must not stretch a lease
// beyond the TTL it had left when last written.
func TestManager_restart_clockBack(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	cfg := lease.Config{Store: MustFS(t, t.TempDir()), Now: clk.Now, CompactInterval: -1}
	m1, err := lease.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	MustAcquire(t, m1, "alice", "f", 10*time.Second)
	m1.Crash()
	clk.Advance(-time.Hour)
	m2 := MustNew(t, cfg)
	st, err := m2.Status(ctx, "x1", "f")
	if err != nil || !st.IsLeased || st.RemainingMs > 10_000 {
		t.Fatalf("status = %+v, %v; want at most 10000 ms left", st, err)
	}
}

// Restarting many times, with compaction between, must keep tokens rising.
func TestManager_restart_tokens(t *testing.T) {
	ctx := context.Background()
	cfg := lease.Config{Store: MustFS(t, t.TempDir()), CompactInterval: -1}
	var last uint64
	for i := range 5 {
		m, err := lease.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			g := MustAcquire(t, m, "a", "f", time.Minute)
			if g.Token <= last {
				t.Fatalf("round %d: token %d after %d", i, g.Token, last)
			}
			last = g.Token
			if ok, _ := m.Release(ctx, "x1", "a", "f", g.Token); !ok {
				t.Fatal("release failed")
			}
		}
		if i%2 == 0 {
			if err := m.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			m.Crash()
		} else if err := m.Close(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

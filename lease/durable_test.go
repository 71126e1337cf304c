package lease_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/internal/faultstore"
	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/ownership"
	"github.com/meatspace-exchange/mess/storage"
)

func TestManager_restart(t *testing.T) {
	for _, tt := range []struct {
		name  string
		clean bool // Close (snapshot) rather than crash
	}{{"crash", false}, {"close", true}} {
		onBackends(t, func(t *testing.T, b backend) {
			t.Run(tt.name, func(t *testing.T) {
				ctx := context.Background()
				clk := newClock()
				cfg := lease.Config{Store: b.new(t), Now: clk.Now, CompactInterval: -1}
				m1, err := lease.New(context.Background(), cfg)
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
				if err := m1.Release(ctx, "x1", "bob", "released", rel.Token); err != nil {
					t.Fatalf("release: %v", err)
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
		})
	}
}

// A wall clock that steps back across a restart must not stretch a lease
// beyond the TTL it had left when last written.
func TestManager_restart_clockBack(t *testing.T) { onBackends(t, testRestartClockBack) }

func testRestartClockBack(t *testing.T, b backend) {
	ctx := context.Background()
	clk := newClock()
	cfg := lease.Config{Store: b.new(t), Now: clk.Now, CompactInterval: -1}
	m1, err := lease.New(context.Background(), cfg)
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
func TestManager_restart_tokens(t *testing.T) { onBackends(t, testRestartTokens) }

func testRestartTokens(t *testing.T, b backend) {
	ctx := context.Background()
	cfg := lease.Config{Store: b.new(t), CompactInterval: -1}
	var last uint64
	for i := range 5 {
		m, err := lease.New(context.Background(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			g := MustAcquire(t, m, "a", "f", time.Minute)
			if g.Token <= last {
				t.Fatalf("round %d: token %d after %d", i, g.Token, last)
			}
			last = g.Token
			if err := m.Release(ctx, "x1", "a", "f", g.Token); err != nil {
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

// failingStore fails every Create (journal write) while fail is set.
type failingStore struct {
	storage.Store
	fail atomic.Bool
}

func (s *failingStore) Create(ctx context.Context, key string, data []byte) (string, error) {
	if s.fail.Load() {
		return "", errors.New("disk on fire")
	}
	return s.Store.Create(ctx, key, data)
}

// Ensure a grant that could not be recorded is undone, so nobody holds a
// lease a restart would forget.
func TestManager_Acquire_writeFails(t *testing.T) { onBackends(t, testAcquireWriteFails) }

func testAcquireWriteFails(t *testing.T, b backend) {
	ctx := context.Background()
	fs := &failingStore{Store: b.new(t)}
	m := MustNew(t, lease.Config{Store: fs, CompactInterval: -1})
	a := MustAcquire(t, m, "alice", "renewed", time.Minute)

	fs.fail.Store(true)
	if _, err := m.Acquire(ctx, "x1", "alice", "f", time.Minute); err == nil {
		t.Fatal("acquire succeeded with a failing store")
	}
	if st, _ := m.Status(ctx, "x1", "f"); st.IsLeased {
		t.Fatalf("failed grant still visible: %+v", st)
	}
	if _, err := m.Renew(ctx, "x1", "alice", "renewed", a.Token, time.Hour); err == nil {
		t.Fatal("renew succeeded with a failing store")
	}
	if st, _ := m.Status(ctx, "x1", "renewed"); st.ExpiresAt != a.ExpiresAt.UnixMilli() {
		t.Fatalf("failed renewal changed the deadline: %d, want %d", st.ExpiresAt, a.ExpiresAt.UnixMilli())
	}
	fs.fail.Store(false)
	g := MustAcquire(t, m, "bob", "f", time.Minute)
	if g.Token <= a.Token {
		t.Fatalf("token %d after %d", g.Token, a.Token)
	}
}

// Ensure compaction replaces the journal objects with one snapshot that
// restores the same state.
func TestManager_Compact(t *testing.T) { onBackends(t, testCompact) }

func testCompact(t *testing.T, b backend) {
	ctx := context.Background()
	store := b.new(t)
	cfg := lease.Config{Store: store, CompactInterval: -1}
	m1, err := lease.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var grants []lease.Grant
	for i := range 20 {
		grants = append(grants, MustAcquire(t, m1, "alice", fmt.Sprintf("f%d", i), time.Minute))
	}
	for _, g := range grants[10:] {
		if err := m1.Release(ctx, "x1", "alice", g.Name, g.Token); err != nil {
			t.Fatal("release failed")
		}
	}
	if err := m1.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if page, err := store.List(ctx, "leases/exchange=x1/log/", storage.ListOptions{}); err != nil || len(page.Keys) != 0 {
		t.Fatalf("journal objects left after compaction: %v, %v", page.Keys, err)
	}
	if page, err := store.List(ctx, "leases/exchange=x1/snap/", storage.ListOptions{}); err != nil || len(page.Keys) != 1 {
		t.Fatalf("snapshots = %v, %v; want one", page.Keys, err)
	}
	m1.Crash()
	m2 := MustNew(t, cfg)
	gs, err := m2.List(ctx, "x1", "")
	if err != nil || len(gs) != 10 {
		t.Fatalf("after restart: %d leases, %v; want 10", len(gs), err)
	}
	for i, g := range gs {
		want := grants[i]
		if g.Name != want.Name || g.Token != want.Token || g.ExpiresAt.After(want.ExpiresAt) {
			t.Fatalf("lease %d = %+v, want %+v", i, g, want)
		}
	}
}

// Ensure state survives a crash while operations and compactions run
// concurrently: every acknowledged grant that was not released is held
// again with its token, and new tokens are higher than any acknowledged.
func TestManager_restart_underLoad(t *testing.T) { onBackends(t, testRestartUnderLoad) }

func testRestartUnderLoad(t *testing.T, b backend) {
	ctx := context.Background()
	cfg := lease.Config{Store: b.new(t), CompactInterval: 3 * time.Millisecond}
	m1, err := lease.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu       sync.Mutex
		latest   = map[string]lease.Grant{} // highest-token grant per name
		released = map[uint64]bool{}
		wg       sync.WaitGroup
		stop     = time.Now().Add(300 * time.Millisecond)
	)
	for w := range 16 {
		agent := fmt.Sprintf("a%d", w)
		wg.Go(func() {
			for i := 0; time.Now().Before(stop); i++ {
				name := fmt.Sprintf("f%d", (i*7+w)%32)
				g, err := m1.Acquire(ctx, "x1", agent, name, time.Minute)
				if errors.Is(err, lease.ErrHeld) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if g.Token > latest[name].Token {
					latest[name] = g
				}
				mu.Unlock()
				if i%3 != 0 {
					if err := m1.Release(ctx, "x1", agent, name, g.Token); err != nil {
						t.Error("release", err)
						return
					}
					mu.Lock()
					released[g.Token] = true
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	m1.Crash()

	m2 := MustNew(t, cfg)
	var maxToken uint64
	for name, g := range latest {
		maxToken = max(maxToken, g.Token)
		st, err := m2.Status(ctx, "x1", name)
		if err != nil {
			t.Fatal(err)
		}
		if released[g.Token] {
			if st.IsLeased {
				t.Errorf("%s: released token %d, but held after restart: %+v", name, g.Token, st)
			}
			continue
		}
		if !st.IsLeased || st.AgentID != g.Holder || st.Token != g.Token || st.ExpiresAt > g.ExpiresAt.UnixMilli() {
			t.Errorf("%s: after restart %+v, want %+v", name, st, g)
		}
	}
	if g := MustAcquire(t, m2, "z", "fresh", time.Second); g.Token <= maxToken {
		t.Fatalf("token after restart %d, want > %d", g.Token, maxToken)
	}
}

// Ensure a journal that ends in a torn write (garbage, then more lines of
// the same unacknowledged batch) still loads, keeping what was acknowledged.
func TestManager_restart_tornTail(t *testing.T) {
	dir := t.TempDir()
	cfg := lease.Config{Store: MustFS(t, dir), CompactInterval: -1}
	m1, err := lease.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := MustAcquire(t, m1, "alice", "held", time.Minute)
	m1.Crash()
	logs, _ := filepath.Glob(filepath.Join(dir, "leases", "exchange=x1", "log", "*.jsonl"))
	if len(logs) != 1 {
		t.Fatalf("journal objects %q, want 1", logs)
	}
	f, err := os.OpenFile(logs[0], os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("\x00\x00\x00\x00\n" + `{"op":"r","x":"x1","n":"held","t":1}` + "\n" + `{"op":"g","x":"x1"`)
	f.Close()

	m2 := MustNew(t, cfg)
	st, err := m2.Status(context.Background(), "x1", "held")
	if err != nil || !st.IsLeased || st.Token != g.Token {
		t.Fatalf("after restart %+v, %v; want held with token %d", st, err, g.Token)
	}
}

// A store written in the layout before per-exchange journals (one journal
// under leases/log/, snapshots under leases/snap/) keeps its leases and
// its token high-water mark, with and without a Fence. The old objects
// stay where they are; once an exchange has a snapshot of its own, that
// snapshot decides.
func TestManager_oldLayout(t *testing.T) {
	onBackends(t, func(t *testing.T, b backend) {
		for _, fenced := range []bool{false, true} {
			t.Run(fmt.Sprintf("fenced=%v", fenced), func(t *testing.T) { testOldLayout(t, b, fenced) })
		}
	})
}

func testOldLayout(t *testing.T, b backend, fenced bool) {
	ctx := context.Background()
	clk := newClock()
	store := b.new(t)
	deadline := clk.Now().Add(time.Minute).UnixMilli()
	old := map[string]string{
		"leases/snap/00000000000000000006.json": fmt.Sprintf(`{"next":6,"leases":[`+
			`{"op":"g","x":"x1","n":"held","a":"alice","t":4,"e":%d,"r":60000},`+
			`{"op":"g","x":"x1","n":"gone","a":"alice","t":5,"e":%d,"r":60000}]}`, deadline, deadline),
		"leases/log/01HZY0000000000000000000AA.jsonl": fmt.Sprintf(`{"op":"r","x":"x1","n":"gone","t":5}`+"\n"+
			`{"op":"g","x":"x2","n":"other","a":"bob","t":7,"e":%d,"r":60000}`+"\n", deadline),
	}
	for k, v := range old {
		if _, err := store.Put(ctx, k, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
	cfg := lease.Config{Store: store, Now: clk.Now, CompactInterval: -1}
	var owner *ownership.Ownership
	if fenced {
		owner = claimOwner(t, store, "a")
		cfg.Fence = owner
	}
	m1, err := lease.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantHeld(t, m1, "x1", lease.Grant{Name: "held", Holder: "alice", Token: 4})
	wantHeld(t, m1, "x2", lease.Grant{Name: "other", Holder: "bob", Token: 7})
	if st, err := m1.Status(ctx, "x1", "gone"); err != nil || st.IsLeased {
		t.Fatalf("released lease after upgrade: %+v, %v", st, err)
	}
	// Every exchange's tokens start above the old counter, even one the
	// old layout never mentioned.
	top := uint64(7)
	for _, x := range []string{"x1", "x3"} {
		g, err := m1.Acquire(ctx, x, "carol", "gone", time.Minute)
		if err != nil || g.Token <= top {
			t.Fatalf("%s: granted %+v, %v; want a token above %d", x, g, err, top)
		}
	}
	if err := m1.Release(ctx, "x1", "alice", "held", 4); err != nil {
		t.Fatal(err)
	}
	if err := m1.Close(ctx); err != nil {
		t.Fatal(err)
	}

	if fenced {
		cfg.Fence = takeOver(t, store, owner, "b")
	}
	m2 := MustNew(t, cfg)
	if st, err := m2.Status(ctx, "x1", "held"); err != nil || st.IsLeased {
		t.Fatalf("lease released after the upgrade is back: %+v, %v", st, err)
	}
	wantHeld(t, m2, "x2", lease.Grant{Name: "other", Holder: "bob", Token: 7})
	if g := MustAcquire(t, m2, "dave", "held", time.Minute); g.Token <= top+1 {
		t.Fatalf("token %d after restart, want above %d", g.Token, top+1)
	}
	for k := range old {
		if _, err := store.Get(ctx, k); err != nil {
			t.Fatalf("old object %s: %v", k, err)
		}
	}
}

// Ensure nobody is told of a grant before its write is settled: a failed
// write undoes the grant (and a crash loses it), so a refusal or a status
// naming it would name a holder that never was. Others wait for the write
// instead, then see what it left.
func TestManager_Acquire_grantUnseenUntilWritten(t *testing.T) {
	ctx := context.Background()
	fs := faultstore.New(storage.NewMemory())
	m := MustNew(t, lease.Config{Store: fs, CompactInterval: -1})
	MustAcquire(t, m, "carol", "other", time.Minute) // x1 is open: the next write is alice's grant
	gate := faultstore.NewGate()
	fs.Add(&faultstore.Hook{
		Match: func(op faultstore.Op, key string) bool { return op == faultstore.Create },
		Before: func(ctx context.Context, _ faultstore.Op, _ string) error {
			if err := gate.Wait(ctx); err != nil {
				return err
			}
			return errors.New("disk on fire")
		},
		Once: true,
	})
	alice := make(chan error, 1)
	go func() {
		_, err := m.Acquire(ctx, "x1", "alice", "f", time.Minute)
		alice <- err
	}()
	<-gate.Reached
	type answer struct {
		g   lease.Grant
		st  lease.Status
		err error
	}
	bob, status := make(chan answer, 1), make(chan answer, 1)
	go func() {
		g, err := m.Acquire(ctx, "x1", "bob", "f", time.Minute)
		bob <- answer{g: g, err: err}
	}()
	go func() {
		st, err := m.Status(ctx, "x1", "f")
		status <- answer{st: st, err: err}
	}()
	gate.Open()
	if err := <-alice; err == nil {
		t.Fatal("alice's grant succeeded although its write failed")
	}
	b := <-bob
	if b.err != nil {
		t.Fatalf("bob was refused in the name of a grant that failed: %v", b.err)
	}
	if st := <-status; st.err != nil || st.st.IsLeased && st.st.AgentID != "bob" {
		t.Fatalf("status named a holder that never was: %+v, %v", st.st, st.err)
	}
	if st, err := m.Status(ctx, "x1", "f"); err != nil || st.AgentID != "bob" || st.Token != b.g.Token {
		t.Fatalf("after: %+v, %v; want bob's token %d", st, err, b.g.Token)
	}
}

package lease_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/storage"
)

// clock is a settable clock; its readings carry no monotonic part, which is
// fine because the manager only compares and subtracts them.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.UnixMilli(1_700_000_000_000)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func MustNew(tb testing.TB, cfg lease.Config) *lease.Manager {
	tb.Helper()
	m, err := lease.New(context.Background(), cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { _ = m.Close(context.Background()) })
	return m
}

func MustFS(tb testing.TB, dir string) storage.Store {
	tb.Helper()
	s, err := storage.NewFS(dir)
	if err != nil {
		tb.Fatalf("NewFS: %v", err)
	}
	return s
}

func MustAcquire(tb testing.TB, m *lease.Manager, agent, name string, ttl time.Duration) lease.Grant {
	tb.Helper()
	g, err := m.Acquire(context.Background(), "x1", agent, name, ttl)
	if err != nil {
		tb.Fatalf("Acquire(%s, %s): %v", agent, name, err)
	}
	return g
}

func TestManager_Acquire(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	m := MustNew(t, lease.Config{Now: clk.Now})

	a := MustAcquire(t, m, "alice", "./src//main.go", 10*time.Second)
	if a.Name != "src/main.go" || a.Holder != "alice" || a.Token == 0 {
		t.Fatalf("grant = %+v", a)
	}
	if got, want := a.ExpiresAt, clk.Now().Add(10*time.Second); !got.Equal(want) {
		t.Fatalf("ExpiresAt = %v, want %v", got, want)
	}

	// Ensure another agent is refused with the holder and its deadline.
	_, err := m.Acquire(ctx, "x1", "bob", "src/main.go", time.Second)
	var he *lease.HeldError
	if !errors.As(err, &he) || !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("bob: err = %v, want *HeldError", err)
	}
	if he.Holder != "alice" || !he.ExpiresAt.Equal(a.ExpiresAt) || he.Name != "src/main.go" {
		t.Fatalf("HeldError = %+v", he)
	}

	// Ensure the same name in another exchange is another lease.
	if _, err := m.Acquire(ctx, "x2", "bob", "src/main.go", time.Second); err != nil {
		t.Fatalf("other exchange: %v", err)
	}

	// Ensure re-acquiring renews with the same token and never shortens.
	clk.Advance(time.Second)
	r, err := m.Acquire(ctx, "x1", "alice", "src/main.go", 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if r.Token != a.Token || !r.ExpiresAt.Equal(a.ExpiresAt) {
		t.Fatalf("short re-acquire = %+v, want token %d and deadline kept %v", r, a.Token, a.ExpiresAt)
	}
	r, err = m.Acquire(ctx, "x1", "alice", "src/main.go", 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := clk.Now().Add(30 * time.Second); r.Token != a.Token || !r.ExpiresAt.Equal(want) {
		t.Fatalf("long re-acquire = %+v, want deadline %v", r, want)
	}

	// Ensure an expired lease is granted again with a higher token.
	clk.Advance(30 * time.Second)
	b := MustAcquire(t, m, "bob", "src/main.go", time.Second)
	if b.Token <= a.Token {
		t.Fatalf("token after expiry = %d, want > %d", b.Token, a.Token)
	}
}

func TestManager_Acquire_invalid(t *testing.T) {
	m := MustNew(t, lease.Config{MinTTL: time.Second, MaxTTL: time.Minute})
	tests := []struct {
		name, x, agent, file string
		ttl                  time.Duration
		want                 error
	}{
		{"ttl too short", "x1", "a", "f", 999 * time.Millisecond, lease.ErrInvalidTTL},
		{"ttl too long", "x1", "a", "f", time.Minute + 1, lease.ErrInvalidTTL},
		{"empty name", "x1", "a", "", time.Second, lease.ErrInvalidName},
		{"dot name", "x1", "a", "./", time.Second, lease.ErrInvalidName},
		{"control char", "x1", "a", "a\nb", time.Second, lease.ErrInvalidName},
		{"bad exchange", "../x", "a", "f", time.Second, lease.ErrInvalidID},
		{"bad agent", "x1", "-a", "f", time.Second, lease.ErrInvalidID},
		{"empty agent", "x1", "", "f", time.Second, lease.ErrInvalidID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := m.Acquire(context.Background(), tt.x, tt.agent, tt.file, tt.ttl)
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestCanonicalName(t *testing.T) {
	tests := []struct{ in, want string }{
		{"a/b", "a/b"},
		{"./a//b", "a/b"},
		{"a/./b/", "a/b"},
		{"a/c/../b", "a/b"},
		{"/abs/p", "/abs/p"},
		{"ünï/cödé.go", "ünï/cödé.go"},
	}
	for _, tt := range tests {
		if got, err := lease.CanonicalName(tt.in); err != nil || got != tt.want {
			t.Errorf("CanonicalName(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"", ".", "/", "a\x00b", "\xff"} {
		if _, err := lease.CanonicalName(bad); !errors.Is(err, lease.ErrInvalidName) {
			t.Errorf("CanonicalName(%q) err = %v, want ErrInvalidName", bad, err)
		}
	}
}

func TestManager_Renew(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	m := MustNew(t, lease.Config{Now: clk.Now})
	a := MustAcquire(t, m, "alice", "f", 10*time.Second)

	clk.Advance(5 * time.Second)
	r, err := m.Renew(ctx, "x1", "alice", "f", a.Token, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if want := clk.Now().Add(10 * time.Second); !r.ExpiresAt.Equal(want) || r.Token != a.Token {
		t.Fatalf("renew = %+v, want deadline %v", r, want)
	}
	// Ensure a shorter renewal keeps the later deadline.
	r2, err := m.Renew(ctx, "x1", "alice", "f", a.Token, time.Second)
	if err != nil || !r2.ExpiresAt.Equal(r.ExpiresAt) {
		t.Fatalf("short renew = %+v, %v; want deadline %v", r2, err, r.ExpiresAt)
	}
	if _, err := m.Renew(ctx, "x1", "bob", "f", a.Token, time.Second); !errors.Is(err, lease.ErrNotHeld) {
		t.Fatalf("renew by non-holder: %v, want ErrNotHeld", err)
	}
	if _, err := m.Renew(ctx, "x1", "alice", "f", a.Token+100, time.Second); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("renew with wrong token: %v, want ErrStaleToken", err)
	}

	// Ensure a lease at its deadline is expired and cannot be renewed.
	clk.Advance(10 * time.Second)
	if _, err := m.Renew(ctx, "x1", "alice", "f", a.Token, time.Second); !errors.Is(err, lease.ErrNotHeld) {
		t.Fatalf("renew after expiry: %v, want ErrNotHeld", err)
	}
	// Ensure the old token is stale once the name is granted again.
	b := MustAcquire(t, m, "bob", "f", 10*time.Second)
	if _, err := m.Renew(ctx, "x1", "alice", "f", a.Token, time.Second); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("renew with stale token: %v, want ErrStaleToken", err)
	}
	if err := m.Release(ctx, "x1", "alice", "f", a.Token); !errors.Is(err, lease.ErrStaleToken) {
		t.Fatalf("release with stale token = %v; want ErrStaleToken", err)
	}
	if st, _ := m.Status(ctx, "x1", "f"); st.AgentID != "bob" || st.Token != b.Token {
		t.Fatalf("status = %+v, want bob's lease", st)
	}
}

func TestManager_Release(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	m := MustNew(t, lease.Config{Now: clk.Now})
	a := MustAcquire(t, m, "alice", "f", 10*time.Second)
	tests := []struct {
		name  string
		agent string
		token uint64
		want  error // nil: released
	}{
		{"non-holder", "bob", a.Token, lease.ErrNotHeld},
		{"non-holder without token", "bob", 0, lease.ErrNotHeld},
		{"wrong token", "alice", a.Token + 1, lease.ErrStaleToken},
		{"holder", "alice", a.Token, nil},
		{"twice", "alice", a.Token, lease.ErrNotHeld},
		{"twice without token", "alice", 0, lease.ErrNotHeld},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := m.Release(ctx, "x1", tt.agent, "f", tt.token); !errors.Is(err, tt.want) {
				t.Fatalf("Release = %v; want %v", err, tt.want)
			}
		})
	}
	// Ensure the holder releases its current lease without a token.
	MustAcquire(t, m, "alice", "f", 10*time.Second)
	if err := m.Release(ctx, "x1", "alice", "f", 0); err != nil {
		t.Fatalf("token-less release by the holder = %v", err)
	}
	if st, _ := m.Status(ctx, "x1", "f"); st.IsLeased {
		t.Fatalf("status after token-less release = %+v", st)
	}
	// Ensure an expired lease is not reported as released, with or
	// without its token.
	b := MustAcquire(t, m, "bob", "f", time.Second)
	clk.Advance(time.Second)
	for _, tok := range []uint64{b.Token, 0} {
		if err := m.Release(ctx, "x1", "bob", "f", tok); !errors.Is(err, lease.ErrNotHeld) {
			t.Fatalf("release of an expired lease (token %d) = %v", tok, err)
		}
	}
}

func TestManager_Status(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	m := MustNew(t, lease.Config{Now: clk.Now})
	if st, err := m.Status(ctx, "x1", "f"); err != nil || st != (lease.Status{}) {
		t.Fatalf("free status = %+v, %v", st, err)
	}
	a := MustAcquire(t, m, "alice", "f", 1500*time.Millisecond)
	clk.Advance(500 * time.Millisecond)
	st, err := m.Status(ctx, "x1", "./f")
	want := lease.Status{IsLeased: true, AgentID: "alice", ExpiresAt: a.ExpiresAt.UnixMilli(), Token: a.Token, RemainingMs: 1000}
	if err != nil || st != want {
		t.Fatalf("status = %+v, %v; want %+v", st, err, want)
	}
	clk.Advance(999 * time.Millisecond)
	if st, _ := m.Status(ctx, "x1", "f"); !st.IsLeased || st.RemainingMs != 1 {
		t.Fatalf("1ms before deadline: %+v", st)
	}
	clk.Advance(time.Millisecond)
	if st, _ := m.Status(ctx, "x1", "f"); st.IsLeased {
		t.Fatalf("at deadline: %+v, want free", st)
	}
}

func TestManager_List(t *testing.T) {
	ctx := context.Background()
	m := MustNew(t, lease.Config{})
	MustAcquire(t, m, "alice", "b", time.Minute)
	MustAcquire(t, m, "alice", "a", time.Minute)
	MustAcquire(t, m, "bob", "c", time.Minute)
	gs, err := m.List(ctx, "x1", "alice")
	if err != nil || len(gs) != 2 || gs[0].Name != "a" || gs[1].Name != "b" {
		t.Fatalf("List(alice) = %+v, %v", gs, err)
	}
	if gs, _ := m.List(ctx, "x1", ""); len(gs) != 3 {
		t.Fatalf("List(all) = %+v", gs)
	}
	n, err := m.ReleaseAll(ctx, "x1", "alice")
	if err != nil || n != 2 {
		t.Fatalf("ReleaseAll = %d, %v", n, err)
	}
	if gs, _ := m.List(ctx, "x1", ""); len(gs) != 1 || gs[0].Holder != "bob" {
		t.Fatalf("after ReleaseAll: %+v", gs)
	}
}

func TestManager_AcquireWait(t *testing.T) {
	ctx := context.Background()
	m := MustNew(t, lease.Config{})
	a := MustAcquire(t, m, "alice", "f", time.Minute)

	type result struct {
		g   lease.Grant
		err error
	}
	wait := func(agent string) chan result {
		ch := make(chan result, 1)
		go func() {
			g, err := m.AcquireWait(ctx, "x1", agent, "f", time.Minute, 30*time.Second)
			ch <- result{g, err}
		}()
		return ch
	}
	queued := func(n int) {
		t.Helper()
		for m.Waiters("x1", "f") != n {
			time.Sleep(time.Millisecond)
		}
	}
	bob := wait("bob")
	queued(1)
	carol := wait("carol")
	queued(2)

	// Ensure release hands the lease to the first waiter only.
	if err := m.Release(ctx, "x1", "alice", "f", a.Token); err != nil {
		t.Fatal("release failed")
	}
	r := <-bob
	if r.err != nil || r.g.Holder != "bob" || r.g.Token <= a.Token {
		t.Fatalf("bob = %+v, %v", r.g, r.err)
	}
	select {
	case r := <-carol:
		t.Fatalf("carol got %+v, %v while bob holds the lease", r.g, r.err)
	default:
	}
	if _, err := m.Acquire(ctx, "x1", "dave", "f", time.Second); !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("dave jumped the queue: %v", err)
	}
	if err := m.Release(ctx, "x1", "bob", "f", r.g.Token); err != nil {
		t.Fatal("bob release failed")
	}
	if c := <-carol; c.err != nil || c.g.Holder != "carol" || c.g.Token <= r.g.Token {
		t.Fatalf("carol = %+v, %v", c.g, c.err)
	}
}

func TestManager_AcquireWait_expiry(t *testing.T) {
	ctx := context.Background()
	m := MustNew(t, lease.Config{})
	a := MustAcquire(t, m, "alice", "f", 200*time.Millisecond)
	g, err := m.AcquireWait(ctx, "x1", "bob", "f", time.Second, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Ensure the lease was not handed over before alice's deadline.
	if now := time.Now(); now.Before(a.ExpiresAt) {
		t.Fatalf("bob granted at %v, before alice's deadline %v", now, a.ExpiresAt)
	}
	if g.Holder != "bob" || g.Token <= a.Token {
		t.Fatalf("grant = %+v", g)
	}
}

func TestManager_AcquireWait_timeout(t *testing.T) {
	m := MustNew(t, lease.Config{})
	MustAcquire(t, m, "alice", "f", time.Minute)
	_, err := m.AcquireWait(context.Background(), "x1", "bob", "f", time.Second, 50*time.Millisecond)
	var he *lease.HeldError
	if !errors.As(err, &he) || he.Holder != "alice" {
		t.Fatalf("err = %v, want HeldError by alice", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := m.AcquireWait(ctx, "x1", "bob", "f", time.Second, time.Second); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled: %v", err)
	}
	if n := m.Waiters("x1", "f"); n != 0 {
		t.Fatalf("%d waiters left queued", n)
	}
}

func TestManager_Close(t *testing.T) {
	m, err := lease.New(context.Background(), lease.Config{Store: MustFS(t, t.TempDir())})
	if err != nil {
		t.Fatal(err)
	}
	MustAcquire(t, m, "alice", "f", time.Minute)
	done := make(chan error, 1)
	go func() {
		_, err := m.AcquireWait(context.Background(), "x1", "bob", "f", time.Second, time.Minute)
		done <- err
	}()
	for m.Waiters("x1", "f") == 0 {
		time.Sleep(time.Millisecond)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, lease.ErrClosed) {
		t.Fatalf("waiter: %v, want ErrClosed", err)
	}
	if err := m.Close(context.Background()); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := m.Acquire(context.Background(), "x1", "a", "g", time.Second); !errors.Is(err, lease.ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
}

// Ensure many queued waiters are served strictly in arrival order.
func TestManager_AcquireWait_fifo(t *testing.T) {
	ctx := context.Background()
	m := MustNew(t, lease.Config{})
	g := MustAcquire(t, m, "holder", "f", time.Minute)
	const n = 20
	order := make(chan string, n)
	var wg sync.WaitGroup
	for i := range n {
		agent := fmt.Sprintf("w%02d", i)
		wg.Go(func() {
			w, err := m.AcquireWait(ctx, "x1", agent, "f", time.Minute, 30*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			order <- agent
			if err := m.Release(ctx, "x1", agent, "f", w.Token); err != nil {
				t.Error("release", err)
			}
		})
		for m.Waiters("x1", "f") != i+1 {
			time.Sleep(time.Millisecond)
		}
	}
	if err := m.Release(ctx, "x1", "holder", "f", g.Token); err != nil {
		t.Fatal("release failed")
	}
	wg.Wait()
	close(order)
	i := 0
	for agent := range order {
		if want := fmt.Sprintf("w%02d", i); agent != want {
			t.Fatalf("grant %d went to %s, want %s", i, agent, want)
		}
		i++
	}
}

func FuzzCanonicalName(f *testing.F) {
	for _, s := range []string{"a/b", "./a//b", "../x", "/", "a/../..", "ü/./"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := lease.CanonicalName(s)
		if err != nil {
			return
		}
		again, err := lease.CanonicalName(c)
		if err != nil || again != c {
			t.Fatalf("CanonicalName(%q) = %q, but CanonicalName(%q) = %q, %v", s, c, c, again, err)
		}
		if strings.Contains(c, "//") || c == "" || len(c) > lease.MaxNameLen {
			t.Fatalf("CanonicalName(%q) = %q", s, c)
		}
	})
}

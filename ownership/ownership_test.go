package ownership_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meatspace-exchange/mess/ownership"
	"github.com/meatspace-exchange/mess/storage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// gate is a store whose writes can be held, as if the process were paused,
// or failed, as if the store could not be reached.
type gate struct {
	storage.Store
	mu        sync.Mutex
	held      chan struct{} // non-nil while writes are held
	broken    atomic.Bool
	loseReply atomic.Bool // the next Update lands but reports an error
	updates   atomic.Int32
}

func (g *gate) hold() {
	g.mu.Lock()
	g.held = make(chan struct{})
	g.mu.Unlock()
}

func (g *gate) resume() {
	g.mu.Lock()
	close(g.held)
	g.held = nil
	g.mu.Unlock()
}

func (g *gate) Update(ctx context.Context, key string, data []byte, version string) (string, error) {
	if g.loseReply.Load() {
		// The write lands, but its answer never arrives.
		g.loseReply.Store(false)
		if _, err := g.Store.Update(ctx, key, data, version); err != nil {
			return "", err
		}
		return "", errors.New("connection reset before the answer")
	}
	g.mu.Lock()
	h := g.held
	g.mu.Unlock()
	if h != nil {
		<-h
	}
	if g.broken.Load() {
		return "", errors.New("store unreachable")
	}
	g.updates.Add(1)
	return g.Store.Update(ctx, key, data, version)
}

func config(s storage.Store, holder string) ownership.Config {
	return ownership.Config{Store: s, Key: "owners/test.json", Holder: holder,
		Heartbeat: 20 * time.Millisecond, Timeout: 500 * time.Millisecond}
}

func claim(t *testing.T, cfg ownership.Config) *ownership.Ownership {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	o, err := ownership.Claim(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func lostWithin(t *testing.T, o *ownership.Ownership, d time.Duration) {
	t.Helper()
	select {
	case <-o.Lost():
		if !errors.Is(o.Err(), ownership.ErrLost) {
			t.Fatalf("Err = %v, want ErrLost", o.Err())
		}
	case <-time.After(d):
		t.Fatal("ownership not lost")
	}
}

func TestReleaseHandsOverAtOnce(t *testing.T) {
	store := storage.NewMemory()
	a := claim(t, config(store, "a"))
	if a.Epoch() != 1 {
		t.Fatalf("first epoch %d", a.Epoch())
	}
	waiting := make(chan string, 1)
	got := make(chan *ownership.Ownership, 1)
	go func() {
		cfg := config(store, "b")
		cfg.Timeout = time.Hour // only a release can hand it over
		cfg.Heartbeat = 10 * time.Millisecond
		o, err := ownership.Claim(context.Background(), cfg, func(holder, _ string) { waiting <- holder })
		if err != nil {
			t.Error(err)
		}
		got <- o
	}()
	if h := <-waiting; h != "a" {
		t.Fatalf("standby waits for %q, want a", h)
	}
	// While a heartbeats, b keeps waiting.
	select {
	case <-got:
		t.Fatal("b claimed a record whose owner is alive")
	case <-time.After(300 * time.Millisecond):
	}
	if err := a.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	b := <-got
	if b == nil || b.Epoch() != 2 {
		t.Fatalf("b = %v", b)
	}
	select {
	case <-a.Lost():
		t.Fatal("a release closed Lost")
	default:
	}
	b.Release(context.Background())
}

func TestSilentOwnerIsReplacedAndLearnsIt(t *testing.T) {
	mem := storage.NewMemory()
	paused := &gate{Store: mem}
	a := claim(t, config(paused, "a"))
	paused.hold() // a's next heartbeat hangs, as in a process stopped mid-write
	start := time.Now()
	b := claim(t, config(mem, "b"))
	if waited := time.Since(start); waited < 500*time.Millisecond {
		t.Fatalf("b took over after %v, before the timeout", waited)
	}
	if b.Epoch() != 2 {
		t.Fatalf("epoch %d after takeover, want 2", b.Epoch())
	}
	// a's lease ended before b could declare it dead.
	if err := a.Valid(); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("the replaced owner is still valid: %v", err)
	}
	if err := b.Valid(); err != nil {
		t.Fatalf("the new owner is not valid: %v", err)
	}
	paused.resume() // a wakes up: its heartbeat must fail
	lostWithin(t, a, 10*time.Second)
	select {
	case <-b.Lost():
		t.Fatalf("the new owner lost too: %v", b.Err())
	case <-time.After(100 * time.Millisecond):
	}
	a.Release(context.Background())
	b.Release(context.Background())
}

// A heartbeat that landed although its answer was lost leaves the record
// at a version the owner never saw; the owner must recognise it as its
// own rather than give up.
func TestLostReplyIsNotATakeover(t *testing.T) {
	g := &gate{Store: storage.NewMemory()}
	a := claim(t, config(g, "a"))
	g.loseReply.Store(true)
	// Wait for several more heartbeats after the lost answer.
	deadline := time.Now().Add(10 * time.Second)
	for g.loseReply.Load() || g.updates.Load() < 5 {
		if time.Now().After(deadline) {
			t.Fatal("heartbeats stopped")
		}
		select {
		case <-a.Lost():
			t.Fatalf("ownership lost after a lost reply: %v", a.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	select {
	case <-a.Lost():
		t.Fatalf("ownership lost after a lost reply: %v", a.Err())
	default:
	}
	if err := a.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestUnreachableStoreEndsOwnership(t *testing.T) {
	g := &gate{Store: storage.NewMemory()}
	a := claim(t, config(g, "a"))
	g.broken.Store(true)
	lostWithin(t, a, 10*time.Second)
	a.Release(context.Background())
}

// Of several standbys racing for a dead owner's record, exactly one wins;
// the others wait for it.
func TestOneStandbyWins(t *testing.T) {
	mem := storage.NewMemory()
	paused := &gate{Store: mem}
	a := claim(t, config(paused, "a"))
	paused.hold()
	ctx, cancel := context.WithCancel(context.Background())
	var winners atomic.Int32
	var wg sync.WaitGroup
	owners := make(chan *ownership.Ownership, 4)
	for _, name := range []string{"b", "c", "d", "e"} {
		wg.Go(func() {
			// A long timeout: a winner stalled by a busy machine must not
			// look dead to the others during the test.
			cfg := config(mem, name)
			cfg.Timeout = 2 * time.Second
			o, err := ownership.Claim(ctx, cfg, nil)
			if err == nil {
				winners.Add(1)
				owners <- o
			}
		})
	}
	first := <-owners
	// The winner heartbeats, so the losers keep waiting: give them a
	// while in which they could wrongly claim.
	time.Sleep(500 * time.Millisecond)
	cancel()
	wg.Wait()
	if n := winners.Load(); n != 1 {
		t.Fatalf("%d standbys claimed, want 1", n)
	}
	if first.Epoch() != 2 {
		t.Fatalf("epoch %d", first.Epoch())
	}
	paused.resume()
	lostWithin(t, a, 10*time.Second)
	first.Release(context.Background())
	a.Release(context.Background())
}

func TestConfigValidation(t *testing.T) {
	for _, cfg := range []ownership.Config{
		{Key: "k", Holder: "h"},
		{Store: storage.NewMemory(), Key: "../k", Holder: "h"},
		{Store: storage.NewMemory(), Key: "k"},
		{Store: storage.NewMemory(), Key: "k", Holder: "h", Heartbeat: time.Second, Timeout: time.Second},
	} {
		if _, err := ownership.Claim(context.Background(), cfg, nil); err == nil {
			t.Errorf("Claim(%+v) succeeded", cfg)
		}
	}
}

// Exchange records follow the process's epoch: a new owner claims them
// up, and the old one then fails to confirm an update and stops.
func TestExchangeRecords(t *testing.T) {
	ctx := context.Background()
	mem := storage.NewMemory()
	// Hand-overs here are by Release, never by timeout: a timeout far
	// above any stall of a busy machine keeps every lease valid.
	config := func(s storage.Store, holder string) ownership.Config {
		cfg := config(s, holder)
		cfg.Timeout = time.Minute
		return cfg
	}
	a := claim(t, config(mem, "a"))
	for range 2 { // a second claim is answered from memory
		if err := a.Claim(ctx, "x"); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Confirm(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b := claim(t, config(mem, "b"))
	defer b.Release(ctx)
	if err := b.Claim(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	obj, err := mem.Get(ctx, ownership.ExchangeKey("x"))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(obj.Data); !strings.Contains(got, `"epoch":2`) || !strings.Contains(got, `"holder":"b"`) {
		t.Fatalf("record after the takeover: %s", got)
	}
	if err := a.Confirm(ctx, "x"); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("old owner's confirm: %v", err)
	}
	if err := b.Confirm(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	// An owner never moves a record back to its older epoch.
	c := ownership.Config{Store: mem, Key: "owners/other.json", Holder: "c", Heartbeat: 20 * time.Millisecond, Timeout: time.Minute}
	old := claim(t, c) // epoch 1 of another record
	defer old.Release(ctx)
	if err := old.Claim(ctx, "x"); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("claim at an older epoch: %v", err)
	}
	lostWithin(t, old, time.Second)
}

// MinEpoch lifts a new record, and a takeover, to at least that epoch.
func TestMinEpoch(t *testing.T) {
	ctx := context.Background()
	mem := storage.NewMemory()
	cfg := config(mem, "a")
	cfg.MinEpoch = 7
	a := claim(t, cfg)
	if a.Epoch() != 7 {
		t.Fatalf("new record at epoch %d, want 7", a.Epoch())
	}
	if err := a.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b := claim(t, config(mem, "b"))
	if b.Epoch() != 8 {
		t.Fatalf("takeover at epoch %d, want 8", b.Epoch())
	}
	if err := b.Release(ctx); err != nil {
		t.Fatal(err)
	}
	cfg = config(mem, "c")
	cfg.MinEpoch = 20
	c := claim(t, cfg)
	defer c.Release(ctx)
	if c.Epoch() != 20 {
		t.Fatalf("takeover at epoch %d, want 20", c.Epoch())
	}
}

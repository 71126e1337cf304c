package mailbus_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
)

// collector records what a handler saw.
type collector struct {
	mu   sync.Mutex
	msgs []mailbus.Message
	ch   chan mailbus.Message
}

func newCollector() *collector { return &collector{ch: make(chan mailbus.Message, 10000)} }

func (c *collector) handle(ctx context.Context, m mailbus.Message) error {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	c.ch <- m
	return nil
}

func (c *collector) wait(t *testing.T, n int) []mailbus.Message {
	t.Helper()
	var out []mailbus.Message
	for len(out) < n {
		select {
		case m := <-c.ch:
			out = append(out, m)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d messages, want %d", len(out), n)
		}
	}
	return out
}

func newClient(t *testing.T, e *testEnv, ex, agent string, cfg mailbus.ClientConfig) *mailbus.Client {
	t.Helper()
	cfg.URL, cfg.Exchange, cfg.APIKey = e.srv.URL, ex, key(ex, agent)
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = 10 * time.Millisecond
	}
	c, err := mailbus.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(context.Background()) })
	return c
}

func TestClient_PublishSubscribe(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	ctx := ctxT(t)
	got := newCollector()
	w := newClient(t, e, "ex", "w", mailbus.ClientConfig{})
	if _, err := w.Subscribe(ctx, "task.*", got.handle); err != nil {
		t.Fatal(err)
	}
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if w.AgentID() != "w" {
		t.Errorf("AgentID %q", w.AgentID())
	}
	boss := newClient(t, e, "ex", "boss", mailbus.ClientConfig{})
	if err := boss.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	pub, err := boss.Publish(ctx, mailbus.Message{Type: "task.created", From: "liar"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := boss.SendTo(ctx, "w", mailbus.Message{Type: "task.assigned"}); err != nil {
		t.Fatal(err)
	}
	ms := got.wait(t, 2)
	if ms[0].ID != pub.ID || ms[0].From != "boss" || ms[1].Type != "task.assigned" || ms[1].To != "w" {
		t.Errorf("got %+v", ms)
	}
	if err := boss.SendHeartbeat(ctx); err != nil {
		t.Fatal(err)
	}
	var ps []mailbus.Presence
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		ps, _ = e.bus.Presence(ctx, "ex")
		if len(ps) == 2 && ps[0].LastHeartbeat != nil {
			break
		}
	}
	if len(ps) != 2 || ps[0].AgentID != "boss" || ps[0].LastHeartbeat == nil || !ps[0].Online {
		t.Errorf("presence %+v", ps)
	}
}

func TestClient_ReconnectResume(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	ctx := ctxT(t)
	got := newCollector()
	w := newClient(t, e, "ex", "w", mailbus.ClientConfig{})
	w.Subscribe(ctx, "*", got.handle)
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 300
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := range n {
			_, err := e.bus.SendTo(ctx, "ex", "boss", "w", mailbus.Message{Type: "n", Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i))})
			if err != nil {
				t.Error(err)
				return
			}
			if i%50 == 25 {
				e.bus.DropConnections()
			}
		}
	})
	ms := got.wait(t, n)
	wg.Wait()
	for i, m := range ms {
		var p struct{ I int }
		json.Unmarshal(m.Payload, &p)
		if p.I != i {
			t.Fatalf("message %d has i=%d: gap or duplicate", i, p.I)
		}
	}
	select {
	case m := <-got.ch:
		t.Fatalf("duplicate %+v", m)
	case <-time.After(100 * time.Millisecond):
	}
}

func TestClient_NoReconnectAfterShutdown(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	ctx := ctxT(t)
	w := newClient(t, e, "ex", "w", mailbus.ClientConfig{})
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitDisconnected(t, e, "ex", "w")
	if err := w.Connect(ctx); !errors.Is(err, mailbus.ErrClosed) {
		t.Errorf("Connect after Shutdown: %v", err)
	}
	if err := w.Close(ctx); err != nil {
		t.Errorf("second Shutdown: %v", err)
	}
}

func TestClient_BadCredentials(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	ctx := ctxT(t)
	c, _ := mailbus.NewClient(mailbus.ClientConfig{URL: e.srv.URL, Exchange: "ex", APIKey: key("other", "a")})
	defer c.Close(ctx)
	if err := c.Connect(ctx); !errors.Is(err, mailbus.ErrForbidden) {
		t.Errorf("Connect: %v, want ErrForbidden", err)
	}
	c2, _ := mailbus.NewClient(mailbus.ClientConfig{URL: e.srv.URL, Exchange: "ex", APIKey: "junk"})
	defer c2.Close(ctx)
	if _, err := c2.Publish(ctx, mailbus.Message{Type: "a"}); !errors.Is(err, mailbus.ErrUnauthorized) {
		t.Errorf("Publish: %v, want ErrUnauthorized", err)
	}
}

func TestClient_HandlerFailures(t *testing.T) {
	e := startEnv(t, mailbus.Config{VisibilityTimeout: 100 * time.Millisecond})
	ctx := ctxT(t)
	var errs sync.Map
	w := newClient(t, e, "ex", "w", mailbus.ClientConfig{OnError: func(err error) { errs.Store(err.Error(), true) }})
	got := newCollector()
	var tries sync.Map
	w.Subscribe(ctx, "boom", func(ctx context.Context, m mailbus.Message) error { panic("boom") })
	w.Subscribe(ctx, "flaky", func(ctx context.Context, m mailbus.Message) error {
		n, _ := tries.LoadOrStore(m.ID, new(int))
		*n.(*int)++
		if *n.(*int) < 3 {
			return errors.New("not yet")
		}
		return got.handle(ctx, m)
	})
	w.Subscribe(ctx, "ok", got.handle)
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	e.bus.SendTo(ctx, "ex", "b", "w", mailbus.Message{Type: "boom"})
	flaky, _ := e.bus.SendTo(ctx, "ex", "b", "w", mailbus.Message{Type: "flaky", AckRequired: true})
	e.bus.SendTo(ctx, "ex", "b", "w", mailbus.Message{Type: "ok"})
	ms := got.wait(t, 2)
	if ms[0].Type != "ok" || ms[1].ID != flaky.ID {
		t.Errorf("got %+v", ms)
	}
	// The flaky message was acknowledged after its success: no more copies.
	select {
	case m := <-got.ch:
		t.Errorf("extra delivery %+v", m)
	case <-time.After(400 * time.Millisecond):
	}
	n := 0
	errs.Range(func(k, v any) bool { n++; return true })
	if n < 2 {
		t.Errorf("%d handler errors reported, want the panic and the failures", n)
	}
}

func TestLocal_RoutingAndAck(t *testing.T) {
	b, err := mailbus.New(context.Background(), mailbus.Config{VisibilityTimeout: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	defer b.Close(ctx)
	mk := func(agent string) *mailbus.Local {
		l, err := b.Agent(mailbus.LocalConfig{Exchange: "ex", Agent: agent})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close(context.Background()) })
		return l
	}
	a, w, x := mk("a"), mk("w"), mk("x")
	got, other := newCollector(), newCollector()
	w.Subscribe(ctx, "task.*", got.handle)
	x.Subscribe(ctx, "agent.*", other.handle)
	a.Subscribe(ctx, "*", other.handle)
	for _, l := range []*mailbus.Local{a, w, x} {
		if err := l.Connect(ctx); err != nil {
			t.Fatal(err)
		}
	}
	m, err := a.Publish(ctx, mailbus.Message{Type: "task.created", AckRequired: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.SendTo(ctx, "w", mailbus.Message{Type: "task.assigned"}); err != nil {
		t.Fatal(err)
	}
	ms := got.wait(t, 2)
	if ms[0].ID != m.ID || ms[1].Type != "task.assigned" {
		t.Errorf("got %+v", ms)
	}
	select {
	case m := <-other.ch:
		t.Errorf("unexpected delivery %+v", m)
	case <-time.After(300 * time.Millisecond):
	}
	var v struct{}
	_ = v
	if err := w.Acknowledge(ctx, m.ID); err != nil {
		t.Errorf("explicit ack after auto ack: %v", err)
	}
	if _, err := a.AcquireLease(ctx, "f", time.Second); !errors.Is(err, mailbus.ErrNoLeaser) {
		t.Errorf("AcquireLease without leaser: %v", err)
	}
}

func TestLocal_Leases(t *testing.T) {
	lm, err := lease.New(context.Background(), lease.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	defer lm.Close(ctx)
	b, _ := mailbus.New(context.Background(), mailbus.Config{})
	defer b.Close(ctx)
	a, _ := b.Agent(mailbus.LocalConfig{Exchange: "ex", Agent: "a", Leaser: mailbus.ManagerLeaser(lm, "ex", "a")})
	c, _ := b.Agent(mailbus.LocalConfig{Exchange: "ex", Agent: "c", Leaser: mailbus.ManagerLeaser(lm, "ex", "c")})
	defer a.Close(ctx)
	defer c.Close(ctx)
	g, err := a.AcquireLease(ctx, "src/main.go", time.Minute)
	if err != nil || g.Token == 0 || g.Holder != "a" {
		t.Fatalf("a acquire: %+v %v", g, err)
	}
	var held *lease.HeldError
	if _, err := c.AcquireLease(ctx, "src/main.go", time.Minute); !errors.As(err, &held) || held.Holder != "a" {
		t.Fatalf("c acquire held lease: %v, want a lease.HeldError naming a", err)
	}
	st, err := c.IsLeased(ctx, "src/main.go")
	if err != nil || !st.IsLeased || st.AgentID != "a" {
		t.Fatalf("status %+v %v", st, err)
	}
	if err := a.ReleaseLease(ctx, "src/main.go"); err != nil {
		t.Fatal(err)
	}
	// The next grant's token is higher: it fences a's writes.
	if g2, err := c.AcquireLease(ctx, "src/main.go", time.Minute); err != nil || g2.Token <= g.Token {
		t.Fatalf("c acquire after release: %+v %v, want a token above %d", g2, err, g.Token)
	}
}

// flakyLeaser fails the first Release it sees, as a lost connection would.
type flakyLeaser struct {
	mailbus.Leaser
	failed bool
}

func (f *flakyLeaser) Release(ctx context.Context, name string, token uint64) error {
	if !f.failed {
		f.failed = true
		return errors.New("connection reset")
	}
	return f.Leaser.Release(ctx, name, token)
}

// Ensure a failed release can be retried, and that releasing a lease that
// expired first is reported rather than passed off as a release.
func TestLocal_ReleaseLeaseRetryAndExpiry(t *testing.T) {
	var mu sync.Mutex
	now := time.Now()
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	lm, err := lease.New(context.Background(), lease.Config{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	defer lm.Close(ctx)
	b, _ := mailbus.New(context.Background(), mailbus.Config{})
	defer b.Close(ctx)
	a, _ := b.Agent(mailbus.LocalConfig{Exchange: "ex", Agent: "a", Leaser: &flakyLeaser{Leaser: mailbus.ManagerLeaser(lm, "ex", "a")}})
	defer a.Close(ctx)
	if _, err := a.AcquireLease(ctx, "f", time.Minute); err != nil {
		t.Fatalf("acquire: %v", err)
	}
	if err := a.ReleaseLease(ctx, "f"); err == nil {
		t.Fatal("release through a failing leaser succeeded")
	}
	if err := a.ReleaseLease(ctx, "f"); err != nil {
		t.Fatalf("retried release: %v", err)
	}
	if st, _ := a.IsLeased(ctx, "f"); st.IsLeased {
		t.Fatalf("still leased after the retried release: %+v", st)
	}

	if _, err := a.AcquireLease(ctx, "f", time.Second); err != nil {
		t.Fatalf("acquire again: %v", err)
	}
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	if err := a.ReleaseLease(ctx, "f"); !errors.Is(err, lease.ErrNotHeld) {
		t.Errorf("release after expiry: %v, want lease.ErrNotHeld", err)
	}
	if err := a.ReleaseLease(ctx, "f"); !errors.Is(err, mailbus.ErrNotFound) {
		t.Errorf("release once more: %v, want ErrNotFound", err)
	}
}

// waitDisconnected fails the test unless agent is reported offline soon.
func waitDisconnected(t *testing.T, e *testEnv, ex, agent string) {
	t.Helper()
	ctx := ctxT(t)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ps, _ := e.bus.Presence(ctx, ex)
		i := slices.IndexFunc(ps, func(p mailbus.Presence) bool { return p.AgentID == agent })
		if i < 0 || !ps[i].Connected {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still connected: %+v", agent, ps)
		}
	}
}

// Ensure Connect called from several goroutines at once connects once, and
// Shutdown then leaves no connection behind.
func TestClient_ConcurrentConnect(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	ctx := ctxT(t)
	w := newClient(t, e, "ex", "w", mailbus.ClientConfig{})
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 4 {
		wg.Go(func() {
			<-start
			if err := w.Connect(ctx); err != nil {
				t.Error(err)
			}
		})
	}
	close(start)
	wg.Wait()
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	waitDisconnected(t, e, "ex", "w")
}

// Ensure concurrent subscription changes leave the server with the
// client's final set, not whichever request arrived last.
func TestClient_ConcurrentSubscribe(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	ctx := ctxT(t)
	w := newClient(t, e, "ex", "w", mailbus.ClientConfig{})
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 32
	subs := make([]*mailbus.Subscription, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, err := w.Subscribe(ctx, fmt.Sprintf("t%d", i), func(context.Context, mailbus.Message) error { return nil })
			if err != nil {
				t.Error(err)
			}
			subs[i] = s
		})
	}
	wg.Wait()
	if got, _ := e.bus.Subscriptions(ctx, "ex", "w"); len(got) != n {
		t.Fatalf("server has %d of %d subscriptions: %v", len(got), n, got)
	}
	for i := range n / 2 {
		wg.Go(func() {
			if err := w.Unsubscribe(ctx, subs[i]); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got, _ := e.bus.Subscriptions(ctx, "ex", "w"); len(got) != n/2 || slices.Contains(got, "t0") {
		t.Errorf("after unsubscribing half, server has %v", got)
	}
}

// slowUpgrade holds WebSocket handshakes back, so that a test can act
// while one is in flight.
type slowUpgrade struct {
	started chan struct{}
	release chan struct{}
}

func (s slowUpgrade) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("Upgrade") != "" {
		close(s.started)
		<-s.release
	}
	return http.DefaultTransport.RoundTrip(r)
}

// Ensure a Subscribe made while Connect's handshake is in flight reaches
// the server: the handshake carried the patterns of before.
func TestClient_SubscribeDuringConnect(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	ctx := ctxT(t)
	slow := slowUpgrade{started: make(chan struct{}), release: make(chan struct{})}
	w := newClient(t, e, "ex", "w", mailbus.ClientConfig{HTTPClient: &http.Client{Transport: slow}})
	connected := make(chan error, 1)
	go func() { connected <- w.Connect(ctx) }()
	<-slow.started
	got := newCollector()
	subscribed := make(chan error, 1)
	go func() {
		_, err := w.Subscribe(ctx, "task.*", got.handle)
		subscribed <- err
	}()
	time.Sleep(50 * time.Millisecond) // let Subscribe start before the handshake ends
	close(slow.release)
	if err := <-connected; err != nil {
		t.Fatal(err)
	}
	if err := <-subscribed; err != nil {
		t.Fatal(err)
	}
	if got, _ := e.bus.Subscriptions(ctx, "ex", "w"); !slices.Equal(got, []string{"task.*"}) {
		t.Fatalf("server subscriptions %v", got)
	}
	if _, err := e.bus.Publish(ctx, "ex", "boss", mailbus.Message{Type: "task.created"}); err != nil {
		t.Fatal(err)
	}
	got.wait(t, 1)
}

// Ensure handlers that finish while Shutdown drains the queue still
// acknowledge their messages, though the connection is gone by then.
func TestClient_ShutdownDrainAcknowledges(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	ctx := ctxT(t)
	var mu sync.Mutex
	handled := map[string]bool{}
	first := make(chan struct{}, 1)
	w := newClient(t, e, "ex", "w", mailbus.ClientConfig{OnError: func(err error) { t.Log(err) }})
	w.Subscribe(ctx, "job", func(ctx context.Context, m mailbus.Message) error {
		select {
		case first <- struct{}{}:
		default:
		}
		time.Sleep(50 * time.Millisecond) // still running when Shutdown closes the socket
		mu.Lock()
		handled[m.ID] = true
		mu.Unlock()
		return nil
	})
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := e.bus.SendTo(ctx, "ex", "boss", "w", mailbus.Message{Type: "job", AckRequired: true}); err != nil {
			t.Fatal(err)
		}
	}
	<-first
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	ms, _, err := e.bus.Inbox(ctx, "ex", "w", 0, 100)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) == 0 {
		t.Fatal("no handler finished")
	}
	for _, m := range ms {
		if handled[m.ID] && m.AckedAt == nil {
			t.Errorf("message %d was handled but is not acknowledged", m.Seq)
		}
	}
}

// Ensure Shutdown honours its context when the server stops answering:
// the close handshake would otherwise wait for the library's own timeout.
func TestClient_ShutdownStalledServer(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		c.Write(r.Context(), websocket.MessageText, []byte(`{"action":"welcome","agentId":"w","next":1}`))
		<-block // never reads again, so never answers the close frame
		c.CloseNow()
	}))
	defer srv.Close()
	defer close(block)
	c, err := mailbus.NewClient(mailbus.ClientConfig{URL: srv.URL, Exchange: "ex", APIKey: "k"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := c.Close(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown against a stalled server: %v, want its context's error", err)
	}
	// Not a speed check: the library's close handshake gives up after 5 s,
	// and a Shutdown that ignores its 100 ms context takes that long.
	if d := time.Since(start); d > 2500*time.Millisecond {
		t.Errorf("Shutdown took %v despite its 100 ms context", d)
	}
}

// Ensure a Shutdown whose context ends aborts the handlers: the running
// one sees its context cancelled, the queue behind it is dropped, and the
// dispatcher's goroutine ends.
func TestLocal_ShutdownAbortsHandlers(t *testing.T) {
	b, _ := mailbus.New(context.Background(), mailbus.Config{})
	ctx := ctxT(t)
	defer b.Close(ctx)
	l, _ := b.Agent(mailbus.LocalConfig{Exchange: "ex", Agent: "w"})
	var calls atomic.Int32
	running := make(chan struct{}, 1)
	l.Subscribe(ctx, "job", func(ctx context.Context, m mailbus.Message) error {
		calls.Add(1)
		running <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	})
	if err := l.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	for range 4 {
		if _, err := b.SendTo(ctx, "ex", "boss", "w", mailbus.Message{Type: "job"}); err != nil {
			t.Fatal(err)
		}
	}
	<-running
	dead, cancel := context.WithCancel(ctx)
	cancel()
	if err := l.Close(dead); !errors.Is(err, context.Canceled) {
		t.Errorf("Shutdown with an ended context: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if !strings.Contains(allStacks(), "(*dispatcher).run") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the dispatcher outlived an aborted Shutdown")
		}
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("%d handler calls, want 1: the queue ran on after the abort", n)
	}
}

// allStacks returns the stacks of all goroutines.
func allStacks() string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return string(buf[:n])
		}
		buf = make([]byte, 2*len(buf))
	}
}

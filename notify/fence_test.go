package notify_test

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/internal/backends"
	"github.com/meatspace-exchange/mess/internal/faultstore"
	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
)

var (
	claimOwner = backends.Owner
	takeOver   = backends.TakeOver
)

// noHistory is an exchange that cannot show its past events, so that a
// restarted outbox has only its journal to go by: nothing missing from
// the journal is derived again.
type noHistory struct{ *mess.Service }

func (noHistory) EventsAfter(string, string) ([]mess.Event, uint64, bool, error) {
	return nil, 0, false, nil
}

// fencedEnv is one exchange and a receiver that refuses deliveries until
// up is set, in store.
type fencedEnv struct {
	t     *testing.T
	store storage.Store
	svc   *mess.Service
	rv    *receiver
	up    atomic.Bool
}

func newFencedEnv(t *testing.T, store storage.Store) *fencedEnv {
	t.Helper()
	e := &fencedEnv{t: t, store: store}
	e.rv = newReceiver(t, func(received, int) (int, string) {
		if e.up.Load() {
			return 200, `{}`
		}
		return 500, `{}`
	})
	svc, err := mess.New(context.Background(), mess.Config{Store: store, OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svc.Close(context.Background()) })
	e.svc = svc
	for _, r := range []mess.Registration{
		{ExecutorID: "req"},
		{ExecutorID: "w", Notifications: raw([]any{map[string]any{"type": "webhook", "url": e.rv.URL}})},
	} {
		if _, err := svc.Register(context.Background(), x, r); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// start runs an outbox under fence (with store, if given, instead of
// the env's).
func (e *fencedEnv) start(fence storage.Fence, store storage.Store, cfg notify.Config) (*notify.Service, error) {
	if store == nil {
		store = e.store
	}
	cfg.Source, cfg.Store, cfg.Fence = noHistory{e.svc}, store, fence
	cfg.Policy.AllowLoopback = true
	cfg.Logger = slog.New(slog.DiscardHandler)
	if cfg.BaseBackoff == 0 {
		cfg.BaseBackoff, cfg.MaxBackoff = 5*time.Millisecond, 50*time.Millisecond
	}
	n, err := notify.New(context.Background(), cfg)
	if err == nil {
		e.t.Cleanup(func() { n.Close(context.Background()) })
	}
	return n, err
}

func (e *fencedEnv) mustStart(fence storage.Fence, cfg notify.Config) *notify.Service {
	e.t.Helper()
	n, err := e.start(fence, nil, cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

func (e *fencedEnv) create(intent string) {
	e.t.Helper()
	if _, err := e.svc.CreateRequest(context.Background(), x, "req", mess.Request{Intent: intent}, ""); err != nil {
		e.t.Fatal(err)
	}
}

// waitFor polls cond until it holds, for at most 20s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func intent(r received) string {
	var b map[string]any
	json.Unmarshal(r.Body, &b)
	s, _ := b["intent"].(string)
	return s
}

// answer is the status n's handler gives executor w for its deliveries.
func answer(n *notify.Service) int {
	h, err := notify.NewHandler(n, notify.HandlerConfig{Auth: keyAuth{"kw": "w"}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/api/v1/exchanges/"+x+"/notifications/deliveries", nil)
	req.Header.Set("Authorization", "Bearer kw")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	return w.Code
}

const homeOutbox = "notify/exchange=" + x + "/outbox"

func auditOutbox(t *testing.T, store storage.Store) map[uint64]int {
	t.Helper()
	rep, err := journal.Audit(context.Background(), store, homeOutbox, true)
	if err != nil {
		t.Fatalf("audit: %v", err)
	}
	return rep.Fences
}

// A new owner delivers what the old one recorded and had not sent; the
// old one records nothing more once it meets the new owner's fence, and
// its handler answers 503.
func TestService_takeover(t *testing.T) {
	for _, b := range []backend{memoryBackend, minioBackend} {
		t.Run(b.name, func(t *testing.T) {
			e := newFencedEnv(t, b.new(t))
			oa := claimOwner(t, e.store, "a")
			a := e.mustStart(oa, notify.Config{BaseBackoff: time.Hour, MaxBackoff: time.Hour})
			e.create("one")
			e.create("two")
			// Both tried once and refused; the retries are an hour away.
			waitFor(t, "two refused attempts", func() bool { return e.rv.count() == 2 })

			ob := takeOver(t, e.store, oa, "b")
			e.up.Store(true)
			b := e.mustStart(ob, notify.Config{})
			seen := map[string]int{}
			for range 2 {
				seen[intent(e.rv.next(t))]++
			}
			// The next event reaches both outboxes: A cannot record it, B
			// delivers it.
			e.create("three")
			seen[intent(e.rv.next(t))]++
			waitFor(t, "A to answer 503", func() bool { return answer(a) == http.StatusServiceUnavailable })
			waitFor(t, "B to settle", func() bool { st := b.Stats(); return st.Pending == 0 && st.Queued == 0 })
			if seen["one"] != 1 || seen["two"] != 1 || seen["three"] != 1 {
				t.Fatalf("delivered %v, want each once", seen)
			}
			if n := e.rv.count(); n != 5 {
				t.Fatalf("receiver saw %d requests, want 5 (2 refused, 3 delivered)", n)
			}
			if code := answer(b); code != http.StatusOK {
				t.Fatalf("B answers %d", code)
			}
			if fences := auditOutbox(t, e.store); fences[1] == 0 || fences[2] == 0 {
				t.Fatalf("fences %v, want epochs 1 and 2", fences)
			}
		})
	}
}

// B lists the outbox journal, then stalls before writing its fence while
// A delivers a pending notification and records that: B's fence lands
// after the record, so B does not send it again.
func TestService_takeover_writeBetweenListingAndFence(t *testing.T) {
	for _, b := range []backend{memoryBackend, minioBackend} {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			e := newFencedEnv(t, b.new(t))
			oa := claimOwner(t, e.store, "a")
			e.mustStart(oa, notify.Config{BaseBackoff: 10 * time.Millisecond, MaxBackoff: 20 * time.Millisecond, MaxAttempts: 1000})
			e.create("retried")
			waitFor(t, "A's first attempt", func() bool { return e.rv.count() >= 1 })

			fb := faultstore.New(e.store)
			gate := faultstore.NewGate()
			fb.Add(&faultstore.Hook{
				Once:  true,
				Match: func(op faultstore.Op, key string) bool { return op == faultstore.List && key == homeOutbox+"/" },
				After: func(ctx context.Context, _ faultstore.Op, _ string, err error) error {
					if werr := gate.Wait(ctx); werr != nil {
						return werr
					}
					return err
				},
			})
			ob := takeOver(t, e.store, oa, "b")
			type made struct {
				n   *notify.Service
				err error
			}
			done := make(chan made, 1)
			go func() {
				n, err := e.start(ob, fb, notify.Config{})
				done <- made{n, err}
			}()
			<-gate.Reached
			e.up.Store(true)
			if r := e.rv.next(t); intent(r) != "retried" {
				t.Fatalf("delivered %s", r.Body)
			}
			waitFor(t, "A to record the delivery", func() bool {
				for k, err := range storage.Keys(ctx, e.store, homeOutbox+"/") {
					if err != nil {
						t.Fatal(err)
					}
					if obj, err := e.store.Get(ctx, k); err == nil && strings.Contains(string(obj.Data), `"op":"done"`) {
						return true
					}
				}
				return false
			})
			gate.Open()
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			e.create("after")
			if got := intent(e.rv.next(t)); got != "after" {
				t.Fatalf("B delivered %q, want only the new request", got)
			}
			waitFor(t, "B to settle", func() bool { st := r.n.Stats(); return st.Pending == 0 && st.Queued == 0 })
			select {
			case extra := <-e.rv.ch:
				t.Fatalf("delivered again: %s", extra.Body)
			default:
			}
			if fences := auditOutbox(t, e.store); fences[2] == 0 {
				t.Fatalf("fences %v, want one of epoch 2", fences)
			}
		})
	}
}

// An outbox written in the layout before per-exchange journals
// (notify/snapshot.json and notify/outbox/) still delivers what it holds,
// and keeps when it first started; the old objects stay where they are.
func TestService_oldLayout(t *testing.T) {
	onBackends(t, func(t *testing.T, b backend) {
		ctx := context.Background()
		e := newFencedEnv(t, b.new(t))
		e.up.Store(true)
		since := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
		d := func(n string) notify.Delivery {
			return notify.Delivery{ID: x + "|t" + n + "|w|n0", EventID: "t" + n, EventType: notify.EventTest, TS: since,
				ExchangeID: x, ExecutorID: "w", Kind: notify.KindNotification, Type: "webhook",
				Config: raw(map[string]any{"type": "webhook", "url": e.rv.URL + "/d" + n})}
		}
		line := func(v any) string { b, _ := json.Marshal(v); return string(b) + "\n" }
		covered := "notify/outbox/01HZY000000000000000000000.jsonl"
		old := map[string]string{
			"notify/snapshot.json": line(map[string]any{"last_key": covered, "since": since,
				"pending": []notify.Delivery{d("1"), d("2")}, "known": map[string]any{}, "marks": map[string]any{},
				"failures": map[string]any{}}),
			covered: line(map[string]any{"op": "add", "id": d("3").ID, "d": d("3"), "ts": since}),
			"notify/outbox/01HZY000000000000000000001.jsonl": line(map[string]any{"op": "done", "id": d("2").ID, "ts": since}),
		}
		for k, v := range old {
			if _, err := e.store.Put(ctx, k, []byte(v)); err != nil {
				t.Fatal(err)
			}
		}
		n := e.mustStart(nil, notify.Config{CompactInterval: -1})
		if r := e.rv.next(t); r.Path != "/d1" {
			t.Fatalf("delivered %s, want /d1", r.Path)
		}
		waitFor(t, "the outbox to settle", func() bool { return n.Stats().Pending == 0 })
		if c := e.rv.count(); c != 1 {
			t.Fatalf("receiver saw %d requests, want only /d1", c)
		}
		obj, err := e.store.Get(ctx, "notify/started.json")
		var started struct{ Since time.Time }
		if err != nil || json.Unmarshal(obj.Data, &started) != nil || !started.Since.Equal(since) {
			t.Fatalf("started.json = %s, %v; want since %v", obj.Data, err, since)
		}
		if err := n.Close(ctx); err != nil {
			t.Fatal(err)
		}
		// Once more, with the new outbox holding /d1 as sent.
		n = e.mustStart(nil, notify.Config{CompactInterval: -1})
		e.create("new")
		if r := e.rv.next(t); intent(r) != "new" {
			t.Fatalf("delivered %s %s, want the new request", r.Path, r.Body)
		}
		waitFor(t, "the outbox to settle", func() bool { return n.Stats().Pending == 0 })
		if c := e.rv.count(); c != 2 {
			t.Fatalf("receiver saw %d requests, want 2", c)
		}
		for k := range old {
			if _, err := e.store.Get(ctx, k); err != nil {
				t.Fatalf("old object %s: %v", k, err)
			}
		}
	})
}

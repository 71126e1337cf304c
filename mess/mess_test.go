package mess_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

var ctx = context.Background()

func mustOpen(t testing.TB, dir string, cfg mess.Config) *mess.Service {
	t.Helper()
	store, err := storage.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Store = store
	s, err := mess.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(ctx); store.Close() })
	return s
}

func mustRegister(t testing.TB, s *mess.Service, exchange, id string) string {
	t.Helper()
	r, err := s.Register(ctx, exchange, mess.Registration{ExecutorID: id})
	if err != nil {
		t.Fatal(err)
	}
	return r.APIKey
}

func TestParseStatus(t *testing.T) {
	tests := []struct {
		in   string
		want mess.Status
		ok   bool
	}{
		{"pending", mess.StatusPending, true},
		{"in_progress", mess.StatusInProgress, true},
		{"in-progress", mess.StatusInProgress, true},
		{"needs-input", mess.StatusNeedsInput, true},
		{"rejected", mess.StatusDeclined, true},
		{"canceled", mess.StatusCancelled, true},
		{"received", mess.StatusPending, true},
		{"banana", "", false},
		{"", "", false},
	}
	for _, tt := range tests {
		got, ok := mess.ParseStatus(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseStatus(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestRequest_ResponseHintsAlias(t *testing.T) {
	var r mess.Request
	if err := json.Unmarshal([]byte(`{"intent":"x","response_hints":["photo"]}`), &r); err != nil {
		t.Fatal(err)
	}
	if string(r.ResponseHint) != `["photo"]` {
		t.Fatalf("response_hint = %s", r.ResponseHint)
	}
}

// Ensure a reopened service has exactly the state the first one had.
func TestService_Rebuild(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, mess.Config{OpenRegistration: true})
	mustRegister(t, s, "home", "agent")
	mustRegister(t, s, "home", "human")
	var refs []string
	for i := range 30 {
		res, err := s.CreateRequest(ctx, "home", "agent", mess.Request{Intent: fmt.Sprint("job ", i), Priority: mess.PriorityElevated}, "")
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, res.Ref)
	}
	for i, ref := range refs[:10] {
		if _, err := s.Update(ctx, "home", "human", ref, mess.Update{Status: "claimed", Message: "mine"}); err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			if _, err := s.Update(ctx, "home", "human", ref, mess.Update{Status: "completed", Mess: json.RawMessage(`[{"response":{"content":["done"]}}]`)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	before, err := s.List(ctx, "home", mess.ListOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var threads []mess.Thread
	for _, ref := range refs {
		th, _ := s.Get(ctx, "home", ref)
		threads = append(threads, th)
	}
	s.Close(ctx)

	s2 := mustOpen(t, dir, mess.Config{})
	after, err := s2.List(ctx, "home", mess.ListOptions{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	b1, _ := json.Marshal(before.Threads)
	b2, _ := json.Marshal(after.Threads)
	if string(b1) != string(b2) {
		t.Fatalf("listing differs after rebuild:\n%s\n%s", b1, b2)
	}
	for i, ref := range refs {
		th, err := s2.Get(ctx, "home", ref)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := json.Marshal(threads[i])
		b, _ := json.Marshal(th)
		if string(a) != string(b) {
			t.Fatalf("thread %s differs after rebuild:\n%s\n%s", ref, a, b)
		}
	}
	if _, err := s2.Update(ctx, "home", "agent", refs[0], mess.Update{Status: "in_progress"}); !errors.Is(err, mess.ErrConflict) {
		t.Fatalf("rules after rebuild: %v", err)
	}
}

// Ensure a pending request expires when needed_by passes, and a claimed one
// does not.
func TestService_NeededByExpiry(t *testing.T) {
	s := mustOpen(t, t.TempDir(), mess.Config{ExpiryInterval: 10 * time.Millisecond, OpenRegistration: true})
	mustRegister(t, s, "x", "a")
	mustRegister(t, s, "x", "b")
	soon := time.Now().Add(50 * time.Millisecond)
	r1, _ := s.CreateRequest(ctx, "x", "a", mess.Request{Intent: "expires", NeededBy: &soon}, "")
	r2, _ := s.CreateRequest(ctx, "x", "a", mess.Request{Intent: "claimed in time", NeededBy: &soon}, "")
	s.Update(ctx, "x", "b", r2.Ref, mess.Update{Status: "claimed"})
	deadline := time.Now().Add(10 * time.Second)
	for {
		th, _ := s.Get(ctx, "x", r1.Ref)
		if th.Status == mess.StatusExpired {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thread still %s after needed_by", th.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if th, _ := s.Get(ctx, "x", r2.Ref); th.Status != mess.StatusClaimed {
		t.Fatalf("claimed thread became %s", th.Status)
	}
}

func TestService_Authenticate(t *testing.T) {
	s := mustOpen(t, t.TempDir(), mess.Config{OpenRegistration: true})
	key := mustRegister(t, s, "my_exchange", "a")
	if id, err := s.Authenticate(ctx, "my_exchange", key); err != nil || id != "a" {
		t.Fatalf("Authenticate = %q, %v", id, err)
	}
	if _, err := s.Authenticate(ctx, "my", key); !errors.Is(err, mess.ErrForbidden) {
		t.Fatalf("other exchange: %v", err)
	}
	if _, err := s.Authenticate(ctx, "my_exchange", key+"x"); !errors.Is(err, mess.ErrUnauthorized) {
		t.Fatalf("wrong key: %v", err)
	}
}

// Ensure concurrent claims in-process have exactly one winner (run with -race).
func TestService_ConcurrentClaim(t *testing.T) {
	s := mustOpen(t, t.TempDir(), mess.Config{OpenRegistration: true})
	mustRegister(t, s, "x", "req")
	for i := range 8 {
		mustRegister(t, s, "x", fmt.Sprint("e", i))
	}
	res, _ := s.CreateRequest(ctx, "x", "req", mess.Request{Intent: "race"}, "")
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins := 0
	for i := range 8 {
		wg.Go(func() {
			_, err := s.Update(ctx, "x", fmt.Sprint("e", i), res.Ref, mess.Update{Status: "claimed"})
			mu.Lock()
			defer mu.Unlock()
			if err == nil {
				wins++
			} else if !errors.Is(err, mess.ErrConflict) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if wins != 1 {
		t.Fatalf("%d claims won", wins)
	}
}

// A zero Config is a working exchange in memory.
func TestNew_zeroConfig(t *testing.T) {
	s, err := mess.New(ctx, mess.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	mustRegister(t, s, "home", "agent")
	res, err := s.CreateRequest(ctx, "home", "agent", mess.Request{Intent: "x"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if th, err := s.Get(ctx, "home", res.Ref); err != nil || th.Status != mess.StatusPending {
		t.Fatalf("Get = %+v, %v", th, err)
	}
}

func TestService_IsExecutor(t *testing.T) {
	s, err := mess.New(ctx, mess.Config{})
	if err != nil {
		t.Fatal(err)
	}
	mustRegister(t, s, "home", "agent")
	for _, tt := range []struct {
		exchange, id string
		want         bool
	}{{"home", "agent", true}, {"home", "nobody", false}, {"away", "agent", false}, {"../x", "agent", false}} {
		if got, err := s.IsExecutor(ctx, tt.exchange, tt.id); got != tt.want || err != nil {
			t.Errorf("IsExecutor(%q, %q) = %v, %v; want %v", tt.exchange, tt.id, got, err, tt.want)
		}
	}
	s.Close(ctx)
	if _, err := s.IsExecutor(ctx, "home", "agent"); !errors.Is(err, mess.ErrClosed) {
		t.Fatalf("after Close: %v, want ErrClosed", err)
	}
}

// The adapter for other services wraps their sentinels around the
// exchange's own errors.
func TestAuthenticator(t *testing.T) {
	s, err := mess.New(ctx, mess.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	key := mustRegister(t, s, "home", "agent")
	mustRegister(t, s, "away", "other")
	errUnauth, errForbid := errors.New("svc: unauthorized"), errors.New("svc: forbidden")
	a := mess.Authenticator(s, errUnauth, errForbid)
	if id, err := a.Authenticate(ctx, "home", key); id != "agent" || err != nil {
		t.Fatalf("Authenticate = %q, %v", id, err)
	}
	for _, tt := range []struct {
		exchange, key string
		want, kind    error
	}{
		{"home", "nope", errUnauth, mess.ErrUnauthorized},
		{"home", "", errUnauth, mess.ErrUnauthorized},
		{"away", key, errForbid, mess.ErrForbidden},
	} {
		_, err := a.Authenticate(ctx, tt.exchange, tt.key)
		if !errors.Is(err, tt.want) || !errors.Is(err, tt.kind) {
			t.Errorf("Authenticate(%q, %q) = %v, want %v and %v", tt.exchange, tt.key, err, tt.want, tt.kind)
		}
	}
	if ok, err := a.IsAgent(ctx, "home", "agent"); !ok || err != nil {
		t.Errorf("IsAgent(agent) = %v, %v", ok, err)
	}
	if ok, err := a.IsAgent(ctx, "home", "other"); ok || err != nil {
		t.Errorf("IsAgent(other) = %v, %v", ok, err)
	}
}

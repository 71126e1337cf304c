package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
)

type keyAuth map[string]string // key → agent in exchange "home"

func (a keyAuth) Authenticate(_ context.Context, exchangeID, token string) (string, error) {
	id, ok := a[token]
	if !ok {
		return "", fmt.Errorf("%w: unknown key", notify.ErrUnauthorized)
	}
	if exchangeID != x {
		return "", fmt.Errorf("%w: other exchange", notify.ErrForbidden)
	}
	return id, nil
}

func TestNewHandler_deliveries(t *testing.T) {
	rv := newReceiver(t, func(received, int) (int, string) { return 400, `{}` })
	e := newEnv(t, notify.Config{})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, []any{map[string]any{"type": "google_chat", "webhook_url": rv.URL + "/v1/spaces/S/messages?key=K&token=T"}}, nil, nil)
	e.create("req", mess.Request{Intent: "x"})
	e.settle()
	h, err := notify.NewHandler(e.n, notify.HandlerConfig{Auth: keyAuth{"kw": "w", "kr": "req"}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func(exchange, key string) (int, map[string]json.RawMessage) {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/exchanges/"+exchange+"/notifications/deliveries", nil)
		if key != "" {
			req.Header.Set("Authorization", "bearer "+key) // the scheme in any case
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		var m map[string]json.RawMessage
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	code, m := get(x, "kw")
	var fails []notify.Failure
	json.Unmarshal(m["failures"], &fails)
	// A 400 is not worth retrying: given up after one attempt.
	if code != 200 || len(fails) != 1 || fails[0].Attempts != 1 || fails[0].Error != "HTTP 400" || fails[0].Destination != rv.URL {
		t.Errorf("w: %d %s", code, m["failures"])
	}
	if code, m := get(x, "kr"); code != 200 || string(m["failures"]) != "[]" {
		t.Errorf("req: %d %s", code, m["failures"])
	}
	tests := []struct {
		exchange, key string
		code          int
		errCode       string
	}{
		{x, "", 401, "unauthorized"},
		{x, "nope", 401, "unauthorized"},
		{"other", "kw", 403, "forbidden"},
		{"bad%20id", "kw", 400, "invalid_input"},
	}
	for _, tt := range tests {
		code, m := get(tt.exchange, tt.key)
		if code != tt.code || string(m["code"]) != `"`+tt.errCode+`"` {
			t.Errorf("%s key %q: %d %v, want %d %s", tt.exchange, tt.key, code, m, tt.code, tt.errCode)
		}
	}
}

func TestNewHandler_needsAuth(t *testing.T) {
	e := newEnv(t, notify.Config{})
	if h, err := notify.NewHandler(e.n, notify.HandlerConfig{}); err == nil || h != nil {
		t.Fatalf("NewHandler without Auth = %v, %v; want an error", h, err)
	}
	if h, err := notify.NewHandler(nil, notify.HandlerConfig{Auth: keyAuth{}}); err == nil || h != nil {
		t.Fatalf("NewHandler without a Service = %v, %v; want an error", h, err)
	}
}

func TestNew_validates(t *testing.T) {
	svc, err := mess.New(context.Background(), mess.Config{Store: storage.NewMemory()})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(context.Background())
	tests := []struct {
		name string
		cfg  notify.Config
	}{
		{"no source", notify.Config{}},
		{"negative timeout", notify.Config{Source: svc, Timeout: -time.Second}},
		{"negative workers", notify.Config{Source: svc, Workers: -1}},
		{"negative hook cap", notify.Config{Source: svc, MaxHooks: -1}},
		{"backoff above its cap", notify.Config{Source: svc, BaseBackoff: time.Hour, MaxBackoff: time.Minute}},
		{"ntfy server not a URL", notify.Config{Source: svc, NtfyServer: "ntfy.sh"}},
		{"endpoint not http", notify.Config{Source: svc, Endpoints: notify.Endpoints{Linear: "ftp://x"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if n, err := notify.New(context.Background(), tt.cfg); err == nil {
				n.Close(context.Background())
				t.Fatal("accepted")
			}
		})
	}
}

// POST /notifications/test sends a test to each enabled channel of the
// caller through the outbox, and answers what became of each: sent, or
// failed with the reason; the address policy holds as for any delivery.
func TestNewHandler_test(t *testing.T) {
	ok := newReceiver(t, nil)
	bad := newReceiver(t, func(received, int) (int, string) { return 400, `{}` })
	post := func(e *env, key string) (int, map[string]json.RawMessage) {
		t.Helper()
		h, err := notify.NewHandler(e.n, notify.HandlerConfig{Auth: keyAuth{"kw": "w", "kn": "none"}})
		if err != nil {
			t.Fatal(err)
		}
		srv := httptest.NewServer(h)
		defer srv.Close()
		req, _ := http.NewRequest("POST", srv.URL+"/api/v1/exchanges/"+x+"/notifications/test", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]json.RawMessage
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	type result struct{ Type, Destination, Status, Error string }

	e := newEnv(t, notify.Config{})
	e.register("w", nil, []any{
		map[string]any{"type": "ntfy", "topic": "w-phone", "server": ok.URL, "token": "tk_secret"},
		map[string]any{"type": "ntfy", "topic": "w-off", "server": ok.URL, "enabled": false},
		map[string]any{"type": "ntfy", "topic": "w-tablet", "server": bad.URL},
	}, nil, map[string]any{"min_priority": "urgent"}) // a test ignores the filters
	e.register("none", nil, nil, nil, nil)
	code, m := post(e, "kw")
	var got []result
	json.Unmarshal(m["channels"], &got)
	want := []result{{"ntfy", ok.URL, "sent", ""}, {"ntfy", bad.URL, "failed", "HTTP 400"}}
	if code != 200 || fmt.Sprint(got) != fmt.Sprint(want) || string(m["executor_id"]) != `"w"` {
		t.Fatalf("test as w = %d %s, want channels %v", code, m["channels"], want)
	}
	select {
	case r := <-ok.ch:
		if r.Path != "/w-phone" || !strings.Contains(string(r.Body), "test notification") || r.Header.Get("Authorization") != "Bearer tk_secret" {
			t.Errorf("ntfy got %s %q %v", r.Path, r.Body, r.Header)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the test notification did not arrive")
	}
	// The failure is recorded with the others, without the topic.
	var fails []notify.Failure
	json.Unmarshal(raw(e.n.Failures(x, "w")), &fails)
	if len(fails) != 1 || fails[0].Type != "ntfy" || fails[0].Destination != bad.URL || fails[0].Error != "HTTP 400" {
		t.Errorf("failures after the test: %+v", fails)
	}

	if code, m := post(e, "kn"); code != 400 || string(m["code"]) != `"invalid_input"` {
		t.Errorf("test without channels = %d %v", code, m)
	}
	if code, m := post(e, ""); code != 401 || string(m["code"]) != `"unauthorized"` {
		t.Errorf("test without a key = %d %v", code, m)
	}

	// A test whose channel answers 503 waits for its retry (an hour away
	// here); until it is done, another test is refused.
	busy := newReceiver(t, func(received, int) (int, string) { return 503, `{}` })
	slow := newEnv(t, notify.Config{BaseBackoff: time.Hour, MaxBackoff: time.Hour})
	slow.register("w", nil, []any{map[string]any{"type": "ntfy", "topic": "w-phone", "server": busy.URL}}, nil, nil)
	code, m = post(slow, "kw")
	got = nil
	json.Unmarshal(m["channels"], &got)
	if code != 200 || len(got) != 1 || got[0].Status != "pending" || got[0].Error != "HTTP 503" {
		t.Fatalf("test to a busy channel = %d %s", code, m["channels"])
	}
	if code, m := post(slow, "kw"); code != 429 || string(m["code"]) != `"rate_limited"` {
		t.Errorf("a second test while the first is pending = %d %v", code, m)
	}

	// Loopback not allowed: the test is refused by the address policy,
	// and the receiver hears nothing.
	blocked := newEnv(t, notify.Config{Policy: notify.AddressPolicy{AllowLoopback: true}}) // inverted by newEnv
	blocked.register("w", nil, []any{map[string]any{"type": "ntfy", "topic": "w-phone", "server": ok.URL}}, nil, nil)
	code, m = post(blocked, "kw")
	got = nil
	json.Unmarshal(m["channels"], &got)
	if code != 200 || len(got) != 1 || got[0].Status != "failed" || !strings.Contains(got[0].Error, "not allowed") {
		t.Fatalf("test to a blocked address = %d %s", code, m["channels"])
	}
	select {
	case r := <-ok.ch:
		t.Errorf("a blocked address received %s", r.Path)
	default:
	}
}

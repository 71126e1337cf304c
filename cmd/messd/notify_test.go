package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/notify"
)

// hookSink is a real HTTP receiver on loopback. Each request waits for
// gate (when set) and is answered with status().
type hookSink struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
	heads  []http.Header
	ok     chan string
	status func() int
}

func newHookSink(t *testing.T, gate <-chan struct{}, status func() int) *hookSink {
	t.Helper()
	s := &hookSink{ok: make(chan string, 100), status: status}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if gate != nil {
			<-gate
		}
		s.mu.Lock()
		s.bodies = append(s.bodies, string(b))
		s.heads = append(s.heads, r.Header.Clone())
		s.mu.Unlock()
		code := 200
		if s.status != nil {
			code = s.status()
		}
		w.WriteHeader(code)
		if code == 200 {
			s.ok <- string(b)
		}
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *hookSink) next(t *testing.T) string {
	t.Helper()
	select {
	case b := <-s.ok:
		return b
	case <-time.After(20 * time.Second):
		t.Fatal("nothing delivered in 20s")
	}
	return ""
}

func (s *hookSink) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.bodies)
}

func registerWith(t *testing.T, ts *testServer, exchange string, body map[string]any) string {
	t.Helper()
	var res struct {
		APIKey string `json:"api_key"`
		Error  string `json:"error"`
	}
	if code := ts.do(t, "POST", ts.api(exchange)+"/register", "", body, &res); code != http.StatusCreated {
		t.Fatalf("register: %d %s", code, res.Error)
	}
	return res.APIKey
}

type deliveriesResp struct {
	ExecutorID string            `json:"executor_id"`
	Pending    []json.RawMessage `json:"pending"`
	Failures   []notify.Failure  `json:"failures"`
}

// waitFailures polls the deliveries endpoint until n failures show.
func waitFailures(t *testing.T, ts *testServer, exchange, key string, n int) deliveriesResp {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var d deliveriesResp
		if code := ts.do(t, "GET", ts.api(exchange)+"/notifications/deliveries", key, nil, &d); code != http.StatusOK {
			t.Fatalf("deliveries: %d", code)
		}
		if len(d.Failures) >= n || time.Now().After(deadline) {
			return d
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNotify_apiDoesNotWaitAndWebhookIsSigned(t *testing.T) {
	gate := make(chan struct{})
	sink := newHookSink(t, gate, nil)
	ts := startServer(t, withEnv("NOTIFY_ALLOW_LOOPBACK", "true"), withEnv("NOTIFY_SIGNING_SECRET", "k3y"))
	req := ts.register(t, "n1", "req")
	registerWith(t, ts, "n1", map[string]any{"executor_id": "phone",
		"notifications": []any{map[string]any{"type": "webhook", "url": sink.URL}}})
	// The receiver holds every delivery until the gate opens; the API
	// answers regardless.
	var refs []string
	for range 3 {
		refs = append(refs, ts.create(t, "n1", req, map[string]any{"intent": "Check the mailbox"}))
	}
	close(gate)
	seen := map[string]bool{}
	for range 3 {
		b := sink.next(t)
		var body map[string]any
		json.Unmarshal([]byte(b), &body)
		seen[body["ref"].(string)] = true
	}
	for _, r := range refs {
		if !seen[r] {
			t.Errorf("no delivery for %s", r)
		}
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	for i, h := range sink.heads {
		if !notify.Verify([]byte("k3y"), h.Get(notify.HeaderSignature), []byte(sink.bodies[i]), time.Now(), time.Minute) {
			t.Errorf("delivery %d: signature %q does not verify", i, h.Get(notify.HeaderSignature))
		}
	}
}

func TestNotify_failuresVisibleToOwnerOnly(t *testing.T) {
	sink := newHookSink(t, nil, func() int { return 500 })
	ts := startServer(t, withEnv("NOTIFY_ALLOW_LOOPBACK", "true"), withEnv("NOTIFY_MAX_ATTEMPTS", "2"), withEnv("NOTIFY_BASE_BACKOFF", "5ms"))
	req := ts.register(t, "n2", "req")
	key := registerWith(t, ts, "n2", map[string]any{"executor_id": "w",
		"hooks": map[string]any{"on_request_created": []any{map[string]any{"type": "todoist", "token": "todo-secret"},
			map[string]any{"type": "webhook", "url": sink.URL + "/x", "secret": "hook-secret"}}}})
	ts.create(t, "n2", req, map[string]any{"intent": "Take out the bins"})
	d := waitFailures(t, ts, "n2", key, 2)
	if d.ExecutorID != "w" || len(d.Failures) != 2 {
		t.Fatalf("deliveries = %+v, want 2 failures for w", d)
	}
	var webhook notify.Failure
	for _, f := range d.Failures {
		if f.Type == "webhook" {
			webhook = f
		}
	}
	if webhook.Attempts != 2 || webhook.Error != "HTTP 500" {
		t.Errorf("webhook failure = %+v", webhook)
	}
	if n := sink.count(); n != 2 {
		t.Errorf("sink saw %d attempts, want 2", n)
	}
	// The requestor sees only its own (none).
	var other deliveriesResp
	ts.do(t, "GET", ts.api("n2")+"/notifications/deliveries", req, nil, &other)
	if len(other.Failures) != 0 || other.ExecutorID != "req" {
		t.Errorf("requestor sees %+v", other)
	}
	if code := ts.do(t, "GET", ts.api("n2")+"/notifications/deliveries", "", nil, nil); code != http.StatusUnauthorized {
		t.Errorf("no key: %d, want 401", code)
	}
	if code := ts.do(t, "GET", ts.api("other")+"/notifications/deliveries", key, nil, nil); code != http.StatusForbidden && code != http.StatusUnauthorized {
		t.Errorf("key of another exchange: %d, want 403", code)
	}
	// Secrets stay inside the server.
	var prof map[string]any
	ts.do(t, "GET", ts.api("n2")+"/executors/w", key, nil, &prof)
	b, _ := json.Marshal(prof)
	for _, s := range []string{"todo-secret", "hook-secret"} {
		if strings.Contains(string(b), s) {
			t.Errorf("profile exposes %q: %s", s, b)
		}
	}
	b, _ = json.Marshal(d)
	if strings.Contains(string(b), "secret") {
		t.Errorf("deliveries expose a secret: %s", b)
	}
}

func TestNotify_ssrfRefusedByDefault(t *testing.T) {
	sink := newHookSink(t, nil, nil)
	ts := startServer(t) // loopback not allowed
	req := ts.register(t, "n3", "req")
	// A literal loopback address is refused when the profile is saved.
	var e map[string]any
	code := ts.do(t, "POST", ts.api("n3")+"/register", "", map[string]any{"executor_id": "lit",
		"notifications": []any{map[string]any{"type": "webhook", "url": sink.URL}}}, &e)
	if code != http.StatusBadRequest || !strings.Contains(fmt.Sprint(e["error"]), "not allowed") {
		t.Fatalf("register with a loopback webhook = %d %v, want 400 not allowed", code, e)
	}
	// A name that resolves to loopback passes that check and is refused
	// when dialled.
	named := strings.Replace(sink.URL, "127.0.0.1", "localhost", 1)
	key := registerWith(t, ts, "n3", map[string]any{"executor_id": "w",
		"notifications": []any{map[string]any{"type": "webhook", "url": named}}})
	ts.create(t, "n3", req, map[string]any{"intent": "probe"})
	d := waitFailures(t, ts, "n3", key, 1)
	if len(d.Failures) != 1 || !strings.Contains(d.Failures[0].Error, "not allowed") {
		t.Fatalf("failures = %+v, want the loopback delivery refused", d.Failures)
	}
	if n := sink.count(); n != 0 {
		t.Errorf("loopback receiver was reached %d times", n)
	}
}

func TestNotify_restartDeliversPendingOnce(t *testing.T) {
	var mu sync.Mutex
	up := false
	sink := newHookSink(t, nil, func() int {
		mu.Lock()
		defer mu.Unlock()
		if up {
			return 200
		}
		return 503
	})
	dir := t.TempDir()
	opts := []serverOption{withDataDir(dir), withEnv("NOTIFY_ALLOW_LOOPBACK", "true"), withEnv("NOTIFY_BASE_BACKOFF", "1h"), withEnv("NOTIFY_MAX_BACKOFF", "1h")}
	ts := startServer(t, opts...)
	req := ts.register(t, "n4", "req")
	registerWith(t, ts, "n4", map[string]any{"executor_id": "w",
		"notifications": []any{map[string]any{"type": "ntfy", "topic": "w-alerts", "server": sink.URL}}})
	ref := ts.create(t, "n4", req, map[string]any{"intent": "Across a restart", "priority": "elevated"})
	deadline := time.Now().Add(20 * time.Second)
	for sink.count() == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	ts.Stop()
	mu.Lock()
	up = true
	mu.Unlock()
	startServer(t, opts...)
	if b := sink.next(t); b != "Across a restart\n\nRef: "+ref+"\nPriority: elevated" {
		t.Errorf("ntfy body = %q", b)
	}
	// Nothing is sent twice.
	time.Sleep(200 * time.Millisecond)
	if n := sink.count(); n != 2 {
		t.Errorf("sink saw %d requests, want 2 (one refused, one delivered)", n)
	}
	sink.mu.Lock()
	h := sink.heads[1]
	sink.mu.Unlock()
	if h.Get("Priority") != "4" || h.Get("Title") != "New MESS request" {
		t.Errorf("ntfy headers = %v", h)
	}
}

func TestNotify_secretsNeverReturned(t *testing.T) {
	ts := startServer(t)
	key := registerWith(t, ts, "n5", map[string]any{"executor_id": "w",
		"notifications": []any{
			map[string]any{"type": "slack", "webhook_url": "https://hooks.slack.com/services/T/B/slack-secret"},
			map[string]any{"type": "ntfy", "topic": "t", "token": "tk_ntfy-secret"},
			map[string]any{"type": "webhook", "url": "https://example.com/hook?sig=query-secret", "secret": "sign-secret"},
		},
		"hooks": map[string]any{"on_request_created": []any{
			map[string]any{"type": "home_assistant", "base_url": "https://ha.example.com", "webhook_id": "ha-secret", "token": "ha-token-secret"},
			map[string]any{"type": "google_tasks", "client_id": "cid", "client_secret": "gcs-secret", "refresh_token": "rt-secret"},
			map[string]any{"type": "webhook", "url": "https://example.com/x", "headers": map[string]string{"X-Key": "hdr-secret"}},
		}}})
	var prof map[string]any
	if code := ts.do(t, "GET", ts.api("n5")+"/executors/w", key, nil, &prof); code != http.StatusOK {
		t.Fatalf("get profile: %d", code)
	}
	b, _ := json.Marshal(prof)
	for _, s := range []string{"slack-secret", "ntfy-secret", "query-secret", "sign-secret", "ha-secret", "ha-token-secret", "gcs-secret", "rt-secret", "hdr-secret"} {
		if strings.Contains(string(b), s) {
			t.Errorf("profile exposes %q", s)
		}
	}
	if !strings.Contains(string(b), "example.com/hook") || !strings.Contains(string(b), "cid") {
		t.Errorf("profile lost non-secret fields: %s", b)
	}
}

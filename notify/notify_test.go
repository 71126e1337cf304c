package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
)

// received is one request a test receiver got.
type received struct {
	Method string
	Path   string
	Header http.Header
	Body   []byte
}

// receiver is a real HTTP server on loopback that records what arrives.
// fail, when set, decides the status code of each request.
type receiver struct {
	*httptest.Server
	mu    sync.Mutex
	got   []received
	ch    chan received
	reply func(r received, n int) (int, string)
}

func newReceiver(t *testing.T, reply func(r received, n int) (int, string)) *receiver {
	t.Helper()
	rv := &receiver{ch: make(chan received, 100), reply: reply}
	rv.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rec := received{r.Method, r.URL.Path, r.Header.Clone(), b}
		rv.mu.Lock()
		n := len(rv.got)
		rv.got = append(rv.got, rec)
		rv.mu.Unlock()
		code, body := 200, `{}`
		if rv.reply != nil {
			code, body = rv.reply(rec, n)
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(code)
		io.WriteString(w, body)
		if code/100 == 2 {
			rv.ch <- rec
		}
	}))
	t.Cleanup(rv.Close)
	return rv
}

// next waits for the next successfully answered request.
func (rv *receiver) next(t *testing.T) received {
	t.Helper()
	select {
	case r := <-rv.ch:
		return r
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery arrived in 20s")
	}
	return received{}
}

func (rv *receiver) count() int {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	return len(rv.got)
}

// env is a real exchange with an outbox on a temporary directory, or in
// a MinIO bucket (newEnvOn).
type env struct {
	t     *testing.T
	dir   string
	store storage.Store
	svc   *mess.Service
	n     *notify.Service
	cfg   notify.Config
	// reopen returns the store after a restart: the directory opened
	// again, or the same bucket.
	reopen func() storage.Store
}

const x = "home"

func newEnv(t *testing.T, cfg notify.Config) *env { return newEnvOn(t, fsBackend, cfg) }

func newEnvOn(t *testing.T, b backend, cfg notify.Config) *env {
	t.Helper()
	e := &env{t: t, dir: t.TempDir(), cfg: cfg}
	if b.name == fsBackend.name {
		e.reopen = func() storage.Store {
			st, err := storage.NewFS(e.dir)
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
	} else {
		st := b.new(t)
		e.reopen = func() storage.Store { return st }
	}
	e.open()
	return e
}

func (e *env) open() {
	e.t.Helper()
	st := e.reopen()
	e.store = st
	svc, err := mess.New(context.Background(), mess.Config{Store: st, OpenRegistration: true})
	if err != nil {
		e.t.Fatal(err)
	}
	e.svc = svc
	e.openNotify()
	e.t.Cleanup(e.close)
}

func (e *env) openNotify() {
	e.t.Helper()
	cfg := e.cfg
	cfg.Source, cfg.Store = e.svc, e.store
	cfg.Policy.AllowLoopback = !e.cfg.Policy.AllowLoopback // inverted: tests allow loopback unless told
	if cfg.BaseBackoff == 0 {
		cfg.BaseBackoff = 5 * time.Millisecond
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = 50 * time.Millisecond
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	n, err := notify.New(context.Background(), cfg)
	if err != nil {
		e.t.Fatal(err)
	}
	e.n = n
}

func (e *env) close() {
	ctx := context.Background()
	if e.n != nil {
		e.n.Close(ctx)
	}
	e.svc.Close(ctx)
}

func raw(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

func (e *env) register(id string, caps []string, notifications, hooks, prefs any) {
	e.t.Helper()
	r := mess.Registration{ExecutorID: id, Capabilities: raw(caps)}
	if notifications != nil {
		r.Notifications = raw(notifications)
	}
	if hooks != nil {
		r.Hooks = raw(hooks)
	}
	if prefs != nil {
		r.Preferences = raw(prefs)
	}
	if _, err := e.svc.Register(context.Background(), x, r); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) create(requestor string, req mess.Request) string {
	e.t.Helper()
	res, err := e.svc.CreateRequest(context.Background(), x, requestor, req, "")
	if err != nil {
		e.t.Fatal(err)
	}
	return res.Ref
}

func (e *env) update(actor, ref, status string) {
	e.t.Helper()
	if _, err := e.svc.Update(context.Background(), x, actor, ref, mess.Update{Status: status}); err != nil {
		e.t.Fatalf("update %s -> %s: %v", ref, status, err)
	}
}

// settle waits until nothing is pending, so a test can assert that
// something was not sent.
func (e *env) settle() {
	e.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if st := e.n.Stats(); st.Pending == 0 && st.Queued == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	e.t.Fatalf("deliveries still pending: %+v", e.n.Stats())
}

func TestService_ntfyPublishFormat(t *testing.T) {
	rv := newReceiver(t, nil)
	e := newEnv(t, notify.Config{PublicURL: "https://mess.example"})
	e.register("req", nil, nil, nil, nil)
	e.register("phone", nil, []any{map[string]any{"type": "ntfy", "topic": "mess-alerts", "server": rv.URL, "token": "tk_secret"}}, nil, nil)
	ref := e.create("req", mess.Request{Intent: "Check the fridge", Priority: mess.PriorityUrgent})
	got := rv.next(t)
	want := map[string]string{
		"Title":         "New MESS request",
		"Priority":      "5",
		"Tags":          "mess,new",
		"Click":         "https://mess.example/api/v1/exchanges/home/requests/" + ref,
		"Authorization": "Bearer tk_secret",
	}
	if got.Method != "POST" || got.Path != "/mess-alerts" {
		t.Errorf("request = %s %s, want POST /mess-alerts", got.Method, got.Path)
	}
	for k, v := range want {
		if g := got.Header.Get(k); g != v {
			t.Errorf("header %s = %q, want %q", k, g, v)
		}
	}
	if body := string(got.Body); body != "Check the fridge\n\nRef: "+ref+"\nPriority: urgent" {
		t.Errorf("body = %q", body)
	}
	// A status change reaches the requestor's party, not the actor; the
	// phone is the actor here, so only priorities are checked on a second
	// thread created at normal priority.
	e.create("req", mess.Request{Intent: "Water plants"})
	if got := rv.next(t); got.Header.Get("Priority") != "3" {
		t.Errorf("normal priority header = %q, want 3", got.Header.Get("Priority"))
	}
}

func TestService_slackAndGoogleChatJSON(t *testing.T) {
	rv := newReceiver(t, nil)
	e := newEnv(t, notify.Config{})
	e.register("req", nil, []any{
		map[string]any{"type": "slack", "webhook_url": rv.URL + "/slack/T000/B000/XXX"},
		map[string]any{"type": "google_chat", "webhook_url": rv.URL + "/chat/v1/spaces/AAA/messages?key=k&token=t"},
	}, nil, nil)
	e.register("worker", nil, nil, nil, nil)
	ref := e.create("req", mess.Request{Intent: "Buy milk"})
	e.update("worker", ref, "claimed")
	paths := map[string]string{}
	for range 2 {
		r := rv.next(t)
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s: Content-Type %q", r.Path, ct)
		}
		var body map[string]string
		if err := json.Unmarshal(r.Body, &body); err != nil {
			t.Fatalf("%s: body %s: %v", r.Path, r.Body, err)
		}
		if len(body) != 1 {
			t.Errorf("%s: body has fields beyond text: %s", r.Path, r.Body)
		}
		paths[r.Path] = body["text"]
	}
	want := "*MESS update: claimed*\nBuy milk\n\nRef: " + ref + "\nPriority: normal\nStatus: pending -> claimed"
	for _, p := range []string{"/slack/T000/B000/XXX", "/chat/v1/spaces/AAA/messages"} {
		if paths[p] != want {
			t.Errorf("%s text = %q, want %q", p, paths[p], want)
		}
	}
}

func TestService_webhookSignature(t *testing.T) {
	rv := newReceiver(t, nil)
	e := newEnv(t, notify.Config{SigningSecret: "server-wide"})
	e.register("req", nil, nil, nil, nil)
	e.register("a", nil, []any{map[string]any{"type": "webhook", "url": rv.URL + "/own", "secret": "s3cret"}}, nil, nil)
	e.register("b", nil, []any{map[string]any{"type": "webhook", "url": rv.URL + "/default"}}, nil, nil)
	ref := e.create("req", mess.Request{Intent: "Feed the cat", Priority: mess.PriorityElevated})
	for range 2 {
		r := rv.next(t)
		secret := map[string]string{"/own": "s3cret", "/default": "server-wide"}[r.Path]
		if !notify.Verify([]byte(secret), r.Header.Get(notify.HeaderSignature), r.Body, time.Now(), time.Minute) {
			t.Errorf("%s: signature %q does not verify", r.Path, r.Header.Get(notify.HeaderSignature))
		}
		if notify.Verify([]byte("wrong"), r.Header.Get(notify.HeaderSignature), r.Body, time.Now(), time.Minute) {
			t.Errorf("%s: signature verifies with the wrong secret", r.Path)
		}
		var body map[string]any
		json.Unmarshal(r.Body, &body)
		if body["ref"] != ref || body["event_type"] != "thread_created" || body["priority"] != "elevated" || body["title"] != "New MESS request" {
			t.Errorf("%s: body %s", r.Path, r.Body)
		}
		if r.Header.Get(notify.HeaderEvent) != "thread_created" || r.Header.Get(notify.HeaderDelivery) == "" {
			t.Errorf("%s: event headers %v", r.Path, r.Header)
		}
	}
}

func TestService_routing(t *testing.T) {
	rv := newReceiver(t, nil)
	e := newEnv(t, notify.Config{})
	hook := func(name string) []any { return []any{map[string]any{"type": "webhook", "url": rv.URL + "/" + name}} }
	e.register("req", nil, nil, nil, nil)
	e.register("photographer", []string{"photo:capture"}, hook("photographer"), nil, nil)
	e.register("driver", []string{"drive"}, hook("driver"), nil, nil)
	e.register("picky", []string{"photo:capture"}, hook("picky"), nil, map[string]any{"min_priority": "elevated"})
	e.register("relaxed", []string{"photo:capture"}, hook("relaxed"), nil, map[string]any{"min_priority": "background"})
	e.create("req", mess.Request{Intent: "Photo of the shelf", Requires: raw([]string{"photo:capture"})})
	e.create("req", mess.Request{Intent: "Low-key photo", Priority: mess.PriorityBackground, Requires: raw([]any{map[string]any{"photo:capture": map[string]any{"min_mp": 8}}})})
	e.settle()
	got := map[string][]string{}
	rv.mu.Lock()
	for _, r := range rv.got {
		var b map[string]any
		json.Unmarshal(r.Body, &b)
		got[r.Path] = append(got[r.Path], b["intent"].(string))
	}
	rv.mu.Unlock()
	want := map[string]string{
		"/photographer": "Photo of the shelf",               // normal passes the default min_priority
		"/relaxed":      "Low-key photo,Photo of the shelf", // background allowed
		"/picky":        "",                                 // below elevated
		"/driver":       "",                                 // lacks the capability
	}
	for p, w := range want {
		slices.Sort(got[p])
		if g := strings.Join(got[p], ","); g != w {
			t.Errorf("%s received %q, want %q", p, g, w)
		}
	}
}

func TestService_quietHours(t *testing.T) {
	rv := newReceiver(t, nil)
	// 23:30 in Berlin (CET, UTC+1) is 22:30 UTC.
	now := time.Date(2026, 1, 15, 22, 30, 0, 0, time.UTC)
	e := newEnv(t, notify.Config{Now: func() time.Time { return now }})
	_ = e
	e.close()
	// mess stamps events with its own clock, so give it the same one.
	st, _ := storage.NewFS(t.TempDir())
	svc, err := mess.New(context.Background(), mess.Config{Store: st, OpenRegistration: true, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close(context.Background())
	n, err := notify.New(context.Background(), notify.Config{Source: svc, Store: st, Policy: notify.AddressPolicy{AllowLoopback: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close(context.Background())
	reg := func(id string, q map[string]any) {
		_, err := svc.Register(context.Background(), x, mess.Registration{ExecutorID: id,
			Notifications: raw([]any{map[string]any{"type": "webhook", "url": rv.URL + "/" + id}}),
			Preferences:   raw(map[string]any{"quiet_hours": q})})
		if err != nil {
			t.Fatal(err)
		}
	}
	svc.Register(context.Background(), x, mess.Registration{ExecutorID: "req"})
	reg("berlin", map[string]any{"enabled": true, "start": "23:15", "end": "06:45", "timezone": "Europe/Berlin"})
	reg("utc-minutes", map[string]any{"enabled": true, "start": "22:45", "end": "07:00"})                        // 22:30 UTC is before 22:45
	reg("ny", map[string]any{"enabled": true, "start": "22:00", "end": "07:00", "timezone": "America/New_York"}) // 17:30 there
	reg("off", map[string]any{"enabled": false, "start": "00:00", "end": "23:59"})
	for _, p := range []mess.Priority{mess.PriorityNormal, mess.PriorityUrgent} {
		if _, err := svc.CreateRequest(context.Background(), x, "req", mess.Request{Intent: string(p), Priority: p}, ""); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for st := n.Stats(); (st.Pending > 0 || st.Queued > 0) && time.Now().Before(deadline); st = n.Stats() {
		time.Sleep(5 * time.Millisecond)
	}
	got := map[string][]string{}
	rv.mu.Lock()
	for _, r := range rv.got {
		var b map[string]any
		json.Unmarshal(r.Body, &b)
		got[r.Path] = append(got[r.Path], b["intent"].(string))
	}
	rv.mu.Unlock()
	want := map[string]string{
		"/berlin":      "urgent", // quiet: only urgent passes
		"/utc-minutes": "normal,urgent",
		"/ny":          "normal,urgent",
		"/off":         "normal,urgent",
	}
	for p, w := range want {
		g := got[p]
		if len(g) == 2 && g[0] == "urgent" {
			g[0], g[1] = g[1], g[0]
		}
		if s := strings.Join(g, ","); s != w {
			t.Errorf("%s received %q, want %q", p, s, w)
		}
	}
}

func TestService_retriesUntilDelivered(t *testing.T) {
	rv := newReceiver(t, func(r received, n int) (int, string) {
		if n < 3 {
			return 500, `{"error":"try later"}`
		}
		return 200, `{}`
	})
	e := newEnv(t, notify.Config{})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, []any{map[string]any{"type": "webhook", "url": rv.URL}}, nil, nil)
	ref := e.create("req", mess.Request{Intent: "Retry me"})
	got := rv.next(t)
	if !strings.Contains(string(got.Body), ref) {
		t.Errorf("delivered body %s lacks %s", got.Body, ref)
	}
	e.settle()
	if n := rv.count(); n != 4 {
		t.Errorf("receiver saw %d requests, want 4 (3 failures, 1 success)", n)
	}
	if f := e.n.Failures(x, "w"); len(f) != 0 {
		t.Errorf("failures after success: %+v", f)
	}
}

func TestService_givesUpVisibly(t *testing.T) {
	rv := newReceiver(t, func(received, int) (int, string) { return 503, `{}` })
	e := newEnv(t, notify.Config{MaxAttempts: 3})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, []any{map[string]any{"type": "slack", "webhook_url": rv.URL + "/services/T/B/SECRETPART"}}, nil, nil)
	e.create("req", mess.Request{Intent: "Doomed"})
	e.settle()
	if n := rv.count(); n != 3 {
		t.Errorf("receiver saw %d attempts, want 3", n)
	}
	f := e.n.Failures(x, "w")
	if len(f) != 1 {
		t.Fatalf("failures = %+v, want one", f)
	}
	if f[0].Attempts != 3 || f[0].Error != "HTTP 503" || f[0].Type != "slack" {
		t.Errorf("failure = %+v", f[0])
	}
	if b, _ := json.Marshal(f); strings.Contains(string(b), "SECRETPART") {
		t.Errorf("failure report leaks the webhook path: %s", b)
	}
}

func TestService_slowReceiverDoesNotBlock(t *testing.T) {
	release := make(chan struct{})
	arrived := make(chan struct{}, 10)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
	}))
	defer srv.Close()
	defer close(release)
	e := newEnv(t, notify.Config{Timeout: time.Minute})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, []any{map[string]any{"type": "webhook", "url": srv.URL}}, nil, nil)
	e.create("req", mess.Request{Intent: "first"})
	<-arrived // the delivery is now stuck in the receiver
	// Creating and changing requests still completes while it hangs.
	for i := range 5 {
		ref := e.create("req", mess.Request{Intent: fmt.Sprint("more ", i)})
		e.update("w", ref, "claimed")
	}
}

func TestService_ssrfRefused(t *testing.T) {
	rv := newReceiver(t, nil)
	// Loopback not allowed here (the helper inverts the flag).
	e := newEnv(t, notify.Config{Policy: notify.AddressPolicy{AllowLoopback: true}})
	e.register("req", nil, nil, nil, nil)
	e.register("evil", nil, []any{
		map[string]any{"type": "webhook", "url": rv.URL},
		map[string]any{"type": "webhook", "url": "http://169.254.169.254/latest/meta-data/"},
		map[string]any{"type": "webhook", "url": "file:///etc/passwd"},
		map[string]any{"type": "webhook", "url": "http://localhost:" + strings.Split(rv.URL, ":")[2]},
	}, nil, nil)
	e.create("req", mess.Request{Intent: "probe"})
	e.settle()
	if n := rv.count(); n != 0 {
		t.Errorf("loopback receiver got %d requests", n)
	}
	f := e.n.Failures(x, "evil")
	if len(f) != 4 {
		t.Fatalf("failures = %+v, want 4", f)
	}
	for _, fl := range f {
		if fl.Attempts != 1 || !strings.Contains(fl.Error, "not allowed") {
			t.Errorf("failure %+v: want refused at once as not allowed", fl)
		}
	}
}

func TestService_redirectRechecked(t *testing.T) {
	rv := newReceiver(t, nil)
	// The policy allows loopback, so build the redirect target to the
	// metadata address and check it is refused after the redirect.
	redir := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://169.254.169.254/latest/", http.StatusFound)
	}))
	defer redir.Close()
	e := newEnv(t, notify.Config{})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, []any{map[string]any{"type": "webhook", "url": redir.URL}}, nil, nil)
	e.create("req", mess.Request{Intent: "redirect"})
	e.settle()
	f := e.n.Failures(x, "w")
	if len(f) != 1 || !strings.Contains(f[0].Error, "not allowed") {
		t.Errorf("failures = %+v, want the redirect refused", f)
	}
	_ = rv
}

func TestService_restartDeliversPendingOnce(t *testing.T) {
	onBackends(t, testRestartDeliversPendingOnce)
}

func testRestartDeliversPendingOnce(t *testing.T, be backend) {
	var mu sync.Mutex
	down := true
	rv := newReceiver(t, func(r received, n int) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if down {
			return 500, `{}`
		}
		return 200, `{}`
	})
	e := newEnvOn(t, be, notify.Config{BaseBackoff: time.Hour, MaxBackoff: time.Hour})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, []any{map[string]any{"type": "webhook", "url": rv.URL}}, nil, nil)
	e.create("req", mess.Request{Intent: "while down"})
	// Wait for the first failed attempt; the retry is an hour away.
	for rv.count() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	// Outbox stops; an event happens that it never hears of (as in a crash
	// between the event becoming durable and the outbox recording it).
	e.n.Close(context.Background())
	e.create("req", mess.Request{Intent: "unheard"})
	e.close()
	mu.Lock()
	down = false
	mu.Unlock()
	e.n = nil
	e.open()
	seen := map[string]int{}
	for range 2 {
		var b map[string]any
		json.Unmarshal(rv.next(t).Body, &b)
		seen[b["intent"].(string)]++
	}
	e.settle()
	// And once more: a further restart must not send anything again.
	e.close()
	e.open()
	e.create("req", mess.Request{Intent: "after"})
	var b map[string]any
	json.Unmarshal(rv.next(t).Body, &b)
	seen[b["intent"].(string)]++
	e.settle()
	if seen["while down"] != 1 || seen["unheard"] != 1 || seen["after"] != 1 {
		t.Errorf("deliveries = %v, want each once", seen)
	}
	if n := rv.count(); n != 4 { // 1 failed + 3 delivered
		t.Errorf("receiver saw %d requests, want 4", n)
	}
}

func TestService_slackCoalesced(t *testing.T) {
	rv := newReceiver(t, nil)
	e := newEnv(t, notify.Config{SlackInterval: 2 * time.Second})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, []any{map[string]any{"type": "slack", "webhook_url": rv.URL + "/hook"}}, nil, nil)
	for i := range 4 {
		e.create("req", mess.Request{Intent: fmt.Sprint("job ", i)})
	}
	e.settle()
	var all string
	rv.mu.Lock()
	posts := len(rv.got)
	for _, r := range rv.got {
		all += string(r.Body)
	}
	rv.mu.Unlock()
	for i := range 4 {
		if !strings.Contains(all, fmt.Sprint("job ", i)) {
			t.Errorf("job %d never posted (coalescing must not drop)", i)
		}
	}
	if posts >= 4 {
		t.Errorf("%d posts for 4 notifications within the rate interval, want them coalesced", posts)
	}
}

package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Ensure the curl workflow of MESS protocol v1 works as written on a server with
// default (closed) registration: the first registrant owns the exchange.
func TestCurlWorkflow(t *testing.T) {
	ts := startServer(t, withEnv("MESS_OPEN_REGISTRATION", "false"))
	var reg struct {
		ExecutorID string `json:"executor_id"`
		APIKey     string `json:"api_key"`
		Message    string `json:"message"`
	}
	if code := ts.do(t, "POST", ts.api("home")+"/register", "", map[string]any{"executor_id": "phone", "display_name": "My Phone"}, &reg); code != 201 {
		t.Fatalf("register = %d", code)
	}
	if !strings.HasPrefix(reg.APIKey, "mess_home_") || len(reg.APIKey) < len("mess_home_")+32 || reg.ExecutorID != "phone" || reg.Message == "" {
		t.Fatalf("register response = %+v", reg)
	}
	key := reg.APIKey
	ref := ts.create(t, "home", key, map[string]any{"intent": "Check front door", "priority": "normal"})
	if !strings.HasPrefix(ref, time.Now().UTC().Format("2006-01-02")+"-") || len(ref) != 15 {
		t.Fatalf("ref = %q", ref)
	}
	var upd struct{ Ref, Status string }
	if code := ts.do(t, "PATCH", ts.api("home")+"/requests/"+ref, key, map[string]any{"status": "claimed"}, &upd); code != 200 || upd.Status != "claimed" {
		t.Fatalf("claim = %d %+v", code, upd)
	}
	body := `{"status":"completed","mess":[{"response":{"content":["Door is locked ✓"]}}]}`
	if code := ts.do(t, "PATCH", ts.api("home")+"/requests/"+ref, key, body, &upd); code != 200 || upd.Status != "completed" {
		t.Fatalf("complete = %d %+v", code, upd)
	}
	th := ts.thread(t, "home", key, ref).Thread
	if th.Status != "completed" || th.ExecutorID == nil || *th.ExecutorID != "phone" || th.Intent != "Check front door" {
		t.Fatalf("thread = %+v", th)
	}
	if len(th.Messages) != 2 || !strings.Contains(string(th.Messages[1].Mess), "Door is locked") {
		t.Fatalf("messages = %+v", th.Messages)
	}
	var statuses []string
	for _, h := range th.History {
		if h.Type == "status" {
			statuses = append(statuses, h.NewStatus)
		}
	}
	if strings.Join(statuses, ",") != "claimed,completed" {
		t.Fatalf("status history = %v", statuses)
	}
	var list struct {
		Threads []struct{ Ref, Status string } `json:"threads"`
	}
	ts.do(t, "GET", ts.api("home")+"/requests?status=completed", key, nil, &list)
	if len(list.Threads) != 1 || list.Threads[0].Ref != ref {
		t.Fatalf("list = %+v", list)
	}
}

func TestRegistration(t *testing.T) {
	ts := startServer(t,
		withEnv("MESS_OPEN_REGISTRATION", "false"),
		withEnv("MESS_REGISTRATION_TOKEN", "server-secret"),
		withEnv("MESS_OPEN_EXCHANGES", "lobby"),
	)
	owner := ts.register(t, "team_a", "boss") // "_" in the exchange id must work
	var e struct{ Error string }
	if code := ts.do(t, "POST", ts.api("team_a")+"/register", "", map[string]any{"executor_id": "stranger"}, &e); code != 403 {
		t.Fatalf("uninvited registration = %d, want 403", code)
	}
	var inv struct{ Token string }
	if code := ts.do(t, "POST", ts.api("team_a")+"/invites", owner, map[string]any{"max_uses": 1}, &inv); code != 201 || inv.Token == "" {
		t.Fatalf("invite = %d %+v", code, inv)
	}
	if code := ts.do(t, "POST", ts.api("team_a")+"/register", "", map[string]any{"executor_id": "friend", "invite_token": inv.Token}, nil); code != 201 {
		t.Fatalf("invited registration = %d", code)
	}
	if code := ts.do(t, "POST", ts.api("team_a")+"/register", "", map[string]any{"executor_id": "friend2", "invite_token": inv.Token}, nil); code != 403 {
		t.Fatalf("reused single-use invite = %d, want 403", code)
	}
	friendKey := ""
	// Only the owner invites.
	var r struct {
		APIKey string `json:"api_key"`
	}
	ts.do(t, "POST", ts.api("team_a")+"/register", "", map[string]any{"executor_id": "viatoken", "registration_token": "server-secret"}, &r)
	if r.APIKey == "" {
		t.Fatal("registration with the server token failed")
	}
	friendKey = r.APIKey
	if code := ts.do(t, "POST", ts.api("team_a")+"/invites", friendKey, nil, nil); code != 403 {
		t.Fatalf("non-owner invite = %d, want 403", code)
	}
	if code := ts.do(t, "POST", ts.api("team_a")+"/register", "", map[string]any{"executor_id": "boss"}, nil); code != 409 {
		t.Fatalf("duplicate executor = %d, want 409", code)
	}
	// An open exchange admits anyone after its owner.
	ts.register(t, "lobby", "first")
	ts.register(t, "lobby", "second")
	if code := ts.do(t, "POST", ts.api("team_a")+"/register", "", map[string]any{}, &e); code != 400 || e.Error != "executor_id required" {
		t.Fatalf("missing executor_id = %d %q", code, e.Error)
	}
	// Keys are exchange-bound: a team_a key is forbidden in lobby.
	if code := ts.do(t, "GET", ts.api("lobby")+"/requests", owner, nil, nil); code != 403 {
		t.Fatalf("key of another exchange = %d, want 403", code)
	}
	if code := ts.do(t, "GET", ts.api("team_a")+"/requests", "mess_team_a_00000000000000000000000000000000", nil, nil); code != 401 {
		t.Fatalf("unknown key = %d, want 401", code)
	}
	if code := ts.do(t, "GET", ts.api("team_a")+"/requests", "", nil, nil); code != 401 {
		t.Fatalf("no key = %d, want 401", code)
	}
	// The executor file holds a hash, never the key.
	data, err := os.ReadFile(filepath.Join(ts.DataDir, "executors", "exchange=team_a", "boss.json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), owner) || strings.Contains(string(data), owner[len("mess_team_a_"):]) {
		t.Fatal("API key stored in plain text")
	}
}

func TestAllowedExchanges(t *testing.T) {
	ts := startServer(t, withEnv("MESS_ALLOWED_EXCHANGES", "home,work"))
	ts.register(t, "home", "a")
	if code := ts.do(t, "POST", ts.api("elsewhere")+"/register", "", map[string]any{"executor_id": "a"}, nil); code != 403 {
		t.Fatalf("registration in a disallowed exchange = %d, want 403", code)
	}
}

// Ensure every role rule of the transition table holds.
func TestStatusRules(t *testing.T) {
	ts := startServer(t)
	keys := map[string]string{}
	for _, id := range []string{"req", "exec", "other"} {
		keys[id] = ts.register(t, "rules", id)
	}
	type step struct {
		who, status string
		want        int
	}
	tests := []struct {
		name  string
		req   map[string]any
		steps []step
		final string
	}{
		{"claim then complete", nil, []step{{"exec", "claimed", 200}, {"exec", "in_progress", 200}, {"exec", "completed", 200}}, "completed"},
		{"aliases stored canonically", nil, []step{{"exec", "claimed", 200}, {"exec", "in-progress", 200}, {"exec", "needs-input", 200}}, "needs_input"},
		{"implicit claim on complete", nil, []step{{"exec", "completed", 200}}, "completed"},
		{"only claimant moves a claimed thread", nil, []step{{"exec", "claimed", 200}, {"other", "in_progress", 409}, {"other", "completed", 409}, {"req", "completed", 409}}, "claimed"},
		{"second claim conflicts", nil, []step{{"exec", "claimed", 200}, {"other", "claimed", 409}}, "claimed"},
		{"requestor cancels", nil, []step{{"exec", "claimed", 200}, {"req", "cancelled", 200}}, "cancelled"},
		{"others cannot cancel", nil, []step{{"exec", "canceled", 403}, {"other", "cancelled", 403}}, "pending"},
		{"terminal cannot reopen", nil, []step{{"exec", "completed", 200}, {"exec", "in_progress", 409}, {"req", "pending", 409}, {"req", "cancelled", 409}}, "completed"},
		{"unknown status", nil, []step{{"exec", "banana", 400}}, "pending"},
		{"decline a pending request", nil, []step{{"req", "declined", 403}, {"exec", "declined", 200}, {"other", "declined", 409}}, "declined"},
		{"decline after a claim", nil, []step{{"exec", "claimed", 200}, {"other", "declined", 409}, {"exec", "rejected", 200}}, "declined"},
		{"delegate needs a claim", nil, []step{{"exec", "delegated", 409}, {"exec", "claimed", 200}, {"exec", "delegated", 200}}, "delegated"},
		{"executor releases claim", nil, []step{{"exec", "claimed", 200}, {"exec", "pending", 200}, {"other", "claimed", 200}}, "claimed"},
		{"requestor answers needs_input", nil, []step{{"exec", "needs_input", 200}, {"req", "in_progress", 200}, {"exec", "completed", 200}}, "completed"},
		{"nobody sets expired", nil, []step{{"req", "expired", 403}, {"exec", "expired", 403}}, "pending"},
		{"confirm_before enforced", map[string]any{"confirm_before": true}, []step{
			{"exec", "claimed", 200}, {"exec", "completed", 409}, {"exec", "needs_confirmation", 200},
			{"req", "in_progress", 200}, {"exec", "completed", 200}}, "completed"},
		{"confirmation stays with its executor", map[string]any{"confirm_before": true}, []step{
			{"exec", "claimed", 200}, {"exec", "needs_confirmation", 200}, {"req", "in_progress", 200},
			{"exec", "pending", 200}, {"other", "completed", 409}, {"other", "claimed", 200}, {"other", "completed", 409}}, "claimed"},
		{"releasing a claim clears the confirmation", map[string]any{"confirm_before": true}, []step{
			{"exec", "claimed", 200}, {"exec", "needs_confirmation", 200}, {"req", "in_progress", 200},
			{"exec", "pending", 200}, {"exec", "completed", 409}, {"exec", "needs_confirmation", 200},
			{"req", "in_progress", 200}, {"exec", "completed", 200}}, "completed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := map[string]any{"intent": tt.name}
			for k, v := range tt.req {
				body[k] = v
			}
			ref := ts.create(t, "rules", keys["req"], body)
			for i, s := range tt.steps {
				var res map[string]any
				code := ts.do(t, "PATCH", ts.api("rules")+"/requests/"+ref, keys[s.who], map[string]any{"status": s.status, "message": fmt.Sprintf("step %d", i)}, &res)
				if code != s.want {
					t.Fatalf("step %d: %s sets %s = %d %v, want %d", i, s.who, s.status, code, res, s.want)
				}
			}
			if got := ts.thread(t, "rules", keys["req"], ref).Thread.Status; got != tt.final {
				t.Fatalf("final status = %s, want %s", got, tt.final)
			}
		})
	}
	t.Run("status notes are in the history", func(t *testing.T) {
		ref := ts.create(t, "rules", keys["req"], map[string]any{"intent": "notes"})
		ts.do(t, "PATCH", ts.api("rules")+"/requests/"+ref, keys["exec"], map[string]any{"status": "claimed", "message": "on my way"}, nil)
		h := ts.thread(t, "rules", keys["req"], ref).Thread.History
		last := h[len(h)-1]
		if last.Type != "status" || last.NewStatus != "claimed" || last.Message != "on my way" || last.ActorID != "exec" {
			t.Fatalf("history = %+v", h)
		}
	})
	t.Run("declining a pending request records the decliner and reason", func(t *testing.T) {
		ref := ts.create(t, "rules", keys["req"], map[string]any{"intent": "decline"})
		var res map[string]any
		if code := ts.do(t, "PATCH", ts.api("rules")+"/requests/"+ref, keys["other"], map[string]any{"status": "declined", "message": "too far"}, &res); code != 200 || res["executor_id"] != "other" {
			t.Fatalf("decline = %d %v", code, res)
		}
		th := ts.thread(t, "rules", keys["req"], ref).Thread
		last := th.History[len(th.History)-1]
		if th.ExecutorID == nil || *th.ExecutorID != "other" || last.Type != "status" || last.OldStatus != "pending" || last.NewStatus != "declined" || last.ActorID != "other" || last.Message != "too far" {
			t.Fatalf("thread executor %v, history %+v", th.ExecutorID, th.History)
		}
	})
	t.Run("conflict names the claimant", func(t *testing.T) {
		ref := ts.create(t, "rules", keys["req"], map[string]any{"intent": "who"})
		ts.do(t, "PATCH", ts.api("rules")+"/requests/"+ref, keys["exec"], map[string]any{"status": "claimed"}, nil)
		var res map[string]any
		ts.do(t, "PATCH", ts.api("rules")+"/requests/"+ref, keys["other"], map[string]any{"status": "claimed"}, &res)
		if res["executor_id"] != "exec" {
			t.Fatalf("conflict body = %v, want executor_id exec", res)
		}
	})
	t.Run("priority validated", func(t *testing.T) {
		var res map[string]any
		if code := ts.do(t, "POST", ts.api("rules")+"/requests", keys["req"], map[string]any{"intent": "x", "priority": "asap"}, &res); code != 400 {
			t.Fatalf("bad priority = %d", code)
		}
		if code := ts.do(t, "POST", ts.api("rules")+"/requests", keys["req"], map[string]any{"priority": "urgent"}, &res); code != 400 || res["error"] != "intent required" {
			t.Fatalf("missing intent = %d %v", code, res)
		}
	})
	t.Run("request fields kept", func(t *testing.T) {
		ref := ts.create(t, "rules", keys["req"], map[string]any{
			"intent": "photo", "id": "client-7", "requires": []string{"photo:capture"}, "needed_by": "2099-01-01T00:00:00Z",
			"confirm_before": true, "constraints": map[string]any{"location": "front door"}, "response_hints": []string{"image"},
			"context": []string{"the red door"},
		})
		r := ts.thread(t, "rules", keys["req"], ref).Thread.Request
		for _, f := range []string{"id", "requires", "needed_by", "confirm_before", "constraints", "response_hint", "context"} {
			if len(r[f]) == 0 {
				t.Errorf("field %s dropped: %v", f, r)
			}
		}
	})
}

// Ensure that of many concurrent claims exactly one wins and every loser is
// told who did.
func TestConcurrentClaims(t *testing.T) {
	ts := startServer(t)
	req := ts.register(t, "race", "requestor")
	const n = 16
	keys := make([]string, n)
	for i := range keys {
		keys[i] = ts.register(t, "race", fmt.Sprintf("ex%d", i))
	}
	for round := range 5 {
		ref := ts.create(t, "race", req, map[string]any{"intent": fmt.Sprintf("round %d", round)})
		var wg sync.WaitGroup
		var mu sync.Mutex
		winners := []string{}
		losers := map[string]int{}
		for i := range n {
			wg.Go(func() {
				var res map[string]any
				code := ts.do(t, "PATCH", ts.api("race")+"/requests/"+ref, keys[i], map[string]any{"status": "claimed"}, &res)
				mu.Lock()
				defer mu.Unlock()
				switch code {
				case 200:
					winners = append(winners, fmt.Sprintf("ex%d", i))
				case 409:
					losers[fmt.Sprint(res["executor_id"])]++
				default:
					t.Errorf("claim = %d %v", code, res)
				}
			})
		}
		wg.Wait()
		if len(winners) != 1 {
			t.Fatalf("round %d: %d winners %v", round, len(winners), winners)
		}
		if losers[winners[0]] != n-1 {
			t.Fatalf("round %d: losers saw claimants %v, want %s ×%d", round, losers, winners[0], n-1)
		}
		th := ts.thread(t, "race", req, ref).Thread
		if th.ExecutorID == nil || *th.ExecutorID != winners[0] {
			t.Fatalf("stored executor %v, winner %s", th.ExecutorID, winners[0])
		}
	}
}

// Ensure traversal attempts are rejected and write nothing outside the data
// directory.
func TestPathTraversal(t *testing.T) {
	parent := t.TempDir()
	data := filepath.Join(parent, "data")
	ts := startServer(t, withDataDir(data))
	key := ts.register(t, "safe", "owner")
	attempts := []struct{ method, path, body string }{
		{"POST", "/api/v1/exchanges/..%2F..%2Fevil/register", `{"executor_id":"x"}`},
		{"POST", "/api/v1/exchanges/%2Ftmp%2Fevil/register", `{"executor_id":"x"}`},
		{"POST", "/api/v1/exchanges/safe/register", `{"executor_id":"../../evil"}`},
		{"POST", "/api/v1/exchanges/safe/register", `{"executor_id":"/tmp/evil"}`},
		{"POST", "/api/v1/exchanges/safe/register", `{"executor_id":"a%2F..%2Fevil"}`},
		{"POST", "/api/v1/exchanges/..%2Fevil/register", `{"executor_id":"x"}`},
		{"GET", "/api/v1/exchanges/safe/requests/..%2F..%2Fexecutors", ""},
		{"GET", "/api/v1/exchanges/safe/requests/2025-01-01-AAAA/attachments/..%2F..%2Fowner.json", ""},
		{"PATCH", "/api/v1/exchanges/safe/executors/..%2Fowner", `{"display_name":"x"}`},
	}
	for _, a := range attempts {
		code := ts.do(t, a.method, ts.URL+a.path, key, a.body, nil)
		if code < 400 || code >= 500 {
			t.Errorf("%s %s = %d, want a 4xx", a.method, a.path, code)
		}
	}
	ents, _ := os.ReadDir(parent)
	if len(ents) != 1 {
		t.Fatalf("entries beside the data dir: %v", ents)
	}
	filepath.Walk(data, func(p string, info os.FileInfo, err error) error {
		if strings.Contains(p, "evil") {
			t.Errorf("traversal wrote %s", p)
		}
		return nil
	})
}

// Ensure every failure is a JSON error with the right status, and the server
// keeps serving.
func TestErrorResponses(t *testing.T) {
	ts := startServer(t, withEnv("MAX_BODY_BYTES", "4096"))
	key := ts.register(t, "errs", "a")
	tests := []struct {
		name, method, path, body string
		want                     int
		code                     string
	}{
		{"malformed JSON", "POST", "/requests", `{"intent":`, 400, "malformed_json"},
		{"wrong type", "POST", "/requests", `{"intent":42}`, 400, "malformed_json"},
		{"unknown route", "GET", "/nope", "", 404, "not_found"},
		{"unknown thread", "GET", "/requests/2025-01-01-ZZZZ", "", 404, "not_found"},
		{"bad ref", "GET", "/requests/not-a-ref", "", 404, "not_found"},
		{"oversized body", "POST", "/requests", `{"intent":"` + strings.Repeat("x", 8000) + `"}`, 413, "too_large"},
		{"bad limit", "GET", "/requests?limit=-1", "", 400, "invalid_input"},
		{"bad cursor", "GET", "/requests?cursor=zzz", "", 400, "invalid_input"},
		{"bad status filter", "GET", "/requests?status=banana", "", 400, "invalid_input"},
		{"bad wait", "GET", "/requests?wait=soon", "", 400, "invalid_input"},
		{"mess not an array", "PATCH", "/requests/2025-01-01-ZZZZ", `{"mess":"hi"}`, 400, "invalid_input"},
		{"other's profile", "PATCH", "/executors/someone", `{"display_name":"x"}`, 403, "forbidden"},
		{"wrong method", "PUT", "/requests", `{}`, 405, "method_not_allowed"},
	}
	for _, tt := range tests {
		var res map[string]any
		code := ts.do(t, tt.method, ts.api("errs")+tt.path, key, tt.body, &res)
		if code != tt.want || res["code"] != tt.code {
			t.Errorf("%s: status %d %v, want %d %s", tt.name, code, res, tt.want, tt.code)
		}
		if res["error"] == nil || res["error"] == "" {
			t.Errorf("%s: body %v lacks an error message", tt.name, res)
		}
	}
	// A chunked body over the limit is a 413 too, not a read error.
	req, _ := http.NewRequest("POST", ts.api("errs")+"/requests", io.MultiReader(strings.NewReader(`{"intent":"`), strings.NewReader(strings.Repeat("x", 8000)+`"}`)))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 413 || !strings.Contains(string(b), `"too_large"`) {
		t.Errorf("chunked oversized body = %d %s, want 413 too_large", resp.StatusCode, b)
	}
	ts.create(t, "errs", key, map[string]any{"intent": "still serving"})
	var list struct{ Threads []any }
	ts.do(t, "GET", ts.api("errs")+"/requests", key, nil, &list)
	if len(list.Threads) != 1 {
		t.Fatalf("failed requests left %d threads, want 1", len(list.Threads))
	}
}

func TestIdempotencyKey(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "idem", "a")
	post := func(k string) (int, string) {
		req, _ := http.NewRequest("POST", ts.api("idem")+"/requests", strings.NewReader(`{"intent":"once"}`))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Idempotency-Key", k)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var res struct{ Ref string }
		json.NewDecoder(resp.Body).Decode(&res)
		return resp.StatusCode, res.Ref
	}
	var wg sync.WaitGroup
	refs := make([]string, 8)
	for i := range refs {
		wg.Go(func() { _, refs[i] = post("k1") })
	}
	wg.Wait()
	for _, r := range refs {
		if r != refs[0] || r == "" {
			t.Fatalf("same key gave refs %v", refs)
		}
	}
	if _, r := post("k2"); r == refs[0] {
		t.Fatal("different key returned the same thread")
	}
	// Remembered across a restart.
	ts.Stop()
	ts2 := startServer(t, withDataDir(ts.DataDir))
	ts = ts2
	if _, r := post("k1"); r != refs[0] {
		t.Fatalf("after restart key k1 gave %s, want %s", r, refs[0])
	}
}

func TestPaginationAndFilters(t *testing.T) {
	ts := startServer(t)
	a := ts.register(t, "pages", "a")
	b := ts.register(t, "pages", "b")
	var refs []string
	for i := range 25 {
		prio := "normal"
		if i%5 == 0 {
			prio = "urgent"
		}
		refs = append(refs, ts.create(t, "pages", a, map[string]any{"intent": fmt.Sprint(i), "priority": prio}))
	}
	for _, r := range refs[:3] {
		ts.do(t, "PATCH", ts.api("pages")+"/requests/"+r, b, map[string]any{"status": "claimed"}, nil)
	}
	type page struct {
		Threads    []struct{ Ref, Status, Priority string } `json:"threads"`
		NextCursor string                                   `json:"next_cursor"`
	}
	seen := map[string]bool{}
	cursor := ""
	for pages := 0; ; pages++ {
		var p page
		ts.do(t, "GET", ts.api("pages")+"/requests?limit=7&cursor="+cursor, a, nil, &p)
		for _, th := range p.Threads {
			if seen[th.Ref] {
				t.Fatalf("thread %s on two pages", th.Ref)
			}
			seen[th.Ref] = true
		}
		if p.NextCursor == "" {
			break
		}
		cursor = p.NextCursor
		if pages > 5 {
			t.Fatal("paging does not end")
		}
	}
	if len(seen) != 25 {
		t.Fatalf("pages covered %d threads, want 25", len(seen))
	}
	var p page
	ts.do(t, "GET", ts.api("pages")+"/requests?executor_id=b&status=claimed,completed", a, nil, &p)
	if len(p.Threads) != 3 || p.Threads[0].Ref != refs[2] {
		t.Fatalf("executor filter = %+v", p.Threads)
	}
	ts.do(t, "GET", ts.api("pages")+"/requests?priority=urgent&status=pending", a, nil, &p)
	if len(p.Threads) != 4 { // urgent are 0, 5, 10, 15, 20; 0 was claimed
		t.Fatalf("priority filter gave %d, want 4", len(p.Threads))
	}
	ts.do(t, "GET", ts.api("pages")+"/requests?requestor_id=b", a, nil, &p)
	if len(p.Threads) != 0 {
		t.Fatalf("requestor filter gave %d, want 0", len(p.Threads))
	}
}

func TestKeysRotateRevoke(t *testing.T) {
	ts := startServer(t)
	k1 := ts.register(t, "keys", "a")
	var nk struct {
		ID  string `json:"id"`
		Key string `json:"api_key"`
	}
	if code := ts.do(t, "POST", ts.api("keys")+"/executors/a/keys", k1, nil, &nk); code != 201 || nk.Key == "" {
		t.Fatalf("create key = %d", code)
	}
	k2 := nk.Key
	for _, k := range []string{k1, k2} {
		if code := ts.do(t, "GET", ts.api("keys")+"/requests", k, nil, nil); code != 200 {
			t.Fatalf("key works = %d", code)
		}
	}
	var me struct {
		Executor struct {
			APIKeys []map[string]any `json:"api_keys"`
		}
	}
	ts.do(t, "GET", ts.api("keys")+"/executors/a", k2, nil, &me)
	if len(me.Executor.APIKeys) != 2 {
		t.Fatalf("keys listed = %v", me.Executor.APIKeys)
	}
	for _, k := range me.Executor.APIKeys {
		if k["hash"] != nil && k["hash"] != "" {
			t.Fatalf("key hash exposed: %v", k)
		}
	}
	// Rotation revokes the others.
	if code := ts.do(t, "POST", ts.api("keys")+"/executors/a/keys", k2, map[string]any{"revoke_others": true}, &nk); code != 201 {
		t.Fatalf("rotate = %d", code)
	}
	k3 := nk.Key
	for _, k := range []string{k1, k2} {
		if code := ts.do(t, "GET", ts.api("keys")+"/requests", k, nil, nil); code != 401 {
			t.Fatalf("revoked key = %d, want 401", code)
		}
	}
	if code := ts.do(t, "DELETE", ts.api("keys")+"/executors/a/keys/"+nk.ID, k3, nil, nil); code != 409 {
		t.Fatalf("revoking the only key = %d, want 409", code)
	}
	// Survives a restart.
	ts.Stop()
	ts = startServer(t, withDataDir(ts.DataDir))
	if code := ts.do(t, "GET", ts.api("keys")+"/requests", k3, nil, nil); code != 200 {
		t.Fatalf("rotated key after restart = %d", code)
	}
	if code := ts.do(t, "GET", ts.api("keys")+"/requests", k1, nil, nil); code != 401 {
		t.Fatalf("revoked key after restart = %d", code)
	}
}

func TestLongPoll(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "poll", "a")
	ref := ts.create(t, "poll", key, map[string]any{"intent": "wait for me"})
	th := ts.thread(t, "poll", key, ref).Thread
	got := make(chan threadResp, 1)
	go func() {
		var tr threadResp
		ts.do(t, "GET", fmt.Sprintf("%s/requests/%s?wait=30&after_seq=%d", ts.api("poll"), ref, th.Seq), key, nil, &tr)
		got <- tr
	}()
	select {
	case <-got:
		t.Fatal("long-poll returned before any change")
	case <-time.After(200 * time.Millisecond):
	}
	ts.do(t, "PATCH", ts.api("poll")+"/requests/"+ref, key, map[string]any{"status": "claimed"}, nil)
	select {
	case tr := <-got:
		if tr.Thread.Status != "claimed" {
			t.Fatalf("long-poll saw %s", tr.Thread.Status)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("long-poll did not return after the change")
	}
	// The list waits too.
	var first struct{ Version uint64 }
	ts.do(t, "GET", ts.api("poll")+"/requests", key, nil, &first)
	listed := make(chan int, 1)
	go func() {
		var res struct{ Threads []any }
		ts.do(t, "GET", fmt.Sprintf("%s/requests?wait=30&after=%d", ts.api("poll"), first.Version), key, nil, &res)
		listed <- len(res.Threads)
	}()
	time.Sleep(100 * time.Millisecond)
	ts.create(t, "poll", key, map[string]any{"intent": "new"})
	select {
	case n := <-listed:
		if n != 2 {
			t.Fatalf("list after wait has %d threads, want 2", n)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("list long-poll did not return")
	}
}

func TestEventStream(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "sse", "a")
	open := func(last string) (*bufio.Reader, func()) {
		req, _ := http.NewRequest("GET", ts.api("sse")+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		if last != "" {
			req.Header.Set("Last-Event-ID", last)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
			t.Fatalf("events = %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		return bufio.NewReader(resp.Body), func() { resp.Body.Close() }
	}
	next := func(r *bufio.Reader) (id, typ string) { return nextEvent(t, r) }
	r, closeStream := open("")
	ref := ts.create(t, "sse", key, map[string]any{"intent": "stream me"})
	id1, typ1 := next(r)
	_, typ2 := next(r)
	if typ1 != "thread_created" || typ2 != "message_added" {
		t.Fatalf("events %s, %s", typ1, typ2)
	}
	closeStream()
	// Changes made while disconnected arrive on resume.
	ts.do(t, "PATCH", ts.api("sse")+"/requests/"+ref, key, map[string]any{"status": "claimed"}, nil)
	r, closeStream = open(id1)
	defer closeStream()
	if _, typ := next(r); typ != "message_added" {
		t.Fatalf("first resumed event %s, want message_added", typ)
	}
	if _, typ := next(r); typ != "status_changed" {
		t.Fatalf("second resumed event %s, want status_changed", typ)
	}
}

// Ensure a change acknowledged with 2xx survives SIGKILL of the server, and
// a torn last line in an event file does not stop the restart.
func TestCrashDurability(t *testing.T) {
	dir := t.TempDir()
	start := func() (*exec.Cmd, string) {
		cmd, ts := startChild(t, dir)
		return cmd, ts.URL
	}
	cmd, url := start()
	ts := &testServer{URL: url}
	key := ts.register(t, "crash", "a")
	var refs []string
	for i := range 20 {
		refs = append(refs, ts.create(t, "crash", key, map[string]any{"intent": fmt.Sprint("job ", i)}))
	}
	ts.do(t, "PATCH", ts.api("crash")+"/requests/"+refs[0], key, map[string]any{"status": "claimed"}, nil)
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()

	// A torn write at the end of one event file.
	var files []string
	filepath.Walk(filepath.Join(dir, "events"), func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) == 0 {
		t.Fatal("no event files")
	}
	f, _ := os.OpenFile(files[len(files)-1], os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString(`{"event_id":"01TORN","ts":"2025-01-01T00:00:00.000Z","exchange_id":"crash","thread_ref":"` + refs[1])
	f.Close()

	cmd, url = start()
	defer func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }()
	ts = &testServer{URL: url}
	for i, ref := range refs {
		th := ts.thread(t, "crash", key, ref).Thread
		want := "pending"
		if i == 0 {
			want = "claimed"
		}
		if th.Status != want {
			t.Fatalf("after SIGKILL %s is %s, want %s", ref, th.Status, want)
		}
	}
	// And it keeps working.
	ts.create(t, "crash", key, map[string]any{"intent": "after restart"})
}

func TestAttachmentsAndCapabilities(t *testing.T) {
	capDir := t.TempDir()
	os.WriteFile(filepath.Join(capDir, "caps.yaml"), []byte("id: photo:capture\ndescription: Take a photo\ntags: [camera, visual]\n---\n# comment\nid: door:check\ntags:\n  - home\n"), 0o644)
	ts := startServer(t, withEnv("CAPABILITIES_DIR", capDir))
	key := ts.register(t, "att", "a")
	ref := ts.create(t, "att", key, map[string]any{"intent": "photo please"})
	png := []byte("\x89PNG\r\n\x1a\nfake")
	b64 := base64.StdEncoding.EncodeToString(png)
	mess := fmt.Sprintf(`{"status":"completed","mess":[{"response":{"content":[{"image":"data:image/png;base64,%s"},{"attachment":{"name":"notes.txt","data":"%s"}}]}}]}`,
		b64, base64.StdEncoding.EncodeToString([]byte("hello")))
	if code := ts.do(t, "PATCH", ts.api("att")+"/requests/"+ref, key, mess, nil); code != 200 {
		t.Fatalf("complete = %d", code)
	}
	get := func(name string) (int, string, []byte) {
		req, _ := http.NewRequest("GET", ts.api("att")+"/requests/"+ref+"/attachments/"+name, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Content-Type"), b
	}
	// The response is the thread's second message; its first data URI.
	if code, ct, b := get("att-2-1.png"); code != 200 || ct != "image/png" || !bytes.Equal(b, png) {
		t.Fatalf("data URI attachment = %d %s %q", code, ct, b)
	}
	if code, _, b := get("notes.txt"); code != 200 || string(b) != "hello" {
		t.Fatalf("named attachment = %d %q", code, b)
	}
	if code, _, _ := get("missing.png"); code != 404 {
		t.Fatalf("missing attachment = %d", code)
	}
	// A name that is not a file name is refused, not looked for.
	for _, name := range []string{"path%2Fto%2Ffile.jpg", "..%2Fsecret", "%2E%2E", "a%5Cb.jpg", "a%00b.jpg", "a%0Ab.jpg", "a%7Fb.jpg", "%FF.jpg", strings.Repeat("x", 256)} {
		if code, _, b := get(name); code != 400 || !strings.Contains(string(b), `"invalid_input"`) {
			t.Errorf("attachment %q = %d %s, want 400 invalid_input", name, code, b)
		}
	}
	var caps struct {
		Capabilities []struct {
			ID   string
			Tags []string
		}
	}
	ts.do(t, "GET", ts.api("att")+"/capabilities", key, nil, &caps)
	if len(caps.Capabilities) != 2 || caps.Capabilities[1].ID != "door:check" || caps.Capabilities[1].Tags[0] != "home" {
		t.Fatalf("capabilities = %+v", caps)
	}
	ts.do(t, "GET", ts.api("att")+"/capabilities?tag=camera", key, nil, &caps)
	if len(caps.Capabilities) != 1 || caps.Capabilities[0].ID != "photo:capture" {
		t.Fatalf("capabilities by tag = %+v", caps)
	}
}

func TestCORSPreflight(t *testing.T) {
	ts := startServer(t)
	req, _ := http.NewRequest("OPTIONS", ts.api("x")+"/requests", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "PATCH")
	req.Header.Set("Access-Control-Request-Headers", "Authorization, Content-Type")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") == "" || !strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "PATCH") {
		t.Fatalf("preflight = %d %v", resp.StatusCode, resp.Header)
	}
}

// Requests without an Origin skip CORS only when every origin is allowed:
// with a list of origins the response varies by origin and must say so.
func TestCORSHeaders(t *testing.T) {
	for _, tc := range []struct {
		name, origins, origin string
		wantAllow, wantVary   string
	}{
		{"wildcard, browser", "*", "https://app.example", "*", "Origin"},
		{"wildcard, agent", "*", "", "", ""},
		{"list, allowed browser", "https://app.example", "https://app.example", "https://app.example", "Origin"},
		{"list, other browser", "https://app.example", "https://evil.example", "", "Origin"},
		{"list, agent", "https://app.example", "", "", "Origin"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, withEnv("CORS_ORIGINS", tc.origins))
			req, _ := http.NewRequest("GET", ts.URL+"/health", nil)
			if tc.origin != "" {
				req.Header.Set("Origin", tc.origin)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got := resp.Header.Get("Access-Control-Allow-Origin"); got != tc.wantAllow {
				t.Errorf("Access-Control-Allow-Origin = %q, want %q", got, tc.wantAllow)
			}
			if got := resp.Header.Get("Vary"); got != tc.wantVary {
				t.Errorf("Vary = %q, want %q", got, tc.wantVary)
			}
		})
	}
}

// Ensure shutdown ends long-polls and event streams instead of waiting for
// them.
func TestGracefulShutdownEndsWaits(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "bye", "a")
	ref := ts.create(t, "bye", key, map[string]any{"intent": "x"})
	var wg sync.WaitGroup
	for _, path := range []string{"/events", "/requests?wait=120", "/requests/" + ref + "?wait=120"} {
		wg.Go(func() {
			req, _ := http.NewRequest("GET", ts.api("bye")+path, nil)
			req.Header.Set("Authorization", "Bearer "+key)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
	}
	time.Sleep(200 * time.Millisecond)
	done := make(chan struct{})
	go func() { ts.Stop(); close(done) }()
	select {
	case <-done:
	case <-time.After(8 * time.Second):
		t.Fatal("shutdown waited for long-polls and streams")
	}
	wg.Wait()
}

// Ensure HEAD answers every GET route with GET's status and headers and no
// body, the event stream included.
func TestHeadOnGetRoutes(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "head", "a")
	ref := ts.create(t, "head", key, map[string]any{"intent": "look"})
	ts.do(t, "PATCH", ts.api("head")+"/requests/"+ref, key, `{"mess":[{"attachment":{"name":"notes.txt","data":"aGVsbG8="}}]}`, nil)
	for _, path := range []string{
		"/health",
		"/api/v1/exchanges/head/requests",
		"/api/v1/exchanges/head/requests?wait=0",
		"/api/v1/exchanges/head/requests/" + ref,
		"/api/v1/exchanges/head/requests/" + ref + "/attachments/notes.txt",
		"/api/v1/exchanges/head/executors",
		"/api/v1/exchanges/head/executors/a",
		"/api/v1/exchanges/head/me",
		"/api/v1/exchanges/head/invites",
		"/api/v1/exchanges/head/capabilities",
		"/api/v1/exchanges/head/events",
	} {
		t.Run(path, func(t *testing.T) {
			send := func(method string) (*http.Response, []byte) {
				req, _ := http.NewRequest(method, ts.URL+path, nil)
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if strings.HasSuffix(path, "/events") && method == "GET" {
					return resp, nil // a stream: its headers are enough
				}
				b, err := io.ReadAll(resp.Body)
				if err != nil {
					t.Fatal(err)
				}
				return resp, b
			}
			get, body := send("GET")
			head, hbody := send("HEAD")
			if head.StatusCode != 200 || get.StatusCode != 200 {
				t.Fatalf("HEAD = %d, GET = %d, want 200", head.StatusCode, get.StatusCode)
			}
			if len(hbody) != 0 {
				t.Fatalf("HEAD sent a body: %q", hbody)
			}
			for _, h := range []string{"Content-Type", "ETag", "X-Content-Type-Options"} {
				if head.Header.Get(h) != get.Header.Get(h) {
					t.Errorf("%s: HEAD %q, GET %q", h, head.Header.Get(h), get.Header.Get(h))
				}
			}
			// Profiles carry last_seen, which each request moves.
			stable := body != nil && !strings.Contains(string(body), "last_seen")
			if stable && head.Header.Get("Content-Length") != "" && head.ContentLength != int64(len(body)) {
				t.Errorf("HEAD Content-Length %d, GET body %d bytes", head.ContentLength, len(body))
			}
		})
	}
}

// Ensure a resume point that is no longer buffered gets one reset event,
// and a newline smuggled into it through the query cannot start another.
func TestEventStreamReset(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "reset", "a")
	req, _ := http.NewRequest("GET", ts.api("reset")+"/events?last_event_id=00gone%0A%0Aevent:%20evil%0Adata:%20x", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	r := bufio.NewReader(resp.Body)
	var lines []string
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended after %q: %v", lines, err)
		}
		if line == "\n" {
			break
		}
		lines = append(lines, line)
	}
	if len(lines) != 2 || lines[0] != "event: reset\n" || !strings.HasPrefix(lines[1], `data: {"reason":"events since 00gone\n`) {
		t.Fatalf("first event = %q, want one reset event", lines)
	}
}

// The owner lists the exchange's invites (never their tokens) and revokes
// one: it no longer admits anyone, also after a restart.
func TestInvitesListRevoke(t *testing.T) {
	dir := t.TempDir()
	opts := []serverOption{withDataDir(dir), withEnv("MESS_OPEN_REGISTRATION", "false")}
	ts := startServer(t, opts...)
	owner := ts.register(t, "inv", "boss")
	type invite struct {
		ID        string    `json:"id"`
		Token     string    `json:"token"`
		CreatedAt time.Time `json:"created_at"`
		ExpiresAt time.Time `json:"expires_at"`
		MaxUses   int       `json:"max_uses"`
		Uses      int       `json:"uses"`
	}
	var a, b invite
	ts.do(t, "POST", ts.api("inv")+"/invites", owner, map[string]any{"max_uses": 3, "expires_in": 3600}, &a)
	ts.do(t, "POST", ts.api("inv")+"/invites", owner, map[string]any{"max_uses": 2}, &b)
	var reg struct {
		APIKey string `json:"api_key"`
	}
	if code := ts.do(t, "POST", ts.api("inv")+"/register", "", map[string]any{"executor_id": "friend", "invite_token": a.Token}, &reg); code != 201 {
		t.Fatalf("register with invite = %d", code)
	}

	var raw json.RawMessage
	if code := ts.do(t, "GET", ts.api("inv")+"/invites", owner, nil, &raw); code != 200 {
		t.Fatalf("list invites = %d %s", code, raw)
	}
	if strings.Contains(string(raw), a.Token) || strings.Contains(string(raw), "token") || strings.Contains(string(raw), "hash") {
		t.Fatalf("the invite list shows a token or its hash: %s", raw)
	}
	var list struct{ Invites []invite }
	json.Unmarshal(raw, &list)
	if len(list.Invites) != 2 || list.Invites[0].ID != a.ID || list.Invites[0].Uses != 1 || list.Invites[0].MaxUses != 3 ||
		list.Invites[0].CreatedAt.IsZero() || !list.Invites[0].ExpiresAt.Equal(a.ExpiresAt) || list.Invites[1].ID != b.ID || list.Invites[1].Uses != 0 {
		t.Fatalf("invites %s, want %s used once and %s unused", raw, a.ID, b.ID)
	}

	var e struct{ Error, Code string }
	for _, c := range []struct {
		method, path, key string
		want              int
		code              string
	}{
		{"GET", "/invites", reg.APIKey, 403, "forbidden"},
		{"DELETE", "/invites/" + a.ID, reg.APIKey, 403, "forbidden"},
		{"DELETE", "/invites/i_nothere", owner, 404, "not_found"},
		{"DELETE", "/invites/" + a.ID, "", 401, "unauthorized"},
	} {
		if code := ts.do(t, c.method, ts.api("inv")+c.path, c.key, nil, &e); code != c.want || e.Code != c.code {
			t.Errorf("%s %s = %d %+v, want %d %s", c.method, c.path, code, e, c.want, c.code)
		}
	}
	if code := ts.do(t, "DELETE", ts.api("inv")+"/invites/"+a.ID, owner, nil, nil); code != 200 {
		t.Fatalf("revoke = %d", code)
	}
	if code := ts.do(t, "POST", ts.api("inv")+"/register", "", map[string]any{"executor_id": "late", "invite_token": a.Token}, &e); code != 403 || e.Error != "invalid invite" {
		t.Fatalf("register with a revoked invite = %d %+v", code, e)
	}
	if code := ts.do(t, "DELETE", ts.api("inv")+"/invites/"+a.ID, owner, nil, &e); code != 404 {
		t.Fatalf("revoke twice = %d, want 404", code)
	}

	// Durable: after a restart the revoked invite is gone and the other admits.
	ts.Stop()
	ts = startServer(t, opts...)
	list.Invites = nil
	ts.do(t, "GET", ts.api("inv")+"/invites", owner, nil, &list)
	if len(list.Invites) != 1 || list.Invites[0].ID != b.ID {
		t.Fatalf("after restart: %+v, want only %s", list.Invites, b.ID)
	}
	if code := ts.do(t, "POST", ts.api("inv")+"/register", "", map[string]any{"executor_id": "late", "invite_token": a.Token}, nil); code != 403 {
		t.Fatalf("revoked invite after restart = %d, want 403", code)
	}
	if code := ts.do(t, "POST", ts.api("inv")+"/register", "", map[string]any{"executor_id": "later", "invite_token": b.Token}, nil); code != 201 {
		t.Fatalf("the other invite after restart = %d, want 201", code)
	}
}

// GET /me tells a key's holder who it is: its own profile, as
// GET /executors/{id} shows it to itself, secrets redacted.
func TestWhoAmI(t *testing.T) {
	ts := startServer(t)
	owner := ts.register(t, "who", "boss")
	var reg struct {
		APIKey string `json:"api_key"`
	}
	ts.do(t, "POST", ts.api("who")+"/register", "", map[string]any{
		"executor_id": "pat", "display_name": "Pat Doe", "capabilities": []string{"drive"},
		"notifications": []any{map[string]any{"type": "ntfy", "topic": "pat", "token": "tk-pat-secret"}},
	}, &reg)
	type me struct {
		ExecutorID string `json:"executor_id"`
		Executor   struct {
			ID            string          `json:"id"`
			DisplayName   string          `json:"display_name"`
			Owner         bool            `json:"owner"`
			Capabilities  []string        `json:"capabilities"`
			Notifications json.RawMessage `json:"notifications"`
			APIKeys       []struct {
				ID string `json:"id"`
			} `json:"api_keys"`
		} `json:"executor"`
	}
	for _, c := range []struct {
		key, id, name string
		owner         bool
		caps          string
	}{
		{owner, "boss", "boss", true, ""},
		{reg.APIKey, "pat", "Pat Doe", false, "drive"},
	} {
		var m me
		if code := ts.do(t, "GET", ts.api("who")+"/me", c.key, nil, &m); code != 200 {
			t.Fatalf("GET /me as %s = %d", c.id, code)
		}
		e := m.Executor
		if m.ExecutorID != c.id || e.ID != c.id || e.DisplayName != c.name || e.Owner != c.owner || strings.Join(e.Capabilities, ",") != c.caps || len(e.APIKeys) != 1 {
			t.Errorf("GET /me as %s = %+v", c.id, m)
		}
	}
	var raw json.RawMessage
	ts.do(t, "GET", ts.api("who")+"/me", reg.APIKey, nil, &raw)
	if strings.Contains(string(raw), "tk-pat-secret") || !strings.Contains(string(raw), `"token":"[redacted]"`) {
		t.Errorf("GET /me does not redact the ntfy token: %s", raw)
	}
	var e struct{ Code string }
	if code := ts.do(t, "GET", ts.api("who")+"/me", "", nil, &e); code != 401 || e.Code != "unauthorized" {
		t.Errorf("GET /me without a key = %d %+v", code, e)
	}
	if code := ts.do(t, "GET", ts.api("other")+"/me", owner, nil, &e); code != 403 || e.Code != "forbidden" {
		t.Errorf("GET /me with another exchange's key = %d %+v", code, e)
	}
}

// A profile read with GET (secrets redacted) and sent back with PATCH keeps
// the stored secrets; a redacted value with no stored secret at its place
// (a new channel, or channels reordered) is refused; a new secret replaces
// the old one.
func TestProfileUpdateKeepsRedactedSecrets(t *testing.T) {
	ts := startServer(t)
	var reg struct {
		APIKey string `json:"api_key"`
		Error  string
	}
	ntfy := map[string]any{"type": "ntfy", "topic": "pat", "token": "tk_secret", "server": "https://ntfy.example.com/?auth=abc"}
	slack := map[string]any{"type": "slack", "webhook_url": "https://hooks.slack.com/services/T0/B0/XYZ"}
	hook := map[string]any{"type": "webhook", "url": "https://example.com/hook?key=k1", "headers": map[string]any{"X-Token": "h1"}}
	if code := ts.do(t, "POST", ts.api("sec")+"/register", "", map[string]any{
		"executor_id": "pat", "notifications": []any{ntfy, slack}, "hooks": map[string]any{"on_request_created": []any{hook}},
	}, &reg); code != 201 {
		t.Fatalf("register = %d %s", code, reg.Error)
	}
	key := reg.APIKey
	type profile struct {
		Notifications []map[string]any `json:"notifications"`
		Hooks         map[string][]map[string]any
	}
	get := func() profile {
		var res struct{ Executor profile }
		ts.do(t, "GET", ts.api("sec")+"/executors/pat", key, nil, &res)
		return res.Executor
	}
	stored := func() profile {
		b, err := os.ReadFile(filepath.Join(ts.DataDir, "executors", "exchange=sec", "pat.json"))
		if err != nil {
			t.Fatal(err)
		}
		var p profile
		json.Unmarshal(b, &p)
		return p
	}
	shown := get()
	if shown.Notifications[0]["token"] != "[redacted]" || shown.Notifications[1]["webhook_url"] != "[redacted]" {
		t.Fatalf("GET shows %+v", shown)
	}
	// Sent back as shown, with the topic changed.
	shown.Notifications[0]["topic"] = "pat-2"
	if code := ts.do(t, "PATCH", ts.api("sec")+"/executors/pat", key, map[string]any{"notifications": shown.Notifications, "hooks": shown.Hooks}, nil); code != 200 {
		t.Fatalf("PATCH back = %d", code)
	}
	s := stored()
	n0, n1, h0 := s.Notifications[0], s.Notifications[1], s.Hooks["on_request_created"][0]
	if n0["topic"] != "pat-2" || n0["token"] != "tk_secret" || n0["server"] != ntfy["server"] || n1["webhook_url"] != slack["webhook_url"] ||
		h0["url"] != hook["url"] || fmt.Sprint(h0["headers"]) != "map[X-Token:h1]" {
		t.Fatalf("stored after PATCH back: %+v", s)
	}

	// Reordered: each channel keeps its own secret.
	shown = get()
	if code := ts.do(t, "PATCH", ts.api("sec")+"/executors/pat", key, map[string]any{"notifications": []any{shown.Notifications[1], shown.Notifications[0]}}, nil); code != 200 {
		t.Fatalf("PATCH reordered = %d", code)
	}
	if s := stored(); s.Notifications[0]["webhook_url"] != slack["webhook_url"] || s.Notifications[1]["token"] != "tk_secret" {
		t.Fatalf("stored after reordering: %+v", s.Notifications)
	}
	var e struct{ Error, Code string }
	shown = get()
	s = stored()
	extra := append(shown.Notifications, map[string]any{"type": "ntfy", "topic": "x", "token": "[redacted]"})
	if code := ts.do(t, "PATCH", ts.api("sec")+"/executors/pat", key, map[string]any{"notifications": extra}, &e); code != 400 || e.Code != "invalid_input" || !strings.Contains(e.Error, "no stored secret") {
		t.Errorf("a new channel with a redacted secret = %d %+v, want 400", code, e)
	}
	if s2 := stored(); fmt.Sprint(s2) != fmt.Sprint(s) {
		t.Errorf("a refused PATCH changed the profile: %+v", s2)
	}
	shown.Notifications[0], shown.Notifications[1] = shown.Notifications[1], shown.Notifications[0]

	shown.Notifications[0]["token"] = "tk_new"
	ts.do(t, "PATCH", ts.api("sec")+"/executors/pat", key, map[string]any{"notifications": shown.Notifications}, nil)
	if s := stored(); s.Notifications[0]["token"] != "tk_new" || s.Notifications[1]["webhook_url"] != slack["webhook_url"] {
		t.Errorf("after a new token: %+v", s.Notifications)
	}
}

// A listing's summaries carry each request's requires as it was asked, so
// a client filters by capability without fetching each thread.
func TestListCarriesRequires(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "req", "agent")
	photo := ts.create(t, "req", key, map[string]any{"intent": "photo", "requires": []any{"photo:capture", map[string]any{"drive": map[string]any{"licence": "B"}}}})
	plain := ts.create(t, "req", key, map[string]any{"intent": "plain"})
	var list struct {
		Threads []map[string]json.RawMessage
	}
	if code := ts.do(t, "GET", ts.api("req")+"/requests?status=pending", key, nil, &list); code != 200 {
		t.Fatalf("list = %d", code)
	}
	got := map[string]string{}
	for _, th := range list.Threads {
		var ref string
		json.Unmarshal(th["ref"], &ref)
		got[ref] = string(th["requires"])
	}
	if len(got) != 2 || got[photo] != `["photo:capture",{"drive":{"licence":"B"}}]` || got[plain] != "" {
		t.Fatalf("requires in the listing: %v", got)
	}
}

package notify_test

import (
	"context"
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
)

func TestService_hookExternalIDRecipe(t *testing.T) {
	rv := newReceiver(t, func(r received, n int) (int, string) {
		if strings.HasPrefix(r.Path, "/create") {
			return 201, `{"id":"T-42","title":"x"}`
		}
		return 200, `{}`
	})
	e := newEnv(t, notify.Config{})
	e.register("req", nil, nil, nil, nil)
	hooks := map[string]any{
		"on_request_created": []any{map[string]any{"type": "webhook", "url": rv.URL + "/create",
			"headers": map[string]string{"X-Api-Key": "hook-secret"},
			"body":    map[string]any{"title": "Do: {{intent}}", "who": "{{executor_name}}", "tags": []any{"{{priority}}"}}}},
		"on_request_completed": []any{map[string]any{"type": "webhook", "method": "post", "url": rv.URL + "/complete/{{external_id}}"}},
		"on_request_claimed":   []any{map[string]any{"type": "webhook", "url": rv.URL + "/claimed"}},
	}
	e.register("w", nil, nil, hooks, nil)
	ref := e.create("req", mess.Request{Intent: "Fix the tap"})
	e.update("w", ref, "claimed")
	e.update("w", ref, "completed")
	e.settle()
	rv.mu.Lock()
	got := append([]received(nil), rv.got...)
	rv.mu.Unlock()
	paths := []string{}
	for _, r := range got {
		paths = append(paths, r.Path)
	}
	if strings.Join(paths, " ") != "/create /claimed /complete/T-42" {
		t.Fatalf("hook calls = %v, want create, claimed, complete/T-42 in order", paths)
	}
	var body map[string]any
	json.Unmarshal(got[0].Body, &body)
	if body["title"] != "Do: Fix the tap" || body["who"] != "w" || body["tags"].([]any)[0] != "normal" {
		t.Errorf("templated body = %s", got[0].Body)
	}
	if got[0].Header.Get("X-Api-Key") != "hook-secret" {
		t.Errorf("hook header missing: %v", got[0].Header)
	}
	th, err := e.svc.Get(context.Background(), x, ref)
	if err != nil || th.ExternalID != "T-42" {
		t.Errorf("thread external_id = %q (%v), want T-42", th.ExternalID, err)
	}
	// Secrets in hook configs never leave through the API.
	prof, err := e.svc.Executor(context.Background(), x, "w")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(prof.Hooks), "hook-secret") {
		t.Errorf("profile exposes a hook secret: %s", prof.Hooks)
	}
}

func TestService_hookAliasesAndOnlyExecutor(t *testing.T) {
	rv := newReceiver(t, nil)
	e := newEnv(t, notify.Config{})
	hook := func(name string) []any {
		return []any{map[string]any{"type": "webhook", "url": rv.URL + "/" + name,
			"body": map[string]any{"event": "{{event}}", "old": "{{old_status}}", "actor": "{{actor_id}}", "who": "{{executor_name}}"}}}
	}
	e.register("req", nil, nil, nil, nil)
	// "other" has started/completed hooks but is not the thread's executor:
	// those run only for the executor who holds the thread.
	e.register("other", nil, nil, map[string]any{"on_request_in-progress": hook("other-started"), "on_request_rejected": hook("other-declined")}, nil)
	e.register("w", nil, nil, map[string]any{"on_request_started": hook("w-started"), "on_request_rejected": hook("w-declined")}, nil)
	ref := e.create("req", mess.Request{Intent: "Walk the dog"})
	e.update("w", ref, "claimed")
	e.update("w", ref, "in-progress")
	e.update("w", ref, "declined")
	e.settle()
	got := map[string]map[string]any{}
	rv.mu.Lock()
	for _, r := range rv.got {
		var b map[string]any
		json.Unmarshal(r.Body, &b)
		got[r.Path] = b
	}
	rv.mu.Unlock()
	if _, ok := got["/other-started"]; ok {
		t.Error("started hook ran for an executor not holding the thread")
	}
	if b := got["/w-started"]; b == nil || b["event"] != "started" || b["old"] != "claimed" || b["actor"] != "w" {
		t.Errorf("w-started = %v", b)
	}
	for _, p := range []string{"/w-declined", "/other-declined"} {
		if b := got[p]; b == nil || b["event"] != "declined" {
			t.Errorf("%s = %v, want on_request_rejected (MESS exchange server 1.0) to fire on declined", p, b)
		}
	}
}

func TestService_googleTasksCreateThenComplete(t *testing.T) {
	rv := newReceiver(t, func(r received, n int) (int, string) {
		switch {
		case r.Path == "/token":
			return 200, `{"access_token":"at-1","expires_in":3600}`
		case r.Method == "POST":
			return 200, `{"id":"gt-7"}`
		}
		return 200, `{}`
	})
	e := newEnv(t, notify.Config{Endpoints: notify.Endpoints{GoogleOAuth: rv.URL + "/token", GoogleTasks: rv.URL}})
	creds := map[string]any{"type": "google_tasks", "client_id": "cid", "client_secret": "csecret", "refresh_token": "rt"}
	complete := map[string]any{"action": "complete"}
	for k, v := range creds {
		complete[k] = v
	}
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, nil, map[string]any{"on_request_created": []any{creds}, "on_request_completed": []any{complete}}, nil)
	ref := e.create("req", mess.Request{Intent: "Call grandma", Priority: mess.PriorityUrgent})
	e.update("w", ref, "claimed")
	e.update("w", ref, "completed")
	e.settle()
	rv.mu.Lock()
	got := append([]received(nil), rv.got...)
	rv.mu.Unlock()
	var calls []string
	for _, r := range got {
		calls = append(calls, r.Method+" "+r.Path)
	}
	want := "POST /token POST /tasks/v1/lists/@default/tasks POST /token PATCH /tasks/v1/lists/@default/tasks/gt-7"
	if strings.Join(calls, " ") != want {
		t.Fatalf("calls = %v\nwant %s", calls, want)
	}
	form, _ := url.ParseQuery(string(got[0].Body))
	if form.Get("refresh_token") != "rt" || form.Get("grant_type") != "refresh_token" || form.Get("client_secret") != "csecret" {
		t.Errorf("token refresh form = %v", form)
	}
	var task map[string]any
	json.Unmarshal(got[1].Body, &task)
	if task["title"] != "MESS: Call grandma" || task["notes"] != "Ref: "+ref+"\nPriority: urgent" {
		t.Errorf("task = %v", task)
	}
	if got[1].Header.Get("Authorization") != "Bearer at-1" {
		t.Errorf("task call Authorization = %q", got[1].Header.Get("Authorization"))
	}
	if string(got[3].Body) != `{"status":"completed"}` {
		t.Errorf("complete body = %s", got[3].Body)
	}
}

func TestService_thirdPartyHookFormats(t *testing.T) {
	rv := newReceiver(t, func(r received, n int) (int, string) {
		if r.Path == "/graphql" {
			return 200, `{"data":{"issueCreate":{"success":true,"issue":{"id":"lin-1"}}}}`
		}
		return 200, `{}`
	})
	e := newEnv(t, notify.Config{Endpoints: notify.Endpoints{IFTTT: rv.URL + "/ifttt", Todoist: rv.URL + "/todoist", Linear: rv.URL + "/graphql"}})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, nil, map[string]any{"on_request_created": []any{
		map[string]any{"type": "ifttt", "key": "ik", "event": "mess_{{priority}}"},
		map[string]any{"type": "todoist", "token": "tt", "labels": []string{"mess"}},
		map[string]any{"type": "zapier", "webhook_url": rv.URL + "/zap"},
		map[string]any{"type": "home_assistant", "base_url": rv.URL + "/ha", "webhook_id": "wh1", "token": "hat"},
	}}, nil)
	e.register("l", nil, nil, map[string]any{"on_request_created": []any{
		map[string]any{"type": "linear", "token": "lin_api", "team_id": "team-1"},
	}}, nil)
	ref := e.create("req", mess.Request{Intent: "Paint", Priority: mess.PriorityElevated})
	e.settle()
	got := map[string]received{}
	rv.mu.Lock()
	for _, r := range rv.got {
		got[r.Path] = r
	}
	rv.mu.Unlock()
	check := func(path, wantBody, hdr, hdrVal string) {
		t.Helper()
		r, ok := got[path]
		if !ok {
			t.Errorf("%s not called; got %v", path, got)
			return
		}
		var gb, wb any
		json.Unmarshal(r.Body, &gb)
		json.Unmarshal([]byte(wantBody), &wb)
		g, _ := json.Marshal(gb)
		w, _ := json.Marshal(wb)
		if string(g) != string(w) {
			t.Errorf("%s body = %s, want %s", path, g, w)
		}
		if hdr != "" && r.Header.Get(hdr) != hdrVal {
			t.Errorf("%s %s = %q, want %q", path, hdr, r.Header.Get(hdr), hdrVal)
		}
	}
	check("/ifttt/trigger/mess_elevated/with/key/ik", `{"value1":"Paint","value2":"`+ref+`","value3":"elevated"}`, "", "")
	check("/todoist/rest/v2/tasks", `{"content":"MESS: Paint","description":"Ref: `+ref+`","priority":3,"labels":["mess"]}`, "Authorization", "Bearer tt")
	check("/zap", `{"intent":"Paint","ref":"`+ref+`","priority":"elevated","status":"pending","event":"created"}`, "", "")
	check("/ha/api/webhook/wh1", `{"action":"mess_created","intent":"Paint","ref":"`+ref+`","priority":"elevated"}`, "Authorization", "Bearer hat")
	if r := got["/graphql"]; r.Header.Get("Authorization") != "lin_api" || !strings.Contains(string(r.Body), `"teamId":"team-1"`) || !strings.Contains(string(r.Body), `"title":"MESS: Paint"`) {
		t.Errorf("linear call = %s %v", r.Body, r.Header)
	}
}

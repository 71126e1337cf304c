package main

import (
	"bufio"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// send makes a request with extra headers and returns the status and the
// decoded JSON answer.
func (ts *testServer) send(t *testing.T, method, url, key, body string, headers map[string]string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	for k, v := range headers {
		req.Header[k] = []string{v}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res map[string]any
	decodeJSON(t, resp, &res)
	return resp.StatusCode, res
}

// Ensure text that is not UTF-8 is refused wherever it comes in, not
// stored and served back.
func TestInput_invalidUTF8(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "utf", "a")
	for _, tc := range []struct {
		name, method, path, body string
		headers                  map[string]string
	}{
		{"query filter", "GET", "/requests?executor_id=%FF", "", nil},
		{"query name", "GET", "/requests?%FF=1", "", nil},
		{"status filter", "GET", "/requests?status=pending,%FE", "", nil},
		{"capability tag", "GET", "/capabilities?tag=%C3%28", "", nil},
		{"resume point", "GET", "/events?last_event_id=%FF", "", nil},
		{"Last-Event-ID", "GET", "/events", "", map[string]string{"Last-Event-Id": "id\xff"}},
		{"Idempotency-Key", "POST", "/requests", `{"intent":"x"}`, map[string]string{"Idempotency-Key": "k\xff"}},
		{"Idempotency-Key control", "POST", "/requests", `{"intent":"x"}`, map[string]string{"Idempotency-Key": "k\tx"}},
		{"body", "POST", "/requests", "{\"intent\":\"\xff\"}", nil},
		{"registration query", "POST", "/register?x=%FF", `{"executor_id":"b"}`, nil},
	} {
		code, res := ts.send(t, tc.method, ts.api("utf")+tc.path, key, tc.body, tc.headers)
		if code != 400 || res["code"] != "invalid_input" {
			t.Errorf("%s: %d %v, want 400 invalid_input", tc.name, code, res)
		}
	}
	var list struct{ Threads []any }
	ts.do(t, "GET", ts.api("utf")+"/requests", key, nil, &list)
	if len(list.Threads) != 0 {
		t.Fatalf("refused requests left %d threads", len(list.Threads))
	}
}

// Ensure a 21st key is refused with the limit named, and the keys stay as
// they were.
func TestInput_keyLimit(t *testing.T) {
	ts := startServer(t)
	first := ts.register(t, "kl", "a")
	for i := range 19 {
		if code := ts.do(t, "POST", ts.api("kl")+"/executors/a/keys", first, nil, nil); code != 201 {
			t.Fatalf("key %d = %d", i+2, code)
		}
	}
	var res map[string]any
	if code := ts.do(t, "POST", ts.api("kl")+"/executors/a/keys", first, nil, &res); code != 409 || !strings.Contains(fmt.Sprint(res["error"]), "20 keys") {
		t.Fatalf("21st key = %d %v, want 409 naming 20 keys", code, res)
	}
	if code := ts.do(t, "GET", ts.api("kl")+"/requests", first, nil, nil); code != 200 {
		t.Fatalf("the oldest key after a refused 21st = %d", code)
	}
	// Rotation still works: it replaces them all.
	var nk struct {
		Key string `json:"api_key"`
	}
	if code := ts.do(t, "POST", ts.api("kl")+"/executors/a/keys", first, map[string]any{"revoke_others": true}, &nk); code != 201 {
		t.Fatalf("rotate = %d", code)
	}
	if code := ts.do(t, "GET", ts.api("kl")+"/requests", nk.Key, nil, nil); code != 200 {
		t.Fatalf("rotated key = %d", code)
	}
}

// Ensure a resume point newer than any event is answered with a reset,
// not silence, while a known one resumes after it.
func TestInput_unknownLastEventID(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "le", "a")
	open := func(last string) *bufio.Reader {
		req, _ := http.NewRequest("GET", ts.api("le")+"/events", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		if last != "" {
			req.Header.Set("Last-Event-ID", last)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { resp.Body.Close() })
		return bufio.NewReader(resp.Body)
	}
	next := func(r *bufio.Reader) (id, typ string) { return nextEvent(t, r) }
	ts.create(t, "le", key, map[string]any{"intent": "x"})
	if _, typ := next(open("ZZZZZZZZZZZZZZZZZZZZZZZZZZ")); typ != "reset" {
		t.Fatalf("future Last-Event-ID: first event %q, want reset", typ)
	}
	live := open("")
	ts.create(t, "le", key, map[string]any{"intent": "y"})
	id, typ := next(live)
	if typ != "thread_created" {
		t.Fatalf("first live event %q", typ)
	}
	if _, typ := next(open(id)); typ != "message_added" {
		t.Fatalf("resuming after a known event: first event %q, want message_added", typ)
	}
}

// Ensure a reused Idempotency-Key with another body is a 422, across a
// restart too, while the same body replays.
func TestInput_idempotencyKeyMismatch(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "ik", "a")
	post := func(body string) (int, map[string]any) {
		return ts.send(t, "POST", ts.api("ik")+"/requests", key, body, map[string]string{"Idempotency-Key": "order-1"})
	}
	code, first := post(`{"intent":"buy milk"}`)
	if code != 201 {
		t.Fatalf("first = %d %v", code, first)
	}
	if code, res := post(`{ "intent" : "buy milk" }`); code != 201 || res["ref"] != first["ref"] {
		t.Fatalf("same request again = %d %v, want a replay of %v", code, res, first["ref"])
	}
	if code, res := post(`{"intent":"buy bread"}`); code != 422 || res["code"] != "unprocessable" {
		t.Fatalf("other request, same key = %d %v, want 422 unprocessable", code, res)
	}
	ts.Stop()
	ts = startServer(t, withDataDir(ts.DataDir))
	if code, res := post(`{"intent":"buy bread"}`); code != 422 {
		t.Fatalf("after a restart, other request with the same key = %d %v", code, res)
	}
	if code, res := post(`{"intent":"buy milk"}`); code != 201 || res["ref"] != first["ref"] {
		t.Fatalf("after a restart, same request = %d %v", code, res)
	}
}

// Ensure numbers out of range are refused, not clamped, and no error
// message names a Go type.
func TestInput_rangesAndMessages(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "rg", "a")
	ref := ts.create(t, "rg", key, map[string]any{"intent": "x"})
	for _, tc := range []struct {
		method, path, body string
		want               int
	}{
		{"GET", "/requests?wait=Inf", "", 400},
		{"GET", "/requests?wait=-Inf", "", 400},
		{"GET", "/requests?wait=NaN", "", 400},
		{"GET", "/requests?wait=1e400", "", 400},
		{"GET", "/requests?wait=-1", "", 400},
		{"GET", "/requests/" + ref + "?wait=NaN", "", 400},
		{"POST", "/invites", `{"expires_in":-1}`, 400},
		{"POST", "/invites", `{"expires_in":1e300}`, 400},
		{"POST", "/invites", `{"expires_in":31536001}`, 400},
		{"POST", "/invites", `{"expires_in":3600}`, 201},
		{"POST", "/requests", `{"intent":"x","priority":5}`, 400},
		{"POST", "/requests", `{"intent":"x","confirm_before":"yes"}`, 400},
		{"POST", "/requests", `{"intent":"x","needed_by":"soon"}`, 400},
		{"PATCH", "/requests/" + ref, `{"status":5}`, 400},
		{"PATCH", "/executors/a", `{"preferences":{"quiet_hours":5}}`, 400},
		{"PATCH", "/executors/a", `{"preferences":{"min_priority":5}}`, 400},
		{"POST", "/executors/a/keys", `{"revoke_others":"yes"}`, 400},
	} {
		var res map[string]any
		code := ts.do(t, tc.method, ts.api("rg")+tc.path, key, tc.body, &res)
		if code != tc.want {
			t.Errorf("%s %s %s = %d %v, want %d", tc.method, tc.path, tc.body, code, res, tc.want)
		}
		msg := fmt.Sprint(res["error"])
		for _, leak := range []string{"Go ", "mess.", "notify.", "json:", "plain", "struct", "int64", "float64"} {
			if strings.Contains(msg, leak) {
				t.Errorf("%s %s %s: message %q shows %q", tc.method, tc.path, tc.body, msg, leak)
			}
		}
	}
}

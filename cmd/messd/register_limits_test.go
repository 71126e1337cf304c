package main

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
)

// registerFrom posts a registration as if from the address xff names (the
// server trusts the header only when told to).
func (ts *testServer) registerFrom(t *testing.T, exchange, id, xff, invite string) (int, http.Header, map[string]any) {
	t.Helper()
	body := `{"executor_id":"` + id + `"`
	if invite != "" {
		body += `,"invite_token":"` + invite + `"`
	}
	req, _ := http.NewRequest("POST", ts.api(exchange)+"/register", strings.NewReader(body+"}"))
	if xff != "" {
		req.Header.Set("X-Forwarded-For", xff)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var res map[string]any
	decodeJSON(t, resp, &res)
	return resp.StatusCode, resp.Header, res
}

// Ensure registrations without an invite are limited per address with a
// 429 and Retry-After, while invited ones are not.
func TestRegisterRateLimit(t *testing.T) {
	ts := startServer(t, withEnv("MESS_REGISTER_RATE", "1"), withEnv("MESS_REGISTER_BURST", "3"))
	var owner string
	for i := range 3 {
		code, _, res := ts.registerFrom(t, "ex"+strconv.Itoa(i), "a", "", "")
		if code != 201 {
			t.Fatalf("registration %d = %d %v", i, code, res)
		}
		if i == 0 {
			owner = res["api_key"].(string)
		}
	}
	code, h, res := ts.registerFrom(t, "ex9", "a", "", "")
	if code != 429 || res["code"] != "rate_limited" || h.Get("Retry-After") == "" {
		t.Fatalf("registration past the burst = %d %v Retry-After %q", code, res, h.Get("Retry-After"))
	}
	if n, err := strconv.Atoi(h.Get("Retry-After")); err != nil || n < 1 || n > 60 {
		t.Fatalf("Retry-After = %q", h.Get("Retry-After"))
	}
	// A made-up invite is no credential; a real one is.
	if code, _, res := ts.registerFrom(t, "ex0", "b", "", "inv_madeup"); code != 429 {
		t.Fatalf("registration with a made-up invite = %d %v", code, res)
	}
	var inv struct{ Token string }
	if code := ts.do(t, "POST", ts.api("ex0")+"/invites", owner, map[string]any{"max_uses": 5}, &inv); code != 201 {
		t.Fatalf("invite = %d", code)
	}
	for _, id := range []string{"b", "c", "d", "e"} {
		if code, _, res := ts.registerFrom(t, "ex0", id, "", inv.Token); code != 201 {
			t.Fatalf("invited registration of %s = %d %v", id, code, res)
		}
	}
	// The header is not trusted unless the operator says so.
	if code, _, _ := ts.registerFrom(t, "ex8", "a", "203.0.113.9", ""); code != 429 {
		t.Fatalf("X-Forwarded-For changed the address of an untrusted client: %d", code)
	}
}

// Ensure behind a proxy (MESS_TRUST_PROXY_HEADERS) clients are told apart
// by the address the proxy adds last.
func TestRegisterRateLimit_behindProxy(t *testing.T) {
	ts := startServer(t, withEnv("MESS_REGISTER_RATE", "1"), withEnv("MESS_REGISTER_BURST", "1"), withEnv("MESS_TRUST_PROXY_HEADERS", "true"))
	if code, _, _ := ts.registerFrom(t, "p1", "a", "198.51.100.1, 203.0.113.1", ""); code != 201 {
		t.Fatalf("first client = %d", code)
	}
	if code, _, _ := ts.registerFrom(t, "p2", "a", "198.51.100.2, 203.0.113.1", ""); code != 429 {
		t.Fatalf("same last hop = %d, want 429", code)
	}
	if code, _, _ := ts.registerFrom(t, "p3", "a", "203.0.113.2", ""); code != 201 {
		t.Fatalf("second client = %d", code)
	}
	if code, _, _ := ts.registerFrom(t, "p4", "a", "2001:db8:1:2::1", ""); code != 201 {
		t.Fatalf("IPv6 client = %d", code)
	}
	if code, _, _ := ts.registerFrom(t, "p5", "a", "2001:db8:1:2::99", ""); code != 429 {
		t.Fatalf("another address in the same /64 = %d, want 429", code)
	}
}

// Ensure the operator's cap on exchanges holds, and existing exchanges
// keep taking members.
func TestMaxExchanges(t *testing.T) {
	ts := startServer(t, withEnv("MESS_MAX_EXCHANGES", "2"))
	ts.register(t, "one", "a")
	ts.register(t, "two", "a")
	code, h, res := ts.registerFrom(t, "three", "a", "", "")
	if code != 429 || res["code"] != "rate_limited" || h.Get("Retry-After") == "" || !strings.Contains(res["error"].(string), "2 exchanges") {
		t.Fatalf("third exchange = %d %v", code, res)
	}
	ts.register(t, "two", "b")
	// The cap counts exchanges kept across a restart.
	ts.Stop()
	ts = startServer(t, withDataDir(ts.DataDir), withEnv("MESS_MAX_EXCHANGES", "2"))
	if code, _, _ := ts.registerFrom(t, "three", "a", "", ""); code != 429 {
		t.Fatalf("third exchange after a restart = %d", code)
	}
}

// decodeJSON decodes a JSON answer, failing the test if it is not JSON.
func decodeJSON(t *testing.T, resp *http.Response, out any) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Fatalf("answer %d has Content-Type %q", resp.StatusCode, ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("decode answer %d: %v", resp.StatusCode, err)
	}
}

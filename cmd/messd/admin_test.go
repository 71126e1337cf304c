package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// admin runs "messd admin args..." as main would, with env as the whole
// environment.
func admin(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code, ok := subcommand(append([]string{"admin"}, args...), func(k string) string { return env[k] }, &out, &errb)
	if !ok {
		t.Fatal("admin is not a subcommand")
	}
	return code, out.String(), errb.String()
}

type adminExecutor struct {
	ID      string `json:"id"`
	Owner   bool   `json:"owner"`
	APIKeys []struct {
		ID   string `json:"id"`
		Hash string `json:"hash"`
	} `json:"api_keys"`
}

func TestAdmin_ownerLockedOutGetsBackIn(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, withDataDir(dir))
	oldKey := ts.register(t, "ax", "alice")
	env := map[string]string{"STORAGE_PATH": dir}

	// While messd runs the store is its own: refused, pointing at the
	// operator token mode, and nothing changed.
	code, _, stderr := admin(t, env, "owner-key", "ax")
	if code != 1 || !strings.Contains(stderr, "MESS_ADMIN_TOKEN") || !strings.Contains(stderr, "-url") {
		t.Fatalf("owner-key while messd runs: code %d, %q", code, stderr)
	}
	ts.Stop()

	code, out, stderr := admin(t, env, "executors", "ax")
	if code != 0 {
		t.Fatalf("executors: %d %s", code, stderr)
	}
	var execs []adminExecutor
	if err := json.Unmarshal([]byte(out), &execs); err != nil || len(execs) != 1 || !execs[0].Owner || len(execs[0].APIKeys) != 1 {
		t.Fatalf("executors = %s (%v)", out, err)
	}
	if execs[0].APIKeys[0].Hash != "" {
		t.Errorf("a key hash left the server: %s", out)
	}
	// Revoke every key, even the last: alice is locked out.
	if code, _, stderr := admin(t, env, "revoke-key", "ax", "alice", execs[0].APIKeys[0].ID); code != 0 {
		t.Fatalf("revoke-key: %d %s", code, stderr)
	}
	code, out, stderr = admin(t, env, "owner-key", "ax")
	if code != 0 {
		t.Fatalf("owner-key: %d %s", code, stderr)
	}
	var nk struct {
		ExecutorID string `json:"executor_id"`
		Key        string `json:"api_key"`
	}
	if err := json.Unmarshal([]byte(out), &nk); err != nil || nk.ExecutorID != "alice" || !strings.HasPrefix(nk.Key, "mess_ax_") {
		t.Fatalf("owner-key = %s (%v)", out, err)
	}

	ts = startServer(t, withDataDir(dir))
	if code := ts.do(t, "GET", ts.api("ax")+"/requests", oldKey, nil, nil); code != http.StatusUnauthorized {
		t.Errorf("revoked key: %d, want 401", code)
	}
	// Back in, as the owner: only the owner may invite.
	if code := ts.do(t, "POST", ts.api("ax")+"/invites", nk.Key, map[string]any{}, nil); code != http.StatusCreated {
		t.Errorf("invite with the new owner key: %d, want 201", code)
	}
}

func TestAdmin_operatorToken(t *testing.T) {
	off := startServer(t)
	for _, m := range []string{"GET", "POST", "DELETE"} {
		if code := off.do(t, m, off.URL+"/admin/exchanges", "anything", nil, nil); code != http.StatusNotFound {
			t.Errorf("%s /admin/exchanges without MESS_ADMIN_TOKEN: %d, want 404", m, code)
		}
	}

	const token = "op-secret-token"
	ts := startServer(t, withEnv("MESS_ADMIN_TOKEN", token))
	ts.register(t, "ox", "olga")
	for _, c := range []struct {
		name, method, path, key string
		want                    int
	}{
		{"no token", "GET", "/admin/exchanges", "", 401},
		{"wrong token", "GET", "/admin/exchanges", "op-secret-tokem", 401},
		{"a member's key", "POST", "/admin/exchanges/ox/owner-keys", "mess_ox_0123456789abcdef0123456789abcdef", 401},
		{"unknown admin path", "GET", "/admin/nothing", "", 401},
		{"right token", "GET", "/admin/exchanges", token, 200},
		{"unknown exchange", "POST", "/admin/exchanges/nope/owner-keys", token, 404},
		{"bad exchange id", "GET", "/admin/exchanges/no.pe/executors", token, 400},
		{"unknown key", "DELETE", "/admin/exchanges/ox/executors/olga/keys/k_none", token, 404},
		{"bad invite", "POST", "/admin/exchanges/ox/invites", token, 400},
	} {
		var body any
		if c.name == "bad invite" {
			body = map[string]any{"max_uses": -1}
		}
		if code := ts.do(t, c.method, ts.URL+c.path, c.key, body, nil); code != c.want {
			t.Errorf("%s: %s %s = %d, want %d", c.name, c.method, c.path, code, c.want)
		}
	}

	env := map[string]string{"MESS_ADMIN_TOKEN": token}
	code, out, stderr := admin(t, env, "-url", ts.URL, "exchanges")
	if code != 0 || !strings.Contains(out, `"id":"ox"`) || !strings.Contains(out, `"owner":"olga"`) {
		t.Fatalf("remote exchanges: %d %q %q", code, out, stderr)
	}
	code, out, stderr = admin(t, env, "-url", ts.URL, "invite", "-max-uses", "3", "-ttl", "48h", "ox")
	var inv struct {
		Token   string `json:"token"`
		MaxUses int    `json:"max_uses"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &inv) != nil || inv.MaxUses != 3 || !strings.HasPrefix(inv.Token, "inv_") {
		t.Fatalf("remote invite: %d %q %q", code, out, stderr)
	}
	code, out, stderr = admin(t, env, "-url", ts.URL, "owner-key", "ox")
	var nk struct {
		Key string `json:"api_key"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &nk) != nil {
		t.Fatalf("remote owner-key: %d %q %q", code, out, stderr)
	}
	if code := ts.do(t, "GET", ts.api("ox")+"/requests", nk.Key, nil, nil); code != http.StatusOK {
		t.Errorf("the new owner key: %d", code)
	}
	if code, _, stderr := admin(t, map[string]string{"MESS_ADMIN_TOKEN": "wrong"}, "-url", ts.URL, "exchanges"); code != 1 || !strings.Contains(stderr, "401") {
		t.Errorf("remote with a wrong token: %d %q", code, stderr)
	}
	if code, _, stderr := admin(t, nil, "-url", ts.URL, "exchanges"); code != 1 || !strings.Contains(stderr, "MESS_ADMIN_TOKEN") {
		t.Errorf("remote without a token: %d %q", code, stderr)
	}
}

func TestAdmin_exportRoundTrips(t *testing.T) {
	const token = "export-token"
	dir := t.TempDir()
	ts := startServer(t, withDataDir(dir), withEnv("MESS_ADMIN_TOKEN", token))
	key := ts.register(t, "ex1", "alice")
	other := ts.register(t, "ex2", "bob")
	var refs []string
	for range 5 {
		refs = append(refs, ts.create(t, "ex1", key, map[string]any{"intent": "export me"}))
	}
	ts.create(t, "ex2", other, map[string]any{"intent": "not mine"})

	code, remote, stderr := admin(t, map[string]string{"MESS_ADMIN_TOKEN": token}, "-url", ts.URL, "export", "ex1")
	if code != 0 {
		t.Fatalf("remote export: %d %s", code, stderr)
	}
	ts.Stop()
	code, local, stderr := admin(t, map[string]string{"STORAGE_PATH": dir}, "export", "ex1")
	if code != 0 {
		t.Fatalf("local export: %d %s", code, stderr)
	}
	if remote != local {
		t.Errorf("remote and local exports differ:\n%s\n---\n%s", remote, local)
	}
	var created []string
	sc := bufio.NewScanner(strings.NewReader(local))
	for sc.Scan() {
		var ev struct {
			EventID    string  `json:"event_id"`
			ExchangeID string  `json:"exchange_id"`
			EventType  string  `json:"event_type"`
			ThreadRef  *string `json:"thread_ref"`
		}
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if ev.ExchangeID != "ex1" || ev.EventID == "" {
			t.Errorf("exported an event of another exchange or without id: %s", sc.Text())
		}
		if ev.EventType == "thread_created" && ev.ThreadRef != nil {
			created = append(created, *ev.ThreadRef)
		}
	}
	slices.Sort(created)
	slices.Sort(refs)
	if !slices.Equal(created, refs) {
		t.Errorf("exported thread_created refs %v, want %v", created, refs)
	}
}

func TestAdmin_badInputChangesNothing(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, withDataDir(dir))
	ts.register(t, "bx", "alice")
	ts.Stop()
	snapshot := func() map[string]string {
		out := map[string]string{}
		filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err == nil && !fi.IsDir() {
				b, _ := os.ReadFile(p)
				out[p] = string(b)
			}
			return nil
		})
		return out
	}
	before := snapshot()
	env := map[string]string{"STORAGE_PATH": dir}
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{nil, 2, "a command is required"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"owner-key"}, 2, "takes 1 argument"},
		{[]string{"owner-key", "../etc"}, 2, "invalid exchange id"},
		{[]string{"revoke-key", "bx", "alice"}, 2, "takes 3 argument"},
		{[]string{"revoke-key", "bx", "al/ice", "k_1"}, 2, "invalid executor id"},
		{[]string{"invite", "-max-uses", "0", "bx"}, 2, "-max-uses"},
		{[]string{"invite", "-ttl", "soon", "bx"}, 2, "ttl"},
		{[]string{"owner-key", "nope"}, 1, "exchange not found"},
		{[]string{"revoke-key", "bx", "alice", "k_missing"}, 1, "not found"},
		{[]string{"revoke-key", "bx", "nobody", "k_1"}, 1, "not found"},
		{[]string{"export", "nope"}, 1, "exchange not found"},
		{[]string{"-storage-path", filepath.Join(dir, "missing"), "exchanges"}, 1, "no store at"},
		{[]string{"-url", "ftp://x", "exchanges"}, 1, ""},
	} {
		code, out, stderr := admin(t, env, c.args...)
		if code != c.code || !strings.Contains(stderr, c.msg) || out != "" {
			t.Errorf("admin %q: code %d, stdout %q, stderr %q; want code %d and %q", c.args, code, out, stderr, c.code, c.msg)
		}
	}
	after := snapshot()
	for p, b := range before {
		if after[p] != b {
			t.Errorf("%s changed", p)
		}
	}
	for p := range after {
		if _, ok := before[p]; !ok {
			t.Errorf("%s appeared", p)
		}
	}
}

// On S3 the store has no directory lock: messd admin claims the writer
// record instead, so it refuses while a messd keeps it and works once that
// messd has stopped.
func TestAdmin_s3(t *testing.T) {
	env := s3Env(t)
	env["MESS_OWNER_HEARTBEAT"] = "500ms"
	env["MESS_OWNER_TIMEOUT"] = "2s"
	ts := startServer(t, withS3(env))
	ts.register(t, "s3x", "alice")
	code, out, stderr := admin(t, env, "owner-key", "s3x")
	if code != 1 || out != "" || !strings.Contains(stderr, "MESS_ADMIN_TOKEN") {
		t.Fatalf("owner-key while messd writes: %d %q %q", code, out, stderr)
	}
	ts.Stop()
	code, out, stderr = admin(t, env, "owner-key", "s3x")
	var nk struct {
		Key string `json:"api_key"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &nk) != nil {
		t.Fatalf("owner-key after messd stopped: %d %q %q", code, out, stderr)
	}
	ts = startServer(t, withS3(env))
	if code := ts.do(t, "POST", ts.api("s3x")+"/invites", nk.Key, map[string]any{}, nil); code != http.StatusCreated {
		t.Errorf("invite with the new owner key: %d", code)
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/storage"
)

// migrate runs "messd migrate args..." as main would, with env as the
// whole environment.
func migrate(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code, ok := subcommand(append([]string{"migrate"}, args...), func(k string) string { return env[k] }, &out, &errb)
	if !ok {
		t.Fatal("migrate is not a subcommand")
	}
	return code, out.String(), errb.String()
}

// world is the state a test builds in one exchange, and the keys and
// names to look at it with.
type world struct {
	keys     map[string]string // executor -> API key
	refs     []string
	attached string // ref of the request carrying an attachment
	photo    []byte
	maxToken uint64 // the highest lease token handed out
}

const migEx = "moving"

// buildWorld makes an exchange with executors, requests in every state
// with their histories, an attachment, an invite, mail waiting for two
// agents that never connected, a held lease and a released one.
func buildWorld(t *testing.T, ts *testServer) *world {
	t.Helper()
	w := &world{keys: map[string]string{}}
	for _, id := range []string{"alice", "bob", "carol", "dave"} {
		w.keys[id] = ts.register(t, migEx, id)
	}
	alice, bob := w.keys["alice"], w.keys["bob"]
	for i := range 6 {
		w.refs = append(w.refs, ts.create(t, migEx, alice, map[string]any{"intent": fmt.Sprintf("job %d", i)}))
	}
	steps := []struct {
		ref    int
		key    string
		status string
	}{
		{0, bob, "claimed"},
		{1, bob, "claimed"}, {1, bob, "completed"},
		{2, bob, "declined"},
		{3, alice, "cancelled"},
	}
	for _, s := range steps {
		if code := ts.do(t, "PATCH", ts.api(migEx)+"/requests/"+w.refs[s.ref], s.key, map[string]any{"status": s.status, "message": "to " + s.status}, nil); code != 200 {
			t.Fatalf("%s %s: %d", w.refs[s.ref], s.status, code)
		}
	}
	uri := dataURI("image/png", 30000)
	w.photo, _ = base64.StdEncoding.DecodeString(strings.TrimPrefix(uri, "data:image/png;base64,"))
	w.attached = ts.create(t, migEx, alice, map[string]any{"intent": "look at this", "context": []any{map[string]any{"image": uri}}})
	w.refs = append(w.refs, w.attached)
	if code := ts.do(t, "POST", ts.api(migEx)+"/invites", alice, map[string]any{}, nil); code != http.StatusCreated {
		t.Fatalf("invite: %d", code)
	}
	for _, to := range []string{"carol", "dave"} {
		if code := ts.do(t, "POST", ts.api(migEx)+"/mailbus/send", alice, map[string]any{
			"targetAgent": to, "message": map[string]any{"type": "note.left", "payload": map[string]any{"for": to}}}, nil); code != 200 {
			t.Fatalf("send to %s: %d", to, code)
		}
	}
	ctx := context.Background()
	la, lb := w.leases(t, ts, "alice"), w.leases(t, ts, "bob")
	held, err := la.Acquire(ctx, "held", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	gone, err := lb.Acquire(ctx, "gone", 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := lb.Release(ctx, "gone", gone.Token); err != nil {
		t.Fatal(err)
	}
	w.maxToken = max(held.Token, gone.Token)
	return w
}

func (w *world) leases(t *testing.T, ts *testServer, who string) *lease.Client {
	c := newLeaseClient(t, ts.URL, migEx, w.keys[who], nil)
	t.Cleanup(c.CloseIdleConnections)
	return c
}

// observe reads everything a client can see of the world: every thread
// with its history, the list, each executor's view of itself (so every
// key authenticates), the invites, both inboxes, the leases and the
// attachment's bytes.
func (w *world) observe(t *testing.T, ts *testServer) map[string]any {
	t.Helper()
	got := map[string]any{}
	get := func(path, key string) {
		var v any
		if code := ts.do(t, "GET", ts.api(migEx)+path, key, nil, &v); code != 200 {
			t.Fatalf("GET %s: %d", path, code)
		}
		got[path+" as "+key[:16]] = v
	}
	alice := w.keys["alice"]
	get("/requests?limit=100", alice)
	// A change counter of this process, for long-polls; a restart on the
	// same directory starts it elsewhere too.
	delete(got["/requests?limit=100 as "+alice[:16]].(map[string]any), "version")
	for _, ref := range w.refs {
		get("/requests/"+ref, alice)
	}
	for _, key := range w.keys {
		get("/me", key)
		// Moves with every request the key makes, this one included.
		delete(got["/me as "+key[:16]].(map[string]any)["executor"].(map[string]any), "last_seen")
	}
	get("/invites", alice)
	get("/mailbus/inbox?since=0", w.keys["carol"])
	get("/mailbus/inbox?since=0", w.keys["dave"])
	lc := w.leases(t, ts, "alice")
	for _, name := range []string{"held", "gone"} {
		st, err := lc.Status(context.Background(), name)
		if err != nil {
			t.Fatal(err)
		}
		st.RemainingMs = 0 // the one field that depends on when it is asked
		got["lease "+name] = st
	}
	code, _, b := ts.getAttachment(t, migEx, alice, w.attached, "att-1-1.png")
	if code != 200 || !bytes.Equal(b, w.photo) {
		t.Fatalf("attachment: %d, %d bytes, want %d", code, len(b), len(w.photo))
	}
	return got
}

// same fails the test with the first difference between two observations.
func same(t *testing.T, stage string, want, got map[string]any) {
	t.Helper()
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range want {
			if !yield(k) {
				return
			}
		}
	}) {
		if !reflect.DeepEqual(want[k], got[k]) {
			a, _ := json.Marshal(want[k])
			b, _ := json.Marshal(got[k])
			t.Fatalf("%s: %s differs:\n got %s\nwant %s", stage, k, b, a)
		}
	}
	if len(got) != len(want) {
		t.Fatalf("%s: %d observations, want %d", stage, len(got), len(want))
	}
}

// live checks what only a served store shows: an agent that never
// connected gets its mail when it does, a held lease is refused to
// another, and a new lease's token is above every token handed out.
func (w *world) live(t *testing.T, ts *testServer, agent string) {
	t.Helper()
	ctx := context.Background()
	c := mailClient(t, ts, migEx, w.keys[agent])
	box := make(inbox, 10)
	if _, err := c.Subscribe(ctx, "note.*", box.handle); err != nil {
		t.Fatal(err)
	}
	if err := c.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	if m := box.next(t); m.From != "alice" || !strings.Contains(string(m.Payload), agent) {
		t.Fatalf("%s's mail: %+v", agent, m)
	}
	c.Close(ctx)
	lb := w.leases(t, ts, "bob")
	if _, err := lb.Acquire(ctx, "held", time.Second); !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("alice's lease granted to bob: %v", err)
	}
	g, err := lb.Acquire(ctx, "gone", 10*time.Minute)
	if err != nil || g.Token <= w.maxToken {
		t.Fatalf("new lease token %d (%v), want above %d", g.Token, err, w.maxToken)
	}
	if err := lb.Release(ctx, "gone", g.Token); err != nil {
		t.Fatal(err)
	}
	w.maxToken = g.Token
}

// A data directory moved into a bucket, that bucket into a prefix of
// another, and that back into a new directory, serve the same state each time: threads and their
// histories, keys, invites, attachments, inboxes and leases, with lease
// tokens continuing above the old ones.
func TestMigrate_dirToS3AndBack(t *testing.T) {
	env := s3Env(t)
	env["MESS_OWNER_HEARTBEAT"], env["MESS_OWNER_TIMEOUT"] = "500ms", "2s"
	dir := t.TempDir()
	ts := startServer(t, withDataDir(dir))
	w := buildWorld(t, ts)
	before := w.observe(t, ts)
	ts.Stop()

	code, out, errOut := migrate(t, env, "-from", "dir:"+dir, "-to", "s3")
	if code != 0 || !strings.HasPrefix(out, "migrated dir:"+dir+" to s3:"+env["S3_BUCKET"]+"/: ") || !strings.Contains(out, " 0 already there") {
		t.Fatalf("dir to s3: %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	if !strings.Contains(errOut, "copying: ") || !strings.Contains(errOut, "checked: the target lists all") {
		t.Errorf("progress on stderr: %s", errOut)
	}
	t.Logf("%s%s", errOut, out)
	ts = startServer(t, withS3(env))
	same(t, "on S3", before, w.observe(t, ts))
	w.live(t, ts, "carol")
	// Work done on S3 must come back too.
	w.refs = append(w.refs, ts.create(t, migEx, w.keys["bob"], map[string]any{"intent": "made on S3"}))
	if code := ts.do(t, "PATCH", ts.api(migEx)+"/requests/"+w.refs[0], w.keys["bob"], map[string]any{"status": "completed"}, nil); code != 200 {
		t.Fatalf("complete on S3: %d", code)
	}
	onS3 := w.observe(t, ts)
	ts.Stop()

	// Into another bucket, under a prefix, as a second deployment would be.
	other := s3Env(t)
	env2 := maps.Clone(env)
	env2["S3_BUCKET"], env2["S3_PREFIX"] = other["S3_BUCKET"], "tenant"
	code, out, errOut = migrate(t, env, "-from", "s3", "-to", "s3:"+other["S3_BUCKET"]+"/tenant")
	if code != 0 || !strings.HasPrefix(out, "migrated s3:"+env["S3_BUCKET"]+"/ to s3:"+other["S3_BUCKET"]+"/tenant/: ") {
		t.Fatalf("s3 to s3: %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	ts = startServer(t, withS3(env2))
	same(t, "in the other bucket", onS3, w.observe(t, ts))
	ts.Stop()

	dir2 := filepath.Join(t.TempDir(), "data2")
	code, out, errOut = migrate(t, env2, "-from", "s3", "-to", "dir:"+dir2, "-verify", "-workers", "3")
	if code != 0 || !strings.Contains(out, "verified: every object's bytes match") {
		t.Fatalf("s3 to dir: %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	t.Logf("%s%s", errOut, out)
	// The bucket's owner record stays in the bucket.
	if _, err := os.Stat(filepath.Join(dir2, "owners")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("owners/ in the new directory: %v", err)
	}
	ts = startServer(t, withDataDir(dir2))
	same(t, "back on disk", onS3, w.observe(t, ts))
	w.live(t, ts, "dave")
}

// A directory left by a messd that was killed (journal files with their
// zero-filled tails, nothing trimmed) moves into a bucket and is served
// as the killed server acknowledged it.
func TestMigrate_afterKill(t *testing.T) {
	env := s3Env(t)
	env["MESS_OWNER_HEARTBEAT"], env["MESS_OWNER_TIMEOUT"] = "500ms", "2s"
	dir := t.TempDir()
	cmd, ts := startChild(t, dir)
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	w := buildWorld(t, ts)
	before := w.observe(t, ts)
	cmd.Process.Kill()
	cmd.Wait()

	if code, out, errOut := migrate(t, env, "-from", "dir:"+dir, "-to", "s3", "-verify"); code != 0 {
		t.Fatalf("migrate: %d\n%s%s", code, out, errOut)
	}
	ts = startServer(t, withS3(env))
	same(t, "on S3", before, w.observe(t, ts))
	w.live(t, ts, "carol")
}

// Each refusal leaves both stores as they were and says why in one line.
func TestMigrate_refusesStoresInUse(t *testing.T) {
	t.Run("source directory", func(t *testing.T) {
		ts := startServer(t)
		ts.register(t, migEx, "alice")
		target := filepath.Join(t.TempDir(), "target")
		code, out, errOut := migrate(t, nil, "-from", "dir:"+ts.DataDir, "-to", "dir:"+target)
		if code != 1 || out != "" || errOut != "messd migrate: the source "+ts.DataDir+" is in use by a running messd: stop it first\n" {
			t.Fatalf("%d %q %q", code, out, errOut)
		}
		if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the target was made: %v", err)
		}
	})
	t.Run("target directory", func(t *testing.T) {
		src := t.TempDir()
		startServer(t, withDataDir(src)).Stop()
		ts := startServer(t)
		code, out, errOut := migrate(t, nil, "-from", "dir:"+src, "-to", "dir:"+ts.DataDir)
		if code != 1 || out != "" || !strings.Contains(errOut, "the target "+ts.DataDir+" is in use by a running messd") {
			t.Fatalf("%d %q %q", code, out, errOut)
		}
	})
	t.Run("source bucket", func(t *testing.T) {
		env := s3Env(t)
		env["MESS_OWNER_HEARTBEAT"], env["MESS_OWNER_TIMEOUT"] = "200ms", "1s"
		ts := startServer(t, withS3(env))
		ts.register(t, migEx, "alice")
		target := filepath.Join(t.TempDir(), "target")
		code, out, errOut := migrate(t, env, "-from", "s3", "-to", "dir:"+target)
		lines := strings.Split(strings.TrimSpace(errOut), "\n")
		if code != 1 || out != "" || len(lines) != 2 ||
			!strings.Contains(lines[0], "the source's writer is") || !strings.Contains(lines[0], "waiting up to 1s for it to go silent") ||
			!strings.Contains(lines[1], "is in use by a running messd (its owner record owners/messd.json kept changing for 1s): stop it first") {
			t.Fatalf("%d %q %q", code, out, errOut)
		}
		if _, err := os.Stat(target); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("the target was made: %v", err)
		}
		// The messd kept its claim and still serves.
		ts.register(t, migEx, "bob")
	})
	t.Run("target bucket", func(t *testing.T) {
		env := s3Env(t)
		env["MESS_OWNER_HEARTBEAT"], env["MESS_OWNER_TIMEOUT"] = "200ms", "1s"
		ts := startServer(t, withS3(env))
		ts.register(t, migEx, "alice")
		src := t.TempDir()
		startServer(t, withDataDir(src)).Stop()
		code, out, errOut := migrate(t, env, "-from", "dir:"+src, "-to", "s3", "-force")
		if code != 1 || out != "" || !strings.Contains(errOut, "the target's writer is") ||
			!strings.Contains(errOut, "the target s3:"+env["S3_BUCKET"]+"/ is in use by a running messd") {
			t.Fatalf("%d %q %q", code, out, errOut)
		}
		ts.register(t, migEx, "bob")
	})
}

// storeKeys lists every key of the directory store at dir.
func storeKeys(t *testing.T, dir string) map[string]string {
	t.Helper()
	st, err := storage.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got := map[string]string{}
	for k, err := range storage.Keys(context.Background(), st, "") {
		if err != nil {
			t.Fatal(err)
		}
		obj, err := st.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		got[k] = string(obj.Data)
	}
	return got
}

// A target holding another store's data is refused without -force and
// left as it was; with -force the source's objects are copied over it and
// the others stay.
func TestMigrate_nonEmptyTarget(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	ts := startServer(t, withDataDir(src))
	key := ts.register(t, migEx, "alice")
	ref := ts.create(t, migEx, key, map[string]any{"intent": "the source's"})
	ts.Stop()
	ts = startServer(t, withDataDir(dst))
	other := ts.register(t, "elsewhere", "zed")
	ts.Stop()

	held := storeKeys(t, dst)
	code, out, errOut := migrate(t, nil, "-from", "dir:"+src, "-to", "dir:"+dst)
	if code != 1 || out != "" || !strings.Contains(errOut, "the target already holds other data: ") || !strings.Contains(errOut, "-force") {
		t.Fatalf("without -force: %d %q %q", code, out, errOut)
	}
	if !reflect.DeepEqual(held, storeKeys(t, dst)) {
		t.Fatal("a refused migration changed the target")
	}

	code, out, errOut = migrate(t, nil, "-from", "dir:"+src, "-to", "dir:"+dst, "-force")
	if code != 0 || !strings.Contains(out, "of the target that the source does not have left as they were") || !strings.Contains(errOut, "-force: leaving") {
		t.Fatalf("with -force: %d %q %q", code, out, errOut)
	}
	ts = startServer(t, withDataDir(dst))
	if th := ts.thread(t, migEx, key, ref); th.Thread.Intent != "the source's" {
		t.Fatalf("copied thread: %+v", th.Thread)
	}
	if code := ts.do(t, "GET", ts.api("elsewhere")+"/me", other, nil, nil); code != 200 {
		t.Fatalf("the target's own executor: %d", code)
	}
}

// A copy stopped midway is finished by running it again: what is there is
// skipped, nothing is refused, and an object that differs is refused
// until -force overwrites it.
func TestMigrate_restart(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	ts := startServer(t, withDataDir(src))
	w := buildWorld(t, ts)
	ts.Stop()
	all := storeKeys(t, src)

	// What an interrupted run leaves: some of the objects, each whole.
	st, err := storage.NewFS(dst)
	if err != nil {
		t.Fatal(err)
	}
	var half []string
	for k, v := range all {
		if len(half) < len(all)/2 {
			half = append(half, k)
			if _, err := st.Create(context.Background(), k, []byte(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	st.Close()
	code, out, errOut := migrate(t, nil, "-from", "dir:"+src, "-to", "dir:"+dst)
	want := fmt.Sprintf("(%d copied, %d already there, 0 overwritten)", len(all)-len(half), len(half))
	if code != 0 || !strings.Contains(out, want) {
		t.Fatalf("resume: %d %q %q, want %s", code, out, errOut, want)
	}
	if !reflect.DeepEqual(all, storeKeys(t, dst)) {
		t.Fatal("the finished copy differs from the source")
	}

	// One object changed on the target: not an interrupted copy any more.
	st, _ = storage.NewFS(dst)
	if _, err := st.Put(context.Background(), half[0], []byte("changed")); err != nil {
		t.Fatal(err)
	}
	st.Close()
	code, out, errOut = migrate(t, nil, "-from", "dir:"+src, "-to", "dir:"+dst)
	if code != 1 || !strings.Contains(errOut, "1 object that differ") || !strings.Contains(errOut, half[0]) {
		t.Fatalf("changed target without -force: %d %q %q", code, out, errOut)
	}
	code, out, errOut = migrate(t, nil, "-from", "dir:"+src, "-to", "dir:"+dst, "-force", "-verify")
	if code != 0 || !strings.Contains(out, "(0 copied, "+fmt.Sprint(len(all)-1)+" already there, 1 overwritten)") {
		t.Fatalf("with -force: %d %q %q", code, out, errOut)
	}
	ts = startServer(t, withDataDir(dst))
	w.observe(t, ts)
}

func TestMigrate_badArguments(t *testing.T) {
	dir := t.TempDir()
	s3 := map[string]string{"S3_ENDPOINT": "127.0.0.1:1", "S3_BUCKET": "b", "S3_ACCESS_KEY": "k", "S3_SECRET_KEY": "s"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no from", nil, []string{"-to", "dir:" + dir}, "-from is required"},
		{"no to", nil, []string{"-from", "dir:" + dir}, "-to is required"},
		{"unknown kind", nil, []string{"-from", "disk:" + dir, "-to", "dir:x"}, `-from: want dir:PATH, s3 or s3:BUCKET[/PREFIX], got "disk:` + dir + `"`},
		{"bare path", nil, []string{"-from", dir, "-to", "dir:x"}, "-from: want dir:PATH"},
		{"empty dir", nil, []string{"-from", "dir:", "-to", "dir:x"}, `-from: want dir:PATH, s3 or s3:BUCKET[/PREFIX], got "dir:"`},
		{"same dir", nil, []string{"-from", "dir:" + dir, "-to", "dir:" + dir + "/"}, "overlap"},
		{"dir inside", nil, []string{"-from", "dir:" + dir, "-to", "dir:" + dir + "/copy"}, "overlap"},
		{"same bucket", s3, []string{"-from", "s3", "-to", "s3:b/x"}, "overlap"},
		{"no bucket", map[string]string{"S3_ENDPOINT": "127.0.0.1:1"}, []string{"-from", "dir:" + dir, "-to", "s3"}, "-to: \"s3\" names no bucket"},
		{"no endpoint", nil, []string{"-from", "s3:b", "-to", "dir:" + dir}, "S3_ENDPOINT (or -s3-endpoint) is not set"},
		{"bad prefix", s3, []string{"-from", "dir:" + dir, "-to", "s3:b/a b"}, `prefix "a b" is not a storage key`},
		{"workers", nil, []string{"-from", "dir:" + dir, "-to", "dir:x", "-workers", "0"}, "-workers: want 1 to 256, got 0"},
		{"unknown flag", nil, []string{"-from", "dir:" + dir, "-to", "dir:x", "-fast"}, "flag provided but not defined: -fast"},
		{"stray argument", nil, []string{"-from", "dir:" + dir, "-to", "dir:x", "now"}, `unexpected argument "now"`},
		{"bad setting", map[string]string{"MESS_OWNER_TIMEOUT": "soon"}, []string{"-from", "dir:" + dir, "-to", "dir:x"}, "MESS_OWNER_TIMEOUT"},
		{"short timeout", nil, []string{"-from", "dir:" + dir, "-to", "dir:x", "-owner-timeout", "1s"}, "at least three heartbeats"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := migrate(t, tc.env, tc.args...)
			if code != 2 || out != "" || strings.Count(errOut, "\n") != 1 || !strings.HasPrefix(errOut, "messd migrate: ") || !strings.Contains(errOut, tc.want) {
				t.Fatalf("%d %q %q, want exit 2 and one line with %q", code, out, errOut, tc.want)
			}
		})
	}
	// Nothing was made where a path pointed.
	if _, err := os.Stat("x"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("./x: %v", err)
	}
	// A source that is not there is refused, and not made.
	missing := filepath.Join(dir, "nothing")
	code, _, errOut := migrate(t, nil, "-from", "dir:"+missing, "-to", "dir:"+filepath.Join(dir, "t"))
	if code != 1 || errOut != "messd migrate: the source "+missing+" is not a data directory\n" {
		t.Fatalf("missing source: %d %q", code, errOut)
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the missing source was made: %v", err)
	}
}

// copier works on any two stores; these cases run on memory stores.
func TestCopier(t *testing.T) {
	ctx := context.Background()
	fill := func(t *testing.T, s storage.Store, kv map[string]string) {
		for k, v := range kv {
			if _, err := s.Put(ctx, k, []byte(v)); err != nil {
				t.Fatal(err)
			}
		}
	}
	dump := func(t *testing.T, s storage.Store) map[string]string {
		got := map[string]string{}
		for k, err := range storage.Keys(ctx, s, "") {
			if err != nil {
				t.Fatal(err)
			}
			obj, _ := s.Get(ctx, k)
			got[k] = string(obj.Data)
		}
		return got
	}
	source := map[string]string{"events/a/1.jsonl": "one\n", "mailbus/x/log/2.jsonl": "two\n", "exchanges/x.json": "{}", "empty": "",
		"owners/messd.json": `{"epoch":7}`, "probe/conditional-1": "1"}
	for n := range 300 {
		source[fmt.Sprintf("attachments/exchange=x/r/%04d", n)] = strings.Repeat("z", n)
	}
	copied := func(kv map[string]string) map[string]string {
		out := map[string]string{}
		for k, v := range kv {
			if !strings.HasPrefix(k, "owners/") && !strings.HasPrefix(k, "probe/") {
				out[k] = v
			}
		}
		return out
	}
	quiet := func(string, ...any) {}

	t.Run("everything but owners and probes", func(t *testing.T) {
		src, dst := storage.NewMemory(), storage.NewMemory()
		fill(t, src, source)
		c := copier{src: src, dst: dst, workers: 4, verify: true, logf: quiet, every: time.Hour}
		res, err := c.run(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := copied(source)
		if got := dump(t, dst); !reflect.DeepEqual(got, want) {
			t.Fatalf("target has %d keys, want %d", len(got), len(want))
		}
		if res.objects != int64(len(want)) || res.copied != res.objects || !res.verified {
			t.Fatalf("result %+v", res)
		}
	})

	t.Run("an interrupted copy finishes", func(t *testing.T) {
		src, mem := storage.NewMemory(), storage.NewMemory()
		fill(t, src, source)
		dst := &failingCreates{Store: mem, after: 100}
		c := copier{src: src, dst: dst, workers: 8, logf: quiet, every: time.Hour}
		if _, err := c.run(ctx); !errors.Is(err, errDiskFull) {
			t.Fatalf("first run: %v", err)
		}
		if n := len(dump(t, mem)); n != 100 {
			t.Fatalf("first run left %d objects, want 100", n)
		}
		c.dst = mem
		res, err := c.run(ctx)
		if err != nil || res.present != 100 || res.copied != res.objects-100 {
			t.Fatalf("second run: %+v %v", res, err)
		}
		if !reflect.DeepEqual(dump(t, mem), copied(source)) {
			t.Fatal("the finished copy differs from the source")
		}
	})

	t.Run("other data is refused, or kept with force", func(t *testing.T) {
		src, dst := storage.NewMemory(), storage.NewMemory()
		fill(t, src, source)
		theirs := map[string]string{"exchanges/other.json": "theirs", "owners/messd.json": "their owner"}
		fill(t, dst, theirs)
		c := copier{src: src, dst: dst, workers: 4, logf: quiet, every: time.Hour}
		if _, err := c.run(ctx); !errors.Is(err, errTargetHoldsData) {
			t.Fatalf("without force: %v", err)
		}
		if got := dump(t, dst); !reflect.DeepEqual(got, theirs) {
			t.Fatalf("a refused copy changed the target: %v", got)
		}
		c.force = true
		res, err := c.run(ctx)
		if err != nil || res.foreign != 1 || res.copied != res.objects {
			t.Fatalf("with force: %+v %v", res, err)
		}
		want := copied(source)
		maps.Copy(want, theirs)
		if got := dump(t, dst); !reflect.DeepEqual(got, want) {
			t.Fatal("with force the target is not the source plus its own objects")
		}
	})

	t.Run("verify compares bytes", func(t *testing.T) {
		src, mem := storage.NewMemory(), storage.NewMemory()
		fill(t, src, source)
		dst := &corruptRead{Store: mem, key: "exchanges/x.json"}
		c := copier{src: src, dst: dst, workers: 2, logf: quiet, every: time.Hour}
		if _, err := c.run(ctx); err != nil {
			t.Fatalf("without -verify: %v", err)
		}
		c.verify = true
		if _, err := c.run(ctx); err == nil {
			t.Fatal("a corrupt copy passed -verify")
		}
	})

	t.Run("progress", func(t *testing.T) {
		src, dst := storage.NewMemory(), storage.NewMemory()
		fill(t, src, source)
		var lines []string
		c := copier{src: src, dst: dst, workers: 3, logf: func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }, every: time.Hour}
		if _, err := c.run(ctx); err != nil {
			t.Fatal(err)
		}
		n := len(copied(source))
		want := fmt.Sprintf("copying: %d/%d objects", n, n)
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, want) }) {
			t.Fatalf("no %q in %q", want, lines)
		}
	})
}

var errDiskFull = errors.New("disk full")

// failingCreates fails every Create after the first after.
type failingCreates struct {
	storage.Store
	mu    sync.Mutex
	after int
}

func (f *failingCreates) Create(ctx context.Context, key string, data []byte) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.after == 0 {
		return "", errDiskFull
	}
	f.after--
	return f.Store.Create(ctx, key, data)
}

// corruptRead serves one key's bytes changed, as a damaged copy would.
type corruptRead struct {
	storage.Store
	key string
}

func (c *corruptRead) Get(ctx context.Context, key string) (storage.Object, error) {
	obj, err := c.Store.Get(ctx, key)
	if key == c.key && err == nil {
		obj.Data = append(slices.Clone(obj.Data), 'x')
	}
	return obj, err
}

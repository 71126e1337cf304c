package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/internal/miniotest"
)

// minio is one MinIO server shared by this package's tests, started on
// first use and stopped after the tests (see TestMain).
var minio struct {
	once sync.Once
	srv  *miniotest.Server
	dir  string
	err  error
}

func stopMinio() {
	if minio.srv != nil {
		minio.srv.Stop()
		os.RemoveAll(minio.dir)
	}
}

// s3Env starts MinIO if needed, makes a fresh bucket and returns the
// settings that point messd at it.
func s3Env(t testing.TB) map[string]string {
	t.Helper()
	minio.once.Do(func() {
		if minio.dir, minio.err = os.MkdirTemp("", "messd-minio"); minio.err == nil {
			minio.srv, minio.err = miniotest.Start(minio.dir)
		}
	})
	if minio.err != nil {
		t.Fatalf("MinIO: %v", minio.err)
	}
	bucket, err := minio.srv.NewBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return map[string]string{
		"STORAGE_TYPE": "s3", "S3_ENDPOINT": minio.srv.Endpoint, "S3_BUCKET": bucket,
		"S3_ACCESS_KEY": miniotest.AccessKey, "S3_SECRET_KEY": miniotest.SecretKey,
	}
}

func withS3(env map[string]string) serverOption {
	return func(e map[string]string) {
		for k, v := range env {
			e[k] = v
		}
	}
}

// Every service keeps its state in the bucket: after a restart on the
// same bucket the thread, the mail waiting for an offline agent and the
// lease are all there.
func TestS3_ServicesSurviveRestart(t *testing.T) {
	env := s3Env(t)
	ts := startServer(t, withS3(env))
	var health map[string]string
	if code := ts.do(t, "GET", ts.URL+"/health", "", nil, &health); code != 200 || health["storage"] != "s3" {
		t.Fatalf("health: %d %v", code, health)
	}
	alice := ts.register(t, "s3home", "alice")
	bob := ts.register(t, "s3home", "bob")
	ref := ts.create(t, "s3home", alice, map[string]any{"intent": "Check the front door"})
	if code := ts.do(t, "PATCH", ts.api("s3home")+"/requests/"+ref, bob, map[string]any{"status": "claimed"}, nil); code != 200 {
		t.Fatalf("claim: %d", code)
	}
	if code := ts.do(t, "POST", ts.api("s3home")+"/mailbus/send", alice, map[string]any{
		"targetAgent": "bob", "message": map[string]any{"type": "task.assigned", "payload": map[string]any{"ref": ref}}}, nil); code != 200 {
		t.Fatalf("send: %d", code)
	}
	var grant struct {
		Acquired bool   `json:"acquired"`
		Token    uint64 `json:"token"`
	}
	if code := ts.do(t, "POST", ts.api("s3home")+"/leases/acquire", bob, map[string]any{"file": "door.txt", "ttlMs": 600000}, &grant); code != 200 || !grant.Acquired {
		t.Fatalf("acquire: %d %+v", code, grant)
	}
	ts.Stop()

	ts = startServer(t, withS3(env))
	if th := ts.thread(t, "s3home", alice, ref); th.Thread.Status != "claimed" || th.Thread.ExecutorID == nil || *th.Thread.ExecutorID != "bob" {
		t.Fatalf("after restart: %+v", th.Thread)
	}
	var in struct {
		Messages []struct {
			Type string `json:"type"`
			From string `json:"from"`
		} `json:"messages"`
	}
	if code := ts.do(t, "GET", ts.api("s3home")+"/mailbus/inbox?since=0", bob, nil, &in); code != 200 || len(in.Messages) != 1 || in.Messages[0].From != "alice" {
		t.Fatalf("inbox after restart: %d %+v", code, in)
	}
	var st struct {
		IsLeased bool   `json:"isLeased"`
		AgentID  string `json:"agentId"`
		Token    uint64 `json:"token"`
	}
	if code := ts.do(t, "POST", ts.api("s3home")+"/leases/status", bob, map[string]any{"file": "door.txt"}, &st); code != 200 || !st.IsLeased || st.AgentID != "bob" || st.Token != grant.Token {
		t.Fatalf("lease after restart: %d %+v, want bob's token %d", code, st, grant.Token)
	}
	// Keys still work, and a new key made now is accepted after a restart.
	if code := ts.do(t, "PATCH", ts.api("s3home")+"/requests/"+ref, bob, map[string]any{"status": "completed"}, nil); code != 200 {
		t.Fatalf("complete after restart: %d", code)
	}
}

func freeAddr(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startS3Child runs messd as a process on the bucket at a known address,
// without waiting for it to serve (a standby never does).
func startS3Child(t *testing.T, env map[string]string, addr string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "MESSD_TEST_CHILD="+t.TempDir()+"/addr", "ADDR="+addr,
		"MESS_OPEN_REGISTRATION=true", "LOG_LEVEL=warn", "MESS_OWNER_HEARTBEAT=500ms", "MESS_OWNER_TIMEOUT=5s")
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd
}

// waitRole waits until url (a /health) names role.
func waitRole(t *testing.T, url, role string, within time.Duration) {
	t.Helper()
	c := http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(within)
	for {
		if resp, err := c.Get(url); err == nil {
			var h struct {
				Role string `json:"role"`
			}
			json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if h.Role == role {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never said role %q", url, role)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// statusOf GETs url and returns the status, 0 when nothing answers.
func statusOf(url string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func waitStatus(t *testing.T, url string, want int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < within {
		if statusOf(url) == want {
			return time.Since(start)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not answer %d within %v (last %d)", url, want, within, statusOf(url))
	return 0
}

// Two messd on one bucket: one writes, the other is alive but not ready;
// when the writer is killed the standby takes over within the timeout
// and serves everything the writer acknowledged.
func TestS3_StandbyTakesOverAfterKill(t *testing.T) {
	env := s3Env(t)
	addrA, addrB := freeAddr(t), freeAddr(t)
	a := startS3Child(t, env, addrA)
	waitStatus(t, "http://"+addrA+"/ready", 200, 30*time.Second)
	b := startS3Child(t, env, addrB)
	waitStatus(t, "http://"+addrB+"/health", 200, 30*time.Second)
	if code := statusOf("http://" + addrB + "/ready"); code != 503 {
		t.Fatalf("standby /ready = %d, want 503", code)
	}
	var health map[string]string
	if code := (&testServer{URL: "http://" + addrB}).do(t, "GET", "http://"+addrB+"/health", "", nil, &health); code != 200 || health["role"] != "standby" || health["version"] == "" || health["storage"] != "s3" {
		t.Fatalf("standby /health: %d %v", code, health)
	}
	tsA := &testServer{URL: "http://" + addrA}
	key := tsA.register(t, "ha", "alice")
	var refs []string
	for i := range 20 {
		refs = append(refs, tsA.create(t, "ha", key, map[string]any{"intent": fmt.Sprintf("job %d", i)}))
	}
	if code := statusOf("http://" + addrB + "/api/v1/exchanges/ha/requests"); code != 503 {
		t.Fatalf("standby served the API: %d", code)
	}

	a.Process.Signal(syscall.SIGKILL)
	a.Wait()
	took := waitStatus(t, "http://"+addrB+"/ready", 200, 30*time.Second)
	t.Logf("standby ready %v after the writer was killed (timeout 5s)", took.Round(time.Millisecond))
	tsB := &testServer{URL: "http://" + addrB}
	for _, ref := range refs {
		if th := tsB.thread(t, "ha", key, ref); th.Thread.Status != "pending" {
			t.Fatalf("%s after takeover: %+v", ref, th.Thread)
		}
	}
	tsB.create(t, "ha", key, map[string]any{"intent": "after the takeover"})
	_ = b
}

// A writer that is paused past the timeout is replaced; when it resumes it
// learns so at its next heartbeat, stops serving and exits.
func TestS3_PausedWriterStepsDown(t *testing.T) {
	env := s3Env(t)
	addrA, addrB := freeAddr(t), freeAddr(t)
	a := startS3Child(t, env, addrA)
	waitStatus(t, "http://"+addrA+"/ready", 200, 30*time.Second)
	startS3Child(t, env, addrB)
	waitStatus(t, "http://"+addrB+"/health", 200, 30*time.Second)

	tsA := &testServer{URL: "http://" + addrA}
	keyA := tsA.register(t, "paused", "early")
	a.Process.Signal(syscall.SIGSTOP)
	waitStatus(t, "http://"+addrB+"/ready", 200, 30*time.Second)
	a.Process.Signal(syscall.SIGCONT)
	// The replaced writer serves nothing more and waits as a standby.
	waitRole(t, "http://"+addrA+"/health", "standby", 20*time.Second)
	if code := statusOf("http://" + addrA + "/ready"); code != http.StatusServiceUnavailable {
		t.Fatalf("replaced writer /ready = %d", code)
	}
	req, _ := http.NewRequest("GET", tsA.URL+"/api/v1/exchanges/paused/requests", nil)
	req.Header.Set("Authorization", "Bearer "+keyA)
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("replaced writer answered %d", resp.StatusCode)
		}
	}
	tsB := &testServer{URL: "http://" + addrB}
	key := tsB.register(t, "paused", "alice")
	tsB.create(t, "paused", key, map[string]any{"intent": "served by the new writer"})
}

// A standby told to stop while it waits exits cleanly, and the writer
// keeps serving.
func TestS3_StandbyStopsCleanly(t *testing.T) {
	env := s3Env(t)
	addrA, addrB := freeAddr(t), freeAddr(t)
	startS3Child(t, env, addrA)
	waitStatus(t, "http://"+addrA+"/ready", 200, 30*time.Second)
	b := startS3Child(t, env, addrB)
	waitStatus(t, "http://"+addrB+"/health", 200, 30*time.Second)
	b.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- b.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("standby stopped with %v, want exit 0", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("standby did not stop")
	}
	if code := statusOf("http://" + addrA + "/ready"); code != 200 {
		t.Fatalf("writer /ready = %d after the standby stopped", code)
	}
}

package mailbus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/storage"
)

// serveChild runs a bus server on dir until the process is killed, writing
// its address to dir/addr.
func serveChild(dir string) {
	st, err := storage.NewFS(filepath.Join(dir, "data"))
	if err != nil {
		panic(err)
	}
	b, err := mailbus.New(context.Background(), mailbus.Config{Store: st})
	if err != nil {
		panic(err)
	}
	h, err := mailbus.NewHandler(b, mailbus.HandlerConfig{Auth: keyAuth{}})
	if err != nil {
		panic(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	tmp := filepath.Join(dir, "addr.tmp")
	os.WriteFile(tmp, []byte(ln.Addr().String()), 0o644)
	os.Rename(tmp, filepath.Join(dir, "addr"))
	http.Serve(ln, h)
}

func startChild(t *testing.T, dir string) (url string, kill func()) {
	t.Helper()
	os.Remove(filepath.Join(dir, "addr"))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "MAILBUS_TEST_SERVE="+dir)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill = func() {
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
	}
	t.Cleanup(kill)
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(filepath.Join(dir, "addr")); err == nil {
			return "http://" + string(b), kill
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("child server did not start")
	return "", nil
}

// TestBus_SIGKILL checks that every message the server accepted survives
// a SIGKILL that comes before its delivery.
func TestBus_SIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns a server process")
	}
	dir := t.TempDir()
	url, kill := startChild(t, dir)
	api := func(u, op string) string { return u + "/api/v1/exchanges/ex/mailbus/" + op }
	if code := post(t, "PUT", api(url, "subscriptions"), key("ex", "w"), mailbus.SubscriptionsBody{Types: []string{"task.*"}}, nil); code != 200 {
		t.Fatal(code)
	}
	// Concurrent senders: whatever got a 2xx before the kill must survive.
	ctx, cancel := context.WithCancel(context.Background())
	accepted := make(chan string, 100000)
	done := make(chan struct{})
	for g := range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := 0; ctx.Err() == nil; i++ {
				m := mailbus.Message{Type: "task.created", Payload: json.RawMessage(fmt.Sprintf(`{"g":%d,"i":%d}`, g, i)), AckRequired: i%3 == 0}
				body, _ := json.Marshal(mailbus.SendRequest{TargetAgent: "w", Message: m})
				op := "send"
				if i%2 == 0 {
					body, _ = json.Marshal(m)
					op = "publish"
				}
				req, _ := http.NewRequestWithContext(ctx, "POST", api(url, op), strings.NewReader(string(body)))
				req.Header.Set("Authorization", "Bearer "+key("ex", fmt.Sprintf("s%d", g)))
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return
				}
				var out mailbus.Message
				err = json.NewDecoder(resp.Body).Decode(&out)
				resp.Body.Close()
				if err == nil && resp.StatusCode == 200 {
					accepted <- out.ID
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	kill()
	cancel()
	for range 8 {
		<-done
	}
	close(accepted)
	want := map[string]bool{}
	for id := range accepted {
		want[id] = true
	}
	if len(want) == 0 {
		t.Fatal("no message accepted before the kill")
	}

	url2, _ := startChild(t, dir)
	got := map[string]bool{}
	since := uint64(0)
	for {
		var res mailbus.InboxResponse
		if code := post(t, "GET", api(url2, fmt.Sprintf("inbox?since=%d&limit=1000", since)), key("ex", "w"), nil, &res); code != 200 {
			t.Fatal(code)
		}
		for _, m := range res.Messages {
			if m.Seq != since+1 {
				t.Fatalf("gap: seq %d after %d", m.Seq, since)
			}
			since = m.Seq
			got[m.ID] = true
		}
		if len(res.Messages) == 0 {
			break
		}
	}
	for id := range want {
		if !got[id] {
			t.Errorf("accepted message %s lost", id)
		}
	}
	t.Logf("%d accepted before SIGKILL, %d recovered", len(want), len(got))
}

// TestBus_Restart checks state (inbox, subscriptions, acks, cursor) after
// a clean restart on the same store.
func TestBus_Restart(t *testing.T) {
	dir := t.TempDir()
	e := startEnvDir(t, mailbus.Config{}, dir)
	post(t, "PUT", e.url("ex", "subscriptions"), key("ex", "w"), mailbus.SubscriptionsBody{Types: []string{"a.*"}}, nil)
	var acked mailbus.Message
	post(t, "POST", e.url("ex", "send"), key("ex", "b"), mailbus.SendRequest{TargetAgent: "w", Message: mailbus.Message{Type: "j", AckRequired: true}}, &acked)
	post(t, "POST", e.url("ex", "acknowledge"), key("ex", "w"), mailbus.AckRequest{MessageID: acked.ID}, nil)
	post(t, "POST", e.url("ex", "publish"), key("ex", "b"), mailbus.Message{Type: "a.b"}, nil)
	e.stop()

	e2 := startEnvDir(t, mailbus.Config{}, dir)
	var subs mailbus.SubscriptionsBody
	post(t, "GET", e2.url("ex", "subscriptions"), key("ex", "w"), nil, &subs)
	if len(subs.Types) != 1 || subs.Types[0] != "a.*" {
		t.Errorf("subscriptions %v", subs.Types)
	}
	var res mailbus.InboxResponse
	post(t, "GET", e2.url("ex", "inbox?since=0"), key("ex", "w"), nil, &res)
	if len(res.Messages) != 2 || res.Messages[0].AckedAt == nil || res.Messages[1].Type != "a.b" {
		t.Fatalf("inbox after restart %+v", res.Messages)
	}
	post(t, "POST", e2.url("ex", "publish"), key("ex", "b"), mailbus.Message{Type: "a.c"}, nil)
	post(t, "GET", e2.url("ex", "inbox?since=2"), key("ex", "w"), nil, &res)
	if len(res.Messages) != 1 || res.Messages[0].Seq != 3 {
		t.Fatalf("new message after restart %+v", res.Messages)
	}
}

// TestBus_Compaction checks that snapshots replace the journal without
// changing the state, acknowledgements included.
func TestBus_Compaction(t *testing.T) {
	dir := t.TempDir()
	e := startEnvDir(t, mailbus.Config{SnapshotEvery: 10, RetentionCount: 15}, dir)
	ids := map[int]string{}
	for i := range 40 {
		var sent mailbus.Message
		m := mailbus.Message{Type: "j", Payload: json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)), AckRequired: i%5 == 0}
		post(t, "POST", e.url("ex", "send"), key("ex", "b"), mailbus.SendRequest{TargetAgent: "w", Message: m}, &sent)
		ids[i] = sent.ID
		if i == 25 {
			// Followed by enough records for a snapshot to hold it.
			if code := post(t, "POST", e.url("ex", "acknowledge"), key("ex", "w"), mailbus.AckRequest{MessageID: sent.ID}, nil); code != 200 {
				t.Fatalf("acknowledge: %d", code)
			}
		}
	}
	e.stop() // waits for the snapshot in progress
	logs, _ := filepath.Glob(filepath.Join(dir, "mailbus", "ex", "log", "*"))
	snaps, _ := filepath.Glob(filepath.Join(dir, "mailbus", "ex", "snap", "*"))
	if len(snaps) == 0 || len(logs) >= 40 {
		t.Errorf("%d snapshots, %d journal objects: compaction did not run", len(snaps), len(logs))
	}
	e2 := startEnvDir(t, mailbus.Config{RetentionCount: 15}, dir)
	var res mailbus.InboxResponse
	post(t, "GET", e2.url("ex", "inbox?since=0"), key("ex", "w"), nil, &res)
	if len(res.Messages) != 15 || res.Messages[0].Seq != 26 || res.Messages[14].Seq != 40 {
		t.Fatalf("got %d messages, first %+v", len(res.Messages), res.Messages)
	}
	var p struct{ I int }
	json.Unmarshal(res.Messages[14].Payload, &p)
	if p.I != 39 {
		t.Errorf("last payload %d", p.I)
	}
	for _, m := range res.Messages {
		i := int(m.Seq) - 1
		if m.AckRequired != (i%5 == 0) || (m.AckedAt != nil) != (i == 25) {
			t.Errorf("message %d after restart: ackRequired %v, ackedAt %v", i, m.AckRequired, m.AckedAt)
		}
	}
	// Still waiting for its acknowledgement, and still taking one.
	if code := post(t, "POST", e2.url("ex", "acknowledge"), key("ex", "w"), mailbus.AckRequest{MessageID: ids[35]}, nil); code != 200 {
		t.Errorf("acknowledge after restart: %d", code)
	}
	if code := post(t, "POST", e2.url("ex", "acknowledge"), key("ex", "w"), mailbus.AckRequest{MessageID: ids[36]}, nil); code != 404 {
		t.Errorf("acknowledge a message that needs none: %d, want 404", code)
	}
}

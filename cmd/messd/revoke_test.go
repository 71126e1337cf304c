package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/lease"
)

// revokeBound is how soon after a key's rotation everything it opened
// must have ended. The mechanism is immediate (a closed channel); the
// bound only keeps the test stable on a busy machine.
const revokeBound = 3 * time.Second

// rotate replaces every key of executor id with a new one, using key, and
// returns when the server has answered: from then on key admits nobody.
func (ts *testServer) rotate(t *testing.T, exchange, id, key string) {
	t.Helper()
	if code := ts.do(t, "POST", ts.api(exchange)+"/executors/"+id+"/keys", key, map[string]any{"revoke_others": true}, nil); code != 201 {
		t.Fatalf("rotate %s's keys = %d", id, code)
	}
}

// waitSeen waits until executor id has been seen (its last_seen is set),
// which happens when a request of its authenticates: the key's first use
// is the wait under test, so when this returns that wait has been
// admitted and watches its key.
func (ts *testServer) waitSeen(t *testing.T, exchange, observerKey, id string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; {
		var res struct {
			Executor struct {
				LastSeen *time.Time `json:"last_seen"`
			} `json:"executor"`
		}
		ts.do(t, "GET", ts.api(exchange)+"/executors/"+id, observerKey, nil, &res)
		if res.Executor.LastSeen != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s's request never authenticated", id)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Ensure rotating a key ends the event stream it opened with a revoked
// event, at once.
func TestRevokedKey_endsEventStream(t *testing.T) {
	ts := startServer(t)
	ts.register(t, "rv", "owner")
	key := ts.register(t, "rv", "carol")
	req, _ := http.NewRequest("GET", ts.api("rv")+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("events = %d", resp.StatusCode)
	}
	ended := make(chan []string, 1)
	go func() {
		var lines []string
		r := bufio.NewReader(resp.Body)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				ended <- lines
				return
			}
			if line != "\n" && !strings.HasPrefix(line, ":") {
				lines = append(lines, strings.TrimSuffix(line, "\n"))
			}
		}
	}()
	ts.rotate(t, "rv", "carol", key)
	revokedAt := time.Now()
	select {
	case lines := <-ended:
		if took := time.Since(revokedAt); took > revokeBound {
			t.Errorf("stream ended %v after the rotation", took)
		}
		want := []string{"event: revoked", `data: {"error":"API key revoked","code":"unauthorized"}`}
		if len(lines) < 2 || strings.Join(lines[len(lines)-2:], "\n") != strings.Join(want, "\n") {
			t.Fatalf("stream ended with %q, want %q", lines, want)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the stream outlived its key")
	}
}

// Ensure rotating a key ends both long-polls waiting on it with a 401, at
// once.
func TestRevokedKey_endsLongPolls(t *testing.T) {
	ts := startServer(t)
	owner := ts.register(t, "rv", "owner")
	ref := ts.create(t, "rv", owner, map[string]any{"intent": "watch me"})
	for i, path := range []string{"/requests?wait=100", "/requests/" + ref + "?wait=100"} {
		t.Run(path, func(t *testing.T) {
			id := fmt.Sprintf("poller%d", i)
			key := ts.register(t, "rv", id)
			type answer struct {
				code int
				body map[string]any
				at   time.Time
			}
			done := make(chan answer, 1)
			go func() {
				var a answer
				a.code = ts.do(t, "GET", ts.api("rv")+path, key, nil, &a.body)
				a.at = time.Now()
				done <- a
			}()
			ts.waitSeen(t, "rv", owner, id)
			ts.rotate(t, "rv", id, key)
			revokedAt := time.Now()
			select {
			case a := <-done:
				if a.code != 401 || a.body["code"] != "unauthorized" || a.body["error"] != "API key revoked" {
					t.Fatalf("long-poll = %d %v, want 401 API key revoked", a.code, a.body)
				}
				if took := a.at.Sub(revokedAt); took > revokeBound {
					t.Errorf("long-poll answered %v after the rotation", took)
				}
			case <-time.After(30 * time.Second):
				t.Fatal("the long-poll outlived its key")
			}
		})
	}
}

// Ensure rotating a key ends a blocking lease acquire made with it with a
// 401, at once.
func TestRevokedKey_endsLeaseWait(t *testing.T) {
	ts := startServer(t)
	owner := ts.register(t, "rv", "owner")
	holder := newLeaseClient(t, ts.URL, "rv", owner, nil)
	defer holder.CloseIdleConnections()
	if _, err := holder.Acquire(context.Background(), "shared.txt", time.Minute); err != nil {
		t.Fatal(err)
	}
	key := ts.register(t, "rv", "waiter")
	waiter := newLeaseClient(t, ts.URL, "rv", key, nil)
	defer waiter.CloseIdleConnections()
	type answer struct {
		err error
		at  time.Time
	}
	done := make(chan answer, 1)
	go func() {
		_, err := waiter.AcquireWait(context.Background(), "shared.txt", time.Minute, 50*time.Second)
		done <- answer{err, time.Now()}
	}()
	ts.waitSeen(t, "rv", owner, "waiter")
	ts.rotate(t, "rv", "waiter", key)
	revokedAt := time.Now()
	select {
	case a := <-done:
		if !errors.Is(a.err, lease.ErrUnauthorized) {
			t.Fatalf("acquire = %v, want ErrUnauthorized", a.err)
		}
		if took := a.at.Sub(revokedAt); took > revokeBound {
			t.Errorf("acquire answered %v after the rotation", took)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the acquire outlived its key")
	}
	// The answer is the API's JSON.
	req, _ := http.NewRequest("POST", ts.api("rv")+"/leases/acquire", strings.NewReader(`{"file":"shared.txt","ttlMs":1000,"waitMs":1000}`))
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || !strings.Contains(string(b), `"unauthorized"`) {
		t.Fatalf("acquire with the old key = %d %s", resp.StatusCode, b)
	}
}

package notify_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
)

func TestService_compactionKeepsState(t *testing.T) { onBackends(t, testCompactionKeepsState) }

func testCompactionKeepsState(t *testing.T, be backend) {
	var mu sync.Mutex
	down := true
	rv := newReceiver(t, func(r received, n int) (int, string) {
		mu.Lock()
		defer mu.Unlock()
		if r.Path == "/gone" {
			return 410, `{}`
		}
		if down && r.Path == "/later" {
			return 503, `{}`
		}
		return 200, `{}`
	})
	e := newEnvOn(t, be, notify.Config{BaseBackoff: time.Hour, MaxBackoff: time.Hour, CompactInterval: 20 * time.Millisecond})
	e.register("req", nil, nil, nil, nil)
	e.register("ok", nil, []any{map[string]any{"type": "webhook", "url": rv.URL + "/ok"}}, nil, nil)
	e.register("later", nil, []any{map[string]any{"type": "webhook", "url": rv.URL + "/later"}}, nil, nil)
	e.register("gone", nil, []any{map[string]any{"type": "webhook", "url": rv.URL + "/gone"}}, nil, nil)
	e.create("req", mess.Request{Intent: "one"})
	// Wait until the journal has been folded away: only the snapshot is left.
	deadline := time.Now().Add(20 * time.Second)
	for {
		page, err := e.store.List(context.Background(), "notify/exchange="+x+"/outbox/", storage.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		snaps, serr := e.store.List(context.Background(), "notify/exchange="+x+"/snap/", storage.ListOptions{})
		if len(page.Keys) == 0 && serr == nil && len(snaps.Keys) == 1 && rv.count() == 3 && len(e.n.Failures(x, "gone")) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("journal not compacted: %v, snapshots %v, %v, requests %d", page.Keys, snaps.Keys, serr, rv.count())
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.close()
	mu.Lock()
	down = false
	mu.Unlock()
	e.open()
	var b map[string]any
	r := rv.next(t) // /ok's success was queued before the restart
	if r.Path == "/ok" {
		r = rv.next(t)
	}
	json.Unmarshal(r.Body, &b)
	if r.Path != "/later" || b["intent"] != "one" {
		t.Errorf("after restart got %s %s, want the pending /later delivery", r.Path, r.Body)
	}
	e.settle()
	if n := rv.count(); n != 4 {
		t.Errorf("receiver saw %d requests, want 4 (ok, later refused, gone, later)", n)
	}
	if f := e.n.Failures(x, "gone"); len(f) != 1 {
		t.Errorf("failure lost across compaction and restart: %+v", f)
	}
}

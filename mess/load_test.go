package mess_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

// Many exchanges, each with several executors and threads, load in
// parallel into exactly what was there: records, profiles, keys, threads.
func TestService_LoadMany(t *testing.T) {
	dir := t.TempDir()
	store, err := storage.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	s, err := mess.New(ctx, mess.Config{Store: store, OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]string{} // exchange/executor → key
	threads := map[string]mess.Thread{}
	for x := range 30 {
		exchange := fmt.Sprintf("x%02d", x)
		for e := range 4 {
			id := fmt.Sprintf("e%d", e)
			keys[exchange+"/"+id] = mustRegister(t, s, exchange, id)
		}
		for r := range x % 5 {
			res, err := s.CreateRequest(ctx, exchange, "e0", mess.Request{Intent: fmt.Sprint("task ", r)}, "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Update(ctx, exchange, "e1", res.Ref, mess.Update{Status: "claimed"}); err != nil {
				t.Fatal(err)
			}
			th, _ := s.Get(ctx, exchange, res.Ref)
			threads[exchange+"/"+res.Ref] = th
		}
	}
	wantExchanges, _ := s.Exchanges(ctx)
	if err := s.Close(ctx); err != nil {
		t.Fatal(err)
	}

	s, err = mess.New(ctx, mess.Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	if got, _ := s.Exchanges(ctx); !slices.Equal(got, wantExchanges) || len(got) != 30 {
		t.Fatalf("exchanges %v, want %v", got, wantExchanges)
	}
	for k, key := range keys {
		exchange, id, _ := strings.Cut(k, "/")
		if got, err := s.Authenticate(ctx, exchange, key); err != nil || got != id {
			t.Fatalf("key of %s: %q, %v", k, got, err)
		}
	}
	for k, want := range threads {
		exchange, ref, _ := strings.Cut(k, "/")
		got, err := s.Get(ctx, exchange, ref)
		if err != nil || got.Status != want.Status || got.Seq != want.Seq || len(got.History) != len(want.History) {
			t.Fatalf("thread %s: %+v, %v; want %+v", k, got, err, want)
		}
	}
}

func snapshotObjects(t *testing.T, store storage.Store, exchange string) []string {
	t.Helper()
	var keys []string
	for k, err := range storage.Keys(ctx, store, "snapshots/mess/exchange="+exchange+"/") {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

// Snapshots are written when enough events came, at Close, and never with
// SnapshotEvery negative; a restart from them serves the same threads.
func TestService_SnapshotsWritten(t *testing.T) {
	for _, tt := range []struct {
		name    string
		every   int
		due     bool // after the events, before Close
		atClose bool
	}{
		{"due", 10, true, true},
		{"not yet", 1000, false, true},
		{"too few to bother at close", 100000, false, false},
		{"off", -1, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			store := storage.NewMemory()
			s, err := mess.New(ctx, mess.Config{Store: store, OpenRegistration: true, SnapshotEvery: tt.every})
			if err != nil {
				t.Fatal(err)
			}
			mustRegister(t, s, "home", "agent")
			var refs []string
			for i := range 150 {
				res, err := s.CreateRequest(ctx, "home", "agent", mess.Request{Intent: fmt.Sprint("task ", i)}, "")
				if err != nil {
					t.Fatal(err)
				}
				refs = append(refs, res.Ref)
			}
			if tt.due {
				// The snapshot goroutine writes it; wait for it.
				deadline := time.Now().Add(10 * time.Second)
				for len(snapshotObjects(t, store, "home")) == 0 {
					if time.Now().After(deadline) {
						t.Fatal("no snapshot written after 300 events with SnapshotEvery 10")
					}
					time.Sleep(5 * time.Millisecond)
				}
			} else if got := snapshotObjects(t, store, "home"); len(got) != 0 {
				t.Fatalf("snapshots before they fell due: %q", got)
			}
			if err := s.Close(ctx); err != nil {
				t.Fatal(err)
			}
			if got := snapshotObjects(t, store, "home"); (len(got) > 0) != (tt.due || tt.atClose) {
				t.Fatalf("after Close, snapshots %q", got)
			}
			s, err = mess.New(ctx, mess.Config{Store: store, SnapshotEvery: tt.every})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close(ctx)
			res, err := s.List(ctx, "home", mess.ListOptions{Limit: 1000})
			if err != nil || len(res.Threads) != len(refs) {
				t.Fatalf("after restart %d threads, %v", len(res.Threads), err)
			}
		})
	}
}

package snaplog_test

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/internal/snaplog"
	"github.com/meatspace-exchange/mess/storage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fence is a storage.Fence that stays valid until a write meets a newer
// one's fence.
type fence struct {
	epoch uint64
	lost  atomic.Bool
}

func (f *fence) Epoch() uint64 { return f.epoch }
func (f *fence) Valid() error {
	if f.lost.Load() {
		return storage.ErrFenced
	}
	return nil
}
func (f *fence) Claim(context.Context, string) error   { return nil }
func (f *fence) Confirm(context.Context, string) error { return nil }
func (f *fence) Fenced(error)                          { f.lost.Store(true) }

// lines is a State: every value appended, in order.
type lines struct{ vs []string }

func (l *lines) Apply(_ string, v any) error { l.vs = append(l.vs, v.([]string)...); return nil }
func (l *lines) Snapshot() ([]byte, error)   { return json.Marshal(l.vs) }

const logKey = "svc/exchange=x/log"

// writer is one process's journal and log.
type writer struct {
	t   *testing.T
	j   *journal.Journal
	log *snaplog.Log
	n   int
}

func newWriter(t *testing.T, store storage.Store, f storage.Fence) *writer {
	t.Helper()
	j, err := journal.New(journal.Config{Store: store, Fence: f})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close(context.Background()) })
	l, err := snaplog.New(snaplog.Config{Store: store, Journal: j, Fence: f, Log: logKey, Snaps: "svc/exchange=x/snap/",
		Base: func(payload []byte) (snaplog.State, error) {
			st := &lines{}
			if payload != nil {
				if err := json.Unmarshal(payload, &st.vs); err != nil {
					return nil, err
				}
			}
			return st, nil
		},
		Decode: func(_ string, data []byte) (any, error) {
			ls, _ := journal.Lines(data)
			var out []string
			for _, l := range ls {
				var v struct{ V string }
				if err := json.Unmarshal(l, &v); err != nil {
					return nil, err
				}
				out = append(out, v.V)
			}
			return out, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &writer{t: t, j: j, log: l}
}

func (w *writer) load() []string {
	w.t.Helper()
	st, err := w.log.Load(context.Background())
	if err != nil {
		w.t.Fatal(err)
	}
	return st.(*lines).vs
}

// append writes values, one journal object each, and returns them.
func (w *writer) append(prefix string, n int) []string {
	w.t.Helper()
	var out []string
	for range n {
		w.n++
		v := fmt.Sprintf("%s%d", prefix, w.n)
		w.log.Touch()
		if err := w.j.Append(context.Background(), logKey, []byte(`{"V":"`+v+`"}`)); err != nil {
			w.t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

func (w *writer) compact() {
	w.t.Helper()
	if err := w.log.Compact(context.Background()); err != nil {
		w.t.Fatal(err)
	}
}

func keys(t *testing.T, store storage.Store, prefix string) []string {
	t.Helper()
	var out []string
	for k, err := range storage.Keys(context.Background(), store, prefix) {
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k)
	}
	return out
}

func sorted(vs []string) []string { return slices.Sorted(slices.Values(vs)) }

// Compaction keeps the state and leaves only what it must: the newest
// snapshot, fences, and in a fenced log the boundary slot.
func TestLog_compactAndLoad(t *testing.T) {
	for _, tt := range []struct {
		name   string
		fenced bool
	}{{"unfenced", false}, {"fenced", true}} {
		t.Run(tt.name, func(t *testing.T) {
			store := storage.NewMemory()
			var f1, f2 storage.Fence
			if tt.fenced {
				f1, f2 = &fence{epoch: 1}, &fence{epoch: 2}
			}
			a := newWriter(t, store, f1)
			if got := a.load(); len(got) != 0 {
				t.Fatalf("empty log loads %v", got)
			}
			want := a.append("a", 3)
			a.compact()
			want = append(want, a.append("a", 2)...)
			a.compact()
			if snaps := keys(t, store, "svc/exchange=x/snap/"); len(snaps) != 1 || !strings.HasSuffix(snaps[0], "00000000000000000002.json") {
				t.Fatalf("snapshots %v, want generation 2 only", snaps)
			}
			left := keys(t, store, logKey+"/")
			if tt.fenced {
				// The fence of epoch 1 and the boundary (the last slot).
				if len(left) != 2 {
					t.Fatalf("log keys %v, want the fence and the boundary", left)
				}
				if _, err := journal.Audit(context.Background(), store, logKey, true); err != nil {
					t.Fatal(err)
				}
			} else if len(left) != 0 {
				t.Fatalf("log keys %v, want none", left)
			}

			b := newWriter(t, store, f2)
			if got := b.load(); !slices.Equal(sorted(got), sorted(want)) {
				t.Fatalf("loaded %v, want %v", got, want)
			}
			want = append(want, b.append("b", 2)...)
			b.compact()
			// A reader without a fence (a copy of the store, say) sees the same.
			if got := newWriter(t, store, nil).load(); !slices.Equal(sorted(got), sorted(want)) {
				t.Fatalf("loaded %v, want %v", got, want)
			}
		})
	}
}

// Two processes compacting one log (the owner replaced without knowing
// it, and its successor) never overwrite each other's snapshot: the one
// that finds its generation taken builds on the other's next time, and
// nothing is lost.
func TestLog_generationTaken(t *testing.T) {
	store := storage.NewMemory()
	a := newWriter(t, store, &fence{epoch: 1})
	a.load()
	want := a.append("a", 3)
	b := newWriter(t, store, &fence{epoch: 2})
	if got := b.load(); !slices.Equal(got, want) {
		t.Fatalf("B loaded %v, want %v", got, want)
	}
	want = append(want, b.append("b", 2)...)
	a.compact() // A's snapshot: its own writes only
	b.compact() // generation 1 is taken: nothing written
	if snaps := keys(t, store, "svc/exchange=x/snap/"); len(snaps) != 1 {
		t.Fatalf("snapshots %v, want A's only", snaps)
	}
	b.compact() // builds on A's snapshot
	snaps := keys(t, store, "svc/exchange=x/snap/")
	if len(snaps) != 1 || !strings.HasSuffix(snaps[0], "00000000000000000002.json") {
		t.Fatalf("snapshots %v, want B's generation 2 only", snaps)
	}
	c := newWriter(t, store, &fence{epoch: 3})
	if got := c.load(); !slices.Equal(sorted(got), sorted(want)) {
		t.Fatalf("C loaded %v, want %v", got, want)
	}
	if _, err := journal.Audit(context.Background(), store, logKey, true); err != nil {
		t.Fatal(err)
	}
}

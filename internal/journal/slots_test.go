package journal_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/internal/faultstore"
	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

// testFence is a storage.Fence whose validity a test controls.
type testFence struct {
	epoch   uint64
	invalid atomic.Bool
	mu      sync.Mutex
	lost    []error
}

func (f *testFence) Epoch() uint64 { return f.epoch }
func (f *testFence) Valid() error {
	if f.invalid.Load() {
		return fmt.Errorf("lease lapsed: %w", storage.ErrFenced)
	}
	return nil
}
func (f *testFence) Claim(context.Context, string) error   { return nil }
func (f *testFence) Confirm(context.Context, string) error { return nil }
func (f *testFence) Fenced(err error) {
	f.mu.Lock()
	f.lost = append(f.lost, err)
	f.mu.Unlock()
}
func (f *testFence) lostCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.lost)
}

// clock is a settable Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func fencedJournal(t *testing.T, st storage.Store, epoch uint64, dated bool, now func() time.Time) (*journal.Journal, *testFence) {
	t.Helper()
	f := &testFence{epoch: epoch}
	j, err := journal.New(journal.Config{Store: st, Fence: f, Dated: dated, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { j.Close(context.Background()) })
	return j, f
}

func appendLine(t *testing.T, j *journal.Journal, log string, i int) error {
	t.Helper()
	return j.Append(context.Background(), log, fmt.Appendf(nil, `{"n":%d}`, i))
}

func audit(t *testing.T, st storage.Store, log string) journal.AuditReport {
	t.Helper()
	rep, err := journal.Audit(context.Background(), st, log, false)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func TestFenced_SlotsAndEpochs(t *testing.T) {
	for _, dated := range []bool{false, true} {
		t.Run(fmt.Sprint("dated=", dated), func(t *testing.T) {
			st := storage.NewMemory()
			clk := &clock{t: time.Date(2026, 11, 30, 23, 0, 0, 0, time.UTC)}
			j, f := fencedJournal(t, st, 3, dated, clk.Now)
			for i := range 3 {
				if err := appendLine(t, j, "mail/x/log", i); err != nil {
					t.Fatal(err)
				}
			}
			clk.add(2 * time.Hour) // the next day
			if err := appendLine(t, j, "mail/x/log", 3); err != nil {
				t.Fatal(err)
			}
			var keys []string
			for k, err := range storage.Keys(context.Background(), st, "mail/x/log/") {
				if err != nil {
					t.Fatal(err)
				}
				keys = append(keys, k)
			}
			want := []string{"mail/x/log/s00000000000000000000.jsonl"}
			if dated {
				want = append(want,
					"mail/x/log/2026/11/30/s00000000000000000001.jsonl",
					"mail/x/log/2026/11/30/s00000000000000000002.jsonl",
					"mail/x/log/2026/11/30/s00000000000000000003.jsonl",
					"mail/x/log/2026/12/01/s00000000000000000004.jsonl")
			} else {
				for s := 1; s <= 4; s++ {
					want = append(want, fmt.Sprintf("mail/x/log/s%020d.jsonl", s))
				}
			}
			slices.Sort(want) // a dated log's genesis lists after its day folders
			if strings.Join(keys, "\n") != strings.Join(want, "\n") {
				t.Fatalf("keys:\n%s\nwant:\n%s", strings.Join(keys, "\n"), strings.Join(want, "\n"))
			}
			lines, _ := replayAll(t, st, "mail/x/log/")
			if len(lines) != 4 || lines[0] != `{"epoch":3,"n":0}` || lines[3] != `{"epoch":3,"n":3}` {
				t.Fatalf("replayed %q", lines)
			}
			rep := audit(t, st, "mail/x/log")
			if rep.Slots != 5 || rep.Lines != 4 || rep.Fences[3] != 1 {
				t.Fatalf("audit %+v", rep)
			}
			if f.lostCount() != 0 {
				t.Fatal("lost without a takeover")
			}
		})
	}
}

func TestFenced_TakeoverFencesTheOldWriter(t *testing.T) {
	st := storage.NewMemory()
	a, fa := fencedJournal(t, st, 1, false, nil)
	for i := range 3 {
		if err := appendLine(t, a, "l", i); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := fencedJournal(t, st, 2, false, nil)
	if err := b.Open(context.Background(), "l", ""); err != nil {
		t.Fatal(err)
	}
	if err := appendLine(t, a, "l", 99); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("old writer after the fence: %v, want ErrFenced", err)
	}
	if fa.lostCount() != 1 {
		t.Fatalf("Lost called %d times", fa.lostCount())
	}
	if err := appendLine(t, a, "other", 1); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("a fenced journal wrote another log: %v", err)
	}
	if err := appendLine(t, b, "l", 3); err != nil {
		t.Fatal(err)
	}
	lines, _ := replayAll(t, st, "l/")
	if got := strings.Join(lines, " "); got != `{"epoch":1,"n":0} {"epoch":1,"n":1} {"epoch":1,"n":2} {"epoch":2,"n":3}` {
		t.Fatalf("replayed %s", got)
	}
	if rep := audit(t, st, "l"); rep.Fences[1] != 1 || rep.Fences[2] != 1 {
		t.Fatalf("audit %+v", rep)
	}
}

// The old writer's batch lands between the new owner's listing and its
// fence: the fence moves past it, the batch stays in the log, and the old
// writer's next batch is refused.
func TestFenced_WriteBetweenListingAndFence(t *testing.T) {
	mem := storage.NewMemory()
	fs := faultstore.New(mem)
	a, _ := fencedJournal(t, mem, 1, false, nil)
	if err := appendLine(t, a, "l", 0); err != nil {
		t.Fatal(err)
	}
	gate := faultstore.NewGate()
	fs.Add(&faultstore.Hook{
		Match:  func(op faultstore.Op, key string) bool { return op == faultstore.Create },
		Before: func(ctx context.Context, _ faultstore.Op, _ string) error { return gate.Wait(ctx) },
		Once:   true,
	})
	b, _ := fencedJournal(t, fs, 2, false, nil)
	opened := make(chan error, 1)
	go func() { opened <- b.Open(context.Background(), "l", "") }()
	<-gate.Reached
	if err := appendLine(t, a, "l", 1); err != nil {
		t.Fatalf("write before the fence: %v", err)
	}
	gate.Open()
	if err := <-opened; err != nil {
		t.Fatal(err)
	}
	if err := appendLine(t, a, "l", 2); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("old writer after the fence: %v", err)
	}
	lines, _ := replayAll(t, mem, "l/")
	if len(lines) != 2 || lines[1] != `{"epoch":1,"n":1}` {
		t.Fatalf("replayed %q", lines)
	}
	audit(t, mem, "l")
}

// A write whose reply is lost is settled by the log's next write, which
// goes to the same key: if the lost write landed, it stands in the log like
// one made before a crash, OnLanded hears of it and the next write is
// refused (it was made without knowing of it); if it did not, the next
// write takes its place. Neither is taken for a fence.
func TestFenced_LostReply(t *testing.T) {
	tests := []struct {
		name   string
		landed bool
		want   []string // replayed
	}{
		{"Landed", true, []string{`{"epoch":1,"n":0}`, `{"epoch":1,"n":1}`, `{"epoch":1,"n":3}`}},
		{"NotLanded", false, []string{`{"epoch":1,"n":0}`, `{"epoch":1,"n":2}`, `{"epoch":1,"n":3}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := storage.NewMemory()
			fs := faultstore.New(mem)
			var mu sync.Mutex
			var landed []string
			f := &testFence{epoch: 1}
			j, err := journal.New(journal.Config{Store: fs, Fence: f, OnLanded: func(log string, data []byte) {
				mu.Lock()
				landed = append(landed, log+" "+string(data))
				mu.Unlock()
			}})
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close(context.Background())
			if err := appendLine(t, j, "l", 0); err != nil {
				t.Fatal(err)
			}
			reset := errors.New("connection reset")
			h := &faultstore.Hook{Match: func(op faultstore.Op, _ string) bool { return op == faultstore.Create }, Once: true}
			if tt.landed {
				h.After = func(context.Context, faultstore.Op, string, error) error { return reset }
			} else {
				h.Before = func(context.Context, faultstore.Op, string) error { return reset }
			}
			fs.Add(h)
			if err := appendLine(t, j, "l", 1); !errors.Is(err, reset) {
				t.Fatalf("the lost reply was reported as %v", err)
			}
			err = appendLine(t, j, "l", 2)
			switch {
			case tt.landed && !errors.Is(err, journal.ErrLanded):
				t.Fatalf("the write after a lost one that landed: %v, want ErrLanded", err)
			case tt.landed && !errors.Is(err, storage.ErrUnavailable):
				t.Fatalf("ErrLanded is not ErrUnavailable: %v", err)
			case !tt.landed && err != nil:
				t.Fatalf("the write after a lost one that did not land: %v", err)
			}
			if err := appendLine(t, j, "l", 3); err != nil {
				t.Fatalf("after the lost write was settled: %v", err)
			}
			mu.Lock()
			defer mu.Unlock()
			if want := "l " + `{"epoch":1,"n":1}` + "\n"; tt.landed && (len(landed) != 1 || landed[0] != want) {
				t.Fatalf("OnLanded heard %q, want %q", landed, want)
			} else if !tt.landed && len(landed) != 0 {
				t.Fatalf("OnLanded heard %q of a write that never landed", landed)
			}
			if f.lostCount() != 0 {
				t.Fatal("a lost reply was taken for a fence")
			}
			lines, _ := replayAll(t, mem, "l/")
			if strings.Join(lines, " ") != strings.Join(tt.want, " ") {
				t.Fatalf("replayed %q, want %q", lines, tt.want)
			}
			audit(t, mem, "l")
		})
	}
}

// A lost write is settled at its own key even when the day changed
// since: the next write must not take the same slot under the new day's
// name, which would put two batches in one slot.
func TestFenced_LostReplyAcrossMidnight(t *testing.T) {
	mem := storage.NewMemory()
	fs := faultstore.New(mem)
	c := &clock{t: time.Date(2026, 11, 30, 23, 59, 0, 0, time.UTC)}
	j, _ := fencedJournal(t, fs, 1, true, c.Now)
	if err := appendLine(t, j, "ev", 0); err != nil {
		t.Fatal(err)
	}
	fs.Add(&faultstore.Hook{
		Match: func(op faultstore.Op, _ string) bool { return op == faultstore.Create },
		After: func(context.Context, faultstore.Op, string, error) error { return errors.New("connection reset") },
		Once:  true,
	})
	if err := appendLine(t, j, "ev", 1); err == nil {
		t.Fatal("the lost reply was not reported")
	}
	c.add(2 * time.Minute)
	if err := appendLine(t, j, "ev", 2); !errors.Is(err, journal.ErrLanded) {
		t.Fatalf("the write after a lost one that landed: %v, want ErrLanded", err)
	}
	if err := appendLine(t, j, "ev", 3); err != nil {
		t.Fatal(err)
	}
	if _, err := mem.Get(context.Background(), "ev/2026/12/01/s00000000000000000003.jsonl"); err != nil {
		t.Fatalf("the batch after the settled one is not in the new day: %v", err)
	}
	if lines, _ := replayAll(t, mem, "ev/"); len(lines) != 3 {
		t.Fatalf("replayed %q", lines)
	}
	audit(t, mem, "ev")
}

// A batch whose write is parked after it landed but before the writer is
// told is still in the log ahead of a later fence.
func TestFenced_ParkedAfterWrite(t *testing.T) {
	mem := storage.NewMemory()
	fs := faultstore.New(mem)
	a, _ := fencedJournal(t, fs, 1, false, nil)
	if err := appendLine(t, a, "l", 0); err != nil {
		t.Fatal(err)
	}
	gate := faultstore.NewGate()
	fs.Add(&faultstore.Hook{
		Match: func(op faultstore.Op, _ string) bool { return op == faultstore.Create },
		After: func(ctx context.Context, _ faultstore.Op, _ string, err error) error {
			if werr := gate.Wait(ctx); werr != nil {
				return werr
			}
			return err
		},
		Once: true,
	})
	done := make(chan error, 1)
	go func() { done <- appendLine(t, a, "l", 1) }()
	<-gate.Reached
	b, _ := fencedJournal(t, mem, 2, false, nil)
	if err := b.Open(context.Background(), "l", ""); err != nil {
		t.Fatal(err)
	}
	gate.Open()
	if err := <-done; err != nil {
		t.Fatalf("a write made before the fence: %v", err)
	}
	lines, _ := replayAll(t, mem, "l/")
	if len(lines) != 2 {
		t.Fatalf("replayed %q", lines)
	}
	if err := appendLine(t, a, "l", 2); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("old writer after the fence: %v", err)
	}
}

// Once the owner's lease lapsed nothing is written or acknowledged.
func TestFenced_InvalidOwnerAcknowledgesNothing(t *testing.T) {
	st := storage.NewMemory()
	j, f := fencedJournal(t, st, 1, false, nil)
	if err := appendLine(t, j, "l", 0); err != nil {
		t.Fatal(err)
	}
	f.invalid.Store(true)
	if err := appendLine(t, j, "l", 1); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("append with a lapsed lease: %v", err)
	}
	if lines, _ := replayAll(t, st, "l/"); len(lines) != 1 {
		t.Fatalf("replayed %q", lines)
	}
}

// In a dated log the old writer may have moved to the next day while the
// new owner's clock is still on the previous one; the fence covers every
// name the next slot may take.
func TestFenced_DatedFenceCoversEveryName(t *testing.T) {
	st := storage.NewMemory()
	day := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	ca := &clock{t: day}
	a, _ := fencedJournal(t, st, 1, true, ca.Now)
	if err := appendLine(t, a, "ev", 0); err != nil {
		t.Fatal(err)
	}
	cb := &clock{t: day.AddDate(0, 0, 9)} // far ahead: the fence announces its day
	b, _ := fencedJournal(t, st, 2, true, cb.Now)
	if err := b.Open(context.Background(), "ev", ""); err != nil {
		t.Fatal(err)
	}
	ca.add(24 * time.Hour)
	if err := appendLine(t, a, "ev", 1); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("old writer on the next day: %v", err)
	}
	if err := appendLine(t, b, "ev", 2); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(context.Background(), "ev/2026/12/09/s00000000000000000003.jsonl"); err != nil {
		t.Fatalf("the new owner's batch is not in its day: %v", err)
	}
	// Idle for a week: a tick announces the day, and the batch lands in it.
	cb.add(7 * 24 * time.Hour)
	if err := appendLine(t, b, "ev", 3); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Get(context.Background(), "ev/2026/12/16/s00000000000000000005.jsonl"); err != nil {
		t.Fatalf("after idling: %v", err)
	}
	lines, _ := replayAll(t, st, "ev/")
	if len(lines) != 3 {
		t.Fatalf("replayed %q", lines)
	}
	audit(t, st, "ev")
}

// Seal's boundary in a fenced log covers what was written, and Open from
// it finds the end without listing the whole log.
func TestFenced_SealAndReopen(t *testing.T) {
	st := storage.NewMemory()
	a, _ := fencedJournal(t, st, 1, false, nil)
	for i := range 3 {
		if err := appendLine(t, a, "l", i); err != nil {
			t.Fatal(err)
		}
	}
	bound, err := a.Seal(context.Background(), "l")
	if err != nil {
		t.Fatal(err)
	}
	if bound != "l/s00000000000000000003.jsonl" {
		t.Fatalf("boundary %q", bound)
	}
	if err := appendLine(t, a, "l", 3); err != nil {
		t.Fatal(err)
	}
	b, _ := fencedJournal(t, st, 2, false, nil)
	if err := b.Open(context.Background(), "l", bound); err != nil {
		t.Fatal(err)
	}
	if err := appendLine(t, b, "l", 4); err != nil {
		t.Fatal(err)
	}
	var after []string
	err = journal.Replay(context.Background(), st, journal.ReplayConfig{
		Prefix: "l/", After: bound,
		Decode: func(_ string, d []byte) (any, error) { return string(d), nil },
		Apply:  func(_ string, v any) error { after = append(after, strings.TrimSpace(v.(string))); return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(after, " ") != `{"epoch":1,"n":3} {"epoch":2,"n":4}` {
		t.Fatalf("after the boundary: %q", after)
	}
	audit(t, st, "l")
}

// A log written by an unfenced journal (a directory's) and then by a
// fenced one (after messd migrate moved it to a bucket) replays its old
// objects first.
func TestFenced_AfterUnfencedObjects(t *testing.T) {
	for _, dated := range []bool{false, true} {
		t.Run(fmt.Sprint("dated=", dated), func(t *testing.T) {
			st := storage.NewMemory()
			clk := &clock{t: time.Date(2026, 11, 30, 9, 0, 0, 0, time.UTC)}
			old, err := journal.New(journal.Config{Store: st, Dated: dated, Now: clk.Now})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3 {
				if err := appendLine(t, old, "l", i); err != nil {
					t.Fatal(err)
				}
			}
			old.Close(context.Background())
			j, _ := fencedJournal(t, st, 1, dated, clk.Now)
			if err := j.Open(context.Background(), "l", ""); err != nil {
				t.Fatal(err)
			}
			for i := 3; i < 6; i++ {
				if err := appendLine(t, j, "l", i); err != nil {
					t.Fatal(err)
				}
			}
			lines, _ := replayAll(t, st, "l/")
			var got []string
			for _, l := range lines {
				got = append(got, strings.TrimPrefix(l, `{"epoch":1,`))
			}
			if strings.Join(got, " ") != `{"n":0} {"n":1} {"n":2} "n":3} "n":4} "n":5}` {
				t.Fatalf("replayed %q", lines)
			}
			audit(t, st, "l")
		})
	}
}

// Replay returns an Apply error at once, with many objects still listed
// and read ahead, rather than waiting on them.
func TestReplay_StopsOnApplyError(t *testing.T) {
	st := storage.NewMemory()
	for i := range 200 {
		if _, err := st.Create(context.Background(), fmt.Sprintf("r/%04d.jsonl", i), []byte("{}\n")); err != nil {
			t.Fatal(err)
		}
	}
	boom := errors.New("boom")
	done := make(chan error, 1)
	go func() {
		done <- journal.Replay(context.Background(), st, journal.ReplayConfig{
			Prefix: "r/", Parallel: 2,
			Decode: func(_ string, d []byte) (any, error) { return d, nil },
			Apply:  func(string, any) error { return boom },
		})
	}()
	select {
	case err := <-done:
		if !errors.Is(err, boom) {
			t.Fatalf("Replay: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Replay hung after Apply failed")
	}
}

// An unfenced dated log never files a batch, or a boundary, in a day
// before one it has: a clock stepped back cannot make key order differ
// from write order.
func TestDated_ClockBack(t *testing.T) {
	st := storage.NewMemory()
	clk := &clock{t: time.Date(2026, 11, 30, 1, 0, 0, 0, time.UTC)}
	j, err := journal.New(journal.Config{Store: st, Dated: true, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close(context.Background())
	j.Observe("ev", "ev/2026/12/02/01KXXXXXXXXXXXXXXXXXXXXXXX.jsonl") // seen at load
	if err := appendLine(t, j, "ev", 0); err != nil {
		t.Fatal(err)
	}
	b, err := j.Seal(context.Background(), "ev")
	if err != nil {
		t.Fatal(err)
	}
	clk.add(-48 * time.Hour)
	if err := appendLine(t, j, "ev", 1); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for k, err := range storage.Keys(context.Background(), st, "ev/") {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	if len(keys) != 2 || !strings.HasPrefix(keys[0], "ev/2026/12/02/") || !(keys[0] < b && b < keys[1]) {
		t.Fatalf("keys %q around boundary %q", keys, b)
	}
}

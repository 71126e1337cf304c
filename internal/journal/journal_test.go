package journal_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

func newStore(t testing.TB) *storage.FS {
	s, err := storage.NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func replayAll(t *testing.T, s storage.Store, prefix string) (lines []string, torn int) {
	err := journal.Replay(context.Background(), s, journal.ReplayConfig{
		Prefix: prefix,
		Decode: func(_ string, data []byte) (any, error) {
			ls, tail := journal.Lines(data)
			return struct {
				ls   [][]byte
				torn bool
			}{ls, tail != nil}, nil
		},
		Apply: func(_ string, v any) error {
			r := v.(struct {
				ls   [][]byte
				torn bool
			})
			for _, l := range r.ls {
				lines = append(lines, string(l))
			}
			if r.torn {
				torn++
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return lines, torn
}

// Ensure concurrent appends are all durable and each writer's own lines
// replay in the order it appended them.
func TestJournal_ConcurrentAppendReplay(t *testing.T) {
	forEachMode(t, testConcurrentAppendReplay)
}

// forEachMode runs fn with a journal writing one object per batch and with
// one appending in place.
func forEachMode(t *testing.T, fn func(t *testing.T, segmentBytes int)) {
	for _, m := range []struct {
		name string
		seg  int
	}{{"objects", 0}, {"segments", journal.SegmentBytes}} {
		t.Run(m.name, func(t *testing.T) { fn(t, m.seg) })
	}
}

func testConcurrentAppendReplay(t *testing.T, segmentBytes int) {
	s := newStore(t)
	j, err := journal.New(journal.Config{Store: s, SegmentBytes: segmentBytes})
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 16, 50
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				line := fmt.Sprintf(`{"w":%d,"i":%d}`, w, i)
				if err := j.Append(context.Background(), "log/p", []byte(line)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := j.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := j.Append(context.Background(), "log/p", []byte("{}")); err != journal.ErrClosed {
		t.Fatalf("Append after Close = %v, want ErrClosed", err)
	}
	lines, _ := replayAll(t, s, "log/")
	if len(lines) != writers*each {
		t.Fatalf("replayed %d lines, want %d", len(lines), writers*each)
	}
	next := make([]int, writers)
	for _, l := range lines {
		var w, i int
		fmt.Sscanf(l, `{"w":%d,"i":%d}`, &w, &i)
		if i != next[w] {
			t.Fatalf("writer %d: got line %d, want %d", w, i, next[w])
		}
		next[w]++
	}
	if n := len(listKeys(t, s, "log/")); n >= writers*each {
		t.Errorf("no group commit: %d objects for %d lines", n, writers*each)
	}
}

func TestJournal_MultiLineAppendAndPartitions(t *testing.T) {
	s := newStore(t)
	j, _ := journal.New(journal.Config{Store: s})
	ctx := context.Background()
	j.Append(ctx, "a/x", []byte("1"), []byte("2"))
	j.Append(ctx, "b/y", []byte("3"))
	if err := j.Append(ctx, "../bad", []byte("4")); err == nil {
		t.Fatal("invalid partition accepted")
	}
	if err := j.Append(ctx, "a/x", []byte("5\n6")); err == nil {
		t.Fatal("line with newline accepted")
	}
	j.Close(ctx)
	lines, _ := replayAll(t, s, "")
	if want := []string{"1", "2", "3"}; !slices.Equal(lines, want) {
		t.Fatalf("lines = %q, want %q", lines, want)
	}
}

func TestLines_Torn(t *testing.T) {
	tests := []struct {
		in       string
		want     []string
		wantTorn string
	}{
		{"a\nb\n", []string{"a", "b"}, ""},
		{"a\nb", []string{"a"}, "b"},
		{"", nil, ""},
		{"\n\na\n", []string{"a"}, ""},
		{"a\nb\n\x00\x00\x00", []string{"a", "b"}, ""},
		{"a\nb\x00\x00", []string{"a"}, "b"},
		{"a\n\x00\x00c\n", []string{"a"}, ""}, // an unacknowledged write past a hole
	}
	for _, tt := range tests {
		ls, torn := journal.Lines([]byte(tt.in))
		var got []string
		for _, l := range ls {
			got = append(got, string(l))
		}
		if !slices.Equal(got, tt.want) || string(torn) != tt.wantTorn {
			t.Errorf("Lines(%q) = %q, %q; want %q, %q", tt.in, got, torn, tt.want, tt.wantTorn)
		}
	}
}

// BenchmarkJournal_Append64 measures durable appends by 64 concurrent
// writers, each waiting for its own.
func BenchmarkJournal_Append64(b *testing.B) {
	for _, m := range []struct {
		name string
		seg  int
	}{{"objects", 0}, {"segments", journal.SegmentBytes}} {
		b.Run(m.name, func(b *testing.B) {
			s := newStore(b)
			j, _ := journal.New(journal.Config{Store: s, SegmentBytes: m.seg})
			defer j.Close(context.Background())
			line := []byte(`{"event_id":"01J00000000000000000000000","event_type":"thread_created","payload":{"intent":"check the front door"}}`)
			b.SetParallelism(32) // 64 goroutines on 2 cores
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := j.Append(context.Background(), "bench/p", line); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func TestJournal_AppendAsyncOrder(t *testing.T) {
	forEachMode(t, testAppendAsyncOrder)
}

func testAppendAsyncOrder(t *testing.T, segmentBytes int) {
	s := newStore(t)
	j, err := journal.New(journal.Config{Store: s, MaxBatchBytes: 64, SegmentBytes: segmentBytes})
	if err != nil {
		t.Fatal(err)
	}
	var chans []<-chan error
	var want []string
	for i := range 500 {
		line := fmt.Sprintf(`{"i":%d}`, i)
		want = append(want, line)
		ch, err := j.AppendAsync("p", []byte(line))
		if err != nil {
			t.Fatal(err)
		}
		chans = append(chans, ch)
	}
	for _, ch := range chans {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := j.AppendAsync("p", []byte("{}")); err != journal.ErrClosed {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
	got, _ := replayAll(t, s, "p/")
	if !slices.Equal(got, want) {
		t.Errorf("replayed %d lines out of order or missing (want %d)", len(got), len(want))
	}
}

// Ensure lines handed over with AppendLine, mixed with AppendAsync, are
// durable in order, batched or not, and that their notifiers are told once
// each, in that order; lines without their newline, or with another one
// inside, are refused.
func TestJournal_AppendLine(t *testing.T) {
	forEachMode(t, testAppendLine)
}

// orderNotifier records the order in which lines were reported durable.
type orderNotifier struct {
	i    int
	mu   *sync.Mutex
	told *[]int
	errs *[]error
}

func (n orderNotifier) Durable(err error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	*n.told = append(*n.told, n.i)
	if err != nil {
		*n.errs = append(*n.errs, err)
	}
}

func testAppendLine(t *testing.T, segmentBytes int) {
	s := newStore(t)
	j, err := journal.New(journal.Config{Store: s, MaxBatchBytes: 64, SegmentBytes: segmentBytes})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		told  []int
		errs  []error
		chans []<-chan error
		want  []string
		lines int
	)
	for i := range 500 {
		line := fmt.Sprintf(`{"i":%d}`, i)
		want = append(want, line)
		if i%7 == 3 {
			ch, err := j.AppendAsync("p", []byte(line))
			if err != nil {
				t.Fatal(err)
			}
			chans = append(chans, ch)
			continue
		}
		lines++
		if err := j.AppendLine("p", []byte(line+"\n"), orderNotifier{i, &mu, &told, &errs}); err != nil {
			t.Fatal(err)
		}
	}
	for _, bad := range []string{`{}`, "{}\n{}\n", "{\x00}\n"} {
		if err := j.AppendLine("p", []byte(bad), orderNotifier{-1, &mu, &told, &errs}); err == nil {
			t.Errorf("AppendLine(%q) accepted", bad)
		}
	}
	for _, ch := range chans {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	if err := j.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := j.AppendLine("p", []byte("{}\n"), orderNotifier{-1, &mu, &told, &errs}); err != journal.ErrClosed {
		t.Errorf("after Close: %v, want ErrClosed", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(told) != lines || !slices.IsSorted(told) || len(errs) != 0 {
		t.Errorf("%d notifications (want %d), in order: %v, errors %v", len(told), lines, slices.IsSorted(told), errs)
	}
	got, _ := replayAll(t, s, "p/")
	if !slices.Equal(got, want) {
		t.Errorf("replayed %d lines out of order or missing (want %d)", len(got), len(want))
	}
}

// Ensure a seal queued between asynchronous appends splits them exactly:
// the lines queued before it are in the objects before its boundary, and
// those queued after it in objects after, though none was durable when the
// seal was queued.
func TestJournal_QueueSeal(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	j, err := journal.New(journal.Config{Store: s, SegmentBytes: journal.SegmentBytes})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close(ctx)
	queue := func(from, to int) (want []string, chans []<-chan error) {
		for i := from; i < to; i++ {
			line := fmt.Sprintf(`{"i":%d}`, i)
			ch, err := j.AppendAsync("p", []byte(line))
			if err != nil {
				t.Fatal(err)
			}
			want, chans = append(want, line), append(chans, ch)
		}
		return want, chans
	}
	before, c1 := queue(0, 50)
	wait := j.QueueSeal("p")
	after, c2 := queue(50, 100)
	bound, err := wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, ch := range append(c1, c2...) {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	var gotBefore, gotAfter []string
	for _, k := range listKeys(t, s, "p/") {
		obj, _ := s.Get(ctx, k)
		ls, _ := journal.Lines(obj.Data)
		for _, l := range ls {
			if k < bound {
				gotBefore = append(gotBefore, string(l))
			} else {
				gotAfter = append(gotAfter, string(l))
			}
		}
	}
	if !slices.Equal(gotBefore, before) || !slices.Equal(gotAfter, after) {
		t.Errorf("before the boundary %q\nafter %q\nwant %q and %q", gotBefore, gotAfter, before, after)
	}
}

// listKeys returns every key under prefix.
func listKeys(t *testing.T, s storage.Store, prefix string) []string {
	t.Helper()
	var keys []string
	for k, err := range storage.Keys(context.Background(), s, prefix) {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

func appendN(t *testing.T, j *journal.Journal, partition string, from, to int) (want []string) {
	t.Helper()
	for i := from; i < to; i++ {
		line := fmt.Sprintf(`{"i":%d}`, i)
		if err := j.Append(context.Background(), partition, []byte(line)); err != nil {
			t.Fatal(err)
		}
		want = append(want, line)
	}
	return want
}

// Ensure a store that can append gets one growing object per partition,
// rotated at SegmentBytes, and that replay sees every line in order.
func TestJournal_appendsInPlace(t *testing.T) {
	tests := []struct {
		name         string
		segmentBytes int
		wantObjects  func(n int) bool
	}{
		{"one object", journal.SegmentBytes, func(n int) bool { return n == 1 }},
		{"rotated", 64, func(n int) bool { return n >= 20 && n < 50 }}, // 8-9 byte lines
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			j, err := journal.New(journal.Config{Store: s, SegmentBytes: tt.segmentBytes})
			if err != nil {
				t.Fatal(err)
			}
			want := appendN(t, j, "p", 0, 200)
			if err := j.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if n := len(listKeys(t, s, "p/")); !tt.wantObjects(n) {
				t.Errorf("%d objects for 200 sequential appends", n)
			}
			got, torn := replayAll(t, s, "p/")
			if !slices.Equal(got, want) || torn != 0 {
				t.Errorf("replayed %q (torn %d), want %q", got, torn, want)
			}
		})
	}
}

// Ensure objects before a seal's boundary never change again, and later
// lines land after it.
func TestJournal_Seal(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	j, err := journal.New(journal.Config{Store: s, SegmentBytes: journal.SegmentBytes})
	if err != nil {
		t.Fatal(err)
	}
	before := appendN(t, j, "p", 0, 5)
	bound, err := j.Seal(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	sealed := map[string]string{}
	for _, k := range listKeys(t, s, "p/") {
		if k >= bound {
			t.Fatalf("object %s exists at the seal but sorts after its boundary %s", k, bound)
		}
		obj, _ := s.Get(ctx, k)
		sealed[k] = string(obj.Data)
	}
	if len(sealed) != 1 || sealed[listKeys(t, s, "p/")[0]] != strings.Join(before, "\n")+"\n" {
		t.Fatalf("sealed objects %q, want one holding %q", sealed, before)
	}
	after := appendN(t, j, "p", 5, 10)
	var later []string
	for _, k := range listKeys(t, s, "p/") {
		obj, _ := s.Get(ctx, k)
		if old, ok := sealed[k]; ok {
			if string(obj.Data) != old {
				t.Fatalf("sealed object %s changed: %q", k, obj.Data)
			}
			continue
		}
		if k <= bound {
			t.Fatalf("object %s written after the seal sorts before its boundary %s", k, bound)
		}
		ls, _ := journal.Lines(obj.Data)
		for _, l := range ls {
			later = append(later, string(l))
		}
	}
	if !slices.Equal(later, after) {
		t.Fatalf("lines after the seal %q, want %q", later, after)
	}
	if err := j.Close(ctx); err != nil {
		t.Fatal(err)
	}
	b2, err := j.Seal(ctx, "p")
	if err != nil || b2 <= bound {
		t.Fatalf("Seal after Close = %q, %v; want a later boundary", b2, err)
	}
}

// plainStore hides the filesystem's Appender, as an object store would.
type plainStore struct{ storage.Store }

// Ensure batches are whole objects by default and on stores that cannot
// append.
func TestJournal_objectPerBatch(t *testing.T) {
	tests := []struct {
		name         string
		plain        bool
		segmentBytes int
	}{
		{"default", false, 0},
		{"store without Appender", true, journal.SegmentBytes},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStore(t)
			var st storage.Store = s
			if tt.plain {
				st = plainStore{s}
			}
			j, err := journal.New(journal.Config{Store: st, SegmentBytes: tt.segmentBytes})
			if err != nil {
				t.Fatal(err)
			}
			want := appendN(t, j, "p", 0, 10)
			j.Close(context.Background())
			if n := len(listKeys(t, s, "p/")); n != 10 {
				t.Errorf("%d objects for 10 sequential appends, want 10", n)
			}
			if got, _ := replayAll(t, s, "p/"); !slices.Equal(got, want) {
				t.Errorf("replayed %q, want %q", got, want)
			}
		})
	}
}

// failingStore's writers write half of the batch and fail on the call
// numbered failAt, the way a full disk does.
type failingStore struct {
	*storage.FS
	mu     sync.Mutex
	calls  int
	failAt int
}

func (f *failingStore) CreateAppend(ctx context.Context, key string) (storage.AppendWriter, error) {
	w, err := f.FS.CreateAppend(ctx, key)
	if err != nil {
		return nil, err
	}
	return &failingWriter{AppendWriter: w, s: f}, nil
}

type failingWriter struct {
	storage.AppendWriter
	s *failingStore
}

func (w *failingWriter) Append(p []byte) error {
	w.s.mu.Lock()
	w.s.calls++
	fail := w.s.calls == w.s.failAt
	w.s.mu.Unlock()
	if fail {
		w.AppendWriter.Append(p[:len(p)/2])
		return errors.New("no space left on device")
	}
	return w.AppendWriter.Append(p)
}

// Ensure a failed append is reported, its partial tail reads as torn, and
// later lines go to a fresh object instead of being glued to the torn one.
func TestJournal_failedAppendStartsNewObject(t *testing.T) {
	fs := newStore(t)
	s := &failingStore{FS: fs, failAt: 3}
	j, err := journal.New(journal.Config{Store: s, SegmentBytes: journal.SegmentBytes})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	want := appendN(t, j, "p", 0, 2)
	if err := j.Append(ctx, "p", []byte(`{"lost":true}`)); err == nil {
		t.Fatal("failed append reported success")
	}
	want = append(want, appendN(t, j, "p", 2, 4)...)
	j.Close(ctx)
	if n := len(listKeys(t, fs, "p/")); n != 2 {
		t.Errorf("%d objects, want 2 (the failed one and its successor)", n)
	}
	got, torn := replayAll(t, fs, "p/")
	if !slices.Equal(got, want) || torn != 1 {
		t.Errorf("replayed %q with %d torn, want %q with 1 torn", got, torn, want)
	}
}

// Ensure object names keep append order when the clock steps back.
func TestJournal_NewIDNeverGoesBack(t *testing.T) {
	j, err := journal.New(journal.Config{Store: newStore(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close(context.Background())
	now := time.Now()
	a := j.NewID(now)
	b := j.NewID(now.Add(-time.Hour))
	c := j.NewID(now.Add(-2 * time.Hour))
	if a.Compare(b) >= 0 || b.Compare(c) >= 0 {
		t.Fatalf("IDs went back with the clock: %s %s %s", a, b, c)
	}
}

package journal_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"

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
	s := newStore(t)
	j, err := journal.New(journal.Config{Store: s})
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
	page, _ := s.List(context.Background(), "log/", storage.ListOptions{})
	if len(page.Keys) >= writers*each {
		t.Errorf("no group commit: %d objects for %d lines", len(page.Keys), writers*each)
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
	_ = strings.TrimSpace
}

func BenchmarkJournal_Append64(b *testing.B) {
	s := newStore(b)
	j, _ := journal.New(journal.Config{Store: s})
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
}

func TestJournal_AppendAsyncOrder(t *testing.T) {
	s := newStore(t)
	j, err := journal.New(journal.Config{Store: s, MaxBatchBytes: 64})
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

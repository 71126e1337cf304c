package storage_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/storage/storagetest"
)

func TestMemory(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return storage.NewMemory() })
}

// failingList fails its second page.
type failingList struct {
	storage.Store
	calls int
}

func (f *failingList) List(ctx context.Context, prefix string, opts storage.ListOptions) (storage.ListPage, error) {
	f.calls++
	if f.calls == 2 {
		return storage.ListPage{}, errors.New("boom")
	}
	opts.Limit = 2
	return f.Store.List(ctx, prefix, opts)
}

func TestKeys(t *testing.T) {
	ctx := context.Background()
	s := storage.NewMemory()
	var want []string
	for i := range 2500 {
		k := fmt.Sprintf("k/%05d", i)
		want = append(want, k)
		if _, err := s.Put(ctx, k, nil); err != nil {
			t.Fatal(err)
		}
	}
	s.Put(ctx, "other/x", nil)
	var got []string
	for k, err := range storage.Keys(ctx, s, "k/") {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, k)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Keys yielded %d keys, want %d in order", len(got), len(want))
	}

	got = got[:0]
	for k, err := range storage.KeysAfter(ctx, s, "k/", "k/02497") {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, k)
	}
	if !slices.Equal(got, want[2498:]) {
		t.Fatalf("KeysAfter = %v, want %v", got, want[2498:])
	}

	// Stopping early stops listing; an error is yielded once, last.
	f := &failingList{Store: s}
	var n int
	var lastErr error
	for k, err := range storage.Keys(ctx, f, "k/") {
		if err != nil {
			lastErr = err
			continue
		}
		n++
		_ = k
	}
	if n != 2 || lastErr == nil {
		t.Fatalf("with a failing second page: %d keys, err %v; want 2 and an error", n, lastErr)
	}
	f = &failingList{Store: s}
	for range storage.Keys(ctx, f, "k/") {
		break
	}
	if f.calls != 1 {
		t.Fatalf("break after the first key listed %d pages, want 1", f.calls)
	}
}

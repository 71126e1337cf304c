package journal_test

import (
	"context"
	"errors"
	"testing"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/storage"
)

func totalsOf(log string) journal.Stats {
	for _, st := range journal.Totals() {
		if st.Log == log {
			return st
		}
	}
	return journal.Stats{}
}

func first(c []uint64) uint64 {
	if len(c) == 0 {
		return 0
	}
	return c[0]
}

// refusingStore refuses every write.
type refusingStore struct{ storage.Store }

func (refusingStore) Create(context.Context, string, []byte) (string, error) {
	return "", errors.New("disk on fire")
}

func TestTotals(t *testing.T) {
	ctx := context.Background()
	j, err := journal.New(journal.Config{Store: storage.NewMemory()})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close(ctx)
	before := totalsOf("totalstest")
	for _, lines := range [][][]byte{{[]byte(`1`)}, {[]byte(`2`), []byte(`3`)}, {[]byte(`4`)}} {
		if err := j.Append(ctx, "totalstest/p", lines...); err != nil {
			t.Fatal(err)
		}
	}
	st := totalsOf("totalstest")
	if st.Records-before.Records != 4 || st.Writes-before.Writes != 3 || st.Failures != 0 {
		t.Fatalf("after 3 appends of 4 lines: %+v, before %+v", st, before)
	}
	if st.BatchSize.Count-before.BatchSize.Count != 3 || st.WriteSeconds.Count-before.WriteSeconds.Count != 3 ||
		st.BatchSize.Sum-before.BatchSize.Sum != 3 {
		t.Fatalf("histograms: batch %+v, seconds %+v; before %+v", st.BatchSize, st.WriteSeconds, before)
	}
	// Appends one at a time are batches of one: the first bucket.
	if c := st.BatchSize.Counts; c[0]-first(before.BatchSize.Counts) != 3 {
		t.Fatalf("batches of one not in the first bucket: %v", c)
	}

	bad, err := journal.New(journal.Config{Store: refusingStore{storage.NewMemory()}})
	if err != nil {
		t.Fatal(err)
	}
	defer bad.Close(ctx)
	failedBefore := totalsOf("totalsfail")
	if err := bad.Append(ctx, "totalsfail/p", []byte(`1`)); err == nil {
		t.Fatal("append to a failing store succeeded")
	}
	if st := totalsOf("totalsfail"); st.Failures-failedBefore.Failures != 1 || st.Records != 0 || st.Writes != 0 {
		t.Fatalf("after a failed write: %+v", st)
	}
}

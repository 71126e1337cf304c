package mailbus_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/storage"
)

// failingFS is a real filesystem store whose journal appends fail while
// failing is set, as on a full or failing disk.
type failingFS struct {
	*storage.FS
	failing atomic.Bool
}

func (f *failingFS) CreateAppend(ctx context.Context, key string) (storage.AppendWriter, error) {
	w, err := f.FS.CreateAppend(ctx, key)
	if err != nil {
		return nil, err
	}
	return failingWriter{w, f}, nil
}

type failingWriter struct {
	storage.AppendWriter
	f *failingFS
}

func (w failingWriter) Append(p []byte) error {
	if w.f.failing.Load() {
		return errors.New("injected I/O error")
	}
	return w.AppendWriter.Append(p)
}

// Ensure a failed journal write leaves no gap between what agents are told
// and what a restart finds: mail accepted after the failure keeps its seq
// across a restart, and resuming from the last seq seen misses nothing.
func TestBus_JournalFailureKeepsSeqs(t *testing.T) {
	ctx := ctxT(t)
	dir := t.TempDir()
	fs, err := storage.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer fs.Close()
	st := &failingFS{FS: fs}
	b, err := mailbus.New(context.Background(), mailbus.Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	got := newCollector()
	w, err := b.Agent(mailbus.LocalConfig{Exchange: "ex", Agent: "w"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Subscribe(ctx, "t.*", got.handle); err != nil {
		t.Fatal(err)
	}
	if err := w.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	pub := func(b *mailbus.Bus, id string) error {
		_, err := b.Publish(ctx, "ex", "p", mailbus.Message{ID: id, Type: "t.x"})
		return err
	}
	if err := pub(b, "m1"); err != nil {
		t.Fatal(err)
	}
	st.failing.Store(true)
	if err := pub(b, "m2"); err == nil {
		t.Fatal("publish succeeded on a failing journal")
	}
	st.failing.Store(false)
	for _, id := range []string{"m3", "m4"} {
		if err := pub(b, id); err != nil {
			t.Fatalf("publish %s after the failure: %v", id, err)
		}
	}
	seqs := func(b *mailbus.Bus, since int64) []string {
		ms, _, err := b.Inbox(ctx, "ex", "w", since, 100)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, m := range ms {
			out = append(out, m.ID+"@"+strconv.FormatUint(m.Seq, 10))
		}
		return out
	}
	// The in-process agent carries on on the reloaded exchange. It may
	// see m1 twice (its position is saved lazily), but nothing else.
	var ids []string
	for len(ids) < 3 || ids[len(ids)-1] != "m4" {
		ids = append(ids, got.wait(t, 1)[0].ID)
		ids = slices.Compact(ids)
	}
	if want := []string{"m1", "m3", "m4"}; !slices.Equal(ids, want) {
		t.Errorf("in-process agent got %v, want %v", ids, want)
	}
	if err := w.Close(ctx); err != nil {
		t.Fatal(err)
	}
	live := seqs(b, 0)
	if want := []string{"m1@1", "m3@2", "m4@3"}; !slices.Equal(live, want) {
		t.Fatalf("inbox %v, want %v", live, want)
	}
	if err := b.Close(ctx); err != nil {
		t.Fatal(err)
	}

	b2, err := mailbus.New(context.Background(), mailbus.Config{Store: fs})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close(ctx)
	if got := seqs(b2, 0); !slices.Equal(got, live) {
		t.Fatalf("after restart %v, before %v", got, live)
	}
	if err := pub(b2, "m5"); err != nil {
		t.Fatal(err)
	}
	if got := seqs(b2, int64(len(live))); len(got) != 1 || got[0][:2] != "m5" {
		t.Errorf("resuming after the last seq seen (%d): %v, want m5", len(live), got)
	}
}

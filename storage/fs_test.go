package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/storage/storagetest"
)

func TestFS(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return newFS(t) })
}

// Ensure nothing is written outside the root whatever key is tried.
func TestFS_Traversal(t *testing.T) {
	parent := t.TempDir()
	root := filepath.Join(parent, "data")
	s, err := storage.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, k := range []string{"../escape", "a/../../escape", "/tmp/escape", "..", "a/..%2F..%2Fescape"} {
		s.Put(context.Background(), k, []byte("x"))
	}
	ents, _ := os.ReadDir(parent)
	if len(ents) != 1 || ents[0].Name() != "data" {
		t.Fatalf("files outside the root: %v", ents)
	}
}

// The helper process below increments a shared counter with Update; several
// processes at once must not lose an increment.
func TestFS_CrossProcessUpdate(t *testing.T) {
	if dir := os.Getenv("STORAGE_TEST_CHILD_DIR"); dir != "" {
		childIncrement(t, dir)
		return
	}
	dir := t.TempDir()
	s, err := storage.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	s.Put(ctx, "counter", []byte("0"))
	const procs, each = 4, 25
	var cmds []*exec.Cmd
	for range procs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestFS_CrossProcessUpdate$")
		cmd.Env = append(os.Environ(), "STORAGE_TEST_CHILD_DIR="+dir, "STORAGE_TEST_EACH="+strconv.Itoa(each))
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	for _, c := range cmds {
		if err := c.Wait(); err != nil {
			t.Fatalf("child: %v", err)
		}
	}
	obj, _ := s.Get(ctx, "counter")
	if got, want := string(obj.Data), strconv.Itoa(procs*each); got != want {
		t.Fatalf("counter = %s, want %s", got, want)
	}
}

func childIncrement(t *testing.T, dir string) {
	s, err := storage.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	each, _ := strconv.Atoi(os.Getenv("STORAGE_TEST_EACH"))
	ctx := context.Background()
	for done := 0; done < each; {
		obj, err := s.Get(ctx, "counter")
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(string(obj.Data))
		if _, err := s.Update(ctx, "counter", []byte(strconv.Itoa(n+1)), obj.Version); errors.Is(err, storage.ErrVersionMismatch) {
			continue
		} else if err != nil {
			t.Fatal(err)
		}
		done++
	}
}

// An appendable file is allocated ahead of its data, so that a durable
// append need not grow it, and trimmed back to the data on Close.
func TestFS_appendReserves(t *testing.T) {
	dir := t.TempDir()
	s, err := storage.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	w, err := s.CreateAppend(context.Background(), "log/seg")
	if err != nil {
		t.Fatal(err)
	}
	line := []byte("one line\n")
	if err := w.Append(line); err != nil {
		t.Fatal(err)
	}
	size := func() int64 {
		fi, err := os.Stat(filepath.Join(dir, "log", "seg"))
		if err != nil {
			t.Fatal(err)
		}
		return fi.Size()
	}
	if got := size(); runtime.GOOS == "linux" && got <= int64(len(line)) {
		t.Errorf("open appendable file is %d bytes; want space reserved past the %d of data", got, len(line))
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := size(); got != int64(len(line)) {
		t.Errorf("closed appendable file is %d bytes; want %d", got, len(line))
	}
}

// BenchmarkFS_durableWrite compares the two ways a journal batch of 8 KiB
// can be made durable: a new object (temporary file, fsync, rename,
// directory fsync) and an append with fdatasync. The append is the floor
// for any durable operation on this disk: a caller that waits for its own
// write cannot finish more than one per append latency.
func BenchmarkFS_durableWrite(b *testing.B) {
	ctx := context.Background()
	data := make([]byte, 8<<10)
	for i := range data {
		data[i] = 'x'
	}
	b.Run("create", func(b *testing.B) {
		s := newFS(b)
		for i := 0; b.Loop(); i++ {
			if _, err := s.Create(ctx, "log/"+strconv.Itoa(i), data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append", func(b *testing.B) {
		s := newFS(b)
		w, err := s.CreateAppend(ctx, "log/seg")
		if err != nil {
			b.Fatal(err)
		}
		defer w.Close()
		for b.Loop() {
			if err := w.Append(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	// Several files appended and synced at once: whether the disk
	// overlaps flushes, that is whether splitting a journal could raise the
	// number of durable writes per second.
	for _, files := range []int{2, 4} {
		b.Run("append/files="+strconv.Itoa(files), func(b *testing.B) {
			s := newFS(b)
			ws := make([]storage.AppendWriter, files)
			for i := range ws {
				w, err := s.CreateAppend(ctx, "log/seg"+strconv.Itoa(i))
				if err != nil {
					b.Fatal(err)
				}
				defer w.Close()
				ws[i] = w
			}
			b.ResetTimer()
			var wg sync.WaitGroup
			for i, w := range ws {
				n := b.N / files
				if i < b.N%files {
					n++
				}
				wg.Go(func() {
					for range n {
						if err := w.Append(data); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
		})
	}
}

func newFS(tb testing.TB) *storage.FS {
	s, err := storage.NewFS(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	return s
}

// PutStream writes what its function writes, whole, replacing what was at
// the key; a function that fails leaves the key as it was and no temporary
// file behind; an invalid key writes nothing.
func TestFS_PutStream(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	fsys, err := storage.NewFS(root)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	var s storage.Store = fsys
	big := bytes.Repeat([]byte("0123456789abcdef"), 100_000) // larger than the stream's buffer
	tests := []struct {
		name    string
		key     string
		pieces  [][]byte
		fail    error
		want    []byte // at the key afterwards; nil: not found
		wantErr error
	}{
		{"pieces", "snap/a.json", [][]byte{[]byte(`{"a":`), []byte(`1}`)}, nil, []byte(`{"a":1}`), nil},
		{"larger than the buffer", "snap/b.json", [][]byte{big[:7], big[7:]}, nil, big, nil},
		{"replaces", "snap/a.json", [][]byte{[]byte(`{"a":2}`)}, nil, []byte(`{"a":2}`), nil},
		{"write fails", "snap/a.json", [][]byte{[]byte(`{"a":3`)}, errBoom, []byte(`{"a":2}`), errBoom},
		{"write fails on a new key", "snap/c.json", [][]byte{big}, errBoom, nil, errBoom},
		{"invalid key", "../c.json", [][]byte{[]byte(`{}`)}, nil, nil, storage.ErrInvalidKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := s.(storage.Streamer).PutStream(ctx, tt.key, func(w io.Writer) error {
				for _, p := range tt.pieces {
					if _, err := w.Write(p); err != nil {
						return err
					}
				}
				return tt.fail
			})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("PutStream: %v, want %v", err, tt.wantErr)
			}
			if tt.want == nil {
				if _, err := s.Get(ctx, tt.key); !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrInvalidKey) {
					t.Fatalf("Get after a failed PutStream: %v, want not found", err)
				}
				return
			}
			obj, err := s.Get(ctx, tt.key)
			if err != nil || !bytes.Equal(obj.Data, tt.want) {
				t.Fatalf("Get: %d bytes, %v; want %d bytes", len(obj.Data), err, len(tt.want))
			}
		})
	}
	// Temporary files live in the root's .tmp until they are renamed.
	if left, err := os.ReadDir(filepath.Join(root, ".tmp")); err != nil || len(left) != 0 {
		t.Fatalf("temporary files left behind: %v, %v", left, err)
	}
}

var errBoom = errors.New("boom")

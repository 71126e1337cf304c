package storage_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/storage/storagetest"
)

func TestFS(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		s, err := storage.NewFS(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
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

// Package storagetest is the conformance suite every storage.Store must pass.
// Backends in this module run it, and so can backends written elsewhere:
//
//	func TestMyStore(t *testing.T) {
//		storagetest.Run(t, func(t *testing.T) storage.Store { return newMyStore(t) })
//	}
package storagetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/meatspace-exchange/mess/storage"
)

// Factory returns an empty store for one subtest. It registers its own
// cleanup with t.
type Factory func(t *testing.T) storage.Store

// Run runs the conformance suite against stores made by newStore.
func Run(t *testing.T, newStore Factory) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s storage.Store)
	}{
		{"GetMissing", testGetMissing},
		{"PutGet", testPutGet},
		{"Create", testCreate},
		{"Update", testUpdate},
		{"Delete", testDelete},
		{"List", testList},
		{"ListPaging", testListPaging},
		{"InvalidKeys", testInvalidKeys},
		{"ConcurrentCreate", testConcurrentCreate},
		{"ConcurrentUpdate", testConcurrentUpdate},
		{"ConcurrentUpdateOneVersion", testConcurrentUpdateOneVersion},
		{"Cancelled", testCancelled},
		{"CancelledMidWrite", testCancelledMidWrite},
		{"LargeObject", testLargeObject},
		{"LongListing", testLongListing},
		{"Append", testAppend},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, newStore(t)) })
	}
}

var ctx = context.Background()

func testGetMissing(t *testing.T, s storage.Store) {
	if _, err := s.Get(ctx, "nope/missing.json"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get missing: got %v, want ErrNotFound", err)
	}
}

func testPutGet(t *testing.T, s storage.Store) {
	v1, err := s.Put(ctx, "a/b/c.json", []byte("one"))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Get(ctx, "a/b/c.json")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(obj.Data), "one"; got != want {
		t.Fatalf("data = %q, want %q", got, want)
	}
	if obj.Version != v1 {
		t.Fatalf("version = %q, want %q from Put", obj.Version, v1)
	}
	v2, err := s.Put(ctx, "a/b/c.json", []byte("two"))
	if err != nil {
		t.Fatal(err)
	}
	if v2 == v1 {
		t.Fatalf("version did not change on overwrite: %q", v2)
	}
	obj, _ = s.Get(ctx, "a/b/c.json")
	if string(obj.Data) != "two" {
		t.Fatalf("data after overwrite = %q", obj.Data)
	}
	// Empty objects are objects.
	if _, err := s.Put(ctx, "a/empty", nil); err != nil {
		t.Fatal(err)
	}
	if obj, err := s.Get(ctx, "a/empty"); err != nil || len(obj.Data) != 0 {
		t.Fatalf("Get empty = %q, %v", obj.Data, err)
	}
}

func testCreate(t *testing.T, s storage.Store) {
	v, err := s.Create(ctx, "x/once", []byte("first"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "x/once", []byte("second")); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second Create: got %v, want ErrExists", err)
	}
	obj, err := s.Get(ctx, "x/once")
	if err != nil {
		t.Fatal(err)
	}
	if string(obj.Data) != "first" || obj.Version != v {
		t.Fatalf("after failed Create: %q %q, want first %q", obj.Data, obj.Version, v)
	}
}

func testUpdate(t *testing.T, s storage.Store) {
	if _, err := s.Update(ctx, "u/missing", []byte("x"), "whatever"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Update missing: got %v, want ErrNotFound", err)
	}
	v1, _ := s.Put(ctx, "u/k", []byte("1"))
	v2, err := s.Update(ctx, "u/k", []byte("2"), v1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Update(ctx, "u/k", []byte("3"), v1); !errors.Is(err, storage.ErrVersionMismatch) {
		t.Fatalf("stale Update: got %v, want ErrVersionMismatch", err)
	}
	obj, _ := s.Get(ctx, "u/k")
	if string(obj.Data) != "2" || obj.Version != v2 {
		t.Fatalf("after stale Update: %q %q, want 2 %q", obj.Data, obj.Version, v2)
	}
}

func testDelete(t *testing.T, s storage.Store) {
	s.Put(ctx, "d/k", []byte("x"))
	if err := s.Delete(ctx, "d/k"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "d/k"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Get after Delete: %v", err)
	}
	if err := s.Delete(ctx, "d/k"); err != nil {
		t.Fatalf("Delete missing: %v", err)
	}
	if _, err := s.Create(ctx, "d/k", []byte("again")); err != nil {
		t.Fatalf("Create after Delete: %v", err)
	}
}

func testList(t *testing.T, s storage.Store) {
	keys := []string{"p/a/b", "p/a.b", "p/a-b", "p/a/c/d", "p/b", "p/ab", "q/z", "pz"}
	for _, k := range keys {
		if _, err := s.Put(ctx, k, []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		prefix string
		want   []string
	}{
		{"p/", []string{"p/a-b", "p/a.b", "p/a/b", "p/a/c/d", "p/ab", "p/b"}},
		{"p/a", []string{"p/a-b", "p/a.b", "p/a/b", "p/a/c/d", "p/ab"}},
		{"p/a/", []string{"p/a/b", "p/a/c/d"}},
		{"p", []string{"p/a-b", "p/a.b", "p/a/b", "p/a/c/d", "p/ab", "p/b", "pz"}},
		{"", []string{"p/a-b", "p/a.b", "p/a/b", "p/a/c/d", "p/ab", "p/b", "pz", "q/z"}},
		{"nothing/", nil},
	}
	for _, tt := range tests {
		page, err := s.List(ctx, tt.prefix, storage.ListOptions{})
		if err != nil {
			t.Fatalf("List(%q): %v", tt.prefix, err)
		}
		if !slices.Equal(page.Keys, tt.want) {
			t.Errorf("List(%q) = %q, want %q", tt.prefix, page.Keys, tt.want)
		}
		if page.Next != "" {
			t.Errorf("List(%q).Next = %q on the last page", tt.prefix, page.Next)
		}
	}
}

func testListPaging(t *testing.T, s storage.Store) {
	var want []string
	for i := range 25 {
		k := fmt.Sprintf("pg/%02d/item-%d", i%7, i)
		want = append(want, k)
		if _, err := s.Put(ctx, k, nil); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(want)
	var got []string
	opts := storage.ListOptions{Limit: 4}
	for pages := 0; ; pages++ {
		if pages > 10 {
			t.Fatal("paging does not terminate")
		}
		page, err := s.List(ctx, "pg/", opts)
		if err != nil {
			t.Fatal(err)
		}
		if len(page.Keys) > 4 {
			t.Fatalf("page of %d keys, limit 4", len(page.Keys))
		}
		got = append(got, page.Keys...)
		if page.Next == "" {
			break
		}
		opts.After = page.Next
	}
	if !slices.Equal(got, want) {
		t.Fatalf("paged listing = %q, want %q", got, want)
	}
	page, _ := s.List(ctx, "pg/", storage.ListOptions{After: want[10]})
	if !slices.Equal(page.Keys, want[11:]) {
		t.Fatalf("List after %q = %q, want %q", want[10], page.Keys, want[11:])
	}
}

func testInvalidKeys(t *testing.T, s storage.Store) {
	bad := []string{"", "../escape", "a/../../b", "/abs", "a//b", "a/./b", "a/", ".hidden", "a\\b", "a/%2F", "a b", "a\x00b"}
	for _, k := range bad {
		if _, err := s.Put(ctx, k, []byte("x")); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Put(%q): got %v, want ErrInvalidKey", k, err)
		}
		if _, err := s.Get(ctx, k); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Get(%q): got %v, want ErrInvalidKey", k, err)
		}
		if _, err := s.Create(ctx, k, []byte("x")); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Create(%q): got %v, want ErrInvalidKey", k, err)
		}
		if err := s.Delete(ctx, k); !errors.Is(err, storage.ErrInvalidKey) {
			t.Errorf("Delete(%q): got %v, want ErrInvalidKey", k, err)
		}
	}
	page, err := s.List(ctx, "", storage.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Keys) != 0 {
		t.Fatalf("invalid writes left keys behind: %q", page.Keys)
	}
}

func testConcurrentCreate(t *testing.T, s storage.Store) {
	const n = 16
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			_, err := s.Create(ctx, "race/create", []byte(strconv.Itoa(i)))
			switch {
			case err == nil:
				wins.Add(1)
			case !errors.Is(err, storage.ErrExists):
				t.Errorf("Create: %v", err)
			}
		})
	}
	wg.Wait()
	if got := wins.Load(); got != 1 {
		t.Fatalf("%d concurrent Creates succeeded, want exactly 1", got)
	}
}

func testConcurrentUpdate(t *testing.T, s storage.Store) {
	const workers, each = 8, 10
	if _, err := s.Put(ctx, "race/counter", []byte("0")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for done := 0; done < each; {
				obj, err := s.Get(ctx, "race/counter")
				if err != nil {
					t.Error(err)
					return
				}
				n, _ := strconv.Atoi(string(obj.Data))
				_, err = s.Update(ctx, "race/counter", []byte(strconv.Itoa(n+1)), obj.Version)
				if errors.Is(err, storage.ErrVersionMismatch) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				done++
			}
		})
	}
	wg.Wait()
	obj, _ := s.Get(ctx, "race/counter")
	if got, want := string(obj.Data), strconv.Itoa(workers*each); got != want {
		t.Fatalf("counter = %s, want %s: an Update overwrote a newer version", got, want)
	}
}

// testAppend checks the optional Appender capability; stores without it
// pass trivially.
func testAppend(t *testing.T, s storage.Store) {
	a, ok := s.(storage.Appender)
	if !ok {
		return
	}
	if _, err := a.CreateAppend(ctx, "../escape"); !errors.Is(err, storage.ErrInvalidKey) {
		t.Fatalf("CreateAppend with a bad key: got %v, want ErrInvalidKey", err)
	}
	if _, err := s.Put(ctx, "log/taken", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateAppend(ctx, "log/taken"); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("CreateAppend over an object: got %v, want ErrExists", err)
	}
	w, err := a.CreateAppend(ctx, "log/seg")
	if err != nil {
		t.Fatal(err)
	}
	// Space reserved ahead of the data reads as zero bytes until Close.
	appended := func(data []byte) []byte {
		if i := bytes.IndexByte(data, 0); i >= 0 {
			if len(bytes.Trim(data[i:], "\x00")) != 0 {
				t.Fatalf("appendable object %q: data after the reserved zeros", data)
			}
			return data[:i]
		}
		return data
	}
	obj, err := s.Get(ctx, "log/seg")
	if err != nil || len(appended(obj.Data)) != 0 {
		t.Fatalf("new appendable object: %q, %v; want empty", obj.Data, err)
	}
	if _, err := a.CreateAppend(ctx, "log/seg"); !errors.Is(err, storage.ErrExists) {
		t.Fatalf("second CreateAppend: got %v, want ErrExists", err)
	}
	var want []byte
	for i := range 3 {
		line := []byte(fmt.Sprintf("line %d\n", i))
		if err := w.Append(line); err != nil {
			t.Fatal(err)
		}
		want = append(want, line...)
		obj, err := s.Get(ctx, "log/seg")
		if err != nil || string(appended(obj.Data)) != string(want) {
			t.Fatalf("after append %d: %q, %v; want %q", i, obj.Data, err, want)
		}
	}
	if err := w.Append([]byte("nul\x00\n")); err == nil {
		t.Fatal("Append of data with a NUL byte succeeded")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if obj, err := s.Get(ctx, "log/seg"); err != nil || string(obj.Data) != string(want) {
		t.Fatalf("after Close: %q, %v; want exactly %q", obj.Data, err, want)
	}
	if err := w.Append([]byte("late\n")); err == nil {
		t.Fatal("Append after Close succeeded")
	}
	page, err := s.List(ctx, "log/", storage.ListOptions{})
	if err != nil || !slices.Equal(page.Keys, []string{"log/seg", "log/taken"}) {
		t.Fatalf("List: %q, %v", page.Keys, err)
	}
}

// testConcurrentUpdateOneVersion races Updates that all read the same
// version: exactly one may win.
func testConcurrentUpdateOneVersion(t *testing.T, s storage.Store) {
	const n = 16
	v, err := s.Put(ctx, "race/cas", []byte("start"))
	if err != nil {
		t.Fatal(err)
	}
	var wins atomic.Int32
	var winner atomic.Value
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			data := "writer-" + strconv.Itoa(i)
			_, err := s.Update(ctx, "race/cas", []byte(data), v)
			switch {
			case err == nil:
				wins.Add(1)
				winner.Store(data)
			case !errors.Is(err, storage.ErrVersionMismatch):
				t.Errorf("Update: %v", err)
			}
		})
	}
	wg.Wait()
	if got := wins.Load(); got != 1 {
		t.Fatalf("%d Updates of one version succeeded, want exactly 1", got)
	}
	obj, err := s.Get(ctx, "race/cas")
	if err != nil || string(obj.Data) != winner.Load() {
		t.Fatalf("stored %q, %v; want the winner's %q", obj.Data, err, winner.Load())
	}
}

// testCancelled checks that every call honours a context that is already
// cancelled and changes nothing.
func testCancelled(t *testing.T, s storage.Store) {
	v, err := s.Put(ctx, "c/k", []byte("before"))
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	calls := map[string]func() error{
		"Get":    func() error { _, err := s.Get(cctx, "c/k"); return err },
		"Put":    func() error { _, err := s.Put(cctx, "c/k", []byte("put")); return err },
		"Create": func() error { _, err := s.Create(cctx, "c/new", []byte("x")); return err },
		"Update": func() error { _, err := s.Update(cctx, "c/k", []byte("upd"), v); return err },
		"Delete": func() error { return s.Delete(cctx, "c/k") },
		"List":   func() error { _, err := s.List(cctx, "c/", storage.ListOptions{}); return err },
	}
	for name, call := range calls {
		if err := call(); !errors.Is(err, context.Canceled) {
			t.Errorf("%s with a cancelled context: got %v, want context.Canceled", name, err)
		}
	}
	obj, err := s.Get(ctx, "c/k")
	if err != nil || string(obj.Data) != "before" || obj.Version != v {
		t.Fatalf("after cancelled calls: %q %q, %v; want the object untouched", obj.Data, obj.Version, err)
	}
	if _, err := s.Get(ctx, "c/new"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("a cancelled Create left an object: %v", err)
	}
}

// testCancelledMidWrite cancels large writes while they run. Each must
// either succeed or fail with the context's error, and a reader must see
// the old object or the new one whole, never a part.
func testCancelledMidWrite(t *testing.T, s storage.Store) {
	old := bytes.Repeat([]byte("o"), 1<<20)
	if _, err := s.Put(ctx, "mid/k", old); err != nil {
		t.Fatal(err)
	}
	next := bytes.Repeat([]byte("n"), 4<<20)
	for i := range 4 {
		cctx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { _, err := s.Put(cctx, "mid/k", next); done <- err }()
		// Cancel at a different point each round, from "at once" onwards.
		for range i * 50 {
			runtime.Gosched()
		}
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Fatalf("round %d: Put cancelled mid-call: %v, want nil or context.Canceled", i, err)
		}
		obj, err := s.Get(ctx, "mid/k")
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(obj.Data, old) && !bytes.Equal(obj.Data, next) {
			t.Fatalf("round %d: a cancelled Put left %d bytes that are neither object", i, len(obj.Data))
		}
	}
}

func testLargeObject(t *testing.T, s storage.Store) {
	data := make([]byte, 10<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	v, err := s.Create(ctx, "big/obj", data)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Get(ctx, "big/obj")
	if err != nil || !bytes.Equal(obj.Data, data) || obj.Version != v {
		t.Fatalf("10 MiB round trip: %d bytes, equal %v, version %q want %q, %v", len(obj.Data), bytes.Equal(obj.Data, data), obj.Version, v, err)
	}
	data[len(data)-1]++
	if _, err := s.Update(ctx, "big/obj", data, v); err != nil {
		t.Fatal(err)
	}
	if obj, err := s.Get(ctx, "big/obj"); err != nil || !bytes.Equal(obj.Data, data) {
		t.Fatalf("10 MiB update did not read back: %v", err)
	}
}

// testLongListing lists more keys than one page of the default size and
// than one request of an S3 listing (1,000).
func testLongListing(t *testing.T, s storage.Store) {
	const n = 1234
	want := make([]string, n)
	var wg sync.WaitGroup
	work := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range work {
				if _, err := s.Put(ctx, want[i], nil); err != nil {
					t.Error(err)
				}
			}
		})
	}
	for i := range n {
		want[i] = fmt.Sprintf("long/%05d", i)
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	page, err := s.List(ctx, "long/", storage.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(page.Keys) != storage.DefaultListLimit || page.Next != want[storage.DefaultListLimit-1] {
		t.Fatalf("default page: %d keys, next %q; want %d and %q", len(page.Keys), page.Next, storage.DefaultListLimit, want[storage.DefaultListLimit-1])
	}
	page, err = s.List(ctx, "long/", storage.ListOptions{Limit: 1100})
	if err != nil || !slices.Equal(page.Keys, want[:1100]) || page.Next != want[1099] {
		t.Fatalf("page of 1100: %d keys, next %q, %v", len(page.Keys), page.Next, err)
	}
	var got []string
	for k, err := range storage.Keys(ctx, s, "long/") {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, k)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("every key: got %d, want %d in order", len(got), n)
	}
}

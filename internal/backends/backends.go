// Package backends runs a test against every storage backend: a directory
// on the local filesystem and a bucket on a real MinIO server (started
// once per test process with internal/miniotest, and stopped by Stop from
// TestMain).
package backends

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meatspace-exchange/mess/internal/miniotest"
	"github.com/meatspace-exchange/mess/ownership"
	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/storage/s3store"
)

var (
	mu     sync.Mutex
	server *miniotest.Server
	dir    string
)

// minio returns the process's MinIO server, starting it on first use.
func minio() (*miniotest.Server, error) {
	mu.Lock()
	defer mu.Unlock()
	if server != nil {
		return server, nil
	}
	d, err := os.MkdirTemp("", "backends-minio")
	if err != nil {
		return nil, err
	}
	s, err := miniotest.Start(d)
	if err != nil {
		os.RemoveAll(d)
		return nil, fmt.Errorf("start MinIO: %w", err)
	}
	server, dir = s, d
	return s, nil
}

// Stop stops the MinIO server if one was started. Call it from TestMain
// after m.Run.
func Stop() {
	mu.Lock()
	defer mu.Unlock()
	if server != nil {
		server.Stop()
		os.RemoveAll(dir)
		server = nil
	}
}

// Opener opens the backend's store; every call on one Opener returns a
// store on the same data, as a restarted process would see it.
type Opener func(t testing.TB) storage.Store

// Each runs fn once per backend, as subtests named "fs" and "minio". fn
// gets an Opener for a fresh, empty store.
func Each(t *testing.T, fn func(t *testing.T, open Opener)) {
	t.Run("fs", func(t *testing.T) { fn(t, FS(t)) })
	t.Run("minio", func(t *testing.T) { fn(t, MinIO(t)) })
}

// FS returns an Opener of one new directory.
func FS(t testing.TB) Opener {
	d := t.TempDir()
	return func(t testing.TB) storage.Store {
		s, err := storage.NewFS(d)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}
}

// MinIO returns an Opener of one new bucket on the real MinIO server.
func MinIO(t testing.TB) Opener {
	srv, err := minio()
	if err != nil {
		t.Fatal(err)
	}
	bucket, err := srv.NewBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return func(t testing.TB) storage.Store {
		// Its own connections, closed when the test ends, so no
		// goroutine of an idle connection outlives the test.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		t.Cleanup(tr.CloseIdleConnections)
		s, err := s3store.New(context.Background(), s3store.Config{Endpoint: srv.Endpoint, Bucket: bucket,
			AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey, Transport: tr})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// Main runs the tests, stops MinIO, and then checks that no goroutine
// leaked. Use it as TestMain.
func Main(m *testing.M) {
	code := m.Run()
	Stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// Owner makes holder the owner of store, as messd's writer would be. Its
// heartbeat and timeout are long, so an owner replaced in a test still
// believes it owns the store (as a paused process does on waking) and
// only the fences in the store can stop it. It is released when the test
// ends.
func Owner(t testing.TB, store storage.Store, holder string) *ownership.Ownership {
	t.Helper()
	o, err := ownership.Claim(context.Background(), ownership.Config{Store: store, Key: "owners/messd.json",
		Holder: holder, Heartbeat: 10 * time.Second, Timeout: time.Minute}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.Release(context.Background()) })
	return o
}

// TakeOver hands store from prev to holder at the next epoch. prev stops
// its heartbeat, but whatever it serves keeps running as if nothing
// happened.
func TakeOver(t testing.TB, store storage.Store, prev *ownership.Ownership, holder string) *ownership.Ownership {
	t.Helper()
	if err := prev.Release(context.Background()); err != nil {
		t.Fatal(err)
	}
	o := Owner(t, store, holder)
	if o.Epoch() != prev.Epoch()+1 {
		t.Fatalf("epoch %d after %d", o.Epoch(), prev.Epoch())
	}
	return o
}

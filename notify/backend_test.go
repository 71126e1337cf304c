package notify_test

import (
	"testing"

	"github.com/meatspace-exchange/mess/internal/backends"
	"github.com/meatspace-exchange/mess/storage"
)

// backend is a kind of store the durable tests run on.
type backend struct {
	name string
	new  func(t testing.TB) storage.Store
}

var (
	fsBackend = backend{"fs", func(t testing.TB) storage.Store {
		st, err := storage.NewFS(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return st
	}}
	memoryBackend = backend{"memory", func(testing.TB) storage.Store { return storage.NewMemory() }}
	minioBackend  = backend{"minio", newMinioStore}
)

// onBackends runs f on the filesystem and on MinIO.
func onBackends(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range []backend{fsBackend, minioBackend} {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// newMinioStore returns a store on a fresh bucket of the package's MinIO
// server (internal/backends).
func newMinioStore(t testing.TB) storage.Store { return backends.MinIO(t)(t) }

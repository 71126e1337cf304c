package lease_test

import (
	"context"
	"net/http"
	"os"
	"sync"
	"testing"

	"github.com/meatspace-exchange/mess/internal/miniotest"
	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/storage/s3store"
)

// backend is a kind of store the durable tests run on.
type backend struct {
	name string
	new  func(t testing.TB) storage.Store
}

var (
	fsBackend     = backend{"fs", func(t testing.TB) storage.Store { return MustFS(t, t.TempDir()) }}
	memoryBackend = backend{"memory", func(testing.TB) storage.Store { return storage.NewMemory() }}
	minioBackend  = backend{"minio", newMinioStore}
)

// onBackends runs f on the filesystem and on MinIO.
func onBackends(t *testing.T, f func(t *testing.T, b backend)) {
	for _, b := range []backend{fsBackend, minioBackend} {
		t.Run(b.name, func(t *testing.T) { f(t, b) })
	}
}

// minio is one MinIO server shared by this package's tests, started on
// first use and stopped by TestMain.
var minio struct {
	once sync.Once
	srv  *miniotest.Server
	dir  string
	err  error
}

func stopMinio() {
	if minio.srv != nil {
		minio.srv.Stop()
		os.RemoveAll(minio.dir)
	}
}

// newMinioStore returns a store on a fresh bucket of the shared server.
// Its connections are closed when the test ends.
func newMinioStore(t testing.TB) storage.Store {
	t.Helper()
	minio.once.Do(func() {
		if minio.dir, minio.err = os.MkdirTemp("", "lease-minio"); minio.err == nil {
			minio.srv, minio.err = miniotest.Start(minio.dir)
		}
	})
	if minio.err != nil {
		t.Fatalf("MinIO: %v", minio.err)
	}
	bucket, err := minio.srv.NewBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	s, err := s3store.New(context.Background(), s3store.Config{Endpoint: minio.srv.Endpoint, Bucket: bucket,
		AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey, Transport: tr})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

package s3store_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/meatspace-exchange/mess/internal/miniotest"
	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/storage/s3store"
	"github.com/meatspace-exchange/mess/storage/storagetest"
)

var server *miniotest.Server

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "s3store-minio")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	server, err = miniotest.Start(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "s3store tests need a MinIO server:", err)
		os.Exit(1)
	}
	code := m.Run()
	server.Stop()
	os.RemoveAll(dir)
	if code == 0 {
		if err := goleak.Find(goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
			goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
			goleak.IgnoreTopFunction("internal/poll.runtime_pollWait")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func config(t *testing.T) s3store.Config {
	t.Helper()
	bucket, err := server.NewBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return s3store.Config{Endpoint: server.Endpoint, Bucket: bucket,
		AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey}
}

func newStore(t *testing.T, cfg s3store.Config) *s3store.Store {
	t.Helper()
	s, err := s3store.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestConformance(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store { return newStore(t, config(t)) })
}

// With a prefix the same suite passes, and nothing is written outside it.
func TestConformanceWithPrefix(t *testing.T) {
	storagetest.Run(t, func(t *testing.T) storage.Store {
		cfg := config(t)
		// Something of another deployment in the same bucket.
		other := cfg
		other.Prefix = "other"
		if _, err := newStore(t, other).Put(context.Background(), "p/a", []byte("x")); err != nil {
			t.Fatal(err)
		}
		cfg.Prefix = "deploy-1/"
		return newStore(t, cfg)
	})
}

func TestVerifyConditionalWrites(t *testing.T) {
	if err := storage.VerifyConditionalWrites(context.Background(), newStore(t, config(t))); err != nil {
		t.Fatal(err)
	}
}

func TestNewFailsClearly(t *testing.T) {
	good := config(t)
	for _, tt := range []struct {
		name string
		mod  func(*s3store.Config)
		want string
	}{
		{"missing bucket", func(c *s3store.Config) { c.Bucket = "no-such-bucket" }, `bucket "no-such-bucket" does not exist`},
		{"bad secret", func(c *s3store.Config) { c.SecretKey = "wrong-secret-key" }, "credentials rejected"},
		{"bad access key", func(c *s3store.Config) { c.AccessKey = "nobody" }, "credentials rejected"},
		{"no endpoint", func(c *s3store.Config) { c.Endpoint = "" }, "endpoint is required"},
		{"bad prefix", func(c *s3store.Config) { c.Prefix = "../x" }, "prefix"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := good
			tt.mod(&cfg)
			start := time.Now()
			_, err := s3store.New(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Fatalf("error is not one line: %q", err)
			}
			_ = start
		})
	}
}

// flaky answers the first n requests with 503 SlowDown (or status and
// code, when set), then passes.
type flaky struct {
	left   atomic.Int32
	count  atomic.Int32
	status int
	code   string
	noBody bool // answer with the status alone, as MinIO may while shutting down
}

func (f *flaky) RoundTrip(r *http.Request) (*http.Response, error) {
	f.count.Add(1)
	if f.left.Add(-1) >= 0 {
		if r.Body != nil {
			io.Copy(io.Discard, r.Body)
			r.Body.Close()
		}
		status, code := http.StatusServiceUnavailable, "SlowDown"
		if f.status != 0 {
			status, code = f.status, f.code
		}
		body := `<?xml version="1.0" encoding="UTF-8"?><Error><Code>` + code + `</Code><Message>Please reduce your request rate.</Message></Error>`
		if f.noBody {
			return &http.Response{StatusCode: status, Status: fmt.Sprintf("%d status code %d", status, status),
				Header: http.Header{}, Body: http.NoBody, Request: r, ProtoMajor: 1, ProtoMinor: 1}, nil
		}
		return &http.Response{StatusCode: status, Status: fmt.Sprintf("%d %s", status, code),
			Header: http.Header{"Content-Type": {"application/xml"}}, Body: io.NopCloser(strings.NewReader(body)),
			ContentLength: int64(len(body)), Request: r, ProtoMajor: 1, ProtoMinor: 1}, nil
	}
	return http.DefaultTransport.RoundTrip(r)
}

func TestRetriesThrottling(t *testing.T) {
	cfg := config(t)
	f := &flaky{}
	cfg.Transport = f
	s := newStore(t, cfg)
	ctx := context.Background()
	f.left.Store(3)
	if _, err := s.Create(ctx, "k", []byte("x")); err != nil {
		t.Fatalf("Create after three SlowDowns: %v", err)
	}
	if obj, err := s.Get(ctx, "k"); err != nil || string(obj.Data) != "x" {
		t.Fatalf("Get: %q, %v", obj.Data, err)
	}
	// Throttled for longer than the attempts allow: the error says so.
	f.left.Store(100)
	before := f.count.Load()
	_, err := s.Put(ctx, "k2", []byte("y"))
	if err == nil || !strings.Contains(err.Error(), "reduce your request rate") {
		t.Fatalf("Put while throttled: %v", err)
	}
	if n := f.count.Load() - before; n != 5 {
		t.Fatalf("%d attempts, want the default 5", n)
	}
}

// MinIO answers 499 ClientDisconnected to requests it gives up while
// shutting down (gracefully stopped under load): that is tried again, and
// if it persists it is storage.ErrUnavailable (a 503), not an error a
// service would answer with 500.
func TestRetriesClientDisconnected(t *testing.T) {
	for _, noBody := range []bool{false, true} {
		t.Run(fmt.Sprint("noBody=", noBody), func(t *testing.T) { testRetries499(t, noBody) })
	}
}

func testRetries499(t *testing.T, noBody bool) {
	cfg := config(t)
	f := &flaky{status: 499, code: "ClientDisconnected", noBody: noBody}
	cfg.Transport = f
	s := newStore(t, cfg)
	ctx := context.Background()
	f.left.Store(2)
	if _, err := s.Create(ctx, "k", []byte("x")); err != nil {
		t.Fatalf("Create after two ClientDisconnected: %v", err)
	}
	f.left.Store(100)
	if _, err := s.Put(ctx, "k2", []byte("y")); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("Put while the server drops requests: %v, want storage.ErrUnavailable", err)
	}
}

func TestTimeoutBoundsACall(t *testing.T) {
	cfg := config(t)
	f := &flaky{}
	cfg.Transport = f
	cfg.Timeout = 300 * time.Millisecond
	cfg.Attempts = 1000
	s := newStore(t, cfg)
	f.left.Store(1 << 30)
	_, err := s.Get(context.Background(), "k")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want the call's deadline", err)
	}
}

func TestDeleteMany(t *testing.T) {
	s := newStore(t, config(t))
	ctx := context.Background()
	var keys []string
	for i := range 1500 {
		keys = append(keys, fmt.Sprintf("d/%04d", i))
	}
	for _, k := range keys[:1200] {
		if _, err := s.Put(ctx, k, nil); err != nil {
			t.Fatal(err)
		}
	}
	s.Put(ctx, "keep/me", nil)
	// Missing keys (1200..1499) are not an error.
	if err := storage.DeleteMany(ctx, s, keys); err != nil {
		t.Fatal(err)
	}
	page, err := s.List(ctx, "", storage.ListOptions{})
	if err != nil || len(page.Keys) != 1 || page.Keys[0] != "keep/me" {
		t.Fatalf("after DeleteMany: %q, %v", page.Keys, err)
	}
}

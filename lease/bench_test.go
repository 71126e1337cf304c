package lease_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/lease"
)

// BenchmarkManager_AcquireRelease measures acquire+release pairs with 64
// (and, to show how group commit scales, 512) concurrent callers, each on
// its own name; one op is one pair. The fs runs use the filesystem store,
// the memory run the default in-memory one.
func BenchmarkManager_AcquireRelease(b *testing.B) {
	for _, bc := range []struct {
		store   string
		callers int
	}{{"fs", 64}, {"fs", 512}, {"memory", 64}} {
		b.Run(fmt.Sprintf("store=%s/callers=%d", bc.store, bc.callers), func(b *testing.B) {
			cfg := lease.Config{CompactInterval: -1}
			if bc.store == "fs" {
				cfg.Store = MustFS(b, b.TempDir())
			}
			m := MustNew(b, cfg)
			ctx := context.Background()
			var n atomic.Int64
			b.SetParallelism(max(1, bc.callers/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				agent := fmt.Sprintf("a%d", n.Add(1))
				name := "file/" + agent
				for pb.Next() {
					g, err := m.Acquire(ctx, "x1", agent, name, time.Minute)
					if err != nil {
						b.Error(err)
						return
					}
					if err := m.Release(ctx, "x1", agent, name, g.Token); err != nil {
						b.Error("release", err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pairs/s")
		})
	}
}

// BenchmarkManager_Status measures the read path.
func BenchmarkManager_Status(b *testing.B) {
	m := MustNew(b, lease.Config{})
	ctx := context.Background()
	MustAcquire(b, m, "alice", "f", time.Hour)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := m.Status(ctx, "x1", "f"); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkClient_Status measures a status call over loopback HTTP, client
// and server in one process.
func BenchmarkClient_Status(b *testing.B) {
	_, srv := MustServer(b, lease.Config{})
	c := MustClient(b, srv, "x1", "alice")
	ctx := context.Background()
	if _, err := c.Acquire(ctx, "f", time.Hour); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Status(ctx, "f"); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// BenchmarkManager_expiryHandoff measures how late after the holder's
// deadline a queued waiter gets the lease (the lateness-ms metric is the
// mean; lateness-max-ms the worst). Not a test: timing is noisy here.
func BenchmarkManager_expiryHandoff(b *testing.B) {
	m := MustNew(b, lease.Config{MinTTL: time.Millisecond})
	ctx := context.Background()
	var sum, worst time.Duration
	for i := 0; b.Loop(); i++ {
		name := fmt.Sprintf("f%d", i)
		a, err := m.Acquire(ctx, "x1", "alice", name, 5*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := m.AcquireWait(ctx, "x1", "bob", name, time.Second, time.Second); err != nil {
			b.Fatal(err)
		}
		late := time.Since(a.ExpiresAt)
		if late < 0 {
			b.Fatalf("handed over %v early", -late)
		}
		sum += late
		worst = max(worst, late)
	}
	b.ReportMetric(float64(sum.Microseconds())/1000/float64(b.N), "lateness-ms")
	b.ReportMetric(float64(worst.Microseconds())/1000, "lateness-max-ms")
}

// discardWriter is a ResponseWriter that keeps only the status, so the
// handler benchmark measures the handler and not a recorder.
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(s int)           { w.status = s }

// BenchmarkHandler measures the HTTP handler alone (no network): decoding,
// authentication, the manager call and the JSON answer.
func BenchmarkHandler(b *testing.B) {
	m := MustNew(b, lease.Config{})
	h, err := lease.NewHandler(m, lease.HandlerConfig{Auth: keys{}})
	if err != nil {
		b.Fatal(err)
	}
	MustAcquire(b, m, "alice", "f", time.Hour)
	for _, bc := range []struct{ name, op, body string }{
		{"status", "status", `{"file":"f"}`},
		{"acquire", "acquire", `{"file":"f","ttlMs":60000}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			body := strings.NewReader(bc.body)
			req := httptest.NewRequest(http.MethodPost, "/api/v1/exchanges/x1/leases/"+bc.op, body)
			req.Header.Set("Authorization", "Bearer key-alice")
			w := &discardWriter{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				body.Seek(0, io.SeekStart)
				req.Body = io.NopCloser(body)
				w.status = 0
				h.ServeHTTP(w, req)
				if w.status != http.StatusOK {
					b.Fatalf("status %d", w.status)
				}
			}
		})
	}
}

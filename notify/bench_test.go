package notify_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
)

// BenchmarkOutbox measures what notifications cost the API (requests
// created per second with the outbox subscribed or not) and how fast the
// outbox drains to a loopback webhook receiver.
func BenchmarkOutbox(b *testing.B) {
	for _, withNotify := range []bool{false, true} {
		b.Run(fmt.Sprintf("notify=%v", withNotify), func(b *testing.B) {
			var got atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				got.Add(1)
			}))
			defer srv.Close()
			ctx := context.Background()
			st, err := storage.NewFS(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			svc, err := mess.New(ctx, mess.Config{Store: st, OpenRegistration: true, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer svc.Close(ctx)
			var n *notify.Service
			if withNotify {
				n, err = notify.New(ctx, notify.Config{Source: svc, Store: st, Policy: notify.AddressPolicy{AllowLoopback: true}, Logger: slog.New(slog.DiscardHandler), Workers: 16})
				if err != nil {
					b.Fatal(err)
				}
				defer n.Close(ctx)
			}
			svc.Register(ctx, x, mess.Registration{ExecutorID: "req"})
			svc.Register(ctx, x, mess.Registration{ExecutorID: "w", Notifications: raw([]any{map[string]any{"type": "webhook", "url": srv.URL}})})
			b.SetParallelism(8)
			start := time.Now()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := svc.CreateRequest(ctx, x, "req", mess.Request{Intent: "bench"}, ""); err != nil {
						b.Error(err)
						return
					}
				}
			})
			created := time.Since(start)
			b.ReportMetric(float64(b.N)/created.Seconds(), "creates/s")
			if n == nil {
				return
			}
			for got.Load() < int64(b.N) {
				time.Sleep(time.Millisecond)
			}
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "delivered/s")
		})
	}
}

// BenchmarkScheduler_manyHooks queues one delivery per hook of a profile
// with many hooks on one request, all in one executor's ordered group, and
// measures how fast they drain to a loopback receiver and the process CPU
// each costs. The scheduler used to rescan every pending delivery on each
// wake, so this grew with the square of the hooks.
func BenchmarkScheduler_manyHooks(b *testing.B) {
	for _, hooks := range []int{1000, 5000} {
		b.Run(fmt.Sprintf("hooks=%d", hooks), func(b *testing.B) {
			var got atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				got.Add(1)
			}))
			defer srv.Close()
			ctx := context.Background()
			svc, err := mess.New(ctx, mess.Config{Store: storage.NewMemory(), OpenRegistration: true, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			defer svc.Close(ctx)
			n, err := notify.New(ctx, notify.Config{Source: svc, Policy: notify.AddressPolicy{AllowLoopback: true},
				Logger: slog.New(slog.DiscardHandler), MaxHooks: hooks, CompactInterval: -1})
			if err != nil {
				b.Fatal(err)
			}
			defer n.Close(ctx)
			var hs []any
			for range hooks {
				hs = append(hs, map[string]any{"type": "webhook", "url": srv.URL})
			}
			svc.Register(ctx, x, mess.Registration{ExecutorID: "req"})
			if _, err := svc.Register(ctx, x, mess.Registration{ExecutorID: "w", Hooks: raw(map[string]any{"on_request_created": hs})}); err != nil {
				b.Fatal(err)
			}
			var delivered int64
			cpu0 := cpuTime()
			start := time.Now()
			for b.Loop() {
				if _, err := svc.CreateRequest(ctx, x, "req", mess.Request{Intent: "bench"}, ""); err != nil {
					b.Fatal(err)
				}
				delivered += int64(hooks)
				for deadline := time.Now().Add(5 * time.Minute); got.Load() < delivered; time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						b.Fatalf("%d of %d delivered", got.Load(), delivered)
					}
				}
			}
			b.ReportMetric(float64(delivered)/time.Since(start).Seconds(), "delivered/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(delivered), "cpu-µs/delivery")
		})
	}
}

// cpuTime is the CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

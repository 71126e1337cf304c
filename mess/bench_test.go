package mess_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

// BenchmarkService_Create measures durable request creation with 64
// concurrent callers: each create is fsynced before it returns.
func BenchmarkService_Create(b *testing.B) {
	s := mustOpen(b, b.TempDir(), mess.Config{})
	mustRegister(b, s, "bench", "agent")
	req := mess.Request{Intent: "check the front door", Priority: mess.PriorityNormal, Context: json.RawMessage(`["the red one"]`)}
	b.SetParallelism(32) // 64 goroutines on 2 CPUs
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.CreateRequest(ctx, "bench", "agent", req, ""); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "creates/s")
}

// writeEvents writes a synthetic log straight to storage: threads with four
// events each (created, first message, claimed, completed), 1000 lines per
// object, as group commit lays them out under load.
func writeEvents(tb testing.TB, dir string, events int) {
	tb.Helper()
	store, err := storage.NewFS(dir)
	if err != nil {
		tb.Fatal(err)
	}
	defer store.Close()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	var buf []byte
	obj := 0
	flush := func() {
		if len(buf) == 0 {
			return
		}
		key := fmt.Sprintf("events/exchange=bench/2026/01/01/%08d.jsonl", obj)
		if _, err := store.Create(ctx, key, buf); err != nil {
			tb.Fatal(err)
		}
		obj++
		buf = buf[:0]
	}
	lines := 0
	for i := 0; i < events/4; i++ {
		ref := fmt.Sprintf("2026-01-01-%06X", i)
		ts := base.Add(time.Duration(i) * time.Millisecond).Format("2006-01-02T15:04:05.000Z")
		ev := func(seq int, typ, actor, payload string) {
			buf = fmt.Appendf(buf, `{"event_id":"01J%07d%016d","ts":"%s","exchange_id":"bench","thread_ref":"%s","event_type":"%s","actor_id":"%s","seq":%d,"payload":%s}`+"\n",
				i, seq, ts, ref, typ, actor, seq, payload)
			lines++
			if lines%1000 == 0 {
				flush()
			}
		}
		ev(1, "thread_created", "agent", `{"intent":"check the front door","priority":"normal","context":["the red one"],"requestor_id":"agent"}`)
		ev(2, "message_added", "agent", `{"mess":[{"request":{"intent":"check the front door","context":["the red one"],"response_hint":[]}}]}`)
		ev(3, "status_changed", "human", `{"old_status":"pending","new_status":"claimed","executor_id":"human"}`)
		if i%2 == 0 {
			ev(4, "status_changed", "human", `{"old_status":"claimed","new_status":"completed","executor_id":"human","message":"done"}`)
		} else {
			ev(4, "message_added", "human", `{"mess":[{"status":{"code":"in_progress"}}]}`)
		}
	}
	flush()
}

// BenchmarkService_Rebuild1M measures New over a log of 1,000,000 events.
func BenchmarkService_Rebuild1M(b *testing.B) {
	dir := b.TempDir()
	writeEvents(b, dir, 1_000_000)
	b.ResetTimer()
	for b.Loop() {
		store, _ := storage.NewFS(dir)
		s, err := mess.New(ctx, mess.Config{Store: store})
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if res, _ := s.List(ctx, "bench", mess.ListOptions{Limit: 1}); len(res.Threads) != 1 {
			b.Fatal("nothing rebuilt")
		}
		s.Close(ctx)
		store.Close()
		b.StartTimer()
	}
	b.ReportMetric(1_000_000/(b.Elapsed().Seconds()/float64(b.N)), "events/s")
}

// BenchmarkService_List measures a page of 50 out of 100,000 threads, with
// and without a status filter.
func BenchmarkService_List(b *testing.B) {
	dir := b.TempDir()
	writeEvents(b, dir, 400_000)
	store, _ := storage.NewFS(dir)
	defer store.Close()
	s, err := mess.New(ctx, mess.Config{Store: store})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close(ctx)
	for _, tt := range []struct {
		name string
		opts mess.ListOptions
	}{
		{"newest50", mess.ListOptions{Limit: 50}},
		{"claimed50", mess.ListOptions{Limit: 50, Statuses: []mess.Status{mess.StatusClaimed}}},
	} {
		b.Run(tt.name, func(b *testing.B) {
			for b.Loop() {
				res, err := s.List(ctx, "bench", tt.opts)
				if err != nil || len(res.Threads) != 50 {
					b.Fatalf("List = %d, %v", len(res.Threads), err)
				}
			}
		})
	}
}

// BenchmarkService_Get measures reading one thread with its messages.
func BenchmarkService_Get(b *testing.B) {
	s := mustOpen(b, b.TempDir(), mess.Config{})
	mustRegister(b, s, "bench", "agent")
	res, err := s.CreateRequest(ctx, "bench", "agent", mess.Request{Intent: "check the front door"}, "")
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Get(ctx, "bench", res.Ref); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkService_Update measures durable status changes with 64 callers,
// each on its own thread.
func BenchmarkService_Update(b *testing.B) {
	s := mustOpen(b, b.TempDir(), mess.Config{})
	mustRegister(b, s, "bench", "agent")
	refs := make(chan string, 128)
	for range cap(refs) {
		res, err := s.CreateRequest(ctx, "bench", "agent", mess.Request{Intent: "check the front door"}, "")
		if err != nil {
			b.Fatal(err)
		}
		refs <- res.Ref
	}
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ref := <-refs
		statuses := [2]string{"in_progress", "waiting"}
		for i := 0; pb.Next(); i++ {
			if _, err := s.Update(ctx, "bench", "agent", ref, mess.Update{Status: statuses[i%2]}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

package mess_test

import (
	"crypto/rand"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/meatspace-exchange/mess/internal/miniotest"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/storage/s3store"
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

// writeEvents writes a synthetic log of events in exchange "bench" to a
// filesystem store in dir (see writeEventsTo).
func writeEvents(tb testing.TB, dir string, events int) {
	tb.Helper()
	store, err := storage.NewFS(dir)
	if err != nil {
		tb.Fatal(err)
	}
	defer store.Close()
	writeEventsTo(tb, store, "bench", 0, events)
}

// writeEventsTo writes a synthetic log straight to store: threads with
// four events each (created, first message, claimed, completed), the
// first numbered from, 1000 lines per object named as the journal names
// them, as group commit lays them out under load.
func writeEventsTo(tb testing.TB, store storage.Store, exchange string, from, events int) {
	tb.Helper()
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	entropy := ulid.Monotonic(rand.Reader, 0)
	var buf []byte
	// Objects are written several at a time, as a remote store needs;
	// their names are given in order.
	type object struct {
		key  string
		data []byte
	}
	objs := make(chan object, 16)
	errs := make(chan error, 1)
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for o := range objs {
				if _, err := store.Create(ctx, o.key, o.data); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		})
	}
	flush := func() {
		if len(buf) > 0 {
			key := fmt.Sprintf("events/exchange=%s/2026/01/01/%s.jsonl", exchange, ulid.MustNew(ulid.Now(), entropy))
			objs <- object{key, buf}
			buf = nil
		}
	}
	lines := 0
	for i := from; i < from+events/4; i++ {
		ref := fmt.Sprintf("2026-01-01-%06X", i)
		ts := base.Add(time.Duration(i) * time.Millisecond).Format("2006-01-02T15:04:05.000Z")
		ev := func(seq int, typ, actor, payload string) {
			buf = fmt.Appendf(buf, `{"event_id":"01J%07d%016d","ts":"%s","exchange_id":"%s","thread_ref":"%s","event_type":"%s","actor_id":"%s","seq":%d,"payload":%s}`+"\n",
				i, seq, ts, exchange, ref, typ, actor, seq, payload)
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
	close(objs)
	wg.Wait()
	select {
	case err := <-errs:
		tb.Fatal(err)
	default:
	}
}

// BenchmarkService_Rebuild1M measures New over a log of 1,000,000 events
// with no snapshot: the whole log is replayed.
func BenchmarkService_Rebuild1M(b *testing.B) {
	dir := b.TempDir()
	writeEvents(b, dir, 1_000_000)
	b.ResetTimer()
	for b.Loop() {
		store, _ := storage.NewFS(dir)
		s, err := mess.New(ctx, mess.Config{Store: store, SnapshotEvery: -1})
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

var (
	benchStoreKind = flag.String("store", "fs", "store of BenchmarkService_Restart: fs, memory or minio (a MinIO server started for it)")
	benchEvents    = flag.Int("events", 1_000_000, "events BenchmarkService_Restart preloads")
	benchExchanges = flag.Int("exchanges", 1, "exchanges BenchmarkService_Restart spreads its events over")
)

// benchStore returns the store -store names, empty.
func benchStore(b *testing.B) storage.Store {
	switch *benchStoreKind {
	case "fs":
		s, err := storage.NewFS(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		return s
	case "memory":
		return storage.NewMemory()
	case "minio":
		srv, err := miniotest.Start(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(srv.Stop)
		bucket, err := srv.NewBucket(ctx)
		if err != nil {
			b.Fatal(err)
		}
		tr := &http.Transport{MaxIdleConnsPerHost: 64}
		b.Cleanup(tr.CloseIdleConnections)
		s, err := s3store.New(ctx, s3store.Config{Endpoint: srv.Endpoint, Bucket: bucket,
			AccessKey: miniotest.AccessKey, SecretKey: miniotest.SecretKey, Transport: tr})
		if err != nil {
			b.Fatal(err)
		}
		return s
	}
	b.Fatalf("-store %q: want fs, memory or minio", *benchStoreKind)
	return nil
}

// BenchmarkService_Restart measures start-up (New) over -events events
// (threads of four events) in -exchanges exchanges on -store:
//
//   - log: no snapshots, the whole log replayed;
//   - snapshot: after a clean shutdown, which left a snapshot per exchange;
//   - snapshot+tail: the same with a tenth more events written after the
//     snapshots, as after a crash.
//
// go test -run X -bench Restart -benchtime 3x ./mess -events 1000000 -store minio
func BenchmarkService_Restart(b *testing.B) {
	store := benchStore(b)
	perExchange := *benchEvents / *benchExchanges
	exchanges := make([]string, *benchExchanges)
	for i := range exchanges {
		exchanges[i] = fmt.Sprintf("bench%d", i)
		writeEventsTo(b, store, exchanges[i], 0, perExchange)
	}
	// Reading snapshots but never writing one, so every run starts alike.
	readOnly := mess.Config{Store: store, SnapshotEvery: math.MaxInt32, SnapshotInterval: time.Hour}
	restart := func(b *testing.B, cfg mess.Config, events int) {
		var cpu time.Duration
		for b.Loop() {
			before := cpuTime()
			s, err := mess.New(ctx, cfg)
			if err != nil {
				b.Fatal(err)
			}
			cpu += cpuTime() - before
			b.StopTimer()
			if res, _ := s.List(ctx, exchanges[0], mess.ListOptions{Limit: 1}); len(res.Threads) != 1 {
				b.Fatal("nothing rebuilt")
			}
			s.Close(ctx)
			b.StartTimer()
		}
		b.ReportMetric(float64(events)/(b.Elapsed().Seconds()/float64(b.N)), "events/s")
		// On a shared machine the wall time says little; the CPU time the
		// process spent (every goroutine, the collector's too) says more.
		b.ReportMetric(cpu.Seconds()/float64(b.N), "cpu-s/op")
	}
	b.Run("log", func(b *testing.B) {
		restart(b, mess.Config{Store: store, SnapshotEvery: -1}, *benchEvents)
	})
	// A clean shutdown writes the snapshots.
	s, err := mess.New(ctx, mess.Config{Store: store})
	if err != nil {
		b.Fatal(err)
	}
	if err := s.Close(ctx); err != nil {
		b.Fatal(err)
	}
	b.Run("snapshot", func(b *testing.B) { restart(b, readOnly, *benchEvents) })
	for _, x := range exchanges {
		writeEventsTo(b, store, x, perExchange/4, perExchange/10)
	}
	b.Run("snapshot+tail", func(b *testing.B) { restart(b, readOnly, *benchEvents+*benchEvents/10) })
}

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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

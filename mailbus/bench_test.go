package mailbus_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/storage"
)

var payload100 = json.RawMessage(`{"pad":"` + strings.Repeat("x", 88) + `"}`)

func newBenchBus(b *testing.B, cfg mailbus.Config) *mailbus.Bus {
	st, err := storage.NewFS(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	cfg.Store = st
	bus, err := mailbus.New(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { bus.Close(context.Background()); st.Close() })
	return bus
}

// BenchmarkBus_SendTo measures durable direct messages (fsync before
// return, group commit) from many goroutines.
func BenchmarkBus_SendTo(b *testing.B) {
	bus := newBenchBus(b, mailbus.Config{})
	ctx := context.Background()
	var n atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	defer reportCPU(b)()
	b.RunParallel(func(pb *testing.PB) {
		from := fmt.Sprintf("s%d", n.Add(1))
		for i := 0; pb.Next(); i++ {
			to := fmt.Sprintf("t%d", i%16)
			if _, err := bus.SendTo(ctx, "ex", from, to, mailbus.Message{Type: "bench.direct", Payload: payload100}); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkHandler_Fanout measures deliveries to 100 WebSocket
// subscribers in this process; b.N counts deliveries.
func BenchmarkHandler_Fanout(b *testing.B) {
	const subs = 100
	st, _ := storage.NewFS(b.TempDir())
	defer st.Close()
	bus, _ := mailbus.New(context.Background(), mailbus.Config{Store: st, RetentionCount: 1 << 20})
	h, _ := mailbus.NewHandler(bus, mailbus.HandlerConfig{Auth: keyAuth{}})
	e := &testEnv{bus: bus}
	e.srv = newServer(h)
	defer e.stop()
	ctx := context.Background()
	var got atomic.Int64
	done := make(chan struct{})
	want := int64(b.N/subs+1) * subs
	for i := range subs {
		u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http") + "?batch=1&types=bench.*"
		c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: map[string][]string{"Authorization": {"Bearer " + key("ex", fmt.Sprintf("r%d", i))}}})
		if err != nil {
			b.Fatal(err)
		}
		c.SetReadLimit(-1)
		defer c.CloseNow()
		// The welcome follows the subscription: a publish before it could
		// miss this subscriber, and the benchmark would wait for ever.
		if _, _, err := c.Read(ctx); err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				_, data, err := c.Read(ctx)
				if err != nil {
					return
				}
				if got.Add(int64(strings.Count(string(data), `{"seq":`))) == want {
					close(done)
				}
			}
		}()
	}
	b.ResetTimer()
	defer reportCPU(b)()
	for range b.N/subs + 1 {
		if _, err := bus.Publish(ctx, "ex", "pub", mailbus.Message{Type: "bench.tick", Payload: payload100}); err != nil {
			b.Fatal(err)
		}
	}
	<-done
}

// BenchmarkHandler_Send measures durable direct messages sent as pipelined
// WebSocket frames by 16 connections; b.N counts accepted messages.
func BenchmarkHandler_Send(b *testing.B) {
	const senders, window = 16, 64
	st, _ := storage.NewFS(b.TempDir())
	defer st.Close()
	bus, _ := mailbus.New(context.Background(), mailbus.Config{Store: st, RetentionCount: 1 << 20})
	h, _ := mailbus.NewHandler(bus, mailbus.HandlerConfig{Auth: keyAuth{}})
	e := &testEnv{bus: bus, srv: newServer(h)}
	defer e.stop()
	ctx := context.Background()
	var sent atomic.Int64
	frame, _ := json.Marshal(map[string]any{"action": "send", "targetAgent": "t", "message": map[string]any{"type": "bench.direct", "payload": payload100}})
	errs := make(chan error, senders)
	b.ResetTimer()
	defer reportCPU(b)()
	for i := range senders {
		go func() {
			u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http") + "?batch=1"
			c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: map[string][]string{"Authorization": {"Bearer " + key("ex", fmt.Sprintf("s%d", i))}}})
			if err != nil {
				errs <- err
				return
			}
			defer c.CloseNow()
			c.Read(ctx) // welcome
			inflight := 0
			for {
				for inflight < window && sent.Add(1) <= int64(b.N) {
					if err := c.Write(ctx, websocket.MessageText, frame); err != nil {
						errs <- err
						return
					}
					inflight++
				}
				if inflight == 0 {
					errs <- nil
					return
				}
				_, data, err := c.Read(ctx)
				if err != nil {
					errs <- err
					return
				}
				inflight -= strings.Count(string(data), `"accepted"`)
			}
		}()
	}
	for range senders {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}

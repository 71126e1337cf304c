package mailbus_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/storage"
)

// Two agents in one process: a broadcast reaches the subscriber, never the
// sender.
func ExampleBus_Agent() {
	dir, _ := os.MkdirTemp("", "mailbus-example")
	defer os.RemoveAll(dir)
	store, _ := storage.NewFS(dir)
	defer store.Close()
	bus, err := mailbus.New(context.Background(), mailbus.Config{Store: store})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	defer bus.Close(ctx)

	boss, _ := bus.Agent(mailbus.LocalConfig{Exchange: "acme", Agent: "boss"})
	worker, _ := bus.Agent(mailbus.LocalConfig{Exchange: "acme", Agent: "worker"})
	defer boss.Close(ctx)
	defer worker.Close(ctx)

	got := make(chan mailbus.Message, 1)
	worker.Subscribe(ctx, "task.*", func(ctx context.Context, m mailbus.Message) error {
		got <- m
		return nil
	})
	worker.Connect(ctx)

	boss.Publish(ctx, mailbus.Message{Type: mailbus.TypeTaskCreated, Payload: []byte(`{"task":"T1"}`)})
	m := <-got
	fmt.Println(m.Type, m.From, m.Seq, string(m.Payload))
	// Output: task.created boss 1 {"task":"T1"}
}

// Serving the bus over HTTP and WebSocket with the standard library.
func ExampleNewHandler() {
	bus, _ := mailbus.New(context.Background(), mailbus.Config{}) // in memory; set Store to persist
	var auth mailbus.Authenticator                                // e.g. backed by the exchange's API keys
	h, err := mailbus.NewHandler(bus, mailbus.HandlerConfig{Auth: auth})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/exchanges/", h)
	srv := &http.Server{Addr: "127.0.0.1:8080", Handler: mux}
	go srv.ListenAndServe()
	defer bus.Close(context.Background()) // closes WebSockets, which Shutdown does not wait for
	defer srv.Shutdown(context.Background())
}

// A remote agent: subscribe first, then connect; it reconnects by itself.
func ExampleClient() {
	c, err := mailbus.NewClient(mailbus.ClientConfig{
		URL:      "http://127.0.0.1:8080",
		Exchange: "acme",
		APIKey:   os.Getenv("MESS_API_KEY"),
		OnError:  func(err error) { log.Println(err) },
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	c.Subscribe(ctx, "task.*", func(ctx context.Context, m mailbus.Message) error {
		fmt.Println("got", m.Type, "from", m.From)
		return nil // ackRequired messages are acknowledged when handlers succeed
	})
	if err := c.Connect(ctx); err != nil {
		log.Fatal(err)
	}
	defer c.Close(ctx)
	if g, err := c.AcquireLease(ctx, "src/config.ts", 30*time.Second); err == nil {
		fmt.Println("editing with fencing token", g.Token)
		defer c.ReleaseLease(ctx, "src/config.ts")
	}
}

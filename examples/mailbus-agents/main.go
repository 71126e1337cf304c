// Command mailbus-agents runs two agents that coordinate over the mail bus:
// a coordinator assigns tasks, a worker leases each task's file, works it
// and reports back.
//
// By default both agents run in this process on an in-process bus and lease
// manager. With -url and two API keys they talk to a running messd instead:
//
//	go run ./examples/mailbus-agents
//	go run ./examples/mailbus-agents -url http://127.0.0.1:3000 -exchange acme -boss-key mess_... -worker-key mess_...
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"time"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
)

type task struct {
	ID   string `json:"id"`
	File string `json:"file"`
}

func main() {
	url := flag.String("url", "", "messd base URL; empty runs everything in process")
	exchange := flag.String("exchange", "demo", "exchange id")
	bossKey := flag.String("boss-key", "", "coordinator API key (with -url)")
	workerKey := flag.String("worker-key", "", "worker API key (with -url)")
	n := flag.Int("tasks", 5, "tasks to hand out")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *url, *exchange, *bossKey, *workerKey, *n); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, url, exchange, bossKey, workerKey string, n int) error {
	boss, worker, cleanup, err := connect(ctx, url, exchange, bossKey, workerKey)
	if err != nil {
		return err
	}
	defer cleanup()

	// The worker: take each assigned task, lease its file, report.
	if _, err := worker.Subscribe(ctx, mailbus.TypeTaskAssigned, func(ctx context.Context, m mailbus.Message) error {
		var t task
		if err := json.Unmarshal(m.Payload, &t); err != nil {
			return err
		}
		g, err := worker.AcquireLease(ctx, t.File, 30*time.Second)
		if held, ok := errors.AsType[*lease.HeldError](err); ok {
			return fmt.Errorf("%s is leased by %s", t.File, held.Holder) // redelivered later
		}
		if err != nil {
			return err // not acknowledged: the bus redelivers it later
		}
		defer worker.ReleaseLease(ctx, t.File)
		// Whatever the file's store is, it refuses writes that carry a
		// token lower than the last one it saw: g.Token fences this work.
		fmt.Printf("worker: working %s on %s (fencing token %d)\n", t.ID, t.File, g.Token)
		p, _ := json.Marshal(map[string]string{"taskId": t.ID, "result": "done"})
		_, err = worker.SendTo(ctx, m.From, mailbus.Message{Type: mailbus.TypeTaskCompleted, Payload: p, CorrelationID: m.ID})
		return err
	}); err != nil {
		return err
	}

	// The coordinator: collect completions.
	done := make(chan string, n)
	if _, err := boss.Subscribe(ctx, mailbus.TypeTaskCompleted, func(ctx context.Context, m mailbus.Message) error {
		var r struct{ TaskID string }
		json.Unmarshal(m.Payload, &r)
		done <- r.TaskID
		return nil
	}); err != nil {
		return err
	}
	for _, a := range []mailbus.MailBus{boss, worker} {
		if err := a.Connect(ctx); err != nil {
			return err
		}
	}
	workerID := worker.AgentID()
	for i := range n {
		t := task{ID: fmt.Sprintf("T%d", i+1), File: fmt.Sprintf("src/file%d.go", i+1)}
		p, _ := json.Marshal(t)
		if _, err := boss.SendTo(ctx, workerID, mailbus.Message{Type: mailbus.TypeTaskAssigned, Payload: p, AckRequired: true}); err != nil {
			return err
		}
		fmt.Printf("coordinator: assigned %s to %s\n", t.ID, workerID)
	}
	for range n {
		select {
		case id := <-done:
			fmt.Printf("coordinator: %s completed\n", id)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(30 * time.Second):
			return fmt.Errorf("no completion within 30s")
		}
	}
	return nil
}

// connect returns the two agents, in process or remote.
func connect(ctx context.Context, url, exchange, bossKey, workerKey string) (boss, worker mailbus.MailBus, cleanup func(), err error) {
	logErr := func(err error) { log.Println(err) }
	if url != "" {
		b, err := mailbus.NewClient(mailbus.ClientConfig{URL: url, Exchange: exchange, APIKey: bossKey, OnError: logErr})
		if err != nil {
			return nil, nil, nil, err
		}
		w, err := mailbus.NewClient(mailbus.ClientConfig{URL: url, Exchange: exchange, APIKey: workerKey, OnError: logErr})
		if err != nil {
			return nil, nil, nil, err
		}
		return b, w, func() {
			b.Close(context.Background())
			w.Close(context.Background())
		}, nil
	}
	// A zero Config keeps the mail in memory; storage.NewFS would keep it.
	bus, err := mailbus.New(ctx, mailbus.Config{})
	if err != nil {
		return nil, nil, nil, err
	}
	leases, err := lease.New(context.Background(), lease.Config{})
	if err != nil {
		return nil, nil, nil, err
	}
	b, _ := bus.Agent(mailbus.LocalConfig{Exchange: exchange, Agent: "coordinator", Leaser: mailbus.ManagerLeaser(leases, exchange, "coordinator"), OnError: logErr})
	w, _ := bus.Agent(mailbus.LocalConfig{Exchange: exchange, Agent: "worker", Leaser: mailbus.ManagerLeaser(leases, exchange, "worker"), OnError: logErr})
	return b, w, func() {
		ctx := context.Background()
		b.Close(ctx)
		w.Close(ctx)
		bus.Close(ctx)
		leases.Close(ctx)
	}, nil
}

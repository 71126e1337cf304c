package lease_test

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"sync"
	"time"

	"github.com/meatspace-exchange/mess/lease"
)

func Example() {
	ctx := context.Background()
	m, err := lease.New(ctx, lease.Config{}) // in memory; set Store to keep leases across restarts
	if err != nil {
		panic(err)
	}
	defer m.Close(ctx)

	g, _ := m.Acquire(ctx, "ex1", "alice", "./src//main.go", 30*time.Second)
	fmt.Println(g.Name, g.Holder, g.Token)

	_, err = m.Acquire(ctx, "ex1", "bob", "src/main.go", 30*time.Second)
	var held *lease.HeldError
	if errors.As(err, &held) {
		fmt.Println("bob refused, held by", held.Holder)
	}

	err = m.Release(ctx, "ex1", "alice", "src/main.go", g.Token)
	fmt.Println("released:", err == nil)

	g2, _ := m.Acquire(ctx, "ex1", "bob", "src/main.go", 30*time.Second)
	fmt.Println(g2.Holder, g2.Token > g.Token)

	// Alice's old token is stale now.
	_, err = m.Renew(ctx, "ex1", "alice", "src/main.go", g.Token, time.Minute)
	fmt.Println(errors.Is(err, lease.ErrStaleToken))
	// Output:
	// src/main.go alice 1
	// bob refused, held by alice
	// released: true
	// bob true
	// true
}

func ExampleManager_AcquireWait() {
	ctx := context.Background()
	m, _ := lease.New(ctx, lease.Config{})
	defer m.Close(ctx)

	a, _ := m.Acquire(ctx, "ex1", "alice", "notes.md", time.Minute)
	go func() {
		time.Sleep(10 * time.Millisecond)
		m.Release(ctx, "ex1", "alice", "notes.md", a.Token)
	}()
	// Bob queues; alice's release hands the lease straight to him.
	b, err := m.AcquireWait(ctx, "ex1", "bob", "notes.md", time.Minute, 5*time.Second)
	fmt.Println(b.Holder, err)
	// Output: bob <nil>
}

// The holder may release without its token: a token of 0 means the
// caller's current lease. Anyone else is refused.
func ExampleManager_Release() {
	ctx := context.Background()
	m, _ := lease.New(ctx, lease.Config{})
	defer m.Close(ctx)

	m.Acquire(ctx, "ex1", "alice", "a.txt", time.Minute)
	err := m.Release(ctx, "ex1", "bob", "a.txt", 0)
	fmt.Println(errors.Is(err, lease.ErrNotHeld))
	err = m.Release(ctx, "ex1", "alice", "a.txt", 0)
	fmt.Println(err)
	// Output:
	// true
	// <nil>
}

func ExampleManager_Status() {
	ctx := context.Background()
	m, _ := lease.New(ctx, lease.Config{})
	defer m.Close(ctx)

	st, _ := m.Status(ctx, "ex1", "a.txt")
	fmt.Printf("%+v\n", st)
	m.Acquire(ctx, "ex1", "alice", "a.txt", time.Minute)
	st, _ = m.Status(ctx, "ex1", "a.txt")
	fmt.Println(st.IsLeased, st.AgentID, st.Token)
	// Output:
	// {IsLeased:false AgentID: ExpiresAt:0 Token:0 RemainingMs:0}
	// true alice 1
}

// A client edits a file under a lease, renewing while it works and
// releasing when done. It needs a running server, so it is not run here.
func ExampleClient() {
	ctx := context.Background()
	c, err := lease.NewClient(lease.ClientConfig{BaseURL: "http://127.0.0.1:3000", Exchange: "ex1", APIKey: "mess_ex1_..."})
	if err != nil {
		panic(err)
	}
	g, err := c.Acquire(ctx, "src/config.ts", 30*time.Second)
	if errors.Is(err, lease.ErrHeld) {
		st, _ := c.Status(ctx, "src/config.ts")
		fmt.Println("locked by", st.AgentID)
		return
	}
	if err != nil {
		panic(err)
	}
	defer c.Release(ctx, g.Name, g.Token)
	// ... write the file, passing g.Token to whatever stores it ...
	if _, err := c.Renew(ctx, g.Name, g.Token, 30*time.Second); err != nil {
		fmt.Println("lease lost:", err) // stop writing
	}
}

// A client opens the lease WebSocket and takes leases over it: calls from
// many goroutines share the connection, each answered as soon as it is
// durable, with no HTTP round trip each.
func ExampleClient_Connect() {
	ctx := context.Background()
	m, _ := lease.New(ctx, lease.Config{})
	defer m.Close(ctx)
	h, _ := lease.NewHandler(m, lease.HandlerConfig{Auth: keys{}}) // keys: "key-<agent>" is <agent> in x1
	srv := httptest.NewServer(h)
	defer srv.Close()

	c, _ := lease.NewClient(lease.ClientConfig{BaseURL: srv.URL, Exchange: "x1", APIKey: "key-alice"})
	if err := c.Connect(ctx); err != nil {
		fmt.Println("no WebSocket, calls go over HTTP:", err)
	}
	defer c.Close(ctx)

	var wg sync.WaitGroup
	tokens := make([]uint64, 3)
	for i := range tokens {
		wg.Go(func() {
			g, err := c.Acquire(ctx, fmt.Sprintf("src/file%d.go", i), 30*time.Second)
			if err != nil {
				panic(err)
			}
			tokens[i] = g.Token
		})
	}
	wg.Wait()
	for i, tok := range tokens {
		fmt.Println(c.Release(ctx, fmt.Sprintf("src/file%d.go", i), tok))
	}
	// Output:
	// <nil>
	// <nil>
	// <nil>
}

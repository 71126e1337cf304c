package mess_test

import (
	"context"
	"fmt"
	"net/http"

	"github.com/meatspace-exchange/mess/mess"
)

// The README's embedding snippet is this function's body (readme_test.go
// keeps them the same).
func Example() {
	ctx := context.Background()
	svc, err := mess.New(ctx, mess.Config{}) // in memory; Config.Store: storage.NewFS(dir) keeps it
	if err != nil {
		panic(err)
	}
	defer svc.Close(ctx)

	// The first registrant owns the exchange and invites the others.
	svc.Register(ctx, "home", mess.Registration{ExecutorID: "agent"})
	inv, _ := svc.CreateInvite(ctx, "home", "agent", mess.InviteOptions{})
	svc.Register(ctx, "home", mess.Registration{ExecutorID: "alice", InviteToken: inv.Token})

	req, _ := svc.CreateRequest(ctx, "home", "agent", mess.Request{Intent: "Check the front door"}, "")
	svc.Update(ctx, "home", "alice", req.Ref, mess.Update{Status: "completed"})
	th, _ := svc.Get(ctx, "home", req.Ref)
	fmt.Println(th.Status, *th.ExecutorID)

	// The same exchange over HTTP, as messd serves it.
	api, _ := mess.NewHandler(svc, mess.HandlerConfig{})
	mux := http.NewServeMux()
	mux.Handle("/api/v1/exchanges/", api)
	// Output: completed alice
}

// A session that outlives the request that authenticated it (a stream, a
// socket, a wait) watches its key, and ends the moment the key is rotated
// away.
func ExampleService_WatchKey() {
	ctx := context.Background()
	svc, _ := mess.New(ctx, mess.Config{})
	defer svc.Close(ctx)
	reg, _ := svc.Register(ctx, "home", mess.Registration{ExecutorID: "carol"})

	revoked, stop := svc.WatchKey("home", reg.APIKey)
	defer stop()
	svc.CreateKey(ctx, "home", "carol", "carol", true) // rotate: every other key stops working
	select {
	case <-revoked:
		fmt.Println("session ended: API key revoked")
	default:
		fmt.Println("session still open")
	}
	// Output: session ended: API key revoked
}

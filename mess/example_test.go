package mess_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

func Example() {
	dir, _ := os.MkdirTemp("", "mess-example")
	defer os.RemoveAll(dir)
	store, _ := storage.NewFS(dir)
	defer store.Close()
	ctx := context.Background()
	svc, err := mess.New(ctx, mess.Config{Store: store})
	if err != nil {
		panic(err)
	}
	defer svc.Close(ctx)

	// The first registrant owns the exchange; it invites the human.
	svc.Register(ctx, "home", mess.Registration{ExecutorID: "agent"})
	inv, _ := svc.CreateInvite(ctx, "home", "agent", mess.InviteOptions{})
	svc.Register(ctx, "home", mess.Registration{ExecutorID: "alice", InviteToken: inv.Token})

	req, _ := svc.CreateRequest(ctx, "home", "agent", mess.Request{Intent: "Check the front door"}, "")
	svc.Update(ctx, "home", "alice", req.Ref, mess.Update{Status: "claimed"})
	svc.Update(ctx, "home", "alice", req.Ref, mess.Update{
		Status: "completed",
		Mess:   json.RawMessage(`[{"response":{"content":["Door is locked"]}}]`),
	})

	th, _ := svc.Get(ctx, "home", req.Ref)
	fmt.Println(th.Status, *th.ExecutorID, len(th.Messages))
	// Output: completed alice 2
}

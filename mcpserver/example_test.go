package mcpserver_test

import (
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mcpserver"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

// keyTransport sends an API key with every request.
type keyTransport string

func (k keyTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+string(k))
	return http.DefaultTransport.RoundTrip(r)
}

// Mount the MCP endpoint in your own mux, here with the exchange and the
// leases (the mail bus is left out, and so are its tools), and call a tool
// with the Go SDK's client.
func Example() {
	ctx := context.Background()
	svc, err := mess.New(ctx, mess.Config{Store: storage.NewMemory()})
	if err != nil {
		log.Fatal(err)
	}
	defer svc.Close(ctx)
	leases, err := lease.New(context.Background(), lease.Config{})
	if err != nil {
		log.Fatal(err)
	}
	defer leases.Close(ctx)
	srv, err := mcpserver.New(mcpserver.Config{Exchange: svc, Leases: leases})
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/mcp", srv)
	ts := httptest.NewServer(mux)
	defer ts.Close()
	defer srv.Close(ctx)

	reg, err := svc.Register(ctx, "home", mess.Registration{ExecutorID: "agent"})
	if err != nil {
		log.Fatal(err)
	}
	client := mcp.NewClient(&mcp.Implementation{Name: "example", Version: "1"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: ts.URL + "/mcp",
		HTTPClient: &http.Client{Transport: keyTransport(reg.APIKey)}}, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer cs.Close()
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "lease_status", Arguments: map[string]any{"file": "src/app.go"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Content[0].(*mcp.TextContent).Text)
	// Output: {"is_leased":false}
}

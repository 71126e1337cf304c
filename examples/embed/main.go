// Command embed serves all four services of the module (the MESS protocol
// v1 exchange, leases, the mail bus and notifications) from one plain
// net/http ServeMux on one store, without echo and without cmd/messd, then
// plays a short scene against them over HTTP and exits:
//
//	go run ./examples/embed
//
// An agent asks for help, alice hears of it through her webhook, claims the
// request, takes a lease on the door, tells the agent by mail and
// completes the request.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
	"github.com/meatspace-exchange/mess/storage"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := run(ctx); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context) error {
	// One store for everything; storage.NewFS(dir) makes it durable.
	store := storage.NewMemory()
	svc, err := mess.New(ctx, mess.Config{Store: store, OpenExchanges: []string{"home"}})
	if err != nil {
		return err
	}
	defer svc.Close(ctx)
	leases, err := lease.New(ctx, lease.Config{Store: store})
	if err != nil {
		return err
	}
	defer leases.Close(ctx)
	bus, err := mailbus.New(ctx, mailbus.Config{Store: store, Directory: mess.Authenticator(svc, mailbus.ErrUnauthorized, mailbus.ErrForbidden)})
	if err != nil {
		return err
	}
	defer bus.Close(ctx)
	// Loopback is allowed only because alice's webhook is in this program.
	notes, err := notify.New(ctx, notify.Config{Source: svc, Store: store, Policy: notify.AddressPolicy{AllowLoopback: true}})
	if err != nil {
		return err
	}
	defer notes.Close(ctx)

	// The exchange's executor keys work for every service.
	exchangeAPI, err := mess.NewHandler(svc, mess.HandlerConfig{})
	if err != nil {
		return err
	}
	busAPI, err := mailbus.NewHandler(bus, mailbus.HandlerConfig{Auth: mess.Authenticator(svc, mailbus.ErrUnauthorized, mailbus.ErrForbidden)})
	if err != nil {
		return err
	}
	leaseAPI, err := lease.NewHandler(leases, lease.HandlerConfig{Auth: mess.Authenticator(svc, lease.ErrUnauthorized, lease.ErrForbidden)})
	if err != nil {
		return err
	}
	notifyAPI, err := notify.NewHandler(notes, notify.HandlerConfig{Auth: mess.Authenticator(svc, notify.ErrUnauthorized, notify.ErrForbidden)})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/exchanges/", exchangeAPI)
	mux.Handle("/api/v1/exchanges/{exchange_id}/leases/", leaseAPI)
	mux.Handle("/api/v1/exchanges/{exchange_id}/mailbus/", busAPI)
	mux.Handle("/api/v1/exchanges/{exchange_id}/notifications/", notifyAPI)
	hooked := make(chan map[string]any, 1)
	mux.HandleFunc("POST /hooks/alice", func(w http.ResponseWriter, r *http.Request) {
		var n map[string]any
		if json.NewDecoder(r.Body).Decode(&n) == nil {
			select {
			case hooked <- n:
			default:
			}
		}
	})

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Shutdown(ctx)
	base := "http://" + ln.Addr().String()
	c := &client{base: base + "/api/v1/exchanges/home"}
	defer http.DefaultClient.CloseIdleConnections()

	var reg struct {
		APIKey string `json:"api_key"`
		Owner  bool   `json:"owner"`
	}
	if err := c.call(ctx, "POST", "/register", "", map[string]any{"executor_id": "agent"}, &reg); err != nil {
		return err
	}
	agent := reg.APIKey
	fmt.Printf("agent registered (owner: %v)\n", reg.Owner)
	if err := c.call(ctx, "POST", "/register", "", map[string]any{
		"executor_id":   "alice",
		"notifications": []any{map[string]any{"type": "webhook", "url": base + "/hooks/alice"}},
	}, &reg); err != nil {
		return err
	}
	alice := reg.APIKey
	fmt.Printf("alice registered (owner: %v)\n", reg.Owner)

	var created struct{ Ref, Status string }
	if err := c.call(ctx, "POST", "/requests", agent, map[string]any{"intent": "Check the front door"}, &created); err != nil {
		return err
	}
	fmt.Printf("agent asked for help: %s\n", created.Status)
	select {
	case n := <-hooked:
		fmt.Printf("alice's webhook: %v %q\n", n["event_type"], n["intent"])
	case <-ctx.Done():
		return errors.New("alice's webhook was not called")
	}

	req := "/requests/" + created.Ref
	var upd struct{ Status string }
	if err := c.call(ctx, "PATCH", req, alice, map[string]any{"status": "claimed"}, &upd); err != nil {
		return err
	}
	fmt.Printf("alice: %s\n", upd.Status)

	var held struct {
		Acquired bool   `json:"acquired"`
		Token    uint64 `json:"token"`
	}
	if err := c.call(ctx, "POST", "/leases/acquire", alice, map[string]any{"file": "doors/front", "ttlMs": 30000}, &held); err != nil {
		return err
	}
	fmt.Printf("alice holds the lease on doors/front: %v (token %d)\n", held.Acquired, held.Token)

	if err := c.call(ctx, "POST", "/mailbus/send", alice, map[string]any{
		"targetAgent": "agent",
		"message":     map[string]any{"type": "note", "payload": map[string]any{"text": "on my way"}},
	}, nil); err != nil {
		return err
	}
	var inbox struct {
		Messages []struct {
			From    string         `json:"from"`
			Payload map[string]any `json:"payload"`
		} `json:"messages"`
	}
	if err := c.call(ctx, "GET", "/mailbus/inbox", agent, nil, &inbox); err != nil {
		return err
	}
	for _, m := range inbox.Messages {
		fmt.Printf("agent's inbox: %s says %q\n", m.From, m.Payload["text"])
	}

	if err := c.call(ctx, "PATCH", req, alice, map[string]any{
		"status": "completed",
		"mess":   []any{map[string]any{"response": map[string]any{"content": []string{"Door is locked"}}}},
	}, &upd); err != nil {
		return err
	}
	var th struct {
		Thread struct {
			Status     string `json:"status"`
			ExecutorID string `json:"executor_id"`
			Messages   []any  `json:"messages"`
		} `json:"thread"`
	}
	if err := c.call(ctx, "GET", req, agent, nil, &th); err != nil {
		return err
	}
	fmt.Printf("request %s by %s with %d messages\n", th.Thread.Status, th.Thread.ExecutorID, len(th.Thread.Messages))
	return nil
}

// client calls the exchange's HTTP API with an executor's key.
type client struct{ base string }

func (c *client) call(ctx context.Context, method, path, key string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return err
	}
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %d %s", method, path, resp.StatusCode, bytes.TrimSpace(data))
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(data, out)
}

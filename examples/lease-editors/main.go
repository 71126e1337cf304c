// Command lease-editors shows two agents editing one file safely through
// the lease service: each takes the lease before writing, and the file's
// writer checks the fencing token, so an agent whose lease ran out while
// it was stalled cannot overwrite the next holder's work.
//
// It runs the lease HTTP API on a loopback port in-process (no echo, a
// plain http.ServeMux) and talks to it with the lease Client:
//
//	go run ./examples/lease-editors
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/storage"
)

// staticKeys is a stand-in Authenticator: in messd the exchange's executor
// API keys play this role.
type staticKeys map[string]string

func (k staticKeys) Authenticate(_ context.Context, exchangeID, token string) (string, error) {
	if agent, ok := k[token]; ok && exchangeID == "demo" {
		return agent, nil
	}
	return "", lease.ErrUnauthorized
}

// fencedFile is the resource the lease protects. It remembers the highest
// fencing token that has written to it and refuses anything older: the
// lease alone cannot stop a stalled holder, the token check can.
type fencedFile struct {
	mu      sync.Mutex
	path    string
	highest uint64
}

var errFenced = errors.New("write refused: stale fencing token")

func (f *fencedFile) Append(token uint64, line string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if token < f.highest {
		return fmt.Errorf("%w (%d < %d)", errFenced, token, f.highest)
	}
	f.highest = token
	fh, err := os.OpenFile(f.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	defer fh.Close()
	_, err = fmt.Fprintln(fh, line)
	return err
}

func main() {
	if err := run(); err != nil {
		log.Fatal(err)
	}
}

func run() error {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "lease-editors")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	store, err := storage.NewFS(filepath.Join(dir, "data"))
	if err != nil {
		return err
	}
	m, err := lease.New(ctx, lease.Config{Store: store, MinTTL: 50 * time.Millisecond})
	if err != nil {
		return err
	}
	defer m.Close(ctx)

	h, err := lease.NewHandler(m, lease.HandlerConfig{
		Auth: staticKeys{"key-alice": "alice", "key-bob": "bob"},
	})
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/api/v1/exchanges/{exchange_id}/leases/", h)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Shutdown(ctx)
	url := "http://" + ln.Addr().String()

	alice, err := lease.NewClient(lease.ClientConfig{BaseURL: url, Exchange: "demo", APIKey: "key-alice"})
	if err != nil {
		return err
	}
	bob, err := lease.NewClient(lease.ClientConfig{BaseURL: url, Exchange: "demo", APIKey: "key-bob"})
	if err != nil {
		return err
	}
	file := &fencedFile{path: filepath.Join(dir, "notes.md")}
	const name = "docs/notes.md"

	// Alice takes the lease and writes.
	ga, err := alice.Acquire(ctx, name, 200*time.Millisecond)
	if err != nil {
		return err
	}
	fmt.Printf("alice holds %s with token %d\n", ga.Name, ga.Token)
	if err := file.Append(ga.Token, "alice: first draft"); err != nil {
		return err
	}

	// Bob wants it too: a plain acquire is refused, so he queues.
	if _, err := bob.Acquire(ctx, name, time.Second); errors.Is(err, lease.ErrHeld) {
		var he *lease.HeldError
		errors.As(err, &he)
		fmt.Printf("bob refused: held by %s\n", he.Holder)
	}
	bobDone := make(chan error, 1)
	go func() {
		gb, err := bob.AcquireWait(ctx, name, time.Second, 5*time.Second)
		if err != nil {
			bobDone <- err
			return
		}
		fmt.Printf("bob holds %s with token %d\n", gb.Name, gb.Token)
		if err := file.Append(gb.Token, "bob: review comments"); err != nil {
			bobDone <- err
			return
		}
		err = bob.Release(ctx, name, gb.Token)
		bobDone <- err
	}()

	// Alice stalls past her deadline (a long pause, a slow disk...). The
	// lease passes to bob, who writes.
	time.Sleep(400 * time.Millisecond)
	if err := <-bobDone; err != nil {
		return err
	}

	// Alice wakes up and tries to carry on with her old token.
	if _, err := alice.Renew(ctx, name, ga.Token, time.Second); err != nil {
		fmt.Println("alice renew refused:", err)
	}
	if err := file.Append(ga.Token, "alice: overwrite!"); err != nil {
		fmt.Println("alice write:", err)
	}

	data, err := os.ReadFile(file.path)
	if err != nil {
		return err
	}
	fmt.Printf("%s:\n%s", name, data)
	alice.CloseIdleConnections()
	bob.CloseIdleConnections()
	return nil
}

package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestLeanTransport(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/echo":
			w.Write(body)
		case "/big": // too big to buffer: sent chunked
			w.Write([]byte(strings.Repeat("x", 64<<10)))
		case "/close":
			w.Header().Set("Connection", "close")
			w.Write([]byte("bye"))
		case "/slow":
			time.Sleep(200 * time.Millisecond)
		case "/slowbody":
			w.Header().Set("Content-Length", "10")
			w.Write([]byte("12345"))
			w.(http.Flusher).Flush()
			time.Sleep(200 * time.Millisecond)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := &http.Client{Transport: &leanTransport{}}
	do := func(ctx context.Context, path, body string) (string, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := c.Do(req)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return string(b), err
	}
	ctx := context.Background()
	for i := range 50 {
		want := strings.Repeat("y", i)
		if got, err := do(ctx, "/echo", want); err != nil || got != want {
			t.Fatalf("echo %d: %q, %v", i, got, err)
		}
	}
	if got, err := do(ctx, "/big", ""); err != nil || len(got) != 64<<10 {
		t.Fatalf("chunked: %d bytes, %v", len(got), err)
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections for sequential requests; want 1 kept alive", n)
	}
	if got, err := do(ctx, "/close", ""); err != nil || got != "bye" {
		t.Fatalf("close: %q, %v", got, err)
	}
	if got, err := do(ctx, "/echo", "again"); err != nil || got != "again" {
		t.Fatalf("after Connection: close: %q, %v", got, err)
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("%d connections; want a new one after the server closed the first", n)
	}
	for _, path := range []string{"/slow", "/slowbody"} {
		short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		_, err := do(short, path, "")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("%s past the context's deadline: %v; want DeadlineExceeded", path, err)
		}
	}
}

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// lockedBuffer collects a server's log across goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// dial opens a raw connection to ts.
func (ts *testServer) dial(t *testing.T) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// waitClosed reads c until the server closes it, and fails the test if it
// is still open after limit. It returns what was read.
func waitClosed(t *testing.T, c net.Conn, limit time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(limit))
	var got bytes.Buffer
	_, err := io.Copy(&got, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("connection still open after %v; read %q", limit, got.String())
	}
	return got.String()
}

// Ensure a body trickled slower than MESS_BODY_TIMEOUT allows is cut off,
// while a body sent at once is not.
func TestLimits_tricklingBodyCutOff(t *testing.T) {
	ts := startServer(t, withEnv("MESS_BODY_TIMEOUT", "300ms"))
	ts.register(t, "fast", "a")

	c := ts.dial(t)
	fmt.Fprintf(c, "POST /api/v1/exchanges/slow/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if _, err := c.Write([]byte(" ")); err != nil {
				return
			}
		}
	}()
	got := waitClosed(t, c, 10*time.Second)
	if got != "" && !strings.HasPrefix(got, "HTTP/1.1 400") {
		t.Fatalf("trickled body answered %q", got)
	}
}

// Ensure a connection that sends nothing, and one left idle after a
// request, are closed.
func TestLimits_idleConnectionsClosed(t *testing.T) {
	ts := startServer(t, withEnv("MESS_IDLE_TIMEOUT", "300ms"), withEnv("MESS_READ_HEADER_TIMEOUT", "300ms"))
	silent := ts.dial(t)
	waitClosed(t, silent, 10*time.Second)

	idle := ts.dial(t)
	fmt.Fprintf(idle, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("health = %d", resp.StatusCode)
	}
	waitClosed(t, idle, 10*time.Second)
}

// Ensure one address holds at most MESS_MAX_CONNS_PER_IP connections: the
// next is answered 429 and closed, and a slot frees when a connection
// closes.
func TestLimits_connectionsPerAddress(t *testing.T) {
	ts := startServer(t, withEnv("MESS_MAX_CONNS_PER_IP", "3"))
	health := func(c net.Conn, r *bufio.Reader) (*http.Response, error) {
		fmt.Fprintf(c, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(r, nil)
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		return resp, err
	}
	var held []net.Conn
	for range 3 {
		c := ts.dial(t)
		if resp, err := health(c, bufio.NewReader(c)); err != nil || resp.StatusCode != 200 {
			t.Fatalf("connection under the cap: %v %v", resp, err)
		}
		held = append(held, c)
	}
	over := ts.dial(t)
	fmt.Fprintf(over, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
	got := waitClosed(t, over, 10*time.Second)
	if !strings.HasPrefix(got, "HTTP/1.1 429") || !strings.Contains(got, `"code":"rate_limited"`) {
		t.Fatalf("connection over the cap got %q", got)
	}
	held[0].Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		c := ts.dial(t)
		resp, err := health(c, bufio.NewReader(c))
		c.Close()
		if err == nil && resp.StatusCode == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no slot freed after a close: %v %v", resp, err)
		}
	}
	// The held connections still work.
	if resp, err := health(held[1], bufio.NewReader(held[1])); err != nil || resp.StatusCode != 200 {
		t.Fatalf("held connection: %v %v", resp, err)
	}
}

// Ensure an event stream whose client stops reading is dropped after
// MESS_WRITE_TIMEOUT instead of holding its handler in Write.
func TestLimits_nonReadingStreamDropped(t *testing.T) {
	logs := &lockedBuffer{}
	ts := startServerLogs(t, logs, withEnv("MESS_WRITE_TIMEOUT", "500ms"), withEnv("LOG_LEVEL", "info"))
	key := ts.register(t, "slow", "a")

	// A small receive buffer, so the server's writes back up soon.
	d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		rc.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096) })
		return nil
	}}
	c, err := d.Dial("tcp", strings.TrimPrefix(ts.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /api/v1/exchanges/slow/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n\r\n", key)
	br := bufio.NewReaderSize(c, 512)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("events: %v %v", resp, err)
	}
	// About 12 MB of events, more than the socket buffers on both sides
	// hold, and the client reads none of it.
	filler := strings.Repeat("x", 100<<10)
	for range 60 {
		ts.create(t, "slow", key, map[string]any{"intent": "fill", "context": []string{filler}})
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs.String(), "event stream dropped"); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the stream of a client that reads nothing was not dropped")
		}
	}
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	_, err = io.Copy(io.Discard, br)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the dropped stream's connection is still open")
	}
}

// Ensure waits longer than the body and write timeouts still answer: the
// deadlines bound reading a body and each write, not the wait between.
func TestLimits_waitsOutliveTimeouts(t *testing.T) {
	ts := startServer(t, withEnv("MESS_BODY_TIMEOUT", "200ms"), withEnv("MESS_WRITE_TIMEOUT", "200ms"))
	key := ts.register(t, "w", "a")
	other := ts.register(t, "w", "b")
	var list struct{ Threads []any }
	if code := ts.do(t, "GET", ts.api("w")+"/requests?wait=1", key, nil, &list); code != 200 {
		t.Fatalf("long-poll = %d", code)
	}
	if code := ts.do(t, "POST", ts.api("w")+"/leases/acquire", other, `{"file":"f","ttlMs":60000}`, nil); code != 200 {
		t.Fatalf("acquire = %d", code)
	}
	var res map[string]any
	if code := ts.do(t, "POST", ts.api("w")+"/leases/acquire", key, `{"file":"f","ttlMs":60000,"waitMs":1000}`, &res); code != 200 || res["acquired"] != false {
		t.Fatalf("blocking acquire = %d %v", code, res)
	}
	// An event stream outlives both too: it sees an event made after them.
	req, _ := http.NewRequest("GET", ts.api("w")+"/events", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if code := ts.do(t, "GET", ts.api("w")+"/requests?wait=0.5", key, nil, nil); code != 200 {
		t.Fatalf("long-poll = %d", code)
	}
	ts.create(t, "w", other, map[string]any{"intent": "late"})
	r := bufio.NewReader(resp.Body)
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("stream ended: %v", err)
		}
		if line == "event: thread_created\n" {
			break
		}
	}
}

// Ensure a chunked body over a limit is a 413 too_large like a sized one,
// whether the exchange's limit or a service's own (leases: 64 KiB) is
// passed, and the CORS preflight allows PUT (mail bus subscriptions).
func TestLimits_chunkedBodiesAndPreflight(t *testing.T) {
	ts := startServer(t, withEnv("MAX_BODY_BYTES", "200000"))
	key := ts.register(t, "big", "a")
	for _, tc := range []struct{ path, method string }{
		{"/register", "POST"},
		{"/requests", "POST"},
		{"/leases/acquire", "POST"},
	} {
		for _, size := range []int{150000, 300000} { // over the service's limit; over MAX_BODY_BYTES
			chunked := io.MultiReader(strings.NewReader(`{"x":"`), strings.NewReader(strings.Repeat("x", size)), strings.NewReader(`"}`))
			req, _ := http.NewRequest(tc.method, ts.api("big")+tc.path, chunked)
			req.Header.Set("Authorization", "Bearer "+key)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if size < 200000 && tc.path == "/requests" || size < 200000 && tc.path == "/register" {
				continue // under the exchange's limit: any answer but a 413 is right
			}
			if resp.StatusCode != 413 || !strings.Contains(string(b), `"too_large"`) {
				t.Errorf("%s %s chunked %d bytes = %d %s, want 413 too_large", tc.method, tc.path, size, resp.StatusCode, b)
			}
		}
	}
	req, _ := http.NewRequest("OPTIONS", ts.api("big")+"/mailbus/subscriptions", nil)
	req.Header.Set("Origin", "https://app.example")
	req.Header.Set("Access-Control-Request-Method", "PUT")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if !strings.Contains(resp.Header.Get("Access-Control-Allow-Methods"), "PUT") {
		t.Fatalf("preflight allows %q, want PUT among them", resp.Header.Get("Access-Control-Allow-Methods"))
	}
}

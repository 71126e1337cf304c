package mailbus

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Data frames written straight to the connection must read back intact in
// a real WebSocket client, at every length encoding, with the library's
// own control frames in between. A frame the socket cannot take at once
// is finished by another goroutine while a ping waits for it: the ping
// must not land inside the frame.
func TestFrameConn(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 127, 1000, 65535, 65536, 200000}
	payload := func(n int) []byte { return bytes.Repeat([]byte{'a' + byte(n%26)}, n) }
	srvErr := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var once sync.Once
		report := func(err error) { once.Do(func() { srvErr <- err }) }
		report(serveFrames(w, r, sizes, payload, report))
	}))
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	for _, n := range sizes {
		// Read slowly, so that large frames fill the server's socket.
		time.Sleep(5 * time.Millisecond)
		typ, got, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("frame of %d bytes: %v", n, err)
		}
		if typ != websocket.MessageText || !bytes.Equal(got, payload(n)) {
			t.Fatalf("frame of %d bytes: got type %v, %d bytes", n, typ, len(got))
		}
	}
	// The last frame's ping is answered while reading this one, or, if
	// "end" won the race for the frame lock, by reading on after it.
	if _, got, err := c.Read(ctx); err != nil || string(got) != "end" {
		t.Fatalf("last frame: %q, %v", got, err)
	}
	c.CloseRead(ctx)
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// serveFrames writes a frame of each size, alternating the blocking and
// the non-blocking path, and pings while each frame is being written.
// It reports its result before waiting for the client to close.
func serveFrames(w http.ResponseWriter, r *http.Request, sizes []int, payload func(int) []byte, report func(error)) (err error) {
	lh := &leanHijacker{ResponseWriter: w}
	c, err := websocket.Accept(lh, r, nil)
	if err != nil {
		return err
	}
	defer c.CloseNow()
	fc := lh.fc
	if fc.rc == nil {
		return fmt.Errorf("no raw connection under %T", fc.conn)
	}
	// A small send buffer makes the 200,000-byte frame a partial write.
	if err := fc.conn.(*net.TCPConn).SetWriteBuffer(4096); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		c.Reader(ctx) // reads the client's pongs, then its close
	}()
	defer func() { <-readDone }()
	end := make(chan error, 1)
	defer func() {
		if err == nil {
			err = <-end
		}
		report(err)
	}()
	for i, n := range sizes {
		if i == len(sizes)-1 {
			// The last ping needs one more frame to be answered.
			go func() {
				time.Sleep(10 * time.Millisecond)
				_, err := fc.Write(frameBytes([]byte("0123456789end")))
				end <- err
			}()
		}
		buf := append(make([]byte, frameHeadroom), payload(n)...)
		if err = fc.lock(); err != nil {
			return err
		}
		rest := frameBytes(buf)
		if i%2 == 0 {
			// Until some of the frame is written: a full socket takes none.
			for p := rest; len(rest) == len(p); time.Sleep(time.Millisecond) {
				if rest, err = fc.tryWrite(p); err != nil {
					return err
				}
			}
			if n > 100000 && len(rest) == 0 {
				return fmt.Errorf("a %d-byte frame went out in one non-blocking write", n)
			}
		}
		wrote := make(chan error, 1)
		go func() {
			var err error
			if len(rest) > 0 {
				time.Sleep(time.Millisecond) // let the ping queue behind the frame
				_, err = fc.conn.Write(rest)
			}
			fc.mu.Unlock()
			wrote <- err
		}()
		if err := c.Ping(ctx); err != nil {
			return fmt.Errorf("ping after a %d-byte frame: %w", n, err)
		}
		if err := <-wrote; err != nil {
			return err
		}
	}
	return nil
}

// A delivery written on the goroutine that wakes a thousand connections
// must not wait for a frame lock that a ping or reply stuck on a full
// socket holds: tryWrite hands the whole frame back instead.
func TestTryWriteDoesNotWaitForTheFrameLock(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	server, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer server.Close()
	ws := &wsConn{fc: newFrameConn(server)}
	buf := append(make([]byte, frameHeadroom), "hello"...)

	ws.fc.mu.Lock() // as a write blocked on a full socket would
	done := make(chan struct{})
	var rest []byte
	var locked bool
	go func() {
		defer close(done)
		rest, locked, err = ws.tryWrite(buf)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("tryWrite waited for the frame lock")
	}
	ws.fc.mu.Unlock()
	if err != nil || locked || !bytes.Equal(rest, frameBytes(buf)) {
		t.Fatalf("with the lock held elsewhere: rest %q, locked %v, err %v; want the whole frame, unlocked", rest, locked, err)
	}

	// Free, the frame goes out whole and the lock is released.
	if rest, locked, err = ws.tryWrite(buf); err != nil || locked || len(rest) != 0 {
		t.Fatalf("with the lock free: rest %q, locked %v, err %v", rest, locked, err)
	}
	if !ws.fc.mu.TryLock() {
		t.Fatal("tryWrite kept the frame lock after a whole write")
	}
	ws.fc.mu.Unlock()
	got := make([]byte, 7)
	client.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(client, got); err != nil || string(got) != "\x81\x05hello" {
		t.Fatalf("read %q, %v", got, err)
	}
}

// Ensure replies queue up to maxQueuedReplies and no further: the waiter
// then waits until the flush takes them, or the connection closes.
func TestQueueRepliesWaitsForRoom(t *testing.T) {
	ws := &wsConn{running: true} // a busy flush: nothing takes the replies meanwhile
	ws.room.L = &ws.mu
	for range maxQueuedReplies {
		ws.queueReplies([][]byte{[]byte(`{}`)})
	}
	queued := make(chan struct{})
	go func() {
		ws.queueReplies([][]byte{[]byte(`{"n":1}`)})
		close(queued)
	}()
	select {
	case <-queued:
		t.Fatalf("queued past the bound: %d replies", len(ws.replies))
	case <-time.After(100 * time.Millisecond):
	}
	ws.mu.Lock()
	if n := len(ws.takeReplies()); n != maxQueuedReplies {
		t.Errorf("took %d replies, want %d", n, maxQueuedReplies)
	}
	ws.mu.Unlock()
	<-queued
	ws.mu.Lock()
	if n := len(ws.replies); n != 1 {
		t.Errorf("%d replies after the flush took its share, want 1", n)
	}
	ws.mu.Unlock()

	for range maxQueuedReplies - 1 {
		ws.queueReplies([][]byte{[]byte(`{}`)})
	}
	closed := make(chan struct{})
	go func() {
		ws.queueReplies([][]byte{[]byte(`{}`)})
		close(closed)
	}()
	ws.stop()
	<-closed
}

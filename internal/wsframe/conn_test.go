//go:build unix

package wsframe

import (
	"bufio"
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
// own control frames in between. A frame the socket cannot take at once is
// finished by another goroutine while a ping waits for the frame lock: the
// ping must not land inside the frame.
//
// The order is fixed by synchronisation: the client reads frame i only once
// the server has started it (gate), so a large frame written without
// waiting fills the sockets and is left unfinished; the end frame follows
// the last frame by program order.
func TestConn(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 127, 1000, 65535, 65536, 200000}
	payload := func(n int) []byte { return bytes.Repeat([]byte{'a' + byte(n%26)}, n) }
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	gate := make(chan struct{})
	srvErr := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var once sync.Once
		report := func(err error) { once.Do(func() { srvErr <- err }) }
		report(serveFrames(ctx, w, r, sizes, payload, gate, report))
	}))
	defer srv.Close()
	// A small receive buffer, fixed so that it does not grow as the
	// client reads, keeps a 200,000-byte frame from fitting the sockets.
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			err = c.(*net.TCPConn).SetReadBuffer(16 << 10)
		}
		return c, err
	}}
	defer tr.CloseIdleConnections()
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http"), &websocket.DialOptions{HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	c.SetReadLimit(1 << 20)
	for _, n := range sizes {
		select {
		case <-gate:
		case err := <-srvErr:
			t.Fatalf("server before the frame of %d bytes: %v", n, err)
		}
		typ, got, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("frame of %d bytes: %v", n, err)
		}
		if typ != websocket.MessageText || !bytes.Equal(got, payload(n)) {
			t.Fatalf("frame of %d bytes: got type %v, %d bytes", n, typ, len(got))
		}
	}
	if _, got, err := c.Read(ctx); err != nil || string(got) != "end" {
		t.Fatalf("last frame: %q, %v", got, err)
	}
	c.CloseRead(ctx) // answers the pings still to come
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

// serveFrames writes a frame of each size, alternating the blocking and the
// non-blocking path, and pings while each frame is being written. It opens
// gate once a frame is under way, and reports its result before waiting for
// the client to close.
func serveFrames(ctx context.Context, w http.ResponseWriter, r *http.Request, sizes []int, payload func(int) []byte, gate chan<- struct{}, report func(error)) error {
	lh := &Hijacker{ResponseWriter: w}
	c, err := websocket.Accept(lh, r, nil)
	if err != nil {
		return err
	}
	defer c.CloseNow()
	fc := lh.Conn
	if fc == nil {
		return fmt.Errorf("no raw connection under the WebSocket")
	}
	// A small send buffer makes the 200,000-byte frame a partial write.
	if err := fc.NetConn().(*net.TCPConn).SetWriteBuffer(4096); err != nil {
		return err
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		c.Reader(ctx) // reads the client's pongs, then its close
	}()
	defer func() { <-readDone }()
	pings := make(chan error, len(sizes))
	err = func() error {
		for i, n := range sizes {
			buf := append(make([]byte, Headroom), payload(n)...)
			if err := fc.Lock(); err != nil {
				return err
			}
			p := Frame(buf)
			rest := p
			if i%2 == 0 {
				// Until some of the frame is written: a socket still full of
				// the previous frame takes none.
				for deadline := time.Now().Add(30 * time.Second); len(rest) == len(p); time.Sleep(time.Millisecond) {
					if rest, err = fc.TryWrite(p); err != nil {
						fc.Unlock(nil)
						return err
					}
					if time.Now().After(deadline) {
						fc.Unlock(nil)
						return fmt.Errorf("the socket took nothing of a %d-byte frame for 30s", n)
					}
				}
				if n > 100000 && len(rest) == 0 {
					fc.Unlock(nil)
					return fmt.Errorf("a %d-byte frame went out in one non-blocking write", n)
				}
			}
			gate <- struct{}{}
			// The ping waits for the frame lock, which this goroutine holds
			// until another one has finished the frame.
			go func() { pings <- c.Ping(ctx) }()
			wrote := make(chan error, 1)
			go func() {
				var err error
				if len(rest) > 0 {
					err = fc.WriteLocked(rest, 30*time.Second)
				}
				fc.Unlock(nil)
				wrote <- err
			}()
			if err := <-wrote; err != nil {
				return err
			}
		}
		_, err := fc.Write(Frame([]byte("0123456789end")))
		return err
	}()
	if err != nil {
		return err
	}
	for range sizes {
		if err := <-pings; err != nil {
			return fmt.Errorf("ping: %w", err)
		}
	}
	report(nil)
	return nil
}

// A reader with a small buffer over a Conn gets every byte a client
// sent, in order, whether the socket holds less than a read asks for,
// exactly as much, or far more (what Read takes ahead), and then the end
// of the stream; nothing read ahead is kept once it has been taken.
func TestConnReadsAhead(t *testing.T) {
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
	fc := NewConn(server)
	br := bufio.NewReaderSize(fc, readBuffer)
	for i, n := range []int{1, readBuffer, 3 * ReadAhead, readBuffer - 1, ReadAhead + 7, 100} {
		chunk := bytes.Repeat([]byte{byte('a' + i)}, n)
		// Each chunk is on the socket whole before it is read: the reads
		// meet exactly what the sizes above describe.
		if _, err := client.Write(chunk); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, n)
		server.SetReadDeadline(time.Now().Add(5 * time.Second))
		if n > ReadAhead {
			// One small read takes ahead what the socket holds beyond it.
			if _, err := br.Peek(1); err != nil {
				t.Fatal(err)
			}
			if len(fc.ahead) == 0 {
				t.Fatalf("chunk %d of %d bytes: nothing read ahead", i, n)
			}
		}
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatalf("chunk %d of %d bytes: %v", i, n, err)
		}
		if !bytes.Equal(got, chunk) {
			t.Fatalf("chunk %d of %d bytes read back wrong", i, n)
		}
		if br.Buffered() == 0 && fc.ahead != nil {
			t.Fatalf("after chunk %d: %d bytes held ahead that were already read", i, len(fc.ahead))
		}
	}
	client.Close()
	if n, err := br.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("after the client closed: %d bytes, %v; want EOF", n, err)
	}
}

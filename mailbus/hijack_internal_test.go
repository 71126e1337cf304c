package mailbus

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Data frames written straight to the connection must read back intact in
// a real WebSocket client, at every length encoding, interleaved with the
// library's own control frames.
func TestWriteTextFrame(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 127, 1000, 65535, 65536, 200000}
	payload := func(n int) []byte { return bytes.Repeat([]byte{'a' + byte(n%26)}, n) }
	srvErr := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		lh := &leanHijacker{ResponseWriter: w}
		c, err := websocket.Accept(lh, r, nil)
		if err != nil {
			srvErr <- err
			return
		}
		defer c.CloseNow()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		readDone := make(chan struct{})
		go func() {
			defer close(readDone)
			c.Reader(ctx) // reads the client's pongs, then its close
		}()
		defer func() { <-readDone }()
		for i, n := range sizes {
			if i > 0 {
				// Answered by the client's next Read.
				if err := c.Ping(ctx); err != nil {
					srvErr <- err
					return
				}
			}
			if err := writeTextFrame(lh.conn, append(make([]byte, frameHeadroom), payload(n)...)); err != nil {
				srvErr <- err
				return
			}
		}
		srvErr <- nil
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
		typ, got, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("frame of %d bytes: %v", n, err)
		}
		if typ != websocket.MessageText || !bytes.Equal(got, payload(n)) {
			t.Fatalf("frame of %d bytes: got type %v, %d bytes", n, typ, len(got))
		}
	}
	if err := <-srvErr; err != nil {
		t.Fatal(err)
	}
	c.Close(websocket.StatusNormalClosure, "")
}

package mailbus_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/mailbus"
)

// smallReadBuffer is an HTTP client whose connections have a small receive
// buffer that does not grow, so that a server writing large frames to them
// has to wait and finish frames on another goroutine.
func smallReadBuffer(t *testing.T) *http.Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			err = c.(*net.TCPConn).SetReadBuffer(32 << 10)
		}
		return c, err
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// Ensure the server's frames reach a real client whole, in order and
// without loss, whichever goroutine writes them: many writers send numbered
// messages of random sizes to one agent at once, while the server pings
// every few milliseconds, heartbeats go out live, and the agent's own
// pipelined publishes are answered on the same connection.
func TestHandler_FramesUnderLoad(t *testing.T) {
	forEachFramePath(t, func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		b, err := mailbus.New(ctx, mailbus.Config{RetentionCount: 1 << 20})
		if err != nil {
			t.Fatal(err)
		}
		h, err := mailbus.NewHandler(b, mailbus.HandlerConfig{Auth: keyAuth{}, PingInterval: 5 * time.Millisecond, PongTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		e := &testEnv{bus: b, srv: httptest.NewServer(h)}
		defer e.stop()
		u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http") + "?batch=1&types=heartbeat"
		c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{
			HTTPClient: smallReadBuffer(t),
			HTTPHeader: http.Header{"Authorization": {"Bearer " + key("ex", "r")}},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		c.SetReadLimit(-1)

		const writers, each, publishes = 16, 40, 200
		var wg sync.WaitGroup
		defer wg.Wait()
		for w := range writers {
			wg.Go(func() {
				rng := rand.New(rand.NewPCG(uint64(w), 7))
				for n := range each {
					size := rng.IntN(200)
					if rng.IntN(8) == 0 {
						size = rng.IntN(64 << 10)
					}
					p := fmt.Sprintf(`{"w":%d,"n":%d,"len":%d,"pad":%q}`, w, n, size, strings.Repeat("x", size))
					if _, err := b.SendTo(ctx, "ex", fmt.Sprintf("w%d", w), "r", mailbus.Message{Type: "load.n", Payload: json.RawMessage(p)}); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Go(func() {
			for range 100 {
				if err := b.Heartbeat(ctx, "ex", "beater"); err != nil {
					t.Error(err)
					return
				}
			}
		})
		wg.Go(func() {
			for i := range publishes {
				f := fmt.Sprintf(`{"action":"publish","ref":"%d","message":{"type":"load.echo"}}`, i)
				if err := c.Write(ctx, websocket.MessageText, []byte(f)); err != nil {
					t.Error(err)
					return
				}
			}
		})

		next := make([]int, writers) // per writer, the n expected next
		var seq uint64
		replies := map[string]bool{}
		for got := 0; got < writers*each || len(replies) < publishes; {
			_, data, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("after %d messages and %d replies: %v", got, len(replies), err)
			}
			elems := []json.RawMessage{data}
			if data[0] == '[' {
				if err := json.Unmarshal(data, &elems); err != nil {
					t.Fatalf("frame of %d bytes is not a JSON array: %v", len(data), err)
				}
			}
			for _, el := range elems {
				var m struct {
					mailbus.Message
					Action string `json:"action"`
					Ref    string `json:"ref"`
				}
				if err := json.Unmarshal(el, &m); err != nil {
					t.Fatalf("element of %d bytes is not JSON: %v", len(el), err)
				}
				switch {
				case m.Action == "accepted":
					if replies[m.Ref] {
						t.Fatalf("reply %s twice", m.Ref)
					}
					replies[m.Ref] = true
				case m.Action == "welcome" && got == 0 && len(replies) == 0:
				case m.Action != "":
					t.Fatalf("unexpected control frame %s", el)
				case m.Type == "heartbeat":
				case m.Type == "load.n":
					var p struct {
						W, N, Len int
						Pad       string
					}
					if err := json.Unmarshal(m.Payload, &p); err != nil || len(p.Pad) != p.Len {
						t.Fatalf("payload of seq %d: %v, %d bytes of pad for %d", m.Seq, err, len(p.Pad), p.Len)
					}
					if m.Seq != seq+1 {
						t.Fatalf("seq %d after %d", m.Seq, seq)
					}
					seq = m.Seq
					if p.N != next[p.W] {
						t.Fatalf("writer %d: message %d where %d was due", p.W, p.N, next[p.W])
					}
					next[p.W]++
					got++
				default:
					t.Fatalf("unexpected message %s", el)
				}
			}
		}
	})
}

// Ensure no extension is negotiated, even with a client that offers
// permessage-deflate: the hand-written frames carry no RSV bits.
func TestHandler_NoCompression(t *testing.T) {
	forEachFramePath(t, func(t *testing.T) {
		e := startEnv(t, mailbus.Config{})
		ctx := ctxT(t)
		u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http")
		c, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
			HTTPHeader:      http.Header{"Authorization": {"Bearer " + key("ex", "a")}},
			CompressionMode: websocket.CompressionContextTakeover,
		})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		if ext := resp.Header.Values("Sec-WebSocket-Extensions"); len(ext) != 0 {
			t.Errorf("Sec-WebSocket-Extensions %q in the handshake answer", ext)
		}
		if _, err := e.bus.SendTo(ctx, "ex", "b", "a", mailbus.Message{Type: "t", Payload: json.RawMessage(`{"x":"` + strings.Repeat("y", 4000) + `"}`)}); err != nil {
			t.Fatal(err)
		}
		for {
			_, data, err := c.Read(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var m mailbus.Message
			if err := json.Unmarshal(data, &m); err != nil {
				t.Fatal(err)
			}
			if m.Type == "t" {
				break
			}
		}
	})
}

// Ensure a connection whose peer goes while a ping waits for its pong is
// released at once, not when the pong's wait runs out: until then it held
// up detaching, presence and Bus.Close. The client is a bare TCP socket
// that reads frames until the ping, and never answers.
func TestHandler_PeerGoneDuringPing(t *testing.T) {
	b, err := mailbus.New(context.Background(), mailbus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := mailbus.NewHandler(b, mailbus.HandlerConfig{Auth: keyAuth{}, PingInterval: 20 * time.Millisecond, PongTimeout: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	e := &testEnv{bus: b, srv: httptest.NewServer(h)}
	defer e.stop()
	conn, err := net.Dial("tcp", strings.TrimPrefix(e.srv.URL, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET /api/v1/exchanges/ex/mailbus/subscribe HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer %s\r\n\r\n", key("ex", "gone"))
	br := bufio.NewReader(conn)
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if line == "\r\n" {
			break
		}
	}
	for {
		var head [2]byte
		if _, err := io.ReadFull(br, head[:]); err != nil {
			t.Fatal(err)
		}
		n := int(head[1] & 0x7f)
		switch n {
		case 126:
			var ext [2]byte
			io.ReadFull(br, ext[:])
			n = int(ext[0])<<8 | int(ext[1])
		case 127:
			t.Fatal("unexpectedly large frame")
		}
		if _, err := io.CopyN(io.Discard, br, int64(n)); err != nil {
			t.Fatal(err)
		}
		if head[0]&0x0f == 0x9 { // a ping: now it waits for a pong
			break
		}
	}
	conn.Close()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		ps, _ := b.Presence(ctxT(t), "ex")
		if len(ps) == 1 && !ps[0].Connected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still connected 10s after the peer went: %+v", ps)
		}
	}
}

// Ensure a handler cannot be built without an authenticator.
func TestNewHandler_NeedsAuth(t *testing.T) {
	b, err := mailbus.New(context.Background(), mailbus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(context.Background())
	if h, err := mailbus.NewHandler(b, mailbus.HandlerConfig{}); err == nil || h != nil {
		t.Errorf("NewHandler without Auth: %v, %v; want an error", h, err)
	}
}

// Ensure frames a client writes as soon as the handshake completes, before
// it reads anything, reach the server intact: the 101 is on the wire before
// the connection is hijacked, so they can arrive with the hijack and must
// not be lost or read from the middle (which showed as "unexpected rsv
// bits" and unknown opcodes).
func TestHandler_framesRightAfterHandshake(t *testing.T) {
	forEachFramePath(t, func(t *testing.T) {
		e := startEnv(t, mailbus.Config{})
		u := "ws" + strings.TrimPrefix(e.url("ex", "subscribe"), "http")
		ctx := ctxT(t)
		for i := range 100 {
			c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key("ex", "a")}}})
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []string{`{"action":"nope"}`, `{"action":"subscribe","type":"p.x","ref":"probe"}`} {
				if err := c.Write(ctx, websocket.MessageText, []byte(f)); err != nil {
					t.Fatal(err)
				}
			}
			for {
				_, data, err := c.Read(ctx)
				if err != nil {
					t.Fatalf("connection %d ended before the probe's reply: %v", i, err)
				}
				if strings.Contains(string(data), `"probe"`) {
					break
				}
			}
			c.Close(websocket.StatusNormalClosure, "")
		}
	})
}

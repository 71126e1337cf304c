package lease_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/internal/wsframe"
	"github.com/meatspace-exchange/mess/lease"
)

// handConn is a lease WebSocket client written by hand on a TCP
// connection: it sends exactly the frames a test writes, answers nothing
// by itself (no pong, no close) and reads only when asked, so that a test
// can be the client a library would never be.
type handConn struct {
	t  *testing.T
	nc net.Conn
	rd *wsframe.Reader
	mu sync.Mutex // serialises frame writes
}

// serveLeases serves m's lease API with cfg (Auth defaults to keys{}),
// recording the connections the WebSocket takes over. With sendBuffer set,
// every accepted connection gets that small a send buffer, so that the
// server's answers fill it at once.
func serveLeases(t *testing.T, m *lease.Manager, cfg lease.HandlerConfig, sendBuffer int) (*httptest.Server, *hijackedConns) {
	t.Helper()
	if cfg.Auth == nil {
		cfg.Auth = keys{}
	}
	h, err := lease.NewHandler(m, cfg)
	if err != nil {
		t.Fatal(err)
	}
	conns := &hijackedConns{}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = conns.track
	if sendBuffer > 0 {
		srv.Listener = smallSendListener{srv.Listener, sendBuffer}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, conns
}

type smallSendListener struct {
	net.Listener
	size int
}

func (l smallSendListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		err = c.(*net.TCPConn).SetWriteBuffer(l.size)
	}
	return c, err
}

// dialHand opens agent's lease WebSocket by hand, query appended to the
// path; a readBuffer above zero is set on the socket before the handshake.
func dialHand(t *testing.T, srv *httptest.Server, agent, query string, readBuffer int) *handConn {
	t.Helper()
	nc, err := net.DialTimeout("tcp", srv.Listener.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if readBuffer > 0 {
		if err := nc.(*net.TCPConn).SetReadBuffer(readBuffer); err != nil {
			t.Fatal(err)
		}
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(nc, "GET /api/v1/exchanges/x1/leases/ws%s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer key-%s\r\n\r\n",
		query, srv.Listener.Addr(), key, agent)
	br := bufio.NewReaderSize(nc, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("handshake answered %d with accept %q", resp.StatusCode, resp.Header.Get("Sec-WebSocket-Accept"))
	}
	nc.SetDeadline(time.Time{})
	return &handConn{t: t, nc: nc, rd: wsframe.NewClientReader(br, 16<<20)}
}

// frame writes one masked frame (RFC 6455 section 5.2).
func (c *handConn) frame(fin bool, op wsframe.Opcode, p []byte) error {
	return c.raw(maskedFrame(fin, op, p))
}

// raw writes b as it is.
func (c *handConn) raw(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nc.SetWriteDeadline(time.Now().Add(time.Minute))
	_, err := c.nc.Write(b)
	return err
}

func maskedFrame(fin bool, op wsframe.Opcode, p []byte) []byte {
	b0 := byte(op)
	if fin {
		b0 |= 0x80
	}
	b := []byte{b0}
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 0x80|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 0x80|127), uint64(n))
	}
	key := [4]byte{0xa5, 0x17, 0x3c, 0xe9}
	b = append(b, key[:]...)
	for i, x := range p {
		b = append(b, x^key[i%4])
	}
	return b
}

func (c *handConn) send(s string) {
	c.t.Helper()
	if err := c.frame(true, wsframe.OpText, []byte(s)); err != nil {
		c.t.Fatalf("write %s: %v", s, err)
	}
}

// next reads the next frame within timeout; the payload is a copy.
func (c *handConn) next(timeout time.Duration) (wsframe.Opcode, []byte, error) {
	c.nc.SetReadDeadline(time.Now().Add(timeout))
	op, p, err := c.rd.Next()
	return op, append([]byte(nil), p...), err
}

// answer reads the next frame, which must be one JSON answer.
func (c *handConn) answer() map[string]any {
	c.t.Helper()
	op, p, err := c.next(10 * time.Second)
	if err != nil || op != wsframe.OpText {
		c.t.Fatalf("read an answer: opcode %d, %q, %v", op, p, err)
	}
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		c.t.Fatalf("answer %s: %v", p, err)
	}
	return m
}

// closeFrame reads until a close frame comes, within 10s, and returns its
// code; then the server must end the connection.
func (c *handConn) closeFrame() int {
	c.t.Helper()
	for {
		op, p, err := c.next(10 * time.Second)
		if err != nil {
			c.t.Fatalf("no close frame: %v", err)
		}
		if op == wsframe.OpClose {
			if len(p) < 2 {
				c.t.Fatalf("close frame without a code: %q", p)
			}
			return int(binary.BigEndian.Uint16(p))
		}
	}
}

// ended reports whether the server ended the connection: reading, after
// any frames still on their way, meets the end of the stream or a reset
// within 10s.
func (c *handConn) ended() error {
	for {
		op, _, err := c.next(10 * time.Second)
		switch {
		case err == nil:
			if op == wsframe.OpText || op == wsframe.OpBinary {
				return fmt.Errorf("a data frame (opcode %d) where the end was due", op)
			}
		case errors.Is(err, io.EOF), errors.Is(err, syscall.ECONNRESET):
			return nil
		default:
			return err
		}
	}
}

// Ensure the server answers a client's ping with a pong carrying the same
// payload, from an empty one to the largest a control frame holds, and
// goes on serving calls.
func TestWS_pingPong(t *testing.T) {
	_, srv := MustServer(t, lease.Config{})
	c := dialHand(t, srv, "alice", "", 0)
	payload := make([]byte, 125)
	for i := range payload {
		payload[i] = byte(255 - i) // not UTF-8: a ping carries any bytes
	}
	for i, p := range [][]byte{nil, []byte("x"), []byte("hello"), payload} {
		if err := c.frame(true, wsframe.OpPing, p); err != nil {
			t.Fatal(err)
		}
		op, got, err := c.next(10 * time.Second)
		if err != nil || op != wsframe.OpPong || string(got) != string(p) {
			t.Fatalf("ping %d of %d bytes answered with opcode %d, %q, %v", i, len(p), op, got, err)
		}
		c.send(fmt.Sprintf(`{"action":"lease.status","ref":"s%d","file":"f"}`, i))
		if a := c.answer(); a["ref"] != fmt.Sprintf("s%d", i) || a["action"] != "lease.status" {
			t.Fatalf("status after ping %d: %v", i, a)
		}
	}

	// A WebSocket library's Ping waits for the pong with its own payload.
	r := dialWS(t, srv, "bob")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type msg struct {
		p   []byte
		err error
	}
	msgs := make(chan msg, 1)
	go func() { // the reader the library's Ping needs
		defer close(msgs)
		for {
			_, p, err := r.c.Read(ctx)
			msgs <- msg{p, err}
			if err != nil {
				return
			}
		}
	}()
	for i := range 3 {
		if err := r.c.Ping(ctx); err != nil {
			t.Fatalf("library ping %d: %v", i, err)
		}
	}
	r.send(`{"action":"lease.status","ref":"after","file":"f"}`)
	if m := <-msgs; m.err != nil || !strings.Contains(string(m.p), `"ref":"after"`) {
		t.Fatalf("answer after the pings: %q, %v", m.p, m.err)
	}
	r.c.Close(websocket.StatusNormalClosure, "")
	for range msgs {
	}
}

// Ensure the server pings each connection every PingInterval and closes
// one that sent nothing, not even a pong, for a whole interval, while
// clients that answer the pings stay connected over many intervals and
// their calls still work: a hand-written one that answers each ping, and
// lease.Client. The order rests on counting: when the answering client has
// seen its fifth ping, the others have been connected for four intervals
// at least.
func TestWS_pingInterval(t *testing.T) {
	const interval = 250 * time.Millisecond
	m := MustNew(t, lease.Config{})
	srv, conns := serveLeases(t, m, lease.HandlerConfig{PingInterval: interval}, 0)
	lc := MustClientVia(t, srv, "x1", "carol", viaWS)
	idle := dialHand(t, srv, "bob", "", 0)
	live := dialHand(t, srv, "alice", "", 0)
	// The library writes the 101 before it takes the connection over.
	waitFor(t, "the server to take the connections over", func() bool { return conns.n() == 3 })

	pings := make(chan struct{}, 100)
	answers := make(chan map[string]any, 10)
	ended := make(chan error, 1)
	go func() { // alice answers pings at once and hands on the rest
		for {
			op, p, err := live.next(time.Minute)
			if err != nil {
				ended <- err
				return
			}
			switch op {
			case wsframe.OpPing:
				if err := live.frame(true, wsframe.OpPong, p); err != nil {
					ended <- err
					return
				}
				pings <- struct{}{}
			case wsframe.OpText:
				var a map[string]any
				json.Unmarshal(p, &a)
				answers <- a
			case wsframe.OpClose:
				ended <- fmt.Errorf("close frame %q", p)
				return
			}
		}
	}()
	for i := range 5 {
		select {
		case <-pings:
		case err := <-ended:
			t.Fatalf("the client answering pings was disconnected after %d pings: %v", i, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("%d pings in 30s with a ping interval of %s", i, interval)
		}
	}

	live.send(`{"action":"lease.acquire","ref":"a","file":"f","ttlMs":60000}`)
	select {
	case a := <-answers:
		if a["ref"] != "a" || a["acquired"] != true {
			t.Fatalf("acquire after the pings: %v", a)
		}
	case err := <-ended:
		t.Fatalf("the client answering pings was disconnected: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no answer to the acquire")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if g, err := lc.Acquire(ctx, "g", time.Minute); err != nil || g.Holder != "carol" {
		t.Fatalf("lease.Client's acquire after the pings: %+v, %v", g, err)
	}
	if st, err := lc.Status(ctx, "f"); err != nil || st.AgentID != "alice" {
		t.Fatalf("lease.Client's status after the pings: %+v, %v", st, err)
	}

	// bob, who never answered, got a ping and then lost the connection.
	if op, p, err := idle.next(10 * time.Second); err != nil || op != wsframe.OpPing {
		t.Fatalf("the idle client's first frame: opcode %d, %q, %v; want a ping", op, p, err)
	}
	if err := idle.ended(); err != nil {
		t.Fatalf("the client that never answered a ping is still connected: %v", err)
	}
	// Nobody else was disconnected: lease.Client never redialed.
	if n := conns.n(); n != 3 || !lc.Connected() {
		t.Fatalf("%d connections taken over, lease.Client connected: %v; want 3 and connected", n, lc.Connected())
	}
	select {
	case err := <-ended:
		t.Fatalf("the client answering pings was disconnected: %v", err)
	default:
	}
	live.nc.Close()
	<-ended
}

// Ensure a request split into fragments (RFC 6455 section 5.4) is
// assembled and answered, with control frames between the fragments
// answered first, whether written by hand or by a WebSocket library.
func TestWS_fragmentedRequests(t *testing.T) {
	_, srv := MustServer(t, lease.Config{})
	c := dialHand(t, srv, "alice", "", 0)
	type frag struct {
		op  wsframe.Opcode
		fin bool
		p   string
	}
	tests := []struct {
		name  string
		frags []frag
		pongs []string // the pongs due before the answers
		refs  []string // the answers due
	}{
		{"three fragments", []frag{
			{wsframe.OpText, false, `{"action":"lease.acq`},
			{wsframe.OpContinuation, false, `uire","ref":"r1","file":"f1",`},
			{wsframe.OpContinuation, true, `"ttlMs":60000}`},
		}, nil, []string{"r1"}},
		{"pings between fragments", []frag{
			{wsframe.OpText, false, `{"action":"lease.acquire",`},
			{wsframe.OpPing, true, "one"},
			{wsframe.OpContinuation, false, `"ref":"r2","file":"f2",`},
			{wsframe.OpPing, true, "two"},
			{wsframe.OpContinuation, true, `"ttlMs":60000}`},
		}, []string{"one", "two"}, []string{"r2"}},
		{"empty first and last fragments", []frag{
			{wsframe.OpText, false, ``},
			{wsframe.OpContinuation, false, `{"action":"lease.acquire","ref":"r3","file":"f3","ttlMs":60000}`},
			{wsframe.OpContinuation, true, ``},
		}, nil, []string{"r3"}},
		{"an array of requests in fragments", []frag{
			{wsframe.OpText, false, `[{"action":"lease.acquire","ref":"r4","file":"f4","ttlMs":60000},`},
			{wsframe.OpContinuation, false, `{"action":"lease.acquire","ref":"r5",`},
			{wsframe.OpContinuation, true, `"file":"f5","ttlMs":60000}]`},
		}, nil, []string{"r4", "r5"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// One write, so that nothing is read before the whole message
			// is on the socket.
			var b []byte
			for _, f := range tt.frags {
				b = append(b, maskedFrame(f.fin, f.op, []byte(f.p))...)
			}
			if err := c.raw(b); err != nil {
				t.Fatal(err)
			}
			for _, want := range tt.pongs {
				if op, p, err := c.next(10 * time.Second); err != nil || op != wsframe.OpPong || string(p) != want {
					t.Fatalf("opcode %d, %q, %v; want the pong %q", op, p, err, want)
				}
			}
			got := map[string]bool{}
			for range tt.refs {
				a := c.answer()
				ref, _ := a["ref"].(string)
				if a["action"] != "lease.acquired" || a["acquired"] != true || a["file"] != "f"+ref[1:] {
					t.Fatalf("answer %v", a)
				}
				got[ref] = true
			}
			for _, ref := range tt.refs {
				if !got[ref] {
					t.Fatalf("no answer with ref %s: %v", ref, got)
				}
			}
		})
	}

	t.Run("a library's fragments", func(t *testing.T) {
		r := dialWS(t, srv, "bob")
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		w, err := r.c.Writer(ctx, websocket.MessageText)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{`{"action":"lease.acquire",`, `"ref":"lib","file":"g",`, `"ttlMs":60000}`} {
			if _, err := w.Write([]byte(p)); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		if a := r.next(); a["ref"] != "lib" || a["acquired"] != true || a["agentId"] != "bob" {
			t.Fatalf("answer %v", a)
		}
	})
}

// Ensure a frame no client may send closes the connection with the close
// code RFC 6455 gives it (1002, or 1009 for a message over the limit), and
// that nothing sent after it is answered. Answers still due when the bad
// frame arrives may be lost: no data frame follows a close frame.
func TestWS_frameErrors(t *testing.T) {
	big := strings.Repeat("a", 3000) // MustServer's limit is 4096 bytes
	unmasked := []byte{0x81, 2, '{', '}'}
	tests := []struct {
		name string
		in   []byte
		code int
	}{
		{"fragments together over the limit", append(maskedFrame(false, wsframe.OpText, []byte(big)), maskedFrame(true, wsframe.OpContinuation, []byte(big))...), wsframe.CloseMessageTooBig},
		{"unmasked frame", unmasked, wsframe.CloseProtocolError},
		{"close code 1005, never sent", maskedFrame(true, wsframe.OpClose, binary.BigEndian.AppendUint16(nil, 1005)), wsframe.CloseProtocolError},
		{"close code 999", maskedFrame(true, wsframe.OpClose, binary.BigEndian.AppendUint16(nil, 999)), wsframe.CloseProtocolError},
		{"RSV1 without an extension", append([]byte{0xc1}, maskedFrame(true, wsframe.OpText, []byte("{}"))[1:]...), wsframe.CloseProtocolError},
		{"continuation without a start", maskedFrame(true, wsframe.OpContinuation, []byte("{}")), wsframe.CloseProtocolError},
		{"text inside a fragmented message", append(maskedFrame(false, wsframe.OpText, []byte("{")), maskedFrame(true, wsframe.OpText, []byte("{}"))...), wsframe.CloseProtocolError},
		{"ping with FIN clear", maskedFrame(false, wsframe.OpPing, nil), wsframe.CloseProtocolError},
		{"ping of 126 bytes", maskedFrame(true, wsframe.OpPing, make([]byte, 126)), wsframe.CloseProtocolError},
		{"opcode 3", maskedFrame(true, 3, nil), wsframe.CloseProtocolError},
		{"close with a 1-byte payload", maskedFrame(true, wsframe.OpClose, []byte{3}), wsframe.CloseProtocolError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, srv := MustServer(t, lease.Config{})
			c := dialHand(t, srv, "alice", "", 0)
			c.send(`{"action":"lease.acquire","ref":"ok","file":"f","ttlMs":60000}`)
			if a := c.answer(); a["ref"] != "ok" || a["acquired"] != true {
				t.Fatalf("answer before the bad frame: %v", a)
			}
			if err := c.raw(tt.in); err != nil {
				t.Fatal(err)
			}
			if code := c.closeFrame(); code != tt.code {
				t.Fatalf("close code %d, want %d", code, tt.code)
			}
			// The server reads no frame after one it cannot parse: what
			// follows is dropped until the client stops sending, and then
			// the server hangs up.
			c.send(`{"action":"lease.status","ref":"late","file":"f"}`)
			if err := c.nc.(*net.TCPConn).CloseWrite(); err != nil {
				t.Fatal(err)
			}
			if err := c.ended(); err != nil {
				t.Fatalf("after the close frame: %v", err)
			}
		})
	}
}

// Ensure a close frame from the client is echoed with its code (1000 for
// none) and the server then ends the connection.
func TestWS_closeEcho(t *testing.T) {
	_, srv := MustServer(t, lease.Config{})
	tests := []struct {
		name    string
		payload []byte
		code    int
	}{
		{"normal", binary.BigEndian.AppendUint16(nil, 1000), 1000},
		{"going away with a reason", append(binary.BigEndian.AppendUint16(nil, 1001), "bye"...), 1001},
		{"an application's code", append(binary.BigEndian.AppendUint16(nil, 4000), "done ✓"...), 4000},
		{"no code", nil, 1000},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialHand(t, srv, "alice", "", 0)
			c.send(`{"action":"lease.status","ref":"s","file":"f"}`)
			if a := c.answer(); a["ref"] != "s" {
				t.Fatalf("status: %v", a)
			}
			if err := c.frame(true, wsframe.OpClose, tt.payload); err != nil {
				t.Fatal(err)
			}
			op, p, err := c.next(10 * time.Second)
			if err != nil || op != wsframe.OpClose || len(p) < 2 || int(binary.BigEndian.Uint16(p)) != tt.code {
				t.Fatalf("answer to the close frame: opcode %d, %q, %v; want a close frame with %d", op, p, err, tt.code)
			}
			if op, p, err := c.next(10 * time.Second); err != io.EOF {
				t.Fatalf("after the close handshake: opcode %d, %q, %v; want io.EOF", op, p, err)
			}
		})
	}
}

// Ensure a client that pipelines thousands of requests without reading
// its answers neither loses nor repeats one, though the server's answers
// fill the sockets (small ones on both sides), so that their writes are
// finished off the shared writer and the server may stop reading the
// client's frames for a while (maxQueuedAnswers), and that the server goes
// on serving other clients all along.
//
// Whether the server's reader is held up before the client starts to read
// depends on how the answers were split between writes; the answers'
// writes are held up every time: two thousand grants mean thousands of
// answers, and the sockets hold a few hundred.
func TestWS_backpressure(t *testing.T) {
	const n = 10000
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprintf("batch=%v", batch), func(t *testing.T) {
			m := MustNew(t, lease.Config{})
			// Timeouts far beyond the test's: a client that does not read
			// for a while is not cut off here.
			srv, _ := serveLeases(t, m, lease.HandlerConfig{PingInterval: time.Hour, WriteTimeout: time.Hour}, 4096)
			MustAcquire(t, m, "alice", "warm-up", time.Hour)
			query := ""
			if batch {
				query = "?batch=1"
			}
			c := dialHand(t, srv, "alice", query, 64<<10)

			// Even refs acquire a name of their own, odd ones ask the
			// status of a name nobody holds.
			request := func(i int) string {
				if i%2 == 0 {
					return fmt.Sprintf(`{"action":"lease.acquire","ref":"%d","file":"f%d","ttlMs":3600000}`, i, i)
				}
				return fmt.Sprintf(`{"action":"lease.status","ref":"%d","file":"free%d"}`, i, i)
			}
			wrote := make(chan error, 1)
			go func() {
				var b []byte
				for i := range n {
					b = append(b, maskedFrame(true, wsframe.OpText, []byte(request(i)))...)
					if len(b) > 32<<10 || i == n-1 {
						if err := c.raw(b); err != nil {
							wrote <- err
							return
						}
						b = b[:0]
					}
				}
				wrote <- nil
			}()
			// Before the server stops reading, it has made at least
			// maxQueuedAnswers/2 grants: their answers cannot all fit the
			// sockets.
			waitFor(t, "two thousand grants", func() bool { return m.Stats().Held > 2000 })
			other := dialWS(t, srv, "bob")
			other.send(`{"action":"lease.acquire","ref":"b","file":"bobs","ttlMs":60000}`)
			if a := other.next(); a["ref"] != "b" || a["acquired"] != true {
				t.Fatalf("another client's acquire while one does not read: %v", a)
			}
			if code, st := post(t, srv, "bob", "status", `{"file":"bobs"}`); code != http.StatusOK || st["agentId"] != "bob" {
				t.Fatalf("status over HTTP while a client does not read: %d %v", code, st)
			}

			seen := make([]bool, n)
			tokens := map[float64]bool{}
			take := func(a map[string]any) {
				ref, _ := a["ref"].(string)
				var i int
				if _, err := fmt.Sscan(ref, &i); err != nil || i < 0 || i >= n || seen[i] {
					t.Fatalf("answer %v: unknown or repeated ref", a)
				}
				seen[i] = true
				if i%2 == 0 {
					tok, _ := a["token"].(float64)
					if a["action"] != "lease.acquired" || a["acquired"] != true || a["file"] != fmt.Sprintf("f%d", i) ||
						a["agentId"] != "alice" || tok <= 0 || tokens[tok] {
						t.Fatalf("answer to %s: %v", request(i), a)
					}
					tokens[tok] = true
				} else if a["action"] != "lease.status" || a["isLeased"] != false {
					t.Fatalf("answer to %s: %v", request(i), a)
				}
			}
			frames := 0
			for got := 0; got < n; frames++ {
				op, p, err := c.next(time.Minute)
				if err != nil || op != wsframe.OpText {
					t.Fatalf("after %d answers: opcode %d, %v", got, op, err)
				}
				if len(p) > 0 && p[0] == '[' {
					if !batch {
						t.Fatalf("an array of answers without batch=1: %.100s", p)
					}
					var as []map[string]any
					if err := json.Unmarshal(p, &as); err != nil {
						t.Fatalf("frame %.100s: %v", p, err)
					}
					for _, a := range as {
						take(a)
					}
					got += len(as)
					continue
				}
				var a map[string]any
				if err := json.Unmarshal(p, &a); err != nil {
					t.Fatalf("frame %.100s: %v", p, err)
				}
				take(a)
				got++
			}
			t.Logf("%d answers in %d frames", n, frames)
			// The pipelined writes ended once the server read on.
			if err := <-wrote; err != nil {
				t.Fatalf("pipelining: %v", err)
			}
			// Nothing more was due: the next frame answers the next request.
			c.send(`{"action":"lease.status","ref":"last","file":"f0"}`)
			if a := c.answer(); a["ref"] != "last" || a["agentId"] != "alice" {
				t.Fatalf("the frame after all the answers: %v", a)
			}
		})
	}
}

// Ensure lease.Client's calls in flight when the server closes its lease
// WebSocket end as documented: a Release fails with an error matching
// ErrDisconnected that carries the close frame as a *CloseError, and an
// Acquire is repeated over HTTP, where it meets what the server says then.
func TestClient_closedByServer(t *testing.T) {
	tests := []struct {
		name   string
		close  func(m *lease.Manager, auth *watchedKeys) <-chan error
		code   int
		reason string
	}{
		{"manager closes", func(m *lease.Manager, _ *watchedKeys) <-chan error {
			done := make(chan error, 1)
			go func() { done <- m.Close(context.Background()) }()
			return done
		}, wsframe.CloseGoingAway, "lease service shutting down"},
		{"key revoked", func(_ *lease.Manager, auth *watchedKeys) <-chan error {
			auth.revoke("key-alice")
			return nil
		}, wsframe.ClosePolicyViolation, "API key revoked"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			store := newGateStore()
			m := MustNew(t, lease.Config{Store: store})
			auth := &watchedKeys{revoked: map[string]chan struct{}{}}
			srv, _ := serveLeases(t, m, lease.HandlerConfig{Auth: auth}, 0)
			c := connectedClient(t, srv, "alice")
			held := MustAcquire(t, m, "alice", "g", time.Hour)

			// The acquire's grant is being written, and the release's
			// record waits behind it: neither is answered before the close.
			entered, release := store.hold()
			defer release()
			type result struct {
				g   lease.Grant
				err error
			}
			acquired := make(chan result, 1)
			go func() {
				g, err := c.Acquire(ctx, "f", time.Hour)
				acquired <- result{g, err}
			}()
			select {
			case <-entered:
			case <-ctx.Done():
				t.Fatal("the acquire's write never came")
			}
			released := make(chan error, 1)
			go func() { released <- c.Release(ctx, "g", held.Token) }()
			waitFor(t, "the release to be under way", func() bool { return m.Stats().Held == 1 })

			closed := tt.close(m, auth)
			var err error
			select {
			case err = <-released:
			case <-ctx.Done():
				t.Fatal("the release in flight never ended")
			}
			ce, ok := errors.AsType[*lease.CloseError](err)
			if !errors.Is(err, lease.ErrDisconnected) || !ok || ce.Code != tt.code || ce.Reason != tt.reason {
				t.Fatalf("release in flight: %v; want ErrDisconnected with a CloseError %d %q", err, tt.code, tt.reason)
			}
			release()
			res := <-acquired
			switch {
			case errors.Is(res.err, lease.ErrDisconnected):
				t.Fatalf("acquire in flight: %v; want it repeated over HTTP", res.err)
			case errors.Is(res.err, lease.ErrClosed) && closed != nil:
				// The manager closed before the repeat reached it.
			case res.err != nil || res.g.Holder != "alice" || res.g.Name != "f" || res.g.Token != held.Token+1:
				t.Fatalf("acquire in flight = %+v, %v; want the grant the first one made (token %d)", res.g, res.err, held.Token+1)
			}
			if closed != nil {
				if err := <-closed; err != nil {
					t.Fatalf("manager Close: %v", err)
				}
			}
		})
	}
}

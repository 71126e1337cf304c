package wsframe

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

func wsURL(srv *httptest.Server) string { return "ws" + strings.TrimPrefix(srv.URL, "http") }

// Ensure Dial speaks to a WebSocket server it shares no code with (the
// library's Accept): the header given goes with the handshake, no
// extension is offered, text messages of every length encoding come back
// whole, a ping is answered with its payload, and the close handshake
// ends in io.EOF. The dial's ctx ending afterwards leaves the connection
// open: a long-lived connection is not bound to it.
func TestDial(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	type handshake struct{ auth, extensions string }
	hs := make(chan handshake, 1)
	served := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hs <- handshake{r.Header.Get("Authorization"), r.Header.Get("Sec-WebSocket-Extensions")}
		c, err := websocket.Accept(w, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
		if err != nil {
			served <- err
			return
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		for {
			typ, p, err := c.Read(ctx)
			if err != nil {
				if websocket.CloseStatus(err) == 4002 {
					err = nil // the close handshake, answered by Read
				}
				served <- err
				return
			}
			if err := c.Write(ctx, typ, p); err != nil {
				served <- err
				return
			}
		}
	}))
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()

	dctx, dcancel := context.WithCancel(ctx)
	c, resp, err := Dial(dctx, &http.Client{Transport: tr}, wsURL(srv), http.Header{"Authorization": {"Bearer k"}}, 1<<20)
	dcancel()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake answered %d", resp.StatusCode)
	}
	if h := <-hs; h.auth != "Bearer k" || h.extensions != "" {
		t.Fatalf("handshake with Authorization %q and extensions %q; want the header given and no extension", h.auth, h.extensions)
	}

	for _, n := range []int{0, 1, 125, 126, 65535, 65536, 300000} {
		p := pattern(n)
		if err := c.WriteText(p); err != nil {
			t.Fatalf("write %d bytes: %v", n, err)
		}
		// The library echoes a message only once it has read all of it,
		// so the write returns before the echo is read.
		op, got, err := c.Reader.Next()
		if err != nil || op != OpText || !bytes.Equal(got, p) {
			t.Fatalf("echo of %d bytes: opcode %d, %d bytes, %v", n, op, len(got), err)
		}
	}
	if err := c.WriteControl(OpPing, []byte("are you there")); err != nil {
		t.Fatal(err)
	}
	// The library answers the ping while it waits for the next message.
	if op, got, err := c.Reader.Next(); err != nil || op != OpPong || string(got) != "are you there" {
		t.Fatalf("answer to a ping: opcode %d, %q, %v", op, got, err)
	}
	if err := c.WriteClose(4002); err != nil {
		t.Fatal(err)
	}
	if op, got, err := c.Reader.Next(); err != nil || op != OpClose || !bytes.Equal(got[:2], closePayload(4002, "")) {
		t.Fatalf("answer to a close frame: opcode %d, %q, %v", op, got, err)
	}
	if op, _, err := c.Reader.Next(); err != io.EOF {
		t.Fatalf("after the close handshake: opcode %d, %v; want io.EOF", op, err)
	}
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
}

// upgradeBy answers a handshake by hand: with a 101 whose headers are the
// right ones changed by edit. It then waits for the client to hang up.
func upgradeBy(t *testing.T, edit func(h http.Header)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + acceptGUID))
		h := http.Header{}
		h.Set("Upgrade", "websocket")
		h.Set("Connection", "Upgrade")
		h.Set("Sec-WebSocket-Accept", base64.StdEncoding.EncodeToString(sum[:]))
		edit(h)
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\n")
		h.Write(brw)
		brw.WriteString("\r\n")
		if err := brw.Flush(); err != nil {
			t.Errorf("write the 101: %v", err)
			return
		}
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		io.Copy(io.Discard, brw)
	}
}

// Ensure Dial refuses whatever is not a WebSocket upgrade to the handshake
// it sent with an error wrapping ErrHandshake, and hands over the response:
// a refusal's body stays readable for the caller.
func TestDial_refused(t *testing.T) {
	tests := []struct {
		name    string
		handler http.Handler
		status  int
		body    string // the refusal's JSON code, when it has a body
	}{
		{"401 with a JSON error", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			io.WriteString(w, `{"error":"missing bearer token","code":"unauthorized"}`)
		}), http.StatusUnauthorized, "unauthorized"},
		{"200 to a plain GET", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.WriteString(w, `{"error":"not here","code":"not_found"}`)
		}), http.StatusOK, "not_found"},
		{"wrong Sec-WebSocket-Accept", upgradeBy(t, func(h http.Header) {
			h.Set("Sec-WebSocket-Accept", base64.StdEncoding.EncodeToString(make([]byte, sha1.Size)))
		}), http.StatusSwitchingProtocols, ""},
		{"no Sec-WebSocket-Accept", upgradeBy(t, func(h http.Header) { h.Del("Sec-WebSocket-Accept") }), http.StatusSwitchingProtocols, ""},
		{"an extension not offered", upgradeBy(t, func(h http.Header) {
			h.Set("Sec-WebSocket-Extensions", "permessage-deflate")
		}), http.StatusSwitchingProtocols, ""},
		{"another protocol", upgradeBy(t, func(h http.Header) { h.Set("Upgrade", "h2c") }), http.StatusSwitchingProtocols, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			tr := &http.Transport{}
			defer tr.CloseIdleConnections()
			c, resp, err := Dial(ctx, &http.Client{Transport: tr}, wsURL(srv), nil, 1<<20)
			if err == nil {
				c.Close()
				t.Fatal("handshake accepted")
			}
			if !errors.Is(err, ErrHandshake) {
				t.Fatalf("error %v, want one wrapping ErrHandshake", err)
			}
			if resp == nil || resp.StatusCode != tt.status {
				t.Fatalf("response %v, want status %d", resp, tt.status)
			}
			if tt.body == "" {
				return
			}
			defer resp.Body.Close()
			var e struct{ Error, Code string }
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e.Code != tt.body || e.Error == "" {
				t.Fatalf("refusal's body %+v, %v; want the JSON error with code %s", e, err, tt.body)
			}
		})
	}
}

// Ensure a server that upgrades and then sends frames right behind its
// 101, in the same write, has them read: they are in the HTTP client's
// buffer, not on the socket.
func TestDial_framesBehindTheHandshake(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + acceptGUID))
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
			base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
		brw.Write(Frame(append(make([]byte, Headroom), "hello"...)))
		brw.Write(CloseFrame(CloseGoingAway, "bye"))
		brw.Flush()
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		io.Copy(io.Discard, bufio.NewReader(conn))
	}))
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c, _, err := Dial(ctx, &http.Client{Transport: tr}, wsURL(srv), nil, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if op, p, err := c.Reader.Next(); err != nil || op != OpText || string(p) != "hello" {
		t.Fatalf("first frame: opcode %d, %q, %v", op, p, err)
	}
	if op, p, err := c.Reader.Next(); err != nil || op != OpClose || !bytes.Equal(p, closePayload(CloseGoingAway, "bye")) {
		t.Fatalf("second frame: opcode %d, %q, %v", op, p, err)
	}
}

// Ensure a ClientConn's frames are on the wire exactly as RFC 6455 section
// 5.2 has them, read here byte by byte: FIN and the opcode, the mask bit,
// the shortest length encoding, and a key that unmasks the payload.
func TestClientConn_wire(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	got := make(chan []byte, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha1.Sum([]byte(r.Header.Get("Sec-WebSocket-Key") + acceptGUID))
		conn, brw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			t.Errorf("hijack: %v", err)
			got <- nil
			return
		}
		defer conn.Close()
		brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
			base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
		brw.Flush()
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		b, _ := io.ReadAll(brw) // until the client closes
		got <- b
	}))
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c, _, err := Dial(ctx, &http.Client{Transport: tr}, wsURL(srv), nil, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	type sent struct {
		op Opcode
		p  []byte
	}
	var want []sent
	for _, n := range []int{0, 125, 126, 65535, 65536} {
		if err := c.WriteText(pattern(n)); err != nil {
			t.Fatal(err)
		}
		want = append(want, sent{OpText, pattern(n)})
	}
	if err := c.WriteControl(OpPong, []byte("pong")); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteClose(CloseGoingAway); err != nil {
		t.Fatal(err)
	}
	want = append(want, sent{OpPong, []byte("pong")}, sent{OpClose, closePayload(CloseGoingAway, "")})
	c.Close()
	b := <-got
	for i, w := range want {
		if len(b) < 2 || b[0] != 0x80|byte(w.op) || b[1]&0x80 == 0 {
			t.Fatalf("frame %d starts % x, want FIN, opcode %d and the mask bit", i, b[:min(len(b), 2)], w.op)
		}
		n, hl := int(b[1]&0x7f), 2
		switch {
		case n == 126 && len(b) >= 4:
			n, hl = int(binary.BigEndian.Uint16(b[2:])), 4
		case n == 127 && len(b) >= 10:
			n, hl = int(binary.BigEndian.Uint64(b[2:])), 10
		}
		if n != len(w.p) || (hl == 4) != (n >= 126 && n <= 0xffff) || (hl == 10) != (n > 0xffff) {
			t.Fatalf("frame %d: length %d in a %d-byte header, want %d in the shortest", i, n, hl, len(w.p))
		}
		if len(b) < hl+4+n {
			t.Fatalf("frame %d cut short: %d bytes left", i, len(b))
		}
		key, p := b[hl:hl+4], bytes.Clone(b[hl+4:hl+4+n])
		for j := range p {
			p[j] ^= key[j%4]
		}
		if !bytes.Equal(p, w.p) {
			t.Fatalf("frame %d: payload unmasked differs from what was sent", i)
		}
		b = b[hl+4+n:]
	}
	if len(b) != 0 {
		t.Fatalf("%d bytes after the frames written", len(b))
	}
}

package wsframe

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	mrand "math/rand/v2"
)

// ClientConn is the client side of a WebSocket whose frames are read and
// written by hand: what a client that makes many small calls needs, and no
// more. Writes are safe for concurrent use; reads (Reader) are for one
// goroutine.
type ClientConn struct {
	rwc    io.ReadWriteCloser
	Reader *Reader

	mu   sync.Mutex
	wbuf []byte
	err  error       // the first write that failed; no frame is written after it
	wd   *time.Timer // closes the connection when a write outlasts writeTimeout
}

// writeTimeout bounds one write: a server that stops reading does not hold
// a writer forever. The connection an upgrade hands over has no deadlines
// of its own, so a write that outlasts it closes the connection.
const writeTimeout = 10 * time.Second

// acceptGUID is the key suffix of the handshake (RFC 6455 section 1.3).
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// ErrHandshake is a server's answer that is not the WebSocket upgrade.
var ErrHandshake = errors.New("wsframe: handshake refused")

// Dial opens a WebSocket to url (ws:// or wss://) through hc, which needs a
// transport that upgrades HTTP/1.1 connections (net/http's does), with
// header on the request. No extension is offered. Messages over limit
// bytes end the connection's reads. When the server refuses the upgrade,
// the error wraps ErrHandshake and the response is returned too, its body
// for the caller to read and close.
func Dial(ctx context.Context, hc *http.Client, url string, header http.Header, limit int) (*ClientConn, *http.Response, error) {
	switch {
	case strings.HasPrefix(url, "ws://"):
		url = "http://" + url[len("ws://"):]
	case strings.HasPrefix(url, "wss://"):
		url = "https://" + url[len("wss://"):]
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Sec-WebSocket-Version", "13")
	req.Header.Set("Sec-WebSocket-Key", key)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		return nil, resp, fmt.Errorf("%w: status %d", ErrHandshake, resp.StatusCode)
	}
	rwc, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		return nil, resp, fmt.Errorf("wsframe: the HTTP client gave no connection for the upgrade (%T)", resp.Body)
	}
	sum := sha1.Sum([]byte(key + acceptGUID))
	switch {
	case !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket"),
		resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]),
		resp.Header.Get("Sec-WebSocket-Extensions") != "":
		rwc.Close()
		return nil, resp, fmt.Errorf("%w: not a WebSocket upgrade", ErrHandshake)
	}
	c := &ClientConn{rwc: rwc, Reader: NewClientReader(bufio.NewReaderSize(rwc, 16<<10), limit)}
	c.wd = time.AfterFunc(time.Hour, func() { rwc.Close() })
	c.wd.Stop()
	return c, resp, nil
}

// WriteText writes p as one masked text frame.
func (c *ClientConn) WriteText(p []byte) error { return c.write(OpText, p) }

// WriteControl writes a masked control frame (at most 125 bytes of p).
func (c *ClientConn) WriteControl(op Opcode, p []byte) error {
	return c.write(op, p[:min(len(p), 125)])
}

// WriteClose writes a close frame with code (RFC 6455 section 7.4).
func (c *ClientConn) WriteClose(code int) error {
	return c.write(OpClose, binary.BigEndian.AppendUint16(nil, uint16(code)))
}

func (c *ClientConn) write(op Opcode, p []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	b := append(c.wbuf[:0], 0x80|byte(op))
	switch n := len(p); {
	case n < 126:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, 0x80|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, 0x80|127), uint64(n))
	}
	// The key need not be secret from the client, only unpredictable to
	// whoever chose the payload.
	key := mrand.Uint32()
	b = binary.LittleEndian.AppendUint32(b, key)
	start := len(b)
	b = append(b, p...)
	unmask(b[start:], key)
	c.wd.Reset(writeTimeout)
	_, err := c.rwc.Write(b)
	c.wd.Stop()
	if cap(b) <= keptBuffer {
		c.wbuf = b
	}
	if err != nil {
		c.err = err
		c.rwc.Close()
	}
	return err
}

// Close closes the connection at once.
func (c *ClientConn) Close() error { return c.rwc.Close() }

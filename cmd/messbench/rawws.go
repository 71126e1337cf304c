package main

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
	"net/url"
	"sync"
)

// rawConn is a receive-side WebSocket client (RFC 6455) for subscribers
// that only read: the load generator shares the machine with the server,
// and a general client costs more CPU per received frame than the server
// spends sending it. It answers pings, so it never looks dead.
type rawConn struct {
	c   io.ReadWriteCloser // see dialSocket
	br  *bufio.Reader
	wmu sync.Mutex
}

// dialRaw opens the mail bus subscription of a with a hand-written
// handshake and reads the welcome frame.
func dialRaw(ctx context.Context, o options, a agent, query string) (*rawConn, error) {
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, err
	}
	c, err := dialSocket(ctx, u.Host)
	if err != nil {
		return nil, err
	}
	return handshakeRaw(c, u.Host, o, a, query)
}

// handshakeRaw opens the mail bus subscription of a on c, connected to
// host, and reads the welcome frame; it closes c if it fails.
func handshakeRaw(c io.ReadWriteCloser, host string, o options, a agent, query string) (*rawConn, error) {
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	req := fmt.Sprintf("GET /api/v1/exchanges/%s/mailbus/subscribe?%s HTTP/1.1\r\nHost: %s\r\n"+
		"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n"+
		"Authorization: Bearer %s\r\n\r\n", o.Exchange, query, host, key, a.Key)
	if _, err := io.WriteString(c, req); err != nil {
		c.Close()
		return nil, err
	}
	br := bufio.NewReaderSize(c, 64<<10)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	resp.Body.Close()
	sum := sha1.Sum([]byte(key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"))
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != base64.StdEncoding.EncodeToString(sum[:]) {
		c.Close()
		return nil, fmt.Errorf("handshake: %s", resp.Status)
	}
	r := &rawConn{c: c, br: br}
	if _, err := r.next(nil); err != nil { // welcome
		c.Close()
		return nil, err
	}
	return r, nil
}

// next reads the next data message into buf[:0] and returns it, answering
// control frames on the way.
func (r *rawConn) next(buf []byte) ([]byte, error) {
	buf = buf[:0]
	for {
		var h [8]byte
		if _, err := io.ReadFull(r.br, h[:2]); err != nil {
			return nil, err
		}
		fin, op := h[0]&0x80 != 0, h[0]&0x0f
		if h[1]&0x80 != 0 {
			return nil, errors.New("masked frame from server")
		}
		n := uint64(h[1] & 0x7f)
		switch n {
		case 126:
			if _, err := io.ReadFull(r.br, h[:2]); err != nil {
				return nil, err
			}
			n = uint64(binary.BigEndian.Uint16(h[:2]))
		case 127:
			if _, err := io.ReadFull(r.br, h[:8]); err != nil {
				return nil, err
			}
			n = binary.BigEndian.Uint64(h[:8])
		}
		if n > 64<<20 {
			return nil, fmt.Errorf("frame of %d bytes", n)
		}
		start := len(buf)
		buf = append(buf, make([]byte, n)...)
		if _, err := io.ReadFull(r.br, buf[start:]); err != nil {
			return nil, err
		}
		switch op {
		case 0x8: // close
			return nil, io.EOF
		case 0x9: // ping
			if err := r.write(0xA, buf[start:]); err != nil {
				return nil, err
			}
			buf = buf[:start]
		case 0xA: // pong
			buf = buf[:start]
		default: // text, binary, continuation
			if fin {
				return buf, nil
			}
		}
	}
}

// write sends one masked control frame.
func (r *rawConn) write(op byte, p []byte) error {
	f, err := controlFrame(op, p)
	if err != nil {
		return err
	}
	r.wmu.Lock()
	defer r.wmu.Unlock()
	_, err = r.c.Write(f)
	return err
}

// controlFrame encodes a masked client control frame (payload under 126
// bytes).
func controlFrame(op byte, p []byte) ([]byte, error) {
	if len(p) > 125 {
		return nil, errors.New("control payload too long")
	}
	f := make([]byte, 6, 6+len(p))
	f[0], f[1] = 0x80|op, 0x80|byte(len(p))
	rand.Read(f[2:6])
	for i, b := range p {
		f = append(f, b^f[2+i%4])
	}
	return f, nil
}

// Close ends the connection without a closing handshake.
func (r *rawConn) Close() error { return r.c.Close() }

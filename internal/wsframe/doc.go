// Package wsframe is the hand-written side of the servers' WebSocket
// connections. The WebSocket library does the handshake, reads, and control
// frames (ping, pong, close); a server writes its own data frames straight
// to the socket through a Conn. On a busy connection the library's
// per-frame locking, context and buffering cost as much as the system call,
// and a frame written with one non-blocking write needs no goroutine of its
// own.
//
// Data frames written here carry no RSV bits, so the handshake must
// negotiate no extension (websocket.CompressionDisabled).
package wsframe

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"

	"github.com/meatspace-exchange/mess/internal/httpx"
)

// Headroom is the space a frame's payload leaves in front of it for the
// header (at most 10 bytes from a server), so that header and payload go
// out in one write without copying.
const Headroom = 10

// Frame puts the header of an unmasked, uncompressed text frame (RFC 6455
// section 5.2) carrying buf[Headroom:] in front of it, and returns the whole
// frame, a suffix of buf.
func Frame(buf []byte) []byte {
	n := len(buf) - Headroom
	var h []byte
	switch {
	case n < 126:
		h = buf[Headroom-2 : Headroom]
		h[1] = byte(n)
	case n <= 0xffff:
		h = buf[Headroom-4 : Headroom]
		h[1] = 126
		binary.BigEndian.PutUint16(h[2:], uint16(n))
	default:
		h = buf[:Headroom]
		h[1] = 127
		binary.BigEndian.PutUint64(h[2:], uint64(n))
	}
	h[0] = 0x81 // FIN, text
	return buf[Headroom-len(h):]
}

// The buffers a Hijacker gives the library. Frames on the bus are small,
// and larger reads and writes bypass a bufio buffer anyway.
const (
	readBuffer  = 512
	writeBuffer = 1 << 10
)

// Hijacker is the http.ResponseWriter a server hands the library's Accept.
// It gives the library small buffers (readBuffer, writeBuffer: the library
// keeps them for the connection's life, and net/http's 4 KiB each are
// mostly wasted on an idle connection of small frames). It keeps the
// connection as a Conn, through which the library's frames go too.
//
// It also holds back the plain-text answer the library gives a handshake it
// refuses, for Answer to send as the caller's JSON error instead.
type Hijacker struct {
	http.ResponseWriter

	// Conn is the raw connection, set by a successful Hijack.
	Conn *Conn
	// Reader is the buffered reader handed to the library, set by a
	// successful Hijack. A server that reads frames itself (NewReader)
	// reads from it: it holds what the client sent right behind the
	// handshake.
	Reader *bufio.Reader

	status int    // a refusal's status, held back
	msg    []byte // and its text
}

// WriteHeader holds back a final status: only the library's refusals write
// one (a successful handshake hijacks the connection instead).
func (h *Hijacker) WriteHeader(code int) {
	if code >= 200 {
		h.status = code
		return
	}
	h.ResponseWriter.WriteHeader(code)
}

func (h *Hijacker) Write(p []byte) (int, error) {
	if h.status != 0 {
		h.msg = append(h.msg, p...)
		return len(p), nil
	}
	return h.ResponseWriter.Write(p)
}

// Answer sends the refusal held back, if there is one, as the API's JSON
// error.
func (h *Hijacker) Answer() {
	if h.status == 0 {
		return
	}
	// httpx.Code names 426 upgrade_required, the one status here outside
	// its list.
	httpx.WriteError(h.ResponseWriter, h.status, httpx.Code(h.status), string(bytes.TrimSpace(h.msg)))
}

// Hijack takes the connection for the library.
func (h *Hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	// The library reads the connection it is handed, behind what br has
	// buffered: through Conn, which reads ahead.
	h.Conn = NewConn(c)
	var w io.Writer = h.Conn
	c = readThrough{c, h.Conn}
	if err := brw.Writer.Flush(); err != nil {
		c.Close()
		return nil, nil, err
	}
	br := bufio.NewReaderSize(c, readBuffer)
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the client sent right behind the handshake: the 101 is on
		// the wire before the hijack, so a client may already be writing
		// frames. The library keeps what this reader has buffered and
		// then reads the connection itself, so they must be in the
		// buffer, not in a reader behind it.
		b, _ := brw.Reader.Peek(n)
		br = bufio.NewReaderSize(io.MultiReader(bytes.NewReader(bytes.Clone(b)), c), max(readBuffer, n))
		if _, err := br.Peek(n); err != nil {
			c.Close()
			return nil, nil, err
		}
	}
	h.Reader = br
	return c, bufio.NewReadWriter(br, bufio.NewWriterSize(w, writeBuffer)), nil
}

// readThrough is a connection whose reads go through its Conn.
type readThrough struct {
	net.Conn
	fc *Conn
}

func (r readThrough) Read(p []byte) (int, error) { return r.fc.Read(p) }

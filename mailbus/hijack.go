package mailbus

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
)

// The WebSocket library keeps the buffers it gets from the hijack for the
// connection's whole life, and net/http's are 4 KiB each. Frames on the bus
// are small, and larger reads and writes bypass a bufio buffer anyway, so
// smaller ones cost little throughput and save most of an idle
// connection's memory.
const (
	connReadBuffer  = 512
	connWriteBuffer = 1 << 10
)

// leanHijacker hands out connections with connReadBuffer and
// connWriteBuffer sized buffers, and keeps the connection for
// writeTextFrame.
type leanHijacker struct {
	http.ResponseWriter
	conn net.Conn
}

func (l *leanHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(l.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	l.conn = c
	if err := brw.Writer.Flush(); err != nil {
		c.Close()
		return nil, nil, err
	}
	var r io.Reader = c
	if n := brw.Reader.Buffered(); n > 0 {
		// Bytes the client sent right behind the handshake.
		b, _ := brw.Reader.Peek(n)
		r = io.MultiReader(bytes.NewReader(bytes.Clone(b)), c)
	}
	return c, bufio.NewReadWriter(bufio.NewReaderSize(r, connReadBuffer), bufio.NewWriterSize(c, connWriteBuffer)), nil
}

// frameHeadroom is the space a frame's payload leaves in front of it for
// the header (at most 10 bytes from a server), so header and payload go out
// in one write without copying.
const frameHeadroom = 10

// writeTextFrame writes buf[frameHeadroom:] to c as one unmasked,
// uncompressed text frame (RFC 6455 section 5.2) in a single Write.
//
// The server writes its data frames itself rather than through the
// WebSocket library: on the fan-out path the library's per-frame locking
// and bookkeeping cost as much as the system call. It is safe alongside
// the library's own control frames (ping, pong, close) because each side
// writes a whole frame in one Write, which net.Conn does not interleave;
// the library negotiates no extensions, so data frames need no RSV bits.
func writeTextFrame(c net.Conn, buf []byte) error {
	n := len(buf) - frameHeadroom
	var h []byte
	switch {
	case n < 126:
		h = buf[frameHeadroom-2 : frameHeadroom]
		h[1] = byte(n)
	case n <= 0xffff:
		h = buf[frameHeadroom-4 : frameHeadroom]
		h[1] = 126
		binary.BigEndian.PutUint16(h[2:], uint16(n))
	default:
		h = buf[:frameHeadroom]
		h[1] = 127
		binary.BigEndian.PutUint64(h[2:], uint64(n))
	}
	h[0] = 0x81 // FIN, text
	_, err := c.Write(buf[frameHeadroom-len(h):])
	return err
}

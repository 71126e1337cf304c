package mailbus

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
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
// connWriteBuffer sized buffers, and keeps the connection as a frameConn,
// through which the library's frames go too.
//
// It also holds back the plain-text answer the library gives a handshake
// it refuses, for answer to send as the API's JSON error instead.
type leanHijacker struct {
	http.ResponseWriter
	fc *frameConn

	status int    // a refusal's status, held back
	msg    []byte // and its text
}

func (l *leanHijacker) WriteHeader(code int) {
	if code >= 200 {
		l.status = code
		return
	}
	l.ResponseWriter.WriteHeader(code)
}

func (l *leanHijacker) Write(p []byte) (int, error) {
	if l.status != 0 {
		l.msg = append(l.msg, p...)
		return len(p), nil
	}
	return l.ResponseWriter.Write(p)
}

// answer sends the refusal held back, if there is one, as a JSON error.
func (l *leanHijacker) answer() {
	if l.status == 0 {
		return
	}
	code := "invalid_input"
	switch l.status {
	case http.StatusUpgradeRequired:
		code = "upgrade_required"
	case http.StatusForbidden:
		code = "forbidden"
	case http.StatusMethodNotAllowed:
		code = "method_not_allowed"
	}
	writeError(l.ResponseWriter, l.status, code, strings.TrimSpace(string(l.msg)))
}

func (l *leanHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(l.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	l.fc = newFrameConn(c)
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
	return c, bufio.NewReadWriter(bufio.NewReaderSize(r, connReadBuffer), bufio.NewWriterSize(l.fc, connWriteBuffer)), nil
}

// frameHeadroom is the space a frame's payload leaves in front of it for
// the header (at most 10 bytes from a server), so header and payload go out
// in one write without copying.
const frameHeadroom = 10

// frameBytes puts the header of an unmasked, uncompressed text frame (RFC
// 6455 section 5.2) carrying buf[frameHeadroom:] in front of it, and
// returns the whole frame.
//
// The server writes its data frames itself rather than through the
// WebSocket library: on the fan-out path the library's per-frame locking
// and bookkeeping cost as much as the system call. The library negotiates
// no extensions, so data frames need no RSV bits.
func frameBytes(buf []byte) []byte {
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
	return buf[frameHeadroom-len(h):]
}

// frameConn is the connection under a WebSocket. The library's frames
// (ping, pong, close) and the server's data frames both go through it, and
// mu keeps whole frames apart. A data frame the socket cannot take at once
// keeps mu while another goroutine finishes it (a sync.Mutex may be
// unlocked by a goroutine other than the one that locked it); the
// library's next frame waits for that.
type frameConn struct {
	conn net.Conn
	rc   syscall.RawConn // nil: no non-blocking writes

	mu     sync.Mutex
	closed bool // no more data frames: a close frame went out, or a write failed
	// The non-blocking write in progress (tryWrite), under mu.
	p     []byte
	err   error
	write func(fd uintptr) bool // writeOnce, bound once so tryWrite allocates nothing
}

func newFrameConn(c net.Conn) *frameConn {
	fc := &frameConn{conn: c}
	if sc, ok := c.(syscall.Conn); ok && canWriteRaw {
		if rc, err := sc.SyscallConn(); err == nil {
			fc.rc, fc.write = rc, fc.writeOnce
		}
	}
	return fc
}

// Write writes p whole under mu. The library's buffered writer flushes
// each of its frames with one call.
func (fc *frameConn) Write(p []byte) (int, error) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	return fc.conn.Write(p)
}

// lock takes mu for a data frame; it fails once data frames have ended.
func (fc *frameConn) lock() error {
	fc.mu.Lock()
	if fc.closed {
		fc.mu.Unlock()
		return net.ErrClosed
	}
	return nil
}

// tryWrite writes as much of p as the socket takes without waiting and
// returns the rest. The caller holds mu.
func (fc *frameConn) tryWrite(p []byte) ([]byte, error) {
	if fc.rc == nil {
		return p, nil
	}
	fc.p, fc.err = p, nil
	if err := fc.rc.Write(fc.write); err != nil && fc.err == nil {
		fc.err = err
	}
	rest, err := fc.p, fc.err
	fc.p, fc.err = nil, nil
	return rest, err
}

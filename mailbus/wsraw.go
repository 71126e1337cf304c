//go:build unix

package mailbus

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// This file is the whole hand-written frame path. The server writes its
// data frames itself rather than through the WebSocket library: on the
// fan-out path the library's per-frame locking and bookkeeping cost as much
// as the system call, and a frame written with one non-blocking write()
// needs no goroutine of its own. The library still does the handshake,
// reads, and control frames (ping, pong, close), which go through the same
// frameConn so that whole frames never interleave. The handler negotiates
// no extension (websocket.CompressionDisabled), so data frames need no RSV
// bits. Setting writeRaw to false sends every frame through the library
// instead (wsconn.go, libFrames).

// frameBytes puts the header of an unmasked, uncompressed text frame (RFC
// 6455 section 5.2) carrying buf[frameHeadroom:] in front of it, and
// returns the whole frame.
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

// frameConn is the connection under a WebSocket. The library's frames and
// the server's data frames both go through it, and mu keeps whole frames
// apart. A data frame the socket cannot take at once keeps mu while another
// goroutine finishes it (a sync.Mutex may be unlocked by a goroutine other
// than the one that locked it); the library's next frame waits for that.
type frameConn struct {
	conn net.Conn
	rc   syscall.RawConn

	mu     sync.Mutex
	closed bool // no more data frames: a close frame went out, or a write failed
	// The non-blocking write in progress (tryWrite), under mu.
	p     []byte
	err   error
	write func(fd uintptr) bool // writeOnce, bound once so tryWrite allocates nothing

	// Read side, used by the library's reader alone (its reads are
	// serial): bytes read ahead of what it asked for, held only until it
	// has taken them.
	ahead    []byte
	aheadBuf *[]byte
	aheadN   int
	readMore func(fd uintptr) bool // readOnce, bound once
}

// newFrameConn returns c as a frameConn, or nil when c offers no raw
// descriptor to write to without waiting.
func newFrameConn(c net.Conn) *frameConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	fc := &frameConn{conn: c, rc: rc}
	fc.write = fc.writeOnce
	fc.readMore = fc.readOnce
	return fc
}

// Read reads for the library's buffered reader, whose buffer is small
// (connReadBuffer) so that an idle connection costs little. A client that
// pipelines frames would then cost a read system call for every one or
// two of them: when a read fills p, the socket likely holds more, and Read
// takes what it holds, up to readAhead bytes, in one more call that does
// not wait, into a pooled buffer it serves the next reads from and gives
// back once they have emptied it.
func (fc *frameConn) Read(p []byte) (int, error) {
	if fc.ahead != nil {
		n := copy(p, fc.ahead)
		fc.ahead = fc.ahead[n:]
		if len(fc.ahead) == 0 {
			fc.ahead = nil
			aheadBufs.Put(fc.aheadBuf)
			fc.aheadBuf = nil
		}
		return n, nil
	}
	n, err := fc.conn.Read(p)
	if err == nil && n == len(p) && n > 0 {
		fc.readAhead()
	}
	return n, err
}

// readAhead is the size of the buffers Read reads ahead into.
const readAhead = 16 << 10

var aheadBufs = sync.Pool{New: func() any { b := make([]byte, readAhead); return &b }}

// readAhead reads what the socket holds without waiting. An error is left
// to the next read that waits, which meets it again.
func (fc *frameConn) readAhead() {
	fc.aheadBuf = aheadBufs.Get().(*[]byte)
	fc.aheadN = 0
	_ = fc.rc.Read(fc.readMore)
	if fc.aheadN <= 0 {
		aheadBufs.Put(fc.aheadBuf)
		fc.aheadBuf = nil
		return
	}
	fc.ahead = (*fc.aheadBuf)[:fc.aheadN]
}

// readOnce is readAhead's callback: it never asks to wait for the socket.
// An error (EAGAIN: nothing to read) leaves aheadN negative.
func (fc *frameConn) readOnce(fd uintptr) bool {
	for {
		n, err := syscall.Read(int(fd), *fc.aheadBuf)
		if err != syscall.EINTR {
			fc.aheadN = n
			return true
		}
	}
}

// Write writes p whole under mu. The library's buffered writer flushes each
// of its frames with one call: they are control frames, at most 127 bytes,
// and its buffer holds connWriteBuffer.
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
	fc.p, fc.err = p, nil
	if err := fc.rc.Write(fc.write); err != nil && fc.err == nil {
		fc.err = err
	}
	rest, err := fc.p, fc.err
	fc.p, fc.err = nil, nil
	return rest, err
}

// writeOnce is tryWrite's callback: it never asks to wait for the socket.
func (fc *frameConn) writeOnce(fd uintptr) bool {
	for len(fc.p) > 0 {
		n, err := syscall.Write(int(fd), fc.p)
		if n > 0 {
			fc.p = fc.p[n:]
		}
		switch {
		case err == syscall.EINTR:
		case errors.Is(err, syscall.EAGAIN):
			return true
		case err != nil:
			fc.err = err
			return true
		case n <= 0:
			return true
		}
	}
	return true
}

// rawFrames is the frameWriter of the hand-written path.
type rawFrames struct {
	fc *frameConn
	// A write that has to wait for the socket arms wd, which closes the
	// connection if the write takes longer than timeout.
	wd        *time.Timer
	timeout   time.Duration
	closeConn func()

	// What tryWrite left of its frame for finish, and whether fc.mu is
	// still held for it. Handed from one goroutine to the next with the
	// flush, never shared.
	rest   []byte
	locked bool
}

func newRawFrames(fc *frameConn, closeConn func(), timeout time.Duration) frameWriter {
	r := &rawFrames{fc: fc, timeout: timeout, closeConn: closeConn}
	r.wd = time.AfterFunc(time.Hour, closeConn)
	r.wd.Stop()
	return r
}

func (r *rawFrames) write(buf []byte) error {
	if err := r.fc.lock(); err != nil {
		return err
	}
	return r.finishLocked(frameBytes(buf))
}

// tryWrite needs no waiting, neither for the socket nor for the frame lock:
// the caller may be waking a thousand connections, and a ping or reply
// stuck on a full socket holds the lock until it times out.
func (r *rawFrames) tryWrite(buf []byte) (bool, error) {
	p := frameBytes(buf)
	if !r.fc.mu.TryLock() {
		r.rest, r.locked = p, false
		return false, nil
	}
	if r.fc.closed {
		r.fc.mu.Unlock()
		return false, net.ErrClosed
	}
	rest, err := r.fc.tryWrite(p)
	if err != nil || len(rest) == 0 {
		return err == nil, r.unlock(err)
	}
	r.rest, r.locked = rest, true
	return false, nil
}

func (r *rawFrames) finish() error {
	rest, locked := r.rest, r.locked
	r.rest, r.locked = nil, false
	if !locked {
		if err := r.fc.lock(); err != nil {
			return err
		}
	}
	return r.finishLocked(rest)
}

// finishLocked writes p, the rest of a frame whose lock the caller holds,
// and releases the lock. wd bounds the wait.
func (r *rawFrames) finishLocked(p []byte) error {
	r.wd.Reset(r.timeout)
	_, err := r.fc.conn.Write(p)
	r.wd.Stop()
	return r.unlock(err)
}

// unlock releases the frame lock after a write that ended with err; a
// failed write leaves the connection unusable, and it is closed.
func (r *rawFrames) unlock(err error) error {
	if err != nil {
		r.fc.closed = true
	}
	r.fc.mu.Unlock()
	if err != nil {
		r.closeConn()
	}
	return err
}

func (r *rawFrames) end() {
	r.fc.mu.Lock()
	r.fc.closed = true
	r.fc.mu.Unlock()
}

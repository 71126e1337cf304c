package wsframe

import (
	"io"
	"net"
	"sync"
	"syscall"
	"time"
)

// Conn is the connection under a WebSocket. The library's frames and the
// server's data frames both go through it, and its frame lock keeps whole
// frames apart. A data frame the socket cannot take at once may keep the
// lock while another goroutine finishes it (a sync.Mutex may be unlocked
// by a goroutine other than the one that locked it); the library's next
// frame waits for that.
type Conn struct {
	conn net.Conn
	rc   syscall.RawConn

	mu     sync.Mutex
	closed bool // no more data frames: a close frame went out, or a write failed
	// The non-blocking write in progress (TryWrite), under mu.
	p     []byte
	err   error
	write func(fd uintptr) bool // writeOnce, bound once so TryWrite allocates nothing

	// Read side, used by the library's reader alone (its reads are
	// serial): bytes read ahead of what it asked for, held only until it
	// has taken them.
	ahead    []byte
	aheadBuf *[]byte
	aheadN   int
	readMore func(fd uintptr) bool // readOnce, bound once
}

// NewConn returns c as a Conn. Where c offers no raw descriptor to write
// to without waiting (a TLS connection; a platform other than unix),
// TryWrite writes nothing and every frame is finished by WriteLocked, and
// Read reads no further ahead than asked.
func NewConn(c net.Conn) *Conn {
	fc := &Conn{conn: c, rc: rawConn(c)}
	fc.write = fc.writeOnce
	fc.readMore = fc.readOnce
	return fc
}

// NetConn is the connection under fc.
func (fc *Conn) NetConn() net.Conn { return fc.conn }

// Read reads for the library's buffered reader, whose buffer is small so
// that an idle connection costs little. A client that pipelines frames
// would then cost a read system call for every one or two of them: when a
// read fills p, the socket likely holds more, and Read takes what it holds,
// up to ReadAhead bytes, in one more call that does not wait, into a pooled
// buffer it serves the next reads from and gives back once they have
// emptied it.
func (fc *Conn) Read(p []byte) (int, error) {
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
	if err == nil && n == len(p) && n > 0 && fc.rc != nil {
		fc.readAhead()
	}
	return n, err
}

// ReadAhead is the size of the buffers Read reads ahead into.
const ReadAhead = 16 << 10

var aheadBufs = sync.Pool{New: func() any { b := make([]byte, ReadAhead); return &b }}

// readAhead reads what the socket holds without waiting. An error is left
// to the next read that waits, which meets it again.
func (fc *Conn) readAhead() {
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

// Write writes p whole under the frame lock: the library's buffered writer
// flushes each of its frames with one call. Like data frames, the library's
// frames end with the close frame (WriteClose).
func (fc *Conn) Write(p []byte) (int, error) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if fc.closed {
		return 0, net.ErrClosed
	}
	return fc.conn.Write(p)
}

// WriteControl writes a control frame (see Control) whole, waiting for the
// frame lock and the socket, within timeout; a write that fails closes the
// connection. Nothing is written once data frames have ended.
func (fc *Conn) WriteControl(frame []byte, timeout time.Duration) error {
	if err := fc.Lock(); err != nil {
		return err
	}
	err := fc.writeWithin(frame, timeout)
	fc.Unlock(err)
	return err
}

// WriteClose writes a close frame (see CloseFrame) as WriteControl does,
// and ends data frames with it: no frame can follow it. It writes nothing
// when data frames have ended already.
func (fc *Conn) WriteClose(frame []byte, timeout time.Duration) error {
	if err := fc.Lock(); err != nil {
		return err
	}
	err := fc.writeWithin(frame, timeout)
	fc.closed = true
	fc.mu.Unlock()
	return err
}

func (fc *Conn) writeWithin(p []byte, timeout time.Duration) error {
	fc.conn.SetWriteDeadline(time.Now().Add(timeout))
	_, err := fc.conn.Write(p)
	fc.conn.SetWriteDeadline(time.Time{})
	if err != nil {
		fc.conn.Close()
	}
	return err
}

// Lock takes the frame lock for a data frame; it fails once data frames
// have ended.
func (fc *Conn) Lock() error {
	fc.mu.Lock()
	if fc.closed {
		fc.mu.Unlock()
		return net.ErrClosed
	}
	return nil
}

// TryLock is Lock without waiting: it reports false when another frame
// holds the lock.
func (fc *Conn) TryLock() (bool, error) {
	if !fc.mu.TryLock() {
		return false, nil
	}
	if fc.closed {
		fc.mu.Unlock()
		return false, net.ErrClosed
	}
	return true, nil
}

// TryWrite writes as much of p as the socket takes without waiting and
// returns the rest. The caller holds the frame lock.
func (fc *Conn) TryWrite(p []byte) ([]byte, error) {
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

// WriteLocked writes p whole, waiting for the socket within timeout; a
// write that fails closes the connection. The caller holds the frame lock.
func (fc *Conn) WriteLocked(p []byte, timeout time.Duration) error {
	return fc.writeWithin(p, timeout)
}

// Unlock releases the frame lock after a data frame whose write ended with
// err; after a failed write the connection takes no more data frames.
func (fc *Conn) Unlock(err error) {
	if err != nil {
		fc.closed = true
	}
	fc.mu.Unlock()
}

// End stops data frames: the connection is closing.
func (fc *Conn) End() {
	fc.mu.Lock()
	fc.closed = true
	fc.mu.Unlock()
}

// Drain reads and drops what the client still sends after the server's
// close frame went out for a frame it could not read (the rest of a message
// over the limit, say), until the client closes or the read deadline the
// caller set passes: closing a socket with unread data resets the
// connection, and the client might lose the close frame.
func (fc *Conn) Drain() { io.Copy(io.Discard, fc.conn) }

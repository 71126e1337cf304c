package mailbus

import (
	"time"

	"github.com/meatspace-exchange/mess/internal/wsframe"
)

// rawFrames is the frameWriter of the hand-written path (internal/wsframe):
// data frames go straight to the socket. Setting writeRaw to false sends
// every frame through the library instead (wsconn.go, libFrames).
type rawFrames struct {
	fc *wsframe.Conn
	// A write that has to wait for the socket is bounded by timeout;
	// one that fails closes the connection.
	timeout   time.Duration
	closeConn func()

	// What tryWrite left of its frame for finish, and whether the frame
	// lock is still held for it. Handed from one goroutine to the next
	// with the flush, never shared.
	rest   []byte
	locked bool
}

func newRawFrames(fc *wsframe.Conn, closeConn func(), timeout time.Duration) frameWriter {
	return &rawFrames{fc: fc, timeout: timeout, closeConn: closeConn}
}

func (r *rawFrames) write(buf []byte) error {
	if err := r.fc.Lock(); err != nil {
		return err
	}
	return r.finishLocked(wsframe.Frame(buf))
}

// tryWrite needs no waiting, neither for the socket nor for the frame lock:
// the caller may be waking a thousand connections, and a ping or reply
// stuck on a full socket holds the lock until it times out.
func (r *rawFrames) tryWrite(buf []byte) (bool, error) {
	p := wsframe.Frame(buf)
	ok, err := r.fc.TryLock()
	if err != nil {
		return false, err
	}
	if !ok {
		r.rest, r.locked = p, false
		return false, nil
	}
	rest, err := r.fc.TryWrite(p)
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
		if err := r.fc.Lock(); err != nil {
			return err
		}
	}
	return r.finishLocked(rest)
}

// finishLocked writes p, the rest of a frame whose lock the caller holds,
// and releases the lock.
func (r *rawFrames) finishLocked(p []byte) error {
	return r.unlock(r.fc.WriteLocked(p, r.timeout))
}

// unlock releases the frame lock after a write that ended with err; a
// failed write leaves the connection unusable, and it is closed.
func (r *rawFrames) unlock(err error) error {
	r.fc.Unlock(err)
	if err != nil {
		r.closeConn()
	}
	return err
}

//go:build unix

package wsframe

import (
	"errors"
	"net"
	"syscall"
)

// rawConn is c's raw descriptor, or nil when it has none.
func rawConn(c net.Conn) syscall.RawConn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// readOnce is readAhead's callback: it never asks to wait for the socket.
// An error (EAGAIN: nothing to read) leaves aheadN negative.
func (fc *Conn) readOnce(fd uintptr) bool {
	for {
		n, err := syscall.Read(int(fd), *fc.aheadBuf)
		if err != syscall.EINTR {
			fc.aheadN = n
			return true
		}
	}
}

// writeOnce is TryWrite's callback: it never asks to wait for the socket.
func (fc *Conn) writeOnce(fd uintptr) bool {
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

//go:build unix

package mailbus

import (
	"errors"
	"syscall"
)

const canWriteRaw = true

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

//go:build !unix

package wsframe

import (
	"net"
	"syscall"
)

// rawConn is nil: without a portable non-blocking write, frames are written
// by WriteLocked alone.
func rawConn(net.Conn) syscall.RawConn { return nil }

func (fc *Conn) readOnce(uintptr) bool  { return true }
func (fc *Conn) writeOnce(uintptr) bool { return true }

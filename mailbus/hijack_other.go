//go:build !unix

package mailbus

// Without a portable non-blocking write, tryWrite hands every frame to
// the blocking path.
const canWriteRaw = false

func (fc *frameConn) writeOnce(uintptr) bool { return true }

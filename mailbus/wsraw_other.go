//go:build !unix

package mailbus

import (
	"net"
	"time"
)

// Without a portable non-blocking write there is no hand-written frame
// path (wsraw.go): every frame goes through the WebSocket library.
type frameConn struct{ net.Conn }

func newFrameConn(net.Conn) *frameConn { return nil }

func newRawFrames(*frameConn, func(), time.Duration) frameWriter { return nil }

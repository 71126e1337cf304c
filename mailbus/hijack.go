package mailbus

import (
	"bufio"
	"bytes"
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
// connWriteBuffer sized buffers.
type leanHijacker struct{ http.ResponseWriter }

func (l leanHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(l.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
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

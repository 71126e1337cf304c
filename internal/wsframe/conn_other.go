//go:build !unix

package wsframe

import "net"

// Conn is the connection under a WebSocket where data frames are written by
// hand. Without a portable non-blocking write there is none: NewConn
// returns nil, and every frame goes through the WebSocket library.
type Conn struct{ conn net.Conn }

// NewConn returns nil: see Conn.
func NewConn(net.Conn) *Conn { return nil }

func (fc *Conn) NetConn() net.Conn                 { return fc.conn }
func (fc *Conn) Read(p []byte) (int, error)        { return fc.conn.Read(p) }
func (fc *Conn) Write(p []byte) (int, error)       { return fc.conn.Write(p) }
func (fc *Conn) Lock() error                       { return net.ErrClosed }
func (fc *Conn) TryLock() (bool, error)            { return false, net.ErrClosed }
func (fc *Conn) TryWrite(p []byte) ([]byte, error) { return p, net.ErrClosed }
func (fc *Conn) WriteLocked(p []byte) error        { return net.ErrClosed }
func (fc *Conn) Unlock(error)                      {}
func (fc *Conn) End()                              {}

// ReadAhead is the size of the buffers Read reads ahead into.
const ReadAhead = 16 << 10

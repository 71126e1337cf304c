package wsframe

import (
	"bufio"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"sync"
	"unicode/utf8"
)

// Opcode is a frame's opcode (RFC 6455 section 5.2).
type Opcode byte

// The opcodes a server reads.
const (
	OpContinuation Opcode = 0x0
	OpText         Opcode = 0x1
	OpBinary       Opcode = 0x2
	OpClose        Opcode = 0x8
	OpPing         Opcode = 0x9
	OpPong         Opcode = 0xa
)

// Close codes (RFC 6455 section 7.4.1) a server sends.
const (
	CloseNormal          = 1000
	CloseGoingAway       = 1001
	CloseProtocolError   = 1002
	ClosePolicyViolation = 1008
	CloseMessageTooBig   = 1009
	CloseInternalError   = 1011
	CloseTryAgainLater   = 1013
)

// ErrProtocol is a frame no client may send; the connection is closed with
// CloseProtocolError.
var ErrProtocol = errors.New("wsframe: protocol error")

// ErrTooBig is a message over the Reader's limit; the connection is closed
// with CloseMessageTooBig.
var ErrTooBig = errors.New("wsframe: message too big")

// Reader reads a client's frames for a server that reads them itself
// rather than through the WebSocket library: the library's reader
// costs a context and several small reads per frame. It assembles
// fragmented messages and hands control frames over as they come (they
// may come between fragments), for the caller to answer.
type Reader struct {
	br     *bufio.Reader
	limit  int
	client bool   // reads a server's frames, which are not masked
	msg    []byte // the message being assembled, or the last one returned
	op     Opcode // the opcode of the message being assembled; 0 when none
	ctl    [125]byte
}

// NewReader reads a client's frames from br (the reader a Hijacker gave the
// library, which holds what the client sent right after the handshake),
// refusing messages over limit bytes.
func NewReader(br *bufio.Reader, limit int) *Reader {
	return &Reader{br: br, limit: limit}
}

// NewClientReader reads a server's frames from br, refusing messages over
// limit bytes.
func NewClientReader(br *bufio.Reader, limit int) *Reader {
	return &Reader{br: br, limit: limit, client: true}
}

// Next returns the next text or binary message, whole, or the next control
// frame. The payload is valid until the following call. Errors are
// ErrProtocol, ErrTooBig, or the connection's.
func (r *Reader) Next() (Opcode, []byte, error) {
	for {
		h, err := r.br.Peek(2)
		if err != nil {
			if err == io.EOF && (len(h) > 0 || r.op != 0) { // cut inside a frame or a message
				err = io.ErrUnexpectedEOF
			}
			return 0, nil, err
		}
		fin, rsv, op := h[0]&0x80 != 0, h[0]&0x70, Opcode(h[0]&0x0f)
		masked, n := h[1]&0x80 != 0, uint64(h[1]&0x7f)
		if rsv != 0 || masked == r.client {
			return 0, nil, ErrProtocol
		}
		kl := 4
		if r.client {
			kl = 0
		}
		hl := 2
		switch n {
		case 126:
			hl = 4
		case 127:
			hl = 10
		}
		if h, err = r.br.Peek(hl + kl); err != nil {
			return 0, nil, unexpected(err)
		}
		switch hl {
		case 4:
			n = uint64(binary.BigEndian.Uint16(h[2:]))
		case 10:
			n = binary.BigEndian.Uint64(h[2:])
		}
		var key uint32
		if kl > 0 {
			key = binary.LittleEndian.Uint32(h[hl:])
		}
		if _, err := r.br.Discard(hl + kl); err != nil {
			return 0, nil, unexpected(err)
		}

		if op >= OpClose {
			if !fin || n > 125 || op > OpPong {
				return 0, nil, ErrProtocol
			}
			p := r.ctl[:n]
			if _, err := io.ReadFull(r.br, p); err != nil {
				return 0, nil, unexpected(err)
			}
			unmask(p, key)
			if op == OpClose && (n == 1 || n >= 2 && !validCloseCode(binary.BigEndian.Uint16(p)) || n > 2 && !utf8.Valid(p[2:])) {
				return 0, nil, ErrProtocol
			}
			return op, p, nil
		}

		switch {
		case op > OpBinary:
			return 0, nil, ErrProtocol
		case op == OpContinuation && r.op == 0, op != OpContinuation && r.op != 0:
			return 0, nil, ErrProtocol
		case op != OpContinuation:
			if cap(r.msg) > keptBuffer {
				r.msg = nil // a large message's buffer is not kept for the small ones
			}
			if r.msg == nil {
				r.msg = (*msgBufs.Get().(*[]byte))[:0]
			}
			r.op, r.msg = op, r.msg[:0]
		}
		if n > uint64(r.limit-len(r.msg)) {
			return 0, nil, ErrTooBig
		}
		start := len(r.msg)
		r.msg = slices.Grow(r.msg, int(n))[:start+int(n)]
		if _, err := io.ReadFull(r.br, r.msg[start:]); err != nil {
			return 0, nil, unexpected(err)
		}
		unmask(r.msg[start:], key)
		if fin {
			op := r.op
			r.op = 0
			return op, r.msg, nil
		}
	}
}

// validCloseCode reports whether a close frame may carry code (RFC 6455
// section 7.4): 1005, 1006 and 1015 never go on the wire, and the codes
// below 3000 that section 7.4.1 does not define are reserved.
func validCloseCode(code uint16) bool {
	return code >= 1000 && code <= 1003 || code >= 1007 && code <= 1014 || code >= 3000 && code <= 4999
}

// keptBuffer is the largest message buffer a Reader keeps between messages.
const keptBuffer = 64 << 10

// msgBufs holds message buffers given back by Release.
var msgBufs = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

// Release gives the buffer of the message last returned back to a pool
// shared by all Readers: a server with many idle connections then holds a
// buffer only while a message is being handled. The message must not be
// used afterwards.
func (r *Reader) Release() {
	if r.op != 0 || r.msg == nil {
		return // a fragmented message is open: its buffer is still in use
	}
	if cap(r.msg) <= keptBuffer {
		b := r.msg[:0]
		msgBufs.Put(&b)
	}
	r.msg = nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// unmask XORs p with the frame's masking key, the key's first byte on p's
// first: eight bytes at a time, then the rest.
func unmask(p []byte, key uint32) {
	if key == 0 {
		return
	}
	k8 := uint64(key) | uint64(key)<<32
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], binary.LittleEndian.Uint64(p[i:])^k8)
	}
	for j := 0; i < len(p); i, j = i+1, j+1 {
		p[i] ^= byte(key >> (8 * (j % 4)))
	}
}

// Control returns a control frame (close, ping or pong) from a server,
// carrying payload (at most 125 bytes; more is cut).
func Control(op Opcode, payload []byte) []byte {
	payload = payload[:min(len(payload), 125)]
	return append([]byte{0x80 | byte(op), byte(len(payload))}, payload...)
}

// CloseFrame returns a close frame from a server with code and reason (cut
// to fit a control frame, never inside a character).
func CloseFrame(code int, reason string) []byte {
	for len(reason) > 123 {
		_, size := utf8.DecodeLastRuneInString(reason)
		reason = reason[:len(reason)-size]
	}
	p := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(reason)), uint16(code))
	return Control(OpClose, append(p, reason...))
}

// CloseCode is the status code a close frame's payload carries
// (CloseNormal when it carries none), which the answering close frame
// echoes.
func CloseCode(payload []byte) int {
	if len(payload) < 2 {
		return CloseNormal
	}
	return int(binary.BigEndian.Uint16(payload))
}

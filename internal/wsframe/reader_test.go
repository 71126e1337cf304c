package wsframe

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
)

// frame is one frame as a peer would put it on the wire, built here
// independently of the package's encoders.
type frame struct {
	fin    bool
	rsv    byte // the RSV bits, already in place (0x40, 0x20, 0x10)
	op     Opcode
	p      []byte
	masked bool
	key    *[4]byte // the masking key; nil: testKey
}

// testKey is the masking key of the frames built here: four different
// bytes, so that a key applied from the wrong byte shows.
var testKey = [4]byte{0x37, 0xfa, 0x21, 0x3d}

// wire encodes f with the shortest length encoding, masking the payload
// with testKey when f is masked.
func (f frame) wire() []byte {
	b0 := f.rsv | byte(f.op)
	if f.fin {
		b0 |= 0x80
	}
	var mask byte
	if f.masked {
		mask = 0x80
	}
	b := []byte{b0}
	switch n := len(f.p); {
	case n < 126:
		b = append(b, mask|byte(n))
	case n <= 0xffff:
		b = binary.BigEndian.AppendUint16(append(b, mask|126), uint16(n))
	default:
		b = binary.BigEndian.AppendUint64(append(b, mask|127), uint64(n))
	}
	if !f.masked {
		return append(b, f.p...)
	}
	key := &testKey
	if f.key != nil {
		key = f.key
	}
	b = append(b, key[:]...)
	for i, c := range f.p {
		b = append(b, c^key[i%4])
	}
	return b
}

// client frames are masked, as RFC 6455 section 5.3 requires.
func text(s string) frame             { return frame{fin: true, op: OpText, p: []byte(s), masked: true} }
func textBytes(p []byte) frame        { return frame{fin: true, op: OpText, p: p, masked: true} }
func first(op Opcode, s string) frame { return frame{op: op, p: []byte(s), masked: true} }
func cont(s string, fin bool) frame {
	return frame{fin: fin, op: OpContinuation, p: []byte(s), masked: true}
}
func ctl(op Opcode, p []byte) frame { return frame{fin: true, op: op, p: p, masked: true} }

func closePayload(code int, reason string) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(code)), reason...)
}

func wire(fs ...frame) []byte {
	var b []byte
	for _, f := range fs {
		b = append(b, f.wire()...)
	}
	return b
}

// pattern is n bytes that differ from one position to the next, so that
// a payload shifted, cut or masked with the wrong key byte shows.
func pattern(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + i/251)
	}
	return p
}

// read is one result of Reader.Next.
type read struct {
	op Opcode
	p  []byte
}

// readAll calls Next until it fails and returns what it read, copied
// (a payload is only valid until the next call), and the error.
func readAll(r *Reader) ([]read, error) {
	var got []read
	for {
		op, p, err := r.Next()
		if err != nil {
			return got, err
		}
		got = append(got, read{op, bytes.Clone(p)})
	}
}

// sources are the ways a Reader meets its bytes: all at once in a large
// buffer, and one byte per read in the smallest buffer bufio allows, so
// that every Peek and ReadFull meets a short read.
var sources = []struct {
	name string
	br   func([]byte) *bufio.Reader
}{
	{"whole", func(b []byte) *bufio.Reader { return bufio.NewReaderSize(bytes.NewReader(b), 64<<10) }},
	{"byte by byte", func(b []byte) *bufio.Reader {
		return bufio.NewReaderSize(iotest.OneByteReader(bytes.NewReader(b)), 16)
	}},
}

func checkReads(t *testing.T, got, want []read) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("read %d frames (%s), want %d (%s)", len(got), describe(got), len(want), describe(want))
	}
	for i := range want {
		if got[i].op != want[i].op || !bytes.Equal(got[i].p, want[i].p) {
			t.Fatalf("frame %d: opcode %d, %d bytes; want opcode %d, %d bytes (equal prefix %d)",
				i, got[i].op, len(got[i].p), want[i].op, len(want[i].p), commonPrefix(got[i].p, want[i].p))
		}
	}
}

func describe(rs []read) string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprintf("op %d: %d bytes", r.op, len(r.p)))
	}
	return strings.Join(s, ", ")
}

func commonPrefix(a, b []byte) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// Ensure a server's Reader returns a client's messages whole at every
// length encoding, assembles fragments, hands control frames over as they
// come (between fragments too, the message left intact), and ends with
// io.EOF when the stream ends between messages.
func TestReader_messages(t *testing.T) {
	big := pattern(200000)
	tests := []struct {
		name  string
		in    []frame
		limit int
		want  []read
	}{
		{"empty text", []frame{text("")}, 100, []read{{OpText, []byte{}}}},
		{"125 bytes (7-bit length)", []frame{textBytes(pattern(125))}, 1 << 20, []read{{OpText, pattern(125)}}},
		{"126 bytes (16-bit length)", []frame{textBytes(pattern(126))}, 1 << 20, []read{{OpText, pattern(126)}}},
		{"65535 bytes (16-bit length)", []frame{textBytes(pattern(65535))}, 1 << 20, []read{{OpText, pattern(65535)}}},
		{"65536 bytes (64-bit length)", []frame{textBytes(pattern(65536))}, 1 << 20, []read{{OpText, pattern(65536)}}},
		{"exactly the limit", []frame{textBytes(pattern(100))}, 100, []read{{OpText, pattern(100)}}},
		{"binary", []frame{{fin: true, op: OpBinary, p: pattern(300), masked: true}}, 1 << 20, []read{{OpBinary, pattern(300)}}},
		{"a zero masking key", []frame{{fin: true, op: OpText, p: []byte("plain"), masked: true, key: &[4]byte{}}}, 100, []read{{OpText, []byte("plain")}}},
		{"fragments", []frame{first(OpText, "ab"), cont("cd", false), cont("ef", true)}, 100,
			[]read{{OpText, []byte("abcdef")}}},
		{"fragments at the limit", []frame{first(OpText, strings.Repeat("a", 60)), cont(strings.Repeat("b", 40), true)}, 100,
			[]read{{OpText, []byte(strings.Repeat("a", 60) + strings.Repeat("b", 40))}}},
		{"empty fragments", []frame{first(OpBinary, ""), cont("", false), cont("x", false), cont("", true)}, 100,
			[]read{{OpBinary, []byte("x")}}},
		{"control frames between fragments", []frame{
			first(OpText, "ab"), ctl(OpPing, []byte("p1")), cont("cd", false), ctl(OpPong, nil), ctl(OpPing, pattern(125)), cont("ef", true),
		}, 100, []read{{OpPing, []byte("p1")}, {OpPong, []byte{}}, {OpPing, pattern(125)}, {OpText, []byte("abcdef")}}},
		{"large fragments across encodings", []frame{
			{op: OpText, p: big[:100], masked: true},
			{op: OpContinuation, p: big[100:70100], masked: true},
			{op: OpContinuation, p: big[70100:70101], masked: true},
			ctl(OpPing, []byte("mid")),
			{fin: true, op: OpContinuation, p: big[70101:], masked: true},
		}, 1 << 20, []read{{OpPing, []byte("mid")}, {OpText, big}}},
		{"messages in a row, a large one's buffer dropped", []frame{
			text("one"), textBytes(big), text("two"), textBytes(pattern(70000)), text(""),
		}, 1 << 20, []read{{OpText, []byte("one")}, {OpText, big}, {OpText, []byte("two")}, {OpText, pattern(70000)}, {OpText, []byte{}}}},
		{"close with code and reason", []frame{ctl(OpClose, closePayload(4000, "bye ✓"))}, 100,
			[]read{{OpClose, closePayload(4000, "bye ✓")}}},
		{"close with code only", []frame{ctl(OpClose, closePayload(1000, ""))}, 100, []read{{OpClose, closePayload(1000, "")}}},
		{"close codes a client may send", []frame{ctl(OpClose, closePayload(1003, "")), ctl(OpClose, closePayload(1007, "")),
			ctl(OpClose, closePayload(1014, "")), ctl(OpClose, closePayload(3000, "")), ctl(OpClose, closePayload(4999, ""))}, 100,
			[]read{{OpClose, closePayload(1003, "")}, {OpClose, closePayload(1007, "")}, {OpClose, closePayload(1014, "")},
				{OpClose, closePayload(3000, "")}, {OpClose, closePayload(4999, "")}}},
		{"close without payload", []frame{ctl(OpClose, nil)}, 100, []read{{OpClose, []byte{}}}},
		{"nothing", nil, 100, nil},
	}
	for _, tt := range tests {
		for _, src := range sources {
			t.Run(tt.name+"/"+src.name, func(t *testing.T) {
				got, err := readAll(NewReader(src.br(wire(tt.in...)), tt.limit))
				if err != io.EOF {
					t.Fatalf("after %d frames: %v, want io.EOF", len(got), err)
				}
				checkReads(t, got, tt.want)
			})
		}
	}
}

// Ensure every frame RFC 6455 forbids a client to send is ErrProtocol, a
// message over the limit (in one frame or in fragments) is ErrTooBig, and
// a stream that ends inside a frame or a fragmented message is
// io.ErrUnexpectedEOF; in each case after what came before was returned.
func TestReader_errors(t *testing.T) {
	ok := text("ok")
	okRead := []read{{OpText, []byte("ok")}}
	longPing := ctl(OpPing, pattern(126))
	tests := []struct {
		name  string
		in    []byte
		limit int
		want  []read
		err   error
	}{
		{"unmasked client frame", wire(ok, frame{fin: true, op: OpText, p: []byte("x")}), 100, okRead, ErrProtocol},
		{"unmasked control frame", wire(frame{fin: true, op: OpPing}), 100, nil, ErrProtocol},
		{"RSV1 set", wire(ok, frame{fin: true, rsv: 0x40, op: OpText, p: []byte("x"), masked: true}), 100, okRead, ErrProtocol},
		{"RSV2 set", wire(frame{fin: true, rsv: 0x20, op: OpText, masked: true}), 100, nil, ErrProtocol},
		{"RSV3 set on a ping", wire(frame{fin: true, rsv: 0x10, op: OpPing, masked: true}), 100, nil, ErrProtocol},
		{"continuation without a start", wire(ok, cont("x", true)), 100, okRead, ErrProtocol},
		{"continuation after a whole message", wire(first(OpText, "a"), cont("b", true), cont("c", true)), 100,
			[]read{{OpText, []byte("ab")}}, ErrProtocol},
		{"text while a fragmented message is open", wire(first(OpText, "a"), text("b")), 100, nil, ErrProtocol},
		{"binary while a fragmented message is open", wire(first(OpText, "a"), frame{fin: true, op: OpBinary, masked: true}), 100, nil, ErrProtocol},
		{"ping with FIN clear", wire(frame{op: OpPing, masked: true}), 100, nil, ErrProtocol},
		{"close with FIN clear", wire(frame{op: OpClose, p: closePayload(1000, ""), masked: true}), 100, nil, ErrProtocol},
		{"ping of 126 bytes", wire(longPing), 1 << 20, nil, ErrProtocol},
		{"pong of 65536 bytes", wire(ctl(OpPong, pattern(65536))), 1 << 20, nil, ErrProtocol},
		{"opcode 3", wire(ok, frame{fin: true, op: 3, p: []byte("x"), masked: true}), 100, okRead, ErrProtocol},
		{"opcode 7", wire(frame{fin: true, op: 7, masked: true}), 100, nil, ErrProtocol},
		{"opcode 0xB", wire(frame{fin: true, op: 0xB, masked: true}), 100, nil, ErrProtocol},
		{"opcode 0xF", wire(frame{fin: true, op: 0xF, p: []byte("x"), masked: true}), 100, nil, ErrProtocol},
		{"opcode 3 between fragments", wire(first(OpText, "a"), frame{fin: true, op: 3, masked: true}), 100, nil, ErrProtocol},
		{"close with a 1-byte payload", wire(ctl(OpClose, []byte{3})), 100, nil, ErrProtocol},
		{"close reason not UTF-8", wire(ctl(OpClose, closePayload(1000, "bad \xff"))), 100, nil, ErrProtocol},
		{"close reason with a cut character", wire(ctl(OpClose, closePayload(1000, "✓"[:2]))), 100, nil, ErrProtocol},
		{"close code 1005, never sent", wire(ctl(OpClose, closePayload(1005, ""))), 100, nil, ErrProtocol},
		{"close code 1006, never sent", wire(ctl(OpClose, closePayload(1006, ""))), 100, nil, ErrProtocol},
		{"close code 1015, never sent", wire(ctl(OpClose, closePayload(1015, ""))), 100, nil, ErrProtocol},
		{"close code 999", wire(ctl(OpClose, closePayload(999, ""))), 100, nil, ErrProtocol},
		{"close code 1004, reserved", wire(ctl(OpClose, closePayload(1004, ""))), 100, nil, ErrProtocol},
		{"close code 2999, reserved", wire(ctl(OpClose, closePayload(2999, ""))), 100, nil, ErrProtocol},
		{"close code 5000", wire(ctl(OpClose, closePayload(5000, ""))), 100, nil, ErrProtocol},
		{"text over the limit", wire(ok, textBytes(pattern(101))), 100, okRead, ErrTooBig},
		{"text far over the limit", wire(textBytes(pattern(70000))), 65535, nil, ErrTooBig},
		{"fragments together over the limit", wire(first(OpText, strings.Repeat("a", 60)), cont(strings.Repeat("b", 41), true)), 100, nil, ErrTooBig},
		{"many small fragments over the limit", wire(first(OpBinary, "0123456789"), cont("0123456789", false), cont("0123456789", false), cont("x", true)), 30, nil, ErrTooBig},
		{"64-bit length with the top bit set", append([]byte{0x81, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 1}, testKey[:]...), 1 << 20, nil, ErrTooBig},
		{"one byte of a header", append(wire(ok), 0x81), 100, okRead, io.ErrUnexpectedEOF},
		{"16-bit length cut", []byte{0x81, 0x80 | 126, 0x01}, 1 << 20, nil, io.ErrUnexpectedEOF},
		{"64-bit length cut", []byte{0x81, 0x80 | 127, 0, 0, 0, 0}, 1 << 20, nil, io.ErrUnexpectedEOF},
		{"masking key cut", []byte{0x81, 0x85, 1, 2}, 100, nil, io.ErrUnexpectedEOF},
		{"payload cut", textBytes(pattern(300)).wire()[:200], 1 << 20, nil, io.ErrUnexpectedEOF},
		{"control payload cut", ctl(OpPing, []byte("12345")).wire()[:8], 100, nil, io.ErrUnexpectedEOF},
		{"end between fragments", wire(ok, first(OpText, "a"), cont("b", false)), 100, okRead, io.ErrUnexpectedEOF},
		{"end after a ping between fragments", wire(first(OpText, "a"), ctl(OpPing, nil)), 100,
			[]read{{OpPing, []byte{}}}, io.ErrUnexpectedEOF},
	}
	for _, tt := range tests {
		for _, src := range sources {
			t.Run(tt.name+"/"+src.name, func(t *testing.T) {
				got, err := readAll(NewReader(src.br(tt.in), tt.limit))
				if !errors.Is(err, tt.err) {
					t.Fatalf("after %d frames: %v, want %v", len(got), err, tt.err)
				}
				checkReads(t, got, tt.want)
			})
		}
	}
}

// Ensure a client's Reader reads a server's unmasked frames, fragments and
// control frames included, and refuses a masked one: a server must not
// mask (RFC 6455 section 5.1).
func TestReader_clientMode(t *testing.T) {
	unmasked := func(f frame) frame { f.masked = false; return f }
	tests := []struct {
		name string
		in   []frame
		want []read
		err  error
	}{
		{"text at every length encoding", []frame{
			unmasked(text("")), unmasked(textBytes(pattern(125))), unmasked(textBytes(pattern(126))),
			unmasked(textBytes(pattern(65535))), unmasked(textBytes(pattern(65536))),
		}, []read{{OpText, []byte{}}, {OpText, pattern(125)}, {OpText, pattern(126)}, {OpText, pattern(65535)}, {OpText, pattern(65536)}}, io.EOF},
		{"fragments around a ping", []frame{
			unmasked(first(OpText, "ab")), unmasked(ctl(OpPing, []byte("hi"))), unmasked(cont("cd", true)),
		}, []read{{OpPing, []byte("hi")}, {OpText, []byte("abcd")}}, io.EOF},
		{"close", []frame{unmasked(ctl(OpClose, closePayload(1001, "going")))}, []read{{OpClose, closePayload(1001, "going")}}, io.EOF},
		{"masked text", []frame{unmasked(text("ok")), text("x")}, []read{{OpText, []byte("ok")}}, ErrProtocol},
		{"masked ping", []frame{ctl(OpPing, nil)}, nil, ErrProtocol},
		{"RSV1 set", []frame{{fin: true, rsv: 0x40, op: OpText, p: []byte("x")}}, nil, ErrProtocol},
	}
	for _, tt := range tests {
		for _, src := range sources {
			t.Run(tt.name+"/"+src.name, func(t *testing.T) {
				got, err := readAll(NewClientReader(src.br(wire(tt.in...)), 1<<20))
				if !errors.Is(err, tt.err) {
					t.Fatalf("after %d frames: %v, want %v", len(got), err, tt.err)
				}
				checkReads(t, got, tt.want)
			})
		}
	}
}

// longestPrefix is the longest prefix of s of whole characters within n
// bytes.
func longestPrefix(s string, n int) string {
	end := 0
	for i, r := range s {
		if i+utf8.RuneLen(r) > n {
			break
		}
		end = i + utf8.RuneLen(r)
	}
	return s[:end]
}

// Ensure what a server writes (Frame, Control, CloseFrame) reads back in a
// client's Reader: text at every length encoding, control payloads cut to
// 125 bytes, and close reasons cut to fit, never inside a character.
func TestServerFrames_readBack(t *testing.T) {
	textFrame := func(p []byte) []byte { return Frame(append(make([]byte, Headroom), p...)) }
	tests := []struct {
		name string
		in   []byte
		want read
	}{
		{"empty text", textFrame(nil), read{OpText, []byte{}}},
		{"text of 125 bytes", textFrame(pattern(125)), read{OpText, pattern(125)}},
		{"text of 126 bytes", textFrame(pattern(126)), read{OpText, pattern(126)}},
		{"text of 65535 bytes", textFrame(pattern(65535)), read{OpText, pattern(65535)}},
		{"text of 65536 bytes", textFrame(pattern(65536)), read{OpText, pattern(65536)}},
		{"text of 200000 bytes", textFrame(pattern(200000)), read{OpText, pattern(200000)}},
		{"empty ping", Control(OpPing, nil), read{OpPing, []byte{}}},
		{"pong of 125 bytes", Control(OpPong, pattern(125)), read{OpPong, pattern(125)}},
		{"ping of 300 bytes, cut", Control(OpPing, pattern(300)), read{OpPing, pattern(125)}},
		{"close", CloseFrame(CloseGoingAway, "shutting down"), read{OpClose, closePayload(CloseGoingAway, "shutting down")}},
		{"close without reason", CloseFrame(CloseNormal, ""), read{OpClose, closePayload(CloseNormal, "")}},
		{"close with a reason of 123 bytes", CloseFrame(CloseMessageTooBig, strings.Repeat("r", 123)),
			read{OpClose, closePayload(CloseMessageTooBig, strings.Repeat("r", 123))}},
	}
	// Reasons too long for a control frame, cut where a character of 1 to
	// 4 bytes ends, the 123-byte mark falling inside one or not.
	for _, ch := range []string{"a", "é", "€", "🔒"} {
		for _, lead := range []int{0, 1, 2} {
			reason := strings.Repeat("x", lead) + strings.Repeat(ch, 200)
			tests = append(tests, struct {
				name string
				in   []byte
				want read
			}{
				fmt.Sprintf("close with a long reason of %s after %d bytes", ch, lead),
				CloseFrame(CloseProtocolError, reason),
				read{OpClose, closePayload(CloseProtocolError, longestPrefix(reason, 123))},
			})
		}
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// On the wire exactly as RFC 6455 section 5.2 has it: FIN, no
			// mask, and the shortest length encoding.
			if want := (frame{fin: true, op: tt.want.op, p: tt.want.p}).wire(); !bytes.Equal(tt.in, want) {
				t.Fatalf("frame starts % x, want % x", tt.in[:min(len(tt.in), 12)], want[:min(len(want), 12)])
			}
			in := append(bytes.Clone(tt.in), Control(OpPing, []byte("next"))...)
			got, err := readAll(NewClientReader(bufio.NewReader(bytes.NewReader(in)), 1<<20))
			if err != io.EOF {
				t.Fatalf("after %d frames: %v", len(got), err)
			}
			checkReads(t, got, []read{tt.want, {OpPing, []byte("next")}})
			if tt.want.op == OpClose && (len(got[0].p) > 125 || !utf8.Valid(got[0].p[2:])) {
				t.Fatalf("close payload of %d bytes, reason valid UTF-8: %v", len(got[0].p), utf8.Valid(got[0].p[2:]))
			}
		})
	}
}

// frameEcho serves a WebSocket the way the lease server does (the library
// does the handshake, frames are read with NewReader and written through
// the Hijacker's Conn): it echoes text messages in Frame, answers pings
// with Control, and a close frame with CloseFrame carrying the client's
// code and closeReason, then returns what ended it.
func frameEcho(w http.ResponseWriter, r *http.Request, closeReason string) error {
	hj := &Hijacker{ResponseWriter: w}
	lib, err := websocket.Accept(hj, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		hj.Answer()
		return err
	}
	defer lib.CloseNow()
	rd := NewReader(hj.Reader, 1<<20)
	for {
		op, p, err := rd.Next()
		if err != nil {
			return err
		}
		var out []byte
		switch op {
		case OpText:
			out = Frame(append(make([]byte, Headroom), p...))
		case OpPing:
			out = Control(OpPong, p)
		case OpClose:
			out = CloseFrame(int(binary.BigEndian.Uint16(p)), closeReason)
		default:
			return fmt.Errorf("unexpected opcode %d", op)
		}
		if err := hj.Conn.Lock(); err != nil {
			return err
		}
		err = hj.Conn.WriteLocked(out, 30*time.Second)
		hj.Conn.Unlock(err)
		if err != nil || op == OpClose {
			return err
		}
	}
}

// Ensure what a ClientConn writes, masked, reads back in a server's Reader
// over a real connection, and the server's Frame, Control and CloseFrame
// in the ClientConn's Reader: messages at every length encoding, from
// several goroutines at once (each whole), a ping's payload in its pong,
// and the close handshake, whose long reason is cut to fit.
func TestRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reason := strings.Repeat("é", 100) // 200 bytes: cut to 122, between two characters
	served := make(chan error, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served <- frameEcho(w, r, reason)
	}))
	defer srv.Close()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c, _, err := Dial(ctx, &http.Client{Transport: tr}, "ws"+strings.TrimPrefix(srv.URL, "http"), nil, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// Answers are read as they come, so that large echoes never leave
	// both sides writing into full sockets.
	type msg struct {
		op  Opcode
		p   []byte
		err error
	}
	reads := make(chan msg, 64)
	go func() {
		defer close(reads)
		for {
			op, p, err := c.Reader.Next()
			reads <- msg{op, bytes.Clone(p), err}
			if err != nil {
				return
			}
		}
	}()
	next := func() msg {
		t.Helper()
		select {
		case m := <-reads:
			return m
		case <-ctx.Done():
			t.Fatal("no frame from the server")
			return msg{}
		}
	}

	sizes := []int{0, 1, 125, 126, 127, 1000, 65535, 65536, 200000}
	for _, n := range sizes {
		p := pattern(n)
		if err := c.WriteText(p); err != nil {
			t.Fatalf("write %d bytes: %v", n, err)
		}
		if m := next(); m.err != nil || m.op != OpText || !bytes.Equal(m.p, p) {
			t.Fatalf("echo of %d bytes: opcode %d, %d bytes, %v", n, m.op, len(m.p), m.err)
		}
		// The message sent is the caller's still: masking worked on a copy.
		if !bytes.Equal(p, pattern(n)) {
			t.Fatalf("WriteText changed the caller's %d bytes", n)
		}
	}

	for _, p := range [][]byte{nil, []byte("ping"), pattern(125)} {
		if err := c.WriteControl(OpPing, p); err != nil {
			t.Fatal(err)
		}
		if m := next(); m.err != nil || m.op != OpPong || !bytes.Equal(m.p, p) {
			t.Fatalf("pong to a ping of %d bytes: opcode %d, %d bytes, %v", len(p), m.op, len(m.p), m.err)
		}
	}
	// More than a control frame holds is cut to 125 bytes.
	if err := c.WriteControl(OpPing, pattern(300)); err != nil {
		t.Fatal(err)
	}
	if m := next(); m.err != nil || m.op != OpPong || !bytes.Equal(m.p, pattern(125)) {
		t.Fatalf("pong to a ping of 300 bytes: opcode %d, %d bytes, %v", m.op, len(m.p), m.err)
	}

	// Concurrent writers: every message arrives once and whole.
	const writers, each = 8, 20
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				p := fmt.Appendf(nil, "%d/%d:", w, i)
				p = append(p, bytes.Repeat([]byte{byte('a' + w)}, (w*each+i)*97%3000)...)
				if err := c.WriteText(p); err != nil {
					t.Errorf("writer %d: %v", w, err)
					return
				}
			}
		})
	}
	seen := map[string]bool{}
	for range writers * each {
		m := next()
		if m.err != nil || m.op != OpText {
			t.Fatalf("concurrent echo: opcode %d, %v", m.op, m.err)
		}
		var w, i int
		if _, err := fmt.Sscanf(string(m.p), "%d/%d:", &w, &i); err != nil {
			t.Fatalf("echo %.40q: %v", m.p, err)
		}
		head := fmt.Sprintf("%d/%d:", w, i)
		if want := head + strings.Repeat(string(rune('a'+w)), (w*each+i)*97%3000); string(m.p) != want || seen[head] {
			t.Fatalf("echo %.40q... of %d bytes: not the message sent once, whole", m.p, len(m.p))
		}
		seen[head] = true
	}
	wg.Wait()

	if err := c.WriteClose(4001); err != nil {
		t.Fatal(err)
	}
	if m := next(); m.err != nil || m.op != OpClose || !bytes.Equal(m.p, closePayload(4001, strings.Repeat("é", 61))) {
		t.Fatalf("close answered with opcode %d, %q, %v", m.op, m.p, m.err)
	}
	if m := next(); m.err != io.EOF {
		t.Fatalf("after the close frames: opcode %d, %v; want io.EOF", m.op, m.err)
	}
	if err := <-served; err != nil {
		t.Fatalf("server: %v", err)
	}
}

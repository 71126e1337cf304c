package main

// What keeps one client from holding the server's resources: deadlines on
// request bodies and on every write, and a cap on connections per client
// address.

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/meatspace-exchange/mess/internal/httpx"
)

// guard wraps the server's handler with the per-request limits:
//
//   - a body over maxBody is refused with 413 too_large, before a byte of
//     it is read when its size is declared and as soon as it passes the
//     limit when it is chunked;
//   - a body must arrive in full within bodyTimeout of the request's
//     headers, or the read fails and the connection is closed, so a client
//     trickling a body cannot hold a connection open;
//   - every write must complete within writeTimeout, so a client that
//     stops reading cannot hold a handler in Write. The deadline is set
//     afresh before each write, so a long-poll or an event stream may wait
//     as long as it likes between writes.
//
// Requests without a body (event streams, long-polls, WebSocket upgrades)
// get no read deadline: a read deadline would end their wait. A hijacked
// connection (a WebSocket) clears both deadlines and manages its own.
func guard(next http.Handler, maxBody int64, bodyTimeout, writeTimeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > maxBody {
			httpx.WriteError(w, http.StatusRequestEntityTooLarge, httpx.CodeTooLarge, "request body over "+strconv.FormatInt(maxBody, 10)+" bytes")
			return
		}
		rc := http.NewResponseController(w)
		dw := &deadlineWriter{ResponseWriter: w, rc: rc, timeout: writeTimeout}
		dw.extend()
		if r.Body != nil && r.Body != http.NoBody {
			body := io.ReadCloser(http.MaxBytesReader(w, r.Body, maxBody))
			if bodyTimeout > 0 {
				_ = rc.SetReadDeadline(time.Now().Add(bodyTimeout))
				body = &deadlineBody{ReadCloser: body, rc: rc}
			}
			r.Body = body
		}
		next.ServeHTTP(dw, r)
		if !dw.hijacked {
			dw.extend() // for what net/http writes once the handler returns
		}
	})
}

// deadlineWriter sets the connection's write deadline before every write.
type deadlineWriter struct {
	http.ResponseWriter
	rc       *http.ResponseController
	timeout  time.Duration
	hijacked bool
}

func (d *deadlineWriter) extend() {
	if d.timeout > 0 {
		_ = d.rc.SetWriteDeadline(time.Now().Add(d.timeout))
	}
}

func (d *deadlineWriter) WriteHeader(code int) {
	d.extend()
	d.ResponseWriter.WriteHeader(code)
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	d.extend()
	return d.ResponseWriter.Write(p)
}

// FlushError is what http.ResponseController.Flush calls.
func (d *deadlineWriter) FlushError() error {
	d.extend()
	return d.rc.Flush()
}

// Flush makes deadlineWriter an http.Flusher for handlers that assert it.
func (d *deadlineWriter) Flush() { _ = d.FlushError() }

// Hijack hands the connection over; net/http clears its deadlines.
func (d *deadlineWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := d.rc.Hijack()
	if err == nil {
		d.hijacked = true
	}
	return c, brw, err
}

// Unwrap lets http.ResponseController reach the connection's own
// response writer.
func (d *deadlineWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// deadlineBody lifts the body's read deadline once the body has been read
// to its end: the connection's reader then waits for the client to go away
// (net/http's background read), and a deadline would end the request.
type deadlineBody struct {
	io.ReadCloser
	rc   *http.ResponseController
	done bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if errors.Is(err, io.EOF) && !b.done {
		b.done = true
		_ = b.rc.SetReadDeadline(time.Time{})
	}
	return n, err
}

// remoteKey is the client address of a "host:port" remote address
// (httpx.AddrKey); an address that does not parse counts as one client of
// its own.
func remoteKey(remote string) netip.Prefix {
	ap, err := netip.ParseAddrPort(remote)
	if err != nil {
		return netip.Prefix{}
	}
	return httpx.AddrKey(ap.Addr())
}

// tooManyConns is the whole answer to a connection over the per-address
// cap.
var tooManyConns = func() string {
	body := `{"error":"too many connections from your address","code":"rate_limited"}` + "\n"
	return "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nConnection: close\r\nRetry-After: 1\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body
}()

// maxRefusing bounds the goroutines answering refused connections; past
// it a refused connection is closed without an answer.
const maxRefusing = 64

// capListener accepts at most max connections at a time from one client
// address (clientKey). A connection over the cap is answered 429 and
// closed at once.
type capListener struct {
	net.Listener
	max int

	mu       sync.Mutex
	open     map[netip.Prefix]int
	refusing chan struct{} // a slot per refusal in progress
}

func newCapListener(ln net.Listener, max int) *capListener {
	return &capListener{Listener: ln, max: max, open: map[netip.Prefix]int{}, refusing: make(chan struct{}, maxRefusing)}
}

func (l *capListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		k := remoteKey(c.RemoteAddr().String())
		l.mu.Lock()
		if l.open[k] >= l.max {
			l.mu.Unlock()
			l.refuse(c)
			continue
		}
		l.open[k]++
		l.mu.Unlock()
		return &countedConn{Conn: c, l: l, key: k}, nil
	}
}

// refuse answers c 429 and closes it. The client's request is drained
// for a moment first: closing a socket with unread data resets it, and the
// client might lose the answer.
func (l *capListener) refuse(c net.Conn) {
	select {
	case l.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-l.refusing }()
		defer c.Close()
		c.SetDeadline(time.Now().Add(time.Second))
		if _, err := io.WriteString(c, tooManyConns); err != nil {
			return
		}
		if cw, ok := c.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		}
		io.Copy(io.Discard, io.LimitReader(c, 64<<10))
	}()
}

func (l *capListener) release(k netip.Prefix) {
	l.mu.Lock()
	if l.open[k]--; l.open[k] <= 0 {
		delete(l.open, k)
	}
	l.mu.Unlock()
}

// countedConn gives its slot back when closed.
type countedConn struct {
	net.Conn
	l    *capListener
	key  netip.Prefix
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.key) })
	return err
}

// CloseWrite lets net/http half-close the connection, as it does a TCP
// connection's, before closing it after an error.
func (c *countedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// SyscallConn exposes the socket, which the mail bus writes to directly.
func (c *countedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := c.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.ErrUnsupported
}

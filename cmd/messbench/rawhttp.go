package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

// leanTransport is an http.RoundTripper for load generation over HTTP/1.1
// keep-alive connections, one request at a time per connection. The load
// generator shares two cores with the server, and http.Transport spends two
// goroutines and a handoff between them on every request: with it, the
// generator used as much CPU as the server it was measuring.
//
// Requests and responses are written and parsed by net/http (Request.Write,
// ReadResponse), so the wire format is the standard library's.
type leanTransport struct {
	mu   sync.Mutex
	idle map[string][]*leanConn // by host:port
}

type leanConn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

func (t *leanTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme != "http" {
		return nil, errors.New("leanTransport: only http")
	}
	// A connection deadline, not a goroutine per request (as http.Client's
	// Timeout would start), bounds the request.
	d, ok := req.Context().Deadline()
	if !ok {
		d = time.Now().Add(requestTimeout)
	}
	// The context's own timer may fire a little after its deadline, and
	// the connection's a little before it: report what the context will.
	ctxErr := func(err error) error {
		if cerr := req.Context().Err(); cerr != nil {
			return cerr
		}
		if ok && (errors.Is(err, os.ErrDeadlineExceeded) || !time.Now().Before(d)) {
			return context.DeadlineExceeded
		}
		return err
	}
	lc, err := t.get(req.Context(), req.URL.Host)
	if err != nil {
		if req.Body != nil {
			req.Body.Close()
		}
		return nil, ctxErr(err)
	}
	lc.c.SetDeadline(d)
	fail := func(err error) (*http.Response, error) {
		lc.c.Close()
		return nil, ctxErr(err)
	}
	if err := req.Write(lc.bw); err != nil {
		return fail(err)
	}
	if err := lc.bw.Flush(); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(lc.br, req)
	if err != nil {
		return fail(err)
	}
	resp.Body = &leanBody{rc: resp.Body, t: t, host: req.URL.Host, lc: lc, keep: !resp.Close, ctxErr: ctxErr}
	return resp, nil
}

// requestTimeout bounds a request whose context has no deadline.
const requestTimeout = 30 * time.Second

func (t *leanTransport) get(ctx context.Context, host string) (*leanConn, error) {
	t.mu.Lock()
	if cs := t.idle[host]; len(cs) > 0 {
		lc := cs[len(cs)-1]
		t.idle[host] = cs[:len(cs)-1]
		t.mu.Unlock()
		return lc, nil
	}
	t.mu.Unlock()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", host)
	if err != nil {
		return nil, err
	}
	return &leanConn{c: c, br: bufio.NewReaderSize(c, 4096), bw: bufio.NewWriterSize(c, 4096)}, nil
}

func (t *leanTransport) put(host string, lc *leanConn) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.idle == nil {
		t.idle = make(map[string][]*leanConn)
	}
	t.idle[host] = append(t.idle[host], lc)
}

// CloseIdleConnections closes connections not in use.
func (t *leanTransport) CloseIdleConnections() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for h, cs := range t.idle {
		for _, lc := range cs {
			lc.c.Close()
		}
		delete(t.idle, h)
	}
}

// leanBody returns its connection for reuse once the body has been read to
// the end, and closes it when the body is abandoned part-way.
type leanBody struct {
	rc   io.ReadCloser
	t    *leanTransport
	host string
	lc   *leanConn
	keep bool
	done bool

	ctxErr func(error) error
}

func (b *leanBody) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
		err = b.ctxErr(err)
	}
	return n, err
}

func (b *leanBody) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

func (b *leanBody) finish(complete bool) {
	b.done = true
	if complete && b.keep {
		b.t.put(b.host, b.lc)
		return
	}
	b.lc.c.Close()
}

package lease

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/internal/wsframe"
)

// Reconnect backoff of Client's lease WebSocket: doubling from the first
// to the last, with full jitter.
const (
	minRedial = 100 * time.Millisecond
	maxRedial = 5 * time.Second
)

// Connect opens the lease WebSocket (GET .../leases/ws). From then on
// Acquire, AcquireWait, Renew, Release and Status go over it as lease
// frames, pipelined: calls from many goroutines share the connection and
// each waits only for its own answer. List and ReleaseAll stay on HTTP.
//
// Connect returns the error of its dial, after which the client goes on
// over HTTP. Once connected, the client redials a lost connection in the
// background until Close, and calls made meanwhile go over HTTP. A call
// in flight when the connection is lost is repeated over HTTP, except
// Release (see Release). Connecting again is a no-op.
func (c *Client) Connect(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.life.Err() != nil {
		return ErrClosed
	}
	if c.started {
		return nil
	}
	conn, f, err := c.dial(ctx)
	if err != nil {
		return err
	}
	c.started = true
	c.conn = conn
	c.fc.Store(f)
	go c.run(conn, f)
	return nil
}

// dial opens the lease WebSocket and a FrameClient on it. Its frames are
// read and written by hand (internal/wsframe): a call then costs its write
// and its share of a read, and nothing of a general WebSocket library's
// per-frame contexts, locks and buffers.
func (c *Client) dial(ctx context.Context) (*wsframe.ClientConn, *FrameClient, error) {
	u := "ws" + strings.TrimPrefix(c.base, "http") + "ws?batch=1"
	// The handshake must not inherit the HTTP client's whole-request
	// timeout: it would cut the long-lived connection.
	hc := *c.hc
	hc.Timeout = 0
	// Answers come in array frames of up to maxQueuedAnswers.
	conn, resp, err := wsframe.Dial(ctx, &hc, u, http.Header{"Authorization": {"Bearer " + c.key}}, 16<<20)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			defer resp.Body.Close()
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			var e errorResponse
			if json.Unmarshal(data, &e) != nil || e.Code == "" {
				e = errorResponse{Code: httpx.Code(resp.StatusCode), Error: strings.TrimSpace(string(data))}
			}
			return nil, nil, &APIError{StatusCode: resp.StatusCode, Code: e.Code, Field: e.Field, Message: e.Error}
		}
		return nil, nil, fmt.Errorf("lease: dial %s: %w", u, err)
	}
	w := &combiner{conn: conn}
	return conn, NewFrameClient(w.send), nil
}

// combiner writes the frames of calls made at the same time together: a
// call that finds a write under way queues its frame, and the writer sends
// what queued meanwhile as one frame holding a JSON array, which the lease
// WebSocket takes. Pipelining callers then cost one write, not one each,
// and a lone caller writes at once, with no goroutine between.
type combiner struct {
	conn    *wsframe.ClientConn
	mu      sync.Mutex
	writing bool
	queue   [][]byte
	spare   [][]byte
	buf     []byte
}

func (w *combiner) send(_ context.Context, frame []byte) error {
	w.mu.Lock()
	w.queue = append(w.queue, frame)
	if w.writing {
		// The writer sends it. Should that fail, the connection is closed,
		// and the call learns it from FrameClient.Fail.
		w.mu.Unlock()
		return nil
	}
	w.writing = true
	var err error
	for {
		q := w.queue
		if len(q) == 0 {
			w.writing = false
			w.mu.Unlock()
			return err
		}
		w.queue, w.spare = w.spare, nil
		w.mu.Unlock()
		if err == nil { // else dropped: the connection is closed
			err = w.write(q)
		}
		clear(q)
		w.mu.Lock()
		w.spare = q[:0]
	}
}

// write sends q, one frame or a JSON array of them. The write is bounded by
// the connection's own timeout, never by a caller's context: a frame cut
// short would break the connection for every call on it.
func (w *combiner) write(q [][]byte) error {
	frame := q[0]
	if len(q) > 1 {
		frame = append(w.buf[:0], '[')
		for i, b := range q {
			if i > 0 {
				frame = append(frame, ',')
			}
			frame = append(frame, b...)
		}
		frame = append(frame, ']')
		w.buf = frame
	}
	return w.conn.WriteText(frame) // a failed write closes the connection, which ends the reader
}

// run reads the connection's answers, and redials it when it is lost,
// until Close.
func (c *Client) run(conn *wsframe.ClientConn, f *FrameClient) {
	defer close(c.done)
	for attempt := 0; ; {
		err := read(conn, f)
		c.fc.CompareAndSwap(f, nil)
		f.Fail(err)
		conn.Close()
		c.mu.Lock()
		c.conn = nil
		c.mu.Unlock()
		for {
			attempt = min(attempt+1, 30)
			backoff := min(minRedial<<min(attempt-1, 20), maxRedial)
			select {
			case <-c.life.Done():
				return
			case <-time.After(rand.N(backoff) + time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(c.life, 30*time.Second)
			conn, f, err = c.dial(ctx)
			cancel()
			if err == nil {
				break
			}
			if c.life.Err() != nil || errors.Is(err, ErrUnauthorized) || errors.Is(err, ErrForbidden) {
				// The key no longer works: redialing will not help.
				return
			}
		}
		c.mu.Lock()
		if c.life.Err() != nil {
			c.mu.Unlock()
			conn.Close()
			return
		}
		c.conn = conn
		c.fc.Store(f)
		c.mu.Unlock()
		attempt = 0
	}
}

// read hands the connection's answers to f until the connection ends, and
// says why it ended. It answers the server's pings, and its close frame.
func read(conn *wsframe.ClientConn, f *FrameClient) error {
	for {
		op, data, err := conn.Reader.Next()
		if err != nil {
			return err
		}
		switch op {
		case wsframe.OpText:
			f.answerAll(data)
		case wsframe.OpPing:
			conn.WriteControl(wsframe.OpPong, data)
		case wsframe.OpClose:
			code := wsframe.CloseCode(data)
			conn.WriteClose(code)
			return &CloseError{Code: code, Reason: string(data[min(2, len(data)):])}
		}
	}
}

// CloseError is why calls in flight on the lease WebSocket failed when the
// server closed it (wrapped in an error that also wraps ErrDisconnected).
type CloseError struct {
	Code   int    // the close frame's status code (RFC 6455 section 7.4)
	Reason string // its reason, if any
}

func (e *CloseError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("lease: connection closed by the server (%d)", e.Code)
	}
	return fmt.Sprintf("lease: connection closed by the server (%d %s)", e.Code, e.Reason)
}

// Close ends the lease WebSocket: calls still waiting for their answers
// get them (or ctx ends the wait), then the connection is closed and the
// client stops redialing. Later calls go over HTTP. Close also closes the
// idle HTTP connections. If ctx ends first, the close handshake finishes
// in the background.
func (c *Client) Close(ctx context.Context) error {
	defer c.hc.CloseIdleConnections()
	c.mu.Lock()
	if c.life.Err() != nil {
		c.mu.Unlock()
		return nil
	}
	started := c.started
	f := c.fc.Swap(nil)
	c.mu.Unlock()
	var err error
	if f != nil {
		err = f.Drain(ctx)
	}
	c.mu.Lock()
	c.end() // stops redialing; a connection the redial just made is closed by run
	conn := c.conn
	c.mu.Unlock()
	if !started {
		return err
	}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		if conn != nil {
			// The server answers with its close frame and closes the
			// connection, which ends the reader.
			conn.WriteClose(wsframe.CloseNormal)
		}
		<-c.done
	}()
	select {
	case <-closed:
	case <-ctx.Done():
		if conn != nil {
			conn.Close()
		}
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

package lease

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/httpx"
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

// dial opens the lease WebSocket and a FrameClient on it.
func (c *Client) dial(ctx context.Context) (*websocket.Conn, *FrameClient, error) {
	u := "ws" + strings.TrimPrefix(c.base, "http") + "ws?batch=1"
	// The handshake must not inherit the HTTP client's whole-request
	// timeout: it would cut the long-lived connection.
	hc := *c.hc
	hc.Timeout = 0
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient: &hc,
		HTTPHeader: http.Header{"Authorization": {"Bearer " + c.key}},
	})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			data, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			var e errorResponse
			if json.Unmarshal(data, &e) != nil || e.Code == "" {
				e = errorResponse{Code: httpx.Code(resp.StatusCode), Error: strings.TrimSpace(string(data))}
			}
			return nil, nil, &APIError{StatusCode: resp.StatusCode, Code: e.Code, Field: e.Field, Message: e.Error}
		}
		return nil, nil, fmt.Errorf("lease: dial %s: %w", u, err)
	}
	// Answers come in array frames of up to maxQueuedAnswers.
	conn.SetReadLimit(16 << 20)
	w := &combiner{conn: conn}
	return conn, NewFrameClient(w.send), nil
}

// combiner writes the frames of calls made at the same time together: a
// call that finds a write under way queues its frame, and the writer sends
// what queued meanwhile as one frame holding a JSON array, which the lease
// WebSocket takes. Pipelining callers then cost one write, not one each,
// and a lone caller writes at once, with no goroutine between.
type combiner struct {
	conn    *websocket.Conn
	mu      sync.Mutex
	writing bool
	queue   [][]byte
}

func (w *combiner) send(ctx context.Context, frame []byte) error {
	w.mu.Lock()
	if w.writing {
		// The writer sends it. Should that fail, the connection is closed,
		// and the call learns it from FrameClient.Fail.
		w.queue = append(w.queue, frame)
		w.mu.Unlock()
		return nil
	}
	w.writing = true
	w.queue = append(w.queue, frame)
	w.mu.Unlock()
	// Callers woken by the same frame of answers are about to send too:
	// let them queue first. A yield costs nothing when nobody else runs.
	runtime.Gosched()
	var err error
	for {
		w.mu.Lock()
		q := w.queue
		w.queue = nil
		if len(q) == 0 {
			w.writing = false
			w.mu.Unlock()
			return err
		}
		w.mu.Unlock()
		if err != nil {
			continue // dropped: the connection is closed
		}
		err = w.write(ctx, q)
	}
}

// write sends q, one frame or a JSON array of them.
func (w *combiner) write(ctx context.Context, q [][]byte) error {
	frame := q[0]
	if len(q) > 1 {
		n := 1
		for _, b := range q {
			n += len(b) + 1
		}
		frame = make([]byte, 1, n)
		frame[0] = '['
		for i, b := range q {
			if i > 0 {
				frame = append(frame, ',')
			}
			frame = append(frame, b...)
		}
		frame = append(frame, ']')
	}
	// A write the caller abandons would close the connection: bound it by
	// time instead.
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := w.conn.Write(wctx, websocket.MessageText, frame)
	if err != nil {
		w.conn.CloseNow() // the reader ends, and every call waiting learns it
	}
	return err
}

// run reads the connection's answers, and redials it when it is lost,
// until Close.
func (c *Client) run(conn *websocket.Conn, f *FrameClient) {
	defer close(c.done)
	for attempt := 0; ; {
		var err error
		for {
			var data []byte
			if _, data, err = conn.Read(context.Background()); err != nil {
				break
			}
			f.answerAll(data)
		}
		c.fc.CompareAndSwap(f, nil)
		f.Fail(err)
		conn.CloseNow()
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
			conn.CloseNow()
			return
		}
		c.conn = conn
		c.fc.Store(f)
		c.mu.Unlock()
		attempt = 0
	}
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
			conn.Close(websocket.StatusNormalClosure, "")
		}
		<-c.done
	}()
	select {
	case <-closed:
	case <-ctx.Done():
		if conn != nil {
			conn.CloseNow()
		}
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

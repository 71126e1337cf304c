package lease

import (
	"bufio"
	"bytes"
	"context"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/coder/websocket"
	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/httpx"
)

// maxQueuedAnswers bounds the answers waiting to be written to one
// connection. A client that pipelines requests without reading the answers
// then holds up the operations that finished, the connection runs out of
// room for operations in flight, and its frames stop being read: the
// server never buffers without bound.
const maxQueuedAnswers = 4096

// serveWS serves GET .../leases/ws[?batch=1]: lease frames (frames.go) on
// a WebSocket of the caller's own. With batch=1, answers that are ready
// together go out as one frame holding a JSON array of them.
func (h *handler) serveWS(w http.ResponseWriter, r *http.Request, x, agent string) error {
	if isClosed(h.m.done) {
		return ErrClosed
	}
	q := r.URL.Query()
	batch := q.Get("batch") == "1" || q.Get("batch") == "true"
	rw := &refusal{ResponseWriter: w}
	conn, err := websocket.Accept(rw, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		rw.answer()
		return nil
	}
	conn.SetReadLimit(h.cfg.MaxBodyBytes)
	revoked, stop := (<-chan struct{})(nil), func() {}
	if kw, ok := h.cfg.Auth.(keyWatcher); ok {
		// Watched only now the connection is open: a key revoked since
		// Authenticate gets a closed channel, so nothing slips through.
		key, _ := httpx.Bearer(r)
		revoked, stop = kw.WatchKey(x, key)
	}
	c := &wsConn{h: h, conn: conn, batch: batch}
	c.room.L = &c.mu
	c.fs = h.m.NewFrameSession(x, agent, c.answer)
	// The request's goroutine returns, as for any hijacked connection;
	// the connection lives on its own.
	go func() {
		defer stop()
		c.serve(revoked)
	}()
	return nil
}

// wsConn is one lease WebSocket.
type wsConn struct {
	h     *handler
	conn  *websocket.Conn
	batch bool
	fs    *FrameSession

	mu      sync.Mutex
	room    sync.Cond // on mu: the queue has room again, or the connection closed
	queue   [][]byte  // answers waiting for the writer
	writing bool      // a writer goroutine is running
	closed  bool
	writers sync.WaitGroup
}

// serve reads frames until the connection ends, then winds the session
// down.
func (c *wsConn) serve(revoked <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	var watch sync.WaitGroup
	watch.Go(func() { c.watch(ctx, revoked) })
	for {
		typ, data, err := c.conn.Read(ctx)
		if err != nil {
			break
		}
		if isClosed(revoked) {
			continue // watch is closing the connection; nothing more is done for the key
		}
		if typ != websocket.MessageText {
			c.fs.answerErr("", invalidField("frame", "binary frames are not supported"))
			continue
		}
		c.handle(data)
	}
	cancel()
	c.mu.Lock()
	c.closed = true
	c.queue = nil
	c.room.Broadcast()
	c.mu.Unlock()
	c.fs.Close()
	watch.Wait()
	c.writers.Wait()
	c.conn.CloseNow()
}

// handle takes a frame of requests: one request, or a JSON array of them,
// which a client pipelining many calls sends to save a write per call.
func (c *wsConn) handle(data []byte) {
	if i := bytes.IndexFunc(data, func(r rune) bool { return !unicode.IsSpace(r) }); i < 0 || data[i] != '[' {
		c.fs.Handle(data)
		return
	}
	var reqs []json.RawMessage
	if json.Unmarshal(data, &reqs) != nil {
		c.fs.Handle(data) // answered as the malformed frame it is
		return
	}
	for _, r := range reqs {
		c.fs.Handle(r)
	}
}

// watch pings the client, and closes the connection when the lease
// service shuts down or the key is revoked.
func (c *wsConn) watch(ctx context.Context, revoked <-chan struct{}) {
	t := time.NewTicker(c.h.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.h.m.done:
			c.conn.Close(websocket.StatusGoingAway, "lease service shutting down")
			return
		case <-revoked:
			// Waiting acquires end before the client learns of the close:
			// nothing is granted on the revoked key's behalf afterwards.
			c.fs.Cancel()
			c.conn.Close(websocket.StatusPolicyViolation, "API key revoked")
			return
		case <-t.C:
			pctx, cancel := context.WithTimeout(ctx, c.h.cfg.PingInterval)
			err := c.conn.Ping(pctx)
			cancel()
			if err != nil {
				c.conn.CloseNow()
				return
			}
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// answer queues one answer for the writer, waiting while the queue is full.
func (c *wsConn) answer(b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for !c.closed && len(c.queue) >= maxQueuedAnswers {
		c.room.Wait()
	}
	if c.closed {
		return
	}
	c.queue = append(c.queue, b)
	if !c.writing {
		c.writing = true
		c.writers.Add(1)
		go c.write()
	}
}

// write sends queued answers until there are none: with batch, all those
// queued together in one frame.
func (c *wsConn) write() {
	defer c.writers.Done()
	for {
		c.gather()
		c.mu.Lock()
		q := c.queue
		if len(q) == 0 || c.closed {
			c.writing = false
			c.mu.Unlock()
			return
		}
		c.queue = nil
		c.room.Broadcast()
		c.mu.Unlock()
		if err := c.send(q); err != nil {
			c.conn.CloseNow()
			c.mu.Lock()
			c.closed = true
			c.writing = false
			c.room.Broadcast()
			c.mu.Unlock()
			return
		}
	}
}

// gather lets the operations that finished with the one that started the
// writer (a group commit ends many at once) queue their answers too, so
// they share a frame and a system call: it yields while the queue grows.
// It never sleeps, so a lone answer is not delayed.
func (c *wsConn) gather() {
	if !c.batch {
		return
	}
	prev := -1
	for range 8 {
		c.mu.Lock()
		n := len(c.queue)
		c.mu.Unlock()
		if n == prev {
			return
		}
		prev = n
		runtime.Gosched()
	}
}

func (c *wsConn) send(q [][]byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.h.cfg.WriteTimeout)
	defer cancel()
	if !c.batch || len(q) == 1 {
		for _, b := range q {
			if err := c.conn.Write(ctx, websocket.MessageText, b); err != nil {
				return err
			}
		}
		return nil
	}
	n := 1
	for _, b := range q {
		n += len(b) + 1
	}
	buf := make([]byte, 0, n)
	buf = append(buf, '[')
	for i, b := range q {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, b...)
	}
	buf = append(buf, ']')
	return c.conn.Write(ctx, websocket.MessageText, buf)
}

// refusal holds back the plain-text answer the WebSocket library gives a
// handshake it refuses (not an upgrade, a foreign origin), so that answer
// can send it as the API's JSON error instead.
type refusal struct {
	http.ResponseWriter
	status int
	msg    []byte
}

func (r *refusal) WriteHeader(code int) {
	if code >= 200 {
		r.status = code
		return
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *refusal) Write(p []byte) (int, error) {
	if r.status != 0 {
		r.msg = append(r.msg, p...)
		return len(p), nil
	}
	return r.ResponseWriter.Write(p)
}

func (r *refusal) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	return http.NewResponseController(r.ResponseWriter).Hijack()
}

// answer sends the refusal held back, if there is one, as a JSON error.
func (r *refusal) answer() {
	if r.status == 0 {
		return
	}
	// httpx.Code names 426 upgrade_required, the one status here outside
	// its list.
	httpx.WriteError(r.ResponseWriter, r.status, httpx.Code(r.status), strings.TrimSpace(string(r.msg)))
}

package lease

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/coder/websocket"
	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/internal/wsframe"
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
//
// The library does the handshake alone: the connection's frames are read
// and written by hand (internal/wsframe), so that an operation costs no
// goroutine of its own. The reader starts it (FrameSession's fast path);
// the journal's flusher settles it and queues the answer; the handler's
// one writer goroutine (writeQueue) sends each connection's queued answers
// with a write that does not wait for the socket, and only a write the
// socket cannot take at once gets a goroutine to finish it.
func (h *handler) serveWS(w http.ResponseWriter, r *http.Request, x, agent string) error {
	if isClosed(h.m.done) {
		return ErrClosed
	}
	q := r.URL.Query()
	batch := q.Get("batch") == "1" || q.Get("batch") == "true"
	hj := &wsframe.Hijacker{ResponseWriter: w}
	lib, err := websocket.Accept(hj, r, &websocket.AcceptOptions{CompressionMode: websocket.CompressionDisabled})
	if err != nil {
		hj.Answer()
		return nil
	}
	revoked, stop := (<-chan struct{})(nil), func() {}
	if kw, ok := h.cfg.Auth.(keyWatcher); ok {
		// Watched only now the connection is open: a key revoked since
		// Authenticate gets a closed channel, so nothing slips through.
		key, _ := httpx.Bearer(r)
		revoked, stop = kw.WatchKey(x, key)
	}
	c := &wsConn{h: h, lib: lib, fc: hj.Conn, rd: wsframe.NewReader(hj.Reader, int(h.cfg.MaxBodyBytes)), batch: batch}
	c.room.L = &c.mu
	c.fs = h.m.NewFrameSession(x, agent, c.answer)
	c.fs.async = true // answer never blocks
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
	lib   *websocket.Conn // the handshake's; only closed afterwards
	fc    *wsframe.Conn
	rd    *wsframe.Reader
	batch bool
	fs    *FrameSession

	seen    atomic.Bool // a frame arrived since the last ping
	closing atomic.Bool // a close frame went out

	mu       sync.Mutex
	room     sync.Cond // on mu: the queue has room again, or the connection closed
	queue    [][]byte  // answers waiting to be written
	spare    [][]byte  // the queue's other buffer, the flusher's
	wbuf     []byte    // the flusher's frames
	flushing bool      // a goroutine is writing the queue (flush)
	closed   bool
	writers  sync.WaitGroup
}

// serve reads frames until the connection ends, then winds the session
// down.
func (c *wsConn) serve(revoked <-chan struct{}) {
	ctx, cancel := context.WithCancel(context.Background())
	var watch sync.WaitGroup
	watch.Go(func() { c.watch(ctx, revoked) })
	for {
		op, data, err := c.rd.Next()
		switch {
		case errors.Is(err, wsframe.ErrTooBig):
			c.closeWith(wsframe.CloseMessageTooBig, "message too big")
			c.fc.Drain()
		case errors.Is(err, wsframe.ErrProtocol):
			c.closeWith(wsframe.CloseProtocolError, "protocol error")
			c.fc.Drain()
		}
		if err != nil {
			break
		}
		c.seen.Store(true)
		if op == wsframe.OpClose {
			c.closeWith(wsframe.CloseCode(data), "")
			break
		}
		if op == wsframe.OpPing {
			c.control(wsframe.Control(wsframe.OpPong, data))
			continue
		}
		if op == wsframe.OpPong || isClosed(revoked) || c.closing.Load() {
			continue // once the key is revoked, nothing more is done for it
		}
		if !c.waitRoom() {
			break
		}
		if op != wsframe.OpText {
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
	c.fc.End()
	c.fs.Close()
	watch.Wait()
	c.writers.Wait()
	c.lib.CloseNow()
}

// handle takes a frame of requests: one request, or a JSON array of them,
// which a client pipelining many calls sends to save a write per call. The
// frame's bytes are the reader's, reused for the next frame.
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

// waitRoom waits while the answers queued for the client are too many: a
// client that pipelines requests without reading the answers stops being
// read, and the server never buffers without bound. It reports false once
// the connection has closed.
func (c *wsConn) waitRoom() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for !c.closed && len(c.queue) >= maxQueuedAnswers {
		c.room.Wait()
	}
	return !c.closed
}

// watch pings the client and closes a connection that stopped answering,
// and closes the connection when the lease service shuts down or the key
// is revoked.
func (c *wsConn) watch(ctx context.Context, revoked <-chan struct{}) {
	t := time.NewTicker(c.h.cfg.PingInterval)
	defer t.Stop()
	pinged := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.h.m.done:
			c.closeWith(wsframe.CloseGoingAway, "lease service shutting down")
			return
		case <-revoked:
			// Waiting acquires end before the client learns of the close:
			// nothing is granted on the revoked key's behalf afterwards.
			c.fs.Cancel()
			c.closeWith(wsframe.ClosePolicyViolation, "API key revoked")
			return
		case <-t.C:
			if !c.seen.Swap(false) && pinged {
				c.fc.NetConn().Close() // no frame, not even a pong, for a whole interval
				return
			}
			pinged = true
			c.control(wsframe.Control(wsframe.OpPing, nil))
		}
	}
}

// control writes a control frame, waiting for the frame lock and the
// socket, within WriteTimeout.
func (c *wsConn) control(frame []byte) {
	c.fc.WriteControl(frame, c.h.cfg.WriteTimeout)
}

// closeWith sends the close frame, once, after which no data frame goes
// out. The client answers with its own close frame, which ends the reader,
// or the reader gives up after closeWait.
func (c *wsConn) closeWith(code int, reason string) {
	if c.closing.Swap(true) {
		return
	}
	c.fc.WriteClose(wsframe.CloseFrame(code, reason), c.h.cfg.WriteTimeout)
	c.fc.NetConn().SetReadDeadline(time.Now().Add(closeWait))
}

// closeWait bounds how long a server that sent a close frame reads on,
// waiting for the client's.
const closeWait = 5 * time.Second

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// answer queues one answer and, unless the connection's queue is being
// written already, hands the connection to the writer. It never blocks:
// it runs on the journal's flusher.
func (c *wsConn) answer(b []byte) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.queue = append(c.queue, b)
	if c.flushing {
		c.mu.Unlock()
		return
	}
	c.flushing = true
	c.mu.Unlock()
	c.h.out.push(c)
}

// writeQueue holds the connections with answers to write, for one goroutine
// to write them. The journal's flusher, which answers a batch of
// operations, then never waits for a system call of a socket, and syncs
// the next batch while the answers to this one go out.
type writeQueue struct {
	mu      sync.Mutex
	conns   []*wsConn
	spare   []*wsConn
	running bool // a writer goroutine is at work
}

// push queues c for writing (c.flushing is set), starting a writer
// goroutine unless one is at work. The writer lives only while there is
// work, so an idle server holds none.
func (q *writeQueue) push(c *wsConn) {
	q.mu.Lock()
	q.conns = append(q.conns, c)
	start := !q.running
	q.running = true
	q.mu.Unlock()
	if start {
		go q.write()
	}
}

func (q *writeQueue) write() {
	for {
		q.mu.Lock()
		cs := q.conns
		if len(cs) == 0 {
			q.running = false
			q.mu.Unlock()
			return
		}
		q.conns, q.spare = q.spare, nil
		q.mu.Unlock()
		for _, c := range cs {
			c.flush()
		}
		clear(cs)
		q.spare = cs[:0]
	}
}

// flush writes the queued answers until there are none, on the goroutine
// that set flushing, without waiting for the socket: what it cannot take
// at once a goroutine of its own finishes (finish), which then carries on.
func (c *wsConn) flush() {
	for {
		c.mu.Lock()
		q := c.queue
		if len(q) == 0 || c.closed {
			c.flushing = false
			c.mu.Unlock()
			return
		}
		c.queue, c.spare = c.spare, nil
		c.room.Broadcast()
		c.mu.Unlock()
		p := c.frames(q)
		clear(q)
		c.spare = q[:0]
		ok, err := c.fc.TryLock()
		if err != nil {
			c.stopFlushing()
			return
		}
		if !ok {
			c.writers.Add(1)
			go c.finish(p, false)
			return
		}
		rest, err := c.fc.TryWrite(p)
		if err != nil {
			c.fc.Unlock(err)
			c.fc.NetConn().Close()
			c.stopFlushing()
			return
		}
		if len(rest) > 0 {
			c.writers.Add(1)
			go c.finish(rest, true)
			return
		}
		c.fc.Unlock(nil)
	}
}

// finish writes p, the rest of the flusher's frames, waiting for the
// socket, then carries on flushing.
func (c *wsConn) finish(p []byte, locked bool) {
	defer c.writers.Done()
	if !locked {
		if err := c.fc.Lock(); err != nil {
			c.stopFlushing()
			return
		}
	}
	err := c.fc.WriteLocked(p, c.h.cfg.WriteTimeout)
	c.fc.Unlock(err)
	if err != nil {
		c.stopFlushing()
		return
	}
	c.flush()
}

// stopFlushing gives up on the queue: the connection is closing.
func (c *wsConn) stopFlushing() {
	c.mu.Lock()
	c.flushing = false
	c.queue = nil
	c.room.Broadcast()
	c.mu.Unlock()
}

// frames returns q as the frames to write, in the flusher's buffer: a frame
// per answer, or with batch one frame holding an array of them.
func (c *wsConn) frames(q [][]byte) []byte {
	b := c.wbuf[:0]
	if c.batch && len(q) > 1 {
		b = append(b, make([]byte, wsframe.Headroom)...)
		b = append(b, '[')
		for i, a := range q {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, a...)
		}
		b = wsframe.Frame(append(b, ']'))
	} else {
		for _, a := range q {
			start := len(b)
			b = append(b, make([]byte, wsframe.Headroom)...)
			b = append(b, a...)
			f := wsframe.Frame(b[start:])
			// The header goes right behind the previous frame.
			n := copy(b[start:], f)
			b = b[:start+n]
		}
	}
	if cap(b) <= maxKeptFrames {
		c.wbuf = b
	} else {
		c.wbuf = nil
	}
	return b
}

// maxKeptFrames is the largest buffer of frames the flusher keeps between
// writes.
const maxKeptFrames = 64 << 10

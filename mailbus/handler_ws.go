package mailbus

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"
	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/httpx"
)

// frame is a control frame on the WebSocket, in either direction. Client
// actions: subscribe, unsubscribe (Type), ack (MessageID), publish
// (Message), send (TargetAgent, Message), heartbeat. Server actions:
// welcome, subscribed, unsubscribed, acked, accepted (ID), error (Error,
// Code). Ref, when a client sets it, is echoed in the reply.
type frame struct {
	Action       string       `json:"action"`
	Ref          string       `json:"ref,omitempty"`
	Type         string       `json:"type,omitempty"`
	MessageID    string       `json:"messageId,omitempty"`
	TargetAgent  string       `json:"targetAgent,omitempty"`
	Message      *wireMessage `json:"message,omitempty"`
	ID           string       `json:"id,omitempty"`
	AgentID      string       `json:"agentId,omitempty"`
	Next         uint64       `json:"next,omitempty"`
	Subscription []string     `json:"subscriptions,omitempty"`
	Error        string       `json:"error,omitempty"`
	Code         string       `json:"code,omitempty"`
}

// wsOptions are what a connection asked for in its handshake.
type wsOptions struct {
	since    int64 // resume after this seq; negative: after the agent's cursor
	batch    bool  // messages and replies may share an array frame
	welcome  bool  // send the welcome frame first
	setTypes bool  // replace the subscriptions with types
	types    []string
}

// subscribe serves GET /subscribe?since=&types=&batch=1&agentId=.
func (h *handler) subscribe(w http.ResponseWriter, r *http.Request, c caller) {
	q := r.URL.Query()
	if q.Has("agentId") && q.Get("agentId") != c.agent {
		httpx.WriteError(w, http.StatusForbidden, httpx.CodeForbidden, "agentId is not the agent of this API key")
		return
	}
	since, ok := parseSince(w, r)
	if !ok {
		return
	}
	opts := wsOptions{since: since, batch: q.Get("batch") == "1" || q.Get("batch") == "true", welcome: true, setTypes: q.Has("types")}
	if opts.setTypes {
		for t := range strings.SplitSeq(q.Get("types"), ",") {
			if t = strings.TrimSpace(t); t != "" {
				opts.types = append(opts.types, t)
			}
		}
		if err := checkPatterns(opts.types); err != nil {
			h.fail(w, err)
			return
		}
	}
	h.serveWS(w, r, c, opts)
}

// serveWS upgrades the request and serves the connection.
func (h *handler) serveWS(w http.ResponseWriter, r *http.Request, c caller, opts wsOptions) {
	ctx := r.Context()
	ex, err := h.b.exchange(ctx, c.exchange)
	if err != nil {
		h.fail(w, err)
		return
	}
	if !h.b.enter() {
		h.fail(w, ErrClosed)
		return
	}
	lh := &leanHijacker{ResponseWriter: w, raw: h.raw}
	// Data frames written by hand (wsraw.go) carry no RSV bits, so no
	// extension may be negotiated: compression stays off whatever the
	// library's default.
	conn, err := websocket.Accept(lh, r, &websocket.AcceptOptions{
		OriginPatterns:  h.cfg.OriginPatterns,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		h.b.leave()
		lh.answer()
		return
	}
	if opts.setTypes {
		// Only now that the handshake succeeded: a refused one changes
		// nothing.
		if err := h.b.SetSubscriptions(ctx, c.exchange, c.agent, opts.types); err != nil {
			_, code, msg := errorStatus(err)
			if code == httpx.CodeInternal {
				h.cfg.Logger.Error("mailbus: subscribe failed", "err", err)
			}
			conn.Close(websocket.StatusInternalError, msg)
			h.b.leave()
			return
		}
	}
	// The connection lives until the client goes, the server kicks the
	// session, or a ping or write fails. An idle connection costs one
	// parked goroutine with a small stack: the welcome is sent from the
	// HTTP handler's goroutine, which then returns (the connection is
	// hijacked, so that frees the request and its deep stack); the reader
	// starts afresh; writes run on the goroutine that has something to
	// deliver, or on short-lived goroutines like pings, only when there
	// is something to do.
	ws, ok := h.open(conn, lh.fc, ex, c, opts)
	if !ok {
		conn.CloseNow()
		h.b.leave()
		return
	}
	go func() {
		defer h.b.leave()
		defer conn.CloseNow()
		ws.serve()
	}()
}

// open attaches the connection to the agent's session and sends the
// welcome frame.
func (h *handler) open(conn *websocket.Conn, fc *frameConn, ex *exchange, c caller, opts wsOptions) (*wsConn, bool) {
	conn.SetReadLimit(h.cfg.MaxBodyBytes)
	ctx, cancel := context.WithCancel(context.Background())
	ws := &wsConn{h: h, conn: conn, c: c, batch: opts.batch, ctx: ctx, cancel: cancel}
	ws.room.L = &ws.mu
	if fc != nil {
		ws.fw = newRawFrames(fc, func() { conn.CloseNow() }, h.cfg.WriteTimeout)
	} else {
		ws.fw = &libFrames{conn: conn, timeout: h.cfg.WriteTimeout}
	}
	s, err := ex.attach(c.agent, opts.since, ws.poke)
	if err != nil {
		conn.Close(websocket.StatusGoingAway, "server shutting down")
		cancel()
		return nil, false
	}
	if opts.welcome {
		subs, _ := h.b.Subscriptions(ctx, c.exchange, c.agent)
		s.a.mu.Lock()
		next := s.next
		s.a.mu.Unlock()
		ws.reply(ctx, frame{Action: "welcome", AgentID: c.agent, Next: next, Subscription: subs})
	}
	ws.mu.Lock()
	ws.s = s
	ws.ping = time.AfterFunc(h.cfg.PingInterval, ws.pingOnce)
	ws.mu.Unlock()
	ws.poke()
	return ws, true
}

// serve reads frames until the connection ends, then detaches.
func (ws *wsConn) serve() {
	defer ws.cancel()
	s := ws.s
	ws.readLoop(ws.ctx)
	s.kick(nil)
	ws.mu.Lock()
	ws.closed = true
	ws.room.Broadcast()
	ws.ping.Stop()
	ws.mu.Unlock()
	// A ping in flight waits for its pong until ctx ends: without this it
	// would hold the connection open for up to a ping interval after the
	// peer went.
	ws.cancel()
	ws.work.Wait()
	ws.pending.Wait()
	s.detach()
}

func (ws *wsConn) closeWith(err error) {
	// No data frame may follow the close frame.
	ws.fw.end()
	switch {
	case errors.Is(err, ErrClosed):
		ws.conn.Close(websocket.StatusGoingAway, "server shutting down")
	case errors.Is(err, errReload):
		ws.conn.Close(websocket.StatusTryAgainLater, "storage failure: reconnect")
	default:
		ws.conn.Close(websocket.StatusNormalClosure, "")
	}
}

type wsConn struct {
	h       *handler
	conn    *websocket.Conn
	fw      frameWriter // data frames go through it
	c       caller
	batch   bool
	ctx     context.Context
	cancel  context.CancelFunc
	pending sync.WaitGroup // replies waiting for durability

	// Reused by flushes (one at a time, handed over under mu).
	buf []byte
	ds  []delivery

	mu      sync.Mutex
	s       *session // nil until the welcome frame is out
	closed  bool
	running bool      // a flush is active
	dirty   bool      // something may be waiting since the flush last looked
	replies [][]byte  // encoded reply frames waiting for the flush
	room    sync.Cond // on mu: replies has room again, or the connection closed
	waitq   chan owed // replies owed, in order; nil until the first pipelined write
	ping    *time.Timer
	work    sync.WaitGroup // flush and ping goroutines
}

// poke makes sure the session's deliveries get written. The caller's
// goroutine writes them for as long as the socket takes them without
// waiting, up to inlineFrames frames: a broadcast to a thousand
// connections then costs a few goroutines, not one per connection. What
// may wait (a full socket, replies, the close handshake) is left to a
// flush goroutine.
func (ws *wsConn) poke() {
	ws.mu.Lock()
	ws.dirty = true
	if ws.running || ws.closed || ws.s == nil {
		ws.mu.Unlock()
		return
	}
	ws.running = true
	ws.work.Add(1)
	buf, ds := ws.buf, ws.ds
	ws.mu.Unlock()
	ws.flush(inlineFrames, buf, ds)
}

// inlineFrames bounds the frames poke writes on its caller's goroutine, so
// a reconnecting agent's replay does not hold up the others a broadcast
// wakes.
const inlineFrames = 4

// queueReplies hands replies to the flush goroutine, which writes them as
// one frame for clients that take batches. It waits while maxQueuedReplies
// are already queued: a client that pipelines writes without reading the
// replies then stalls the waiter, the waiter's queue fills, and the reader
// stops taking its frames, instead of the replies piling up in memory.
func (ws *wsConn) queueReplies(rs [][]byte) {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	for !ws.closed && len(ws.replies) >= maxQueuedReplies {
		ws.room.Wait()
	}
	if ws.closed {
		return
	}
	ws.replies = append(ws.replies, rs...)
	ws.dirty = true
	if ws.running || ws.s == nil {
		return
	}
	ws.running = true
	ws.work.Add(1)
	go ws.flush(-1, ws.buf, ws.ds)
}

// takeReplies hands the queued replies to the flush. Caller holds mu.
func (ws *wsConn) takeReplies() [][]byte {
	rs := ws.replies
	ws.replies = nil
	if len(rs) > 0 {
		ws.room.Broadcast()
	}
	return rs
}

// maxQueuedReplies bounds the replies queued for one connection's flush.
const maxQueuedReplies = 4096

// maxRef bounds a frame's ref, which every reply echoes.
const maxRef = 128

// flush writes replies and deliveries until there are none, then clears
// running. budget >= 0 means it runs on a poking goroutine and may write
// that many frames without waiting; the first thing that would wait goes
// to a new goroutine with the buffers, which owns the flush from then on.
// budget < 0 means the flush has a goroutine of its own and may wait.
func (ws *wsConn) flush(budget int, buf []byte, ds []delivery) {
	inline := budget >= 0
	handed := false
	defer func() {
		if !handed {
			ws.work.Done()
		}
	}()
	fail := func() {
		ws.conn.CloseNow()
		ws.stop()
	}
	n := 1
	if ws.batch {
		n = ws.h.cfg.BatchMax
	}
	for {
		ws.mu.Lock()
		if !ws.dirty || ws.closed {
			ws.running = false
			// Keep small buffers for the next flush, which cannot start
			// before mu is released.
			if cap(buf) <= maxKeptBuffer && cap(ds) <= maxKeptDeliveries {
				ws.buf, ws.ds = buf[:0], ds[:0]
			}
			ws.mu.Unlock()
			return
		}
		if inline && (len(ws.replies) > 0 || isDone(ws.s.gone)) {
			ws.mu.Unlock()
			handed = true
			go ws.flush(-1, buf, ds)
			return
		}
		ws.dirty = false
		replies := ws.takeReplies()
		ws.mu.Unlock()
		if !ws.writeReplies(replies) {
			fail()
			return
		}
		if isDone(ws.s.gone) {
			if inline {
				// Gone since the look above. The close handshake may
				// wait on the peer: not on a goroutine waking others.
				ws.mu.Lock()
				ws.dirty = true
				ws.mu.Unlock()
				handed = true
				go ws.flush(-1, buf, ds)
				return
			}
			// Say why before the reader sees the connection end.
			ws.closeWith(ws.s.err)
			ws.stop()
			return
		}
		for more := true; more; {
			ds, more = ws.s.take(n, ds[:0])
			if len(ds) == 0 {
				break
			}
			buf = append(buf[:0], make([]byte, frameHeadroom)...)
			if len(ds) > 1 {
				buf = append(buf, '[')
			}
			for i := range ds {
				if i > 0 {
					buf = append(buf, ',')
				}
				buf = ds[i].appendJSON(buf, ws.c.agent)
			}
			if len(ds) > 1 {
				buf = append(buf, ']')
			}
			clear(ds)
			if !inline {
				if ws.fw.write(buf) != nil {
					fail()
					return
				}
				continue
			}
			whole, err := ws.fw.tryWrite(buf)
			if err != nil {
				fail()
				return
			}
			if budget--; !whole || budget == 0 {
				// The goroutine finishes the frame (what is left of it
				// lies in buf), then takes another look.
				ws.mu.Lock()
				ws.dirty = true
				ws.mu.Unlock()
				handed = true
				go ws.resume(!whole, buf, ds)
				return
			}
		}
	}
}

// resume takes over a flush from a poking goroutine: it finishes the frame
// that goroutine could not (unfinished), then goes on.
func (ws *wsConn) resume(unfinished bool, buf []byte, ds []delivery) {
	if unfinished {
		if err := ws.fw.finish(); err != nil {
			ws.conn.CloseNow()
			ws.stop()
			ws.work.Done()
			return
		}
	}
	ws.flush(-1, buf, ds)
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// writeReplies writes queued replies: one array frame for batch clients,
// one frame each otherwise.
func (ws *wsConn) writeReplies(rs [][]byte) bool {
	if len(rs) == 0 {
		return true
	}
	if !ws.batch || len(rs) == 1 {
		for _, r := range rs {
			if ws.fw.write(framed(r)) != nil {
				return false
			}
		}
		return true
	}
	n := frameHeadroom + 2
	for _, r := range rs {
		n += len(r) + 1
	}
	buf := make([]byte, frameHeadroom, n)
	buf = append(buf, '[')
	for i, r := range rs {
		if i > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, r...)
	}
	return ws.fw.write(append(buf, ']')) == nil
}

// A connection keeps its flush buffers between flushes only while they are
// this small: the live path reuses them, and a replay's large ones are not
// held by every idle connection afterwards.
const (
	maxKeptBuffer     = 4 << 10
	maxKeptDeliveries = 8
)

// framed copies p behind frameHeadroom.
func framed(p []byte) []byte {
	return append(make([]byte, frameHeadroom, frameHeadroom+len(p)), p...)
}

// stop marks the flush loop finished for good.
func (ws *wsConn) stop() {
	ws.mu.Lock()
	ws.running = false
	ws.closed = true
	ws.room.Broadcast()
	ws.mu.Unlock()
}

// pingOnce pings and re-arms; a missing pong ends the connection, which
// ends the reader.
func (ws *wsConn) pingOnce() {
	ws.mu.Lock()
	if ws.closed {
		ws.mu.Unlock()
		return
	}
	ws.work.Add(1)
	ws.mu.Unlock()
	defer ws.work.Done()
	ctx, cancel := context.WithTimeout(ws.ctx, ws.h.pongTimeout)
	err := ws.conn.Ping(ctx)
	cancel()
	if err != nil {
		ws.conn.CloseNow()
		return
	}
	ws.mu.Lock()
	if !ws.closed {
		ws.ping.Reset(ws.h.cfg.PingInterval)
	}
	ws.mu.Unlock()
}

func (ws *wsConn) reply(ctx context.Context, f frame) {
	if ctx.Err() != nil {
		return
	}
	b, _ := json.Marshal(f)
	_ = ws.fw.write(framed(b))
}

func (ws *wsConn) replyErr(ctx context.Context, ref string, err error) {
	_, code, msg := errorStatus(err)
	if code == httpx.CodeInternal {
		ws.h.cfg.Logger.Error("mailbus: frame failed", "err", err)
	}
	ws.reply(ctx, frame{Action: "error", Ref: ref, Error: msg, Code: code})
}

func (ws *wsConn) readLoop(ctx context.Context) {
	// The reader is the only sender on waitq; closing it lets the waiter
	// finish the replies still owed and exit.
	defer func() {
		ws.mu.Lock()
		if ws.waitq != nil {
			close(ws.waitq)
		}
		ws.mu.Unlock()
	}()
	for {
		typ, r, err := ws.conn.Reader(ctx)
		if err != nil {
			return
		}
		if ws.dispatch(ctx, typ, r) != nil {
			return
		}
	}
}

// dispatch decodes and handles one frame. It is kept out of readLoop so the
// frame it decodes is not on the stack of a reader parked between frames:
// an idle connection's stack then fits in 4 KiB.
//
//go:noinline
func (ws *wsConn) dispatch(ctx context.Context, typ websocket.MessageType, r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if typ != websocket.MessageText {
		ws.replyErr(ctx, "", fmt.Errorf("%w: binary frames are not supported", ErrInvalid))
		return nil
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		ws.reply(ctx, frame{Action: "error", Error: "malformed frame: " + err.Error(), Code: httpx.CodeMalformedJSON})
		return nil
	}
	ws.handle(ctx, f)
	return nil
}

func (ws *wsConn) handle(ctx context.Context, f frame) {
	b, c := ws.h.b, ws.c
	if len(f.Ref) > maxRef {
		ws.replyErr(ctx, "", fmt.Errorf("%w: ref longer than %d bytes", ErrInvalid, maxRef))
		return
	}
	switch f.Action {
	case "subscribe", "unsubscribe":
		var err error
		if f.Action == "subscribe" {
			err = b.Subscribe(ctx, c.exchange, c.agent, f.Type)
		} else {
			err = b.Unsubscribe(ctx, c.exchange, c.agent, f.Type)
		}
		if err != nil {
			ws.replyErr(ctx, f.Ref, err)
			return
		}
		ws.reply(ctx, frame{Action: f.Action + "d", Ref: f.Ref, Type: f.Type})
	case "ack":
		ex, err := b.exchange(ctx, c.exchange)
		var result <-chan error
		if err == nil {
			result, err = ex.ackAsync(c.agent, f.MessageID)
		}
		ws.later(ctx, f, result, err, frame{Action: "acked", Ref: f.Ref, MessageID: f.MessageID})
	case "publish", "send":
		if f.Message == nil {
			ws.replyErr(ctx, f.Ref, fmt.Errorf("%w: %s frame without message", ErrInvalid, f.Action))
			return
		}
		m := f.Message.message()
		if f.Action == "send" {
			if !ValidID(f.TargetAgent) || (m.To != "" && m.To != f.TargetAgent) {
				ws.replyErr(ctx, f.Ref, fmt.Errorf("%w: targetAgent %q", ErrInvalid, f.TargetAgent))
				return
			}
			m.To = f.TargetAgent
		}
		out, result, err := b.publishAsync(ctx, c.exchange, c.agent, m)
		ws.later(ctx, f, result, err, frame{Action: "accepted", Ref: f.Ref, ID: out.ID})
	case "heartbeat":
		if err := b.Heartbeat(ctx, c.exchange, c.agent); err != nil {
			ws.replyErr(ctx, f.Ref, err)
		}
	default:
		ws.reply(ctx, frame{Action: "error", Ref: f.Ref, Error: fmt.Sprintf("unknown action %q", f.Action), Code: httpx.CodeInvalid})
	}
}

// later sends ok once result reports durability, without holding up the
// reader, so one connection can pipeline many writes. Replies are settled
// in order by one waiter goroutine per connection (started on first use),
// which gathers those that completed in the same group commit.
func (ws *wsConn) later(ctx context.Context, f frame, result <-chan error, err error, ok frame) {
	if err != nil {
		ws.replyErr(ctx, f.Ref, err)
		return
	}
	if result == nil {
		ws.reply(ctx, ok)
		return
	}
	ws.mu.Lock()
	if ws.waitq == nil {
		// Its capacity bounds the writes a client can have in flight;
		// beyond it the reader stalls, which backs the client off.
		ws.waitq = make(chan owed, 1024)
		ws.pending.Go(ws.waiter)
	}
	q := ws.waitq
	ws.mu.Unlock()
	select {
	case q <- owed{result: result, ok: ok}:
	case <-ctx.Done():
	}
}

// owed is a reply waiting for its write to become durable.
type owed struct {
	result <-chan error
	ok     frame
}

func (ws *wsConn) waiter() {
	var held *owed
	for {
		p := held
		held = nil
		if p == nil {
			o, more := <-ws.waitq
			if !more {
				return
			}
			p = &o
		}
		out := [][]byte{ws.settle(p)}
		open := true
	gather:
		for {
			select {
			case o, more := <-ws.waitq:
				if !more {
					open = false
					break gather
				}
				if len(o.result) == 0 {
					held = &o
					break gather
				}
				out = append(out, ws.settle(&o))
			default:
				break gather
			}
		}
		ws.queueReplies(out)
		if !open {
			return
		}
	}
}

// settle waits for p's write and encodes its reply.
func (ws *wsConn) settle(p *owed) []byte {
	f := p.ok
	if err := <-p.result; err != nil {
		_, code, msg := errorStatus(err)
		if code == httpx.CodeInternal {
			ws.h.cfg.Logger.Error("mailbus: frame failed", "err", err)
		}
		f = frame{Action: "error", Ref: p.ok.Ref, Error: msg, Code: code}
		b, _ := json.Marshal(f)
		return b
	}
	// The common replies, encoded without reflection.
	b := make([]byte, 0, 96)
	b = append(b, `{"action":`...)
	b = appendString(b, f.Action)
	if f.Ref != "" {
		b = append(b, `,"ref":`...)
		b = appendString(b, f.Ref)
	}
	if f.MessageID != "" {
		b = append(b, `,"messageId":`...)
		b = appendString(b, f.MessageID)
	}
	if f.ID != "" {
		b = append(b, `,"id":`...)
		b = appendString(b, f.ID)
	}
	return append(b, '}')
}

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
// connWriteBuffer sized buffers. With raw set it keeps the connection as a
// frameConn (fc, nil where the connection has no raw descriptor), through
// which the library's frames go too.
//
// It also holds back the plain-text answer the library gives a handshake
// it refuses, for answer to send as the API's JSON error instead.
type leanHijacker struct {
	http.ResponseWriter
	raw bool
	fc  *frameConn

	status int    // a refusal's status, held back
	msg    []byte // and its text
}

func (l *leanHijacker) WriteHeader(code int) {
	if code >= 200 {
		l.status = code
		return
	}
	l.ResponseWriter.WriteHeader(code)
}

func (l *leanHijacker) Write(p []byte) (int, error) {
	if l.status != 0 {
		l.msg = append(l.msg, p...)
		return len(p), nil
	}
	return l.ResponseWriter.Write(p)
}

// answer sends the refusal held back, if there is one, as a JSON error.
func (l *leanHijacker) answer() {
	if l.status == 0 {
		return
	}
	// httpx.Code names 426 upgrade_required, the one status here outside
	// its list.
	httpx.WriteError(l.ResponseWriter, l.status, httpx.Code(l.status), strings.TrimSpace(string(l.msg)))
}

func (l *leanHijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(l.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	var w io.Writer = c
	if l.raw {
		if l.fc = newFrameConn(c); l.fc != nil {
			w = l.fc
		}
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
	return c, bufio.NewReadWriter(bufio.NewReaderSize(r, connReadBuffer), bufio.NewWriterSize(w, connWriteBuffer)), nil
}

// writeRaw selects the hand-written frame path (wsraw.go) where the
// platform has one; false sends every frame through the WebSocket library.
// NewHandler reads it; tests set it to run on both paths.
var writeRaw = true

// frameWriter writes a connection's data frames. Each buffer holds the
// payload at buf[frameHeadroom:]; the headroom in front is the writer's.
// A failed write leaves the connection closed.
type frameWriter interface {
	// write sends one text frame, waiting for the socket if it must.
	write(buf []byte) error
	// tryWrite sends one text frame as far as that needs no waiting, and
	// reports whether it went out whole. If not, finish must complete it,
	// before buf is used again and on a goroutine that may wait.
	tryWrite(buf []byte) (whole bool, err error)
	finish() error
	// end stops data frames, because a close frame follows.
	end()
}

// libFrames writes data frames through the WebSocket library.
type libFrames struct {
	conn    *websocket.Conn
	timeout time.Duration
	pending []byte // the frame tryWrite left to finish
}

func (l *libFrames) write(buf []byte) error {
	// The library closes the connection when a write times out.
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout)
	defer cancel()
	return l.conn.Write(ctx, websocket.MessageText, buf[frameHeadroom:])
}

// tryWrite leaves every frame to finish: a library write may wait.
func (l *libFrames) tryWrite(buf []byte) (bool, error) {
	l.pending = buf
	return false, nil
}

func (l *libFrames) finish() error {
	buf := l.pending
	l.pending = nil
	return l.write(buf)
}

// end does nothing: the library refuses data frames after its close frame.
func (l *libFrames) end() {}

// frameHeadroom is the space a frame's payload leaves in front of it for
// the header (at most 10 bytes from a server), so header and payload go out
// in one write without copying.
const frameHeadroom = 10

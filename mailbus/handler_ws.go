package mailbus

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"
	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/internal/wsframe"
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
	Leases       bool         `json:"leases,omitempty"` // welcome: lease frames are served
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
	if err == nil {
		// Fixed before the handshake completes: a client may act as soon
		// as the socket is open (HttpMailBus resolves initialize then),
		// and mail published from then on must reach this connection,
		// even an agent's first, which joins the bus here.
		opts.since, err = ex.startAt(c.agent, opts.since)
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	if !h.b.enter() {
		h.fail(w, ErrClosed)
		return
	}
	lh := &wsframe.Hijacker{ResponseWriter: w}
	// Frames written by hand (wsraw.go, and every control frame) carry no
	// RSV bits, so no extension may be negotiated: compression stays off
	// whatever the library's default.
	conn, err := websocket.Accept(lh, r, &websocket.AcceptOptions{
		OriginPatterns:  h.cfg.OriginPatterns,
		CompressionMode: websocket.CompressionDisabled,
	})
	if err != nil {
		h.b.leave()
		lh.Answer()
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
	ws, ok := h.open(conn, lh, ex, c, opts)
	if !ok {
		conn.CloseNow()
		h.b.leave()
		return
	}
	if kw, ok := h.cfg.Auth.(keyWatcher); ok {
		key, _ := httpx.Bearer(r)
		// Watched only now the session is open: a key revoked since
		// Authenticate gets a closed channel, so nothing slips through.
		var stop func()
		ws.revokedc, stop = kw.WatchKey(c.exchange, key)
		ws.work.Add(1)
		go ws.watchKey(stop)
	}
	go func() {
		defer h.b.leave()
		defer conn.CloseNow()
		ws.serve()
	}()
}

// keyWatcher is what an Authenticator offers when it can tell that a key
// stopped admitting its holder (mess.ExecutorAuth does): the channel is
// closed then, and stop releases the watch.
type keyWatcher interface {
	WatchKey(exchangeID, key string) (revoked <-chan struct{}, stop func())
}

// errRevoked ends a connection whose API key was revoked.
var errRevoked = errors.New("mailbus: API key revoked")

// watchKey closes the connection with 1008 (policy violation) as soon as
// its key is revoked, and releases the watch when the connection ends
// either way.
func (ws *wsConn) watchKey(stop func()) {
	defer ws.work.Done()
	defer stop()
	select {
	case <-ws.revokedc:
		ws.cancelLeases()
		ws.closeWith(errRevoked)
	case <-ws.ctx.Done():
	}
}

// revoked reports whether the connection's key was revoked; frames read
// after that are not acted on.
func (ws *wsConn) revoked() bool {
	select {
	case <-ws.revokedc:
		return true
	default:
		return false
	}
}

// open attaches the connection to the agent's session and sends the
// welcome frame.
func (h *handler) open(conn *websocket.Conn, lh *wsframe.Hijacker, ex *exchange, c caller, opts wsOptions) (*wsConn, bool) {
	ctx, cancel := context.WithCancel(context.Background())
	ws := &wsConn{h: h, conn: conn, fc: lh.Conn, rd: wsframe.NewReader(lh.Reader, int(h.cfg.MaxBodyBytes)),
		c: c, batch: opts.batch, ctx: ctx, cancel: cancel, pong: make(chan struct{}, 1)}
	ws.room.L = &ws.mu
	if h.raw {
		ws.fw = newRawFrames(ws.fc, func() { conn.CloseNow() }, h.cfg.WriteTimeout)
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
		ws.reply(ctx, frame{Action: "welcome", AgentID: c.agent, Next: next, Subscription: subs, Leases: h.cfg.Leases != nil})
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
	ws.closeLeases()
	// A ping in flight waits for its pong until ctx ends: without this it
	// would hold the connection open for up to a ping interval after the
	// peer went.
	ws.cancel()
	ws.work.Wait()
	ws.pending.Wait()
	s.detach()
}

// closeWith sends the close frame for err, after which no frame goes out;
// the client's close frame, or closeWait, ends the reader.
func (ws *wsConn) closeWith(err error) {
	code, reason := wsframe.CloseNormal, ""
	switch {
	case errors.Is(err, ErrClosed) && ws.h.b.replaced():
		code, reason = wsframe.CloseTryAgainLater, "this server no longer writes the mail bus: reconnect"
	case errors.Is(err, ErrClosed):
		code, reason = wsframe.CloseGoingAway, "server shutting down"
	case errors.Is(err, errReload):
		code, reason = wsframe.CloseTryAgainLater, "storage failure: reconnect"
	case errors.Is(err, errRevoked):
		code, reason = wsframe.ClosePolicyViolation, "API key revoked"
	}
	ws.closeCode(code, reason)
}

// closeCode sends a close frame with code and reason, once: no frame
// follows it.
func (ws *wsConn) closeCode(code int, reason string) {
	if ws.fc.WriteClose(wsframe.CloseFrame(code, reason), ws.h.cfg.WriteTimeout) == nil {
		ws.fc.NetConn().SetReadDeadline(time.Now().Add(closeWait))
	}
}

// closeWait bounds how long a server that sent a close frame reads on,
// waiting for the client's.
const closeWait = 5 * time.Second

// maxRef bounds a frame's ref, which every reply echoes.
const maxRef = 128

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
	select {
	case <-ws.pong: // a pong that came unasked, or too late for the last ping
	default:
	}
	if ws.fc.WriteControl(wsframe.Control(wsframe.OpPing, nil), ws.h.cfg.WriteTimeout) != nil {
		return
	}
	t := time.NewTimer(ws.h.cfg.PongTimeout)
	defer t.Stop()
	select {
	case <-ws.pong:
	case <-ws.ctx.Done():
		return
	case <-t.C:
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
		op, data, err := ws.rd.Next()
		switch {
		case errors.Is(err, wsframe.ErrTooBig):
			ws.closeCode(wsframe.CloseMessageTooBig, "message too big")
			ws.fc.Drain()
		case errors.Is(err, wsframe.ErrProtocol):
			ws.closeCode(wsframe.CloseProtocolError, "protocol error")
			ws.fc.Drain()
		}
		if err != nil {
			return
		}
		switch op {
		case wsframe.OpPing:
			ws.fc.WriteControl(wsframe.Control(wsframe.OpPong, data), ws.h.cfg.WriteTimeout)
			continue
		case wsframe.OpPong:
			select {
			case ws.pong <- struct{}{}:
			default:
			}
			continue
		case wsframe.OpClose:
			ws.closeCode(wsframe.CloseCode(data), "")
			return
		}
		err = ws.dispatch(ctx, op, data)
		// The message is decoded (what is kept is copied): an idle
		// connection holds no buffer.
		ws.rd.Release()
		if err != nil {
			return
		}
	}
}

// dispatch decodes and handles one frame. It is kept out of readLoop so the
// frame it decodes is not on the stack of a reader parked between frames:
// an idle connection's stack then fits in 4 KiB.
//
//go:noinline
func (ws *wsConn) dispatch(ctx context.Context, op wsframe.Opcode, data []byte) error {
	if ws.revoked() {
		// watchKey is closing the connection; nothing more is done on
		// the revoked key's behalf.
		return nil
	}
	if op != wsframe.OpText {
		ws.replyErr(ctx, "", fmt.Errorf("%w: binary frames are not supported", ErrInvalid))
		return nil
	}
	if !utf8.Valid(data) {
		// RFC 6455 would close with 1007; an error frame keeps the
		// connection, as for any other bad frame, and stores nothing.
		ws.replyErr(ctx, "", fmt.Errorf("%w: frame is not valid UTF-8", ErrInvalid))
		return nil
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		// The decoder's message may quote a cut multi-byte character.
		msg := strings.ToValidUTF8("malformed frame: "+err.Error(), "\uFFFD")
		ws.reply(ctx, frame{Action: "error", Error: msg, Code: httpx.CodeMalformedJSON})
		return nil
	}
	if ws.leaseFrame(f.Action, data) {
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
	var held owed
	holding := false
	for {
		var p owed
		if holding {
			p, holding = held, false
		} else {
			o, more := <-ws.waitq
			if !more {
				return
			}
			p = o
		}
		// The replies settled together share one buffer: a reply is
		// rarely longer than replySize.
		buf := make([]byte, 0, replySize*(1+len(ws.waitq)))
		buf = ws.settle(&p, buf)
		out := [][]byte{buf[:len(buf):len(buf)]}
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
					held, holding = o, true
					break gather
				}
				n := len(buf)
				buf = ws.settle(&o, buf)
				out = append(out, buf[n:len(buf):len(buf)])
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

// replySize is about the length of an accepted frame.
const replySize = 96

// settle waits for p's write and appends its reply to buf.
func (ws *wsConn) settle(p *owed, buf []byte) []byte {
	f := p.ok
	if err := <-p.result; err != nil {
		_, code, msg := errorStatus(err)
		if code == httpx.CodeInternal {
			ws.h.cfg.Logger.Error("mailbus: frame failed", "err", err)
		}
		f = frame{Action: "error", Ref: p.ok.Ref, Error: msg, Code: code}
		b, _ := json.Marshal(f)
		return append(buf, b...)
	}
	// The common replies, encoded without reflection.
	b := append(buf, `{"action":`...)
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

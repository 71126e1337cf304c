package mailbus

// How a connection's frames get written: deliveries, replies and pings
// share one wsConn, whose flush writes on the goroutine that has something
// to deliver while the socket takes it, and otherwise on a goroutine of its
// own. Data frames go through a frameWriter: the hand-written one of
// wsraw.go, or the WebSocket library's.

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/internal/wsframe"
	"github.com/meatspace-exchange/mess/lease"
)

// wsConn is one WebSocket connection of an agent.
type wsConn struct {
	h      *handler
	conn   *websocket.Conn // the handshake's; its frames go through fc
	fc     *wsframe.Conn
	rd     *wsframe.Reader // the reader's alone
	fw     frameWriter     // data frames go through it
	c      caller
	batch  bool
	ctx    context.Context
	cancel context.CancelFunc
	// revokedc is closed when the API key that opened the connection is
	// revoked; nil (never closed) when the Authenticator cannot tell.
	revokedc <-chan struct{}
	pending  sync.WaitGroup // replies waiting for durability

	// leases serves lease frames; started by the first one (leaseframes.go).
	leases atomic.Pointer[lease.FrameSession]

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
	pong    chan struct{}  // a pong came
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
			// before mu is released; larger ones go back to the pool.
			if cap(buf) <= maxKeptBuffer && cap(ds) <= maxKeptDeliveries {
				ws.buf, ws.ds = buf[:0], ds[:0]
			} else {
				ws.buf, ws.ds = nil, nil
				putFlushBufs(buf, ds)
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
		if buf == nil {
			// A fan-out wakes a thousand connections whose frames are
			// larger than what an idle one keeps: growing a buffer from
			// nothing for each would cost more than writing it.
			buf, ds = getFlushBufs()
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

// flushBufs holds the buffers of flushes that outgrew what a connection
// keeps, for the next flush of any connection.
var flushBufs sync.Pool

type flushBuf struct {
	buf []byte
	ds  []delivery
}

// maxPooledBuffer is the largest flush buffer pooled: a replay's frames
// may be far larger than the live path's.
const maxPooledBuffer = 1 << 20

func getFlushBufs() ([]byte, []delivery) {
	if b, ok := flushBufs.Get().(*flushBuf); ok {
		return b.buf[:0], b.ds[:0]
	}
	return make([]byte, 0, maxKeptBuffer), nil
}

func putFlushBufs(buf []byte, ds []delivery) {
	if cap(buf) > maxPooledBuffer {
		return
	}
	clear(ds[:cap(ds)])
	flushBufs.Put(&flushBuf{buf: buf[:0], ds: ds[:0]})
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

// frameHeadroom is the space a frame's payload leaves in front of it for
// the header.
const frameHeadroom = wsframe.Headroom

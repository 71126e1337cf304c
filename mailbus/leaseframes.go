package mailbus

// Lease frames on the mail bus WebSocket: an agent's connection carries
// lease.acquire, lease.renew, lease.release, lease.status and lease.cancel
// frames as well (lease frames v1, see lease.FrameSession), so an agent
// takes its leases without an HTTP round trip each. The server side runs
// them through a lease.FrameSession per connection; Client sends its
// AcquireLease, ReleaseLease and IsLeased calls that way while connected.

import (
	"context"
	"errors"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/lease"
)

// leaseFrame hands a lease frame to the connection's lease session,
// started on first use, and reports whether it took the frame. Only the
// reader calls it.
func (ws *wsConn) leaseFrame(action string, data []byte) bool {
	m := ws.h.cfg.Leases
	if m == nil || !lease.IsFrameAction(action) {
		return false
	}
	s := ws.leases.Load()
	if s == nil {
		s = m.NewFrameSession(ws.c.exchange, ws.c.agent, ws.leaseAnswer)
		ws.leases.Store(s)
	}
	s.Handle(data)
	return true
}

// leaseAnswer queues a lease answer with the connection's other replies,
// waiting while too many are queued: a client that does not read its
// answers then holds up its lease operations, and the reader stops.
func (ws *wsConn) leaseAnswer(b []byte) { ws.queueReplies([][]byte{b}) }

// cancelLeases ends the connection's waiting acquires at once, when its
// key is revoked: nothing is granted on the key's behalf afterwards.
func (ws *wsConn) cancelLeases() {
	if s := ws.leases.Load(); s != nil {
		s.Cancel()
	}
}

// closeLeases ends the lease session once the reader has stopped: waiting
// acquires stop waiting, and the operations in flight finish.
func (ws *wsConn) closeLeases() {
	if s := ws.leases.Load(); s != nil {
		s.Close()
	}
}

// newLeaseFrames returns the FrameClient of a connection whose welcome
// said it serves lease frames.
func newLeaseFrames(conn *websocket.Conn) *lease.FrameClient {
	return lease.NewFrameClient(func(ctx context.Context, frame []byte) error {
		// A write the caller abandons would close the connection: bound it
		// by time instead.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		return conn.Write(wctx, websocket.MessageText, frame)
	})
}

// leaseAnswer hands a control frame to the lease calls waiting for
// answers, and reports whether it was one.
func (c *Client) leaseAnswer(action string, data []byte) bool {
	if action != "error" && !lease.IsFrameAction(action) {
		return false
	}
	f := c.leaseFrames.Load()
	return f != nil && f.Answer(data)
}

// busLeaser is a remote Client's default Leaser: lease frames on the
// client's connection while it is up and the server serves them, the
// lease service's HTTP API otherwise.
type busLeaser struct {
	c    *Client
	http *lease.Client
}

func (l busLeaser) Acquire(ctx context.Context, name string, ttl time.Duration) (lease.Grant, error) {
	if f := l.c.leaseFrames.Load(); f != nil {
		g, err := f.AcquireWait(ctx, name, ttl, 0)
		if !errors.Is(err, lease.ErrDisconnected) {
			return g, err
		}
		// Lost before the answer: the holder's acquire is safe to repeat.
	}
	return l.http.Acquire(ctx, name, ttl)
}

func (l busLeaser) Release(ctx context.Context, name string, token uint64) error {
	if f := l.c.leaseFrames.Load(); f != nil {
		// Not repeated when the connection is lost: a repeat would be
		// refused if the first went through.
		return f.Release(ctx, name, token)
	}
	return l.http.Release(ctx, name, token)
}

func (l busLeaser) Status(ctx context.Context, name string) (lease.Status, error) {
	if f := l.c.leaseFrames.Load(); f != nil {
		st, err := f.Status(ctx, name)
		if !errors.Is(err, lease.ErrDisconnected) {
			return st, err
		}
	}
	return l.http.Status(ctx, name)
}

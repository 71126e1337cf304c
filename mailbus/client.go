package mailbus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/lease"
)

// ClientConfig configures a remote Client. Every zero field has the
// default named in its comment.
type ClientConfig struct {
	// URL is the server's base URL, e.g. "http://127.0.0.1:8080". Required.
	URL string
	// Exchange and APIKey identify the agent; the server derives the agent
	// id from the key. Required.
	Exchange, APIKey string
	// HTTPClient is used for HTTP calls and the WebSocket handshake. Zero
	// means a client with a 30s timeout on HTTP calls.
	HTTPClient *http.Client
	// Leaser serves the lease calls. Zero means lease frames on the
	// client's WebSocket while it is connected and the server serves them,
	// and lease.NewClient's HTTP calls on the same server and key
	// otherwise.
	Leaser Leaser
	// ManualAck turns off automatic acknowledgement of ackRequired
	// messages whose handlers all returned nil.
	ManualAck bool
	// OnError receives handler failures and connection errors. Zero drops
	// them.
	OnError func(error)
	// MinBackoff and MaxBackoff bound the reconnect delay, which doubles
	// per failed attempt with full jitter. Zero means 100ms and 10s.
	MinBackoff, MaxBackoff time.Duration
}

// Client is a remote agent over WebSocket. It reconnects with exponential
// backoff and jitter, resumes after the last sequence it received (no gap,
// no duplicate apart from redelivered unacknowledged messages, which it
// deduplicates by id), and never reconnects after Close. Use it from
// any goroutine.
type Client struct {
	cfg    ClientConfig
	hc     *http.Client
	base   string
	d      *dispatcher
	leases leases
	// leaseFrames carries lease calls on the live connection; nil while
	// there is none or its server serves no lease frames.
	leaseFrames atomic.Pointer[lease.FrameClient]

	mu      sync.Mutex
	agentID string
	conn    *websocket.Conn
	lastSeq uint64
	started bool
	closed  bool
	stop    chan struct{}
	done    chan struct{}
}

var _ MailBus = (*Client)(nil)

// NewClient returns a client; Connect starts it.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%w: ClientConfig.URL %q must be an http(s) URL", ErrInvalid, cfg.URL)
	}
	if !ValidID(cfg.Exchange) || cfg.APIKey == "" {
		return nil, fmt.Errorf("%w: ClientConfig needs a valid Exchange and an APIKey", ErrInvalid)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 100 * time.Millisecond
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 10 * time.Second
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 30 * time.Second}
	}
	base := strings.TrimRight(cfg.URL, "/")
	c := &Client{cfg: cfg, hc: hc, base: base, stop: make(chan struct{}), done: make(chan struct{})}
	if cfg.Leaser == nil {
		lc, err := lease.NewClient(lease.ClientConfig{BaseURL: base, Exchange: cfg.Exchange, APIKey: cfg.APIKey, HTTPClient: hc})
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		cfg.Leaser = busLeaser{c: c, http: lc}
	}
	c.leases = leases{l: cfg.Leaser}
	c.d = newDispatcher(c.ack, cfg.OnError, cfg.ManualAck)
	return c, nil
}

// AgentID implements MailBus; it is empty until the first connection.
func (c *Client) AgentID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.agentID
}

// LastSeq is the highest inbox sequence received so far.
func (c *Client) LastSeq() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastSeq
}

func (c *Client) endpoint(op string) string {
	return c.base + "/api/v1/exchanges/" + c.cfg.Exchange + "/mailbus/" + op
}

// Connect dials the server and starts receiving. It returns the first
// dial's error; later disconnects are retried in the background.
// Subscribe before Connect so the first connection already carries the
// subscriptions.
func (c *Client) Connect(ctx context.Context) error {
	// Held through the handshake, which carries the subscriptions; it also
	// makes a concurrent Connect wait for this one and then find it done.
	if err := c.d.lockSubs(ctx); err != nil {
		return err
	}
	defer c.d.unlockSubs()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	if c.started {
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()
	conn, err := c.dial(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		conn.CloseNow()
		return ErrClosed
	}
	c.started = true
	c.mu.Unlock()
	go c.run(conn)
	return nil
}

// dial opens a connection resuming after lastSeq, with this client's
// subscriptions, and reads the welcome frame. The caller holds the
// dispatcher's subLock. It fails with ErrClosed once Close has begun.
func (c *Client) dial(ctx context.Context) (*websocket.Conn, error) {
	q := url.Values{}
	q.Set("batch", "1")
	q.Set("types", strings.Join(c.d.patterns(), ","))
	c.mu.Lock()
	if c.agentID != "" {
		q.Set("since", strconv.FormatUint(c.lastSeq, 10))
	}
	c.mu.Unlock()
	u := "ws" + strings.TrimPrefix(c.endpoint("subscribe"), "http") + "?" + q.Encode()
	hdr := http.Header{}
	hdr.Set("Authorization", "Bearer "+c.cfg.APIKey)
	// The handshake must not inherit the HTTP client's whole-request
	// timeout: it would cut the long-lived connection.
	hc := *c.hc
	hc.Timeout = 0
	conn, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: &hc, HTTPHeader: hdr})
	if err != nil {
		if resp != nil {
			return nil, statusError(resp.StatusCode, err)
		}
		return nil, fmt.Errorf("mailbus: dial: %w", err)
	}
	conn.SetReadLimit(64 << 20)
	_, data, err := conn.Read(ctx)
	if err != nil {
		conn.CloseNow()
		return nil, fmt.Errorf("mailbus: read welcome: %w", err)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil || f.Action != "welcome" {
		conn.CloseNow()
		return nil, fmt.Errorf("mailbus: unexpected first frame %.100s", data)
	}
	c.mu.Lock()
	if c.closed {
		// Close found no connection to close; this one must not live.
		c.mu.Unlock()
		conn.CloseNow()
		return nil, ErrClosed
	}
	c.agentID = f.AgentID
	if f.Leases {
		c.leaseFrames.Store(newLeaseFrames(conn))
	}
	if f.Next > 0 {
		// Normally since+1. More: the first connection (the server's
		// cursor), or retention dropped what we had not seen. Less: the
		// server has fewer messages than we saw (its data was replaced);
		// mail it numbers from there on must not be taken for old.
		c.lastSeq = f.Next - 1
	}
	c.conn = conn
	c.mu.Unlock()
	return conn, nil
}

func statusError(code int, err error) error {
	switch code {
	case http.StatusUnauthorized:
		return fmt.Errorf("%w: %v", ErrUnauthorized, err)
	case http.StatusForbidden:
		return fmt.Errorf("%w: %v", ErrForbidden, err)
	case http.StatusBadRequest:
		return fmt.Errorf("%w: %v", ErrInvalid, err)
	case http.StatusConflict:
		return fmt.Errorf("%w: %v", ErrConflict, err)
	}
	return fmt.Errorf("mailbus: HTTP %d: %w", code, err)
}

func (c *Client) run(conn *websocket.Conn) {
	defer close(c.done)
	attempt := 0
	for {
		err := c.read(conn)
		if f := c.leaseFrames.Swap(nil); f != nil {
			f.Fail(err)
		}
		c.mu.Lock()
		c.conn = nil
		closed := c.closed
		c.mu.Unlock()
		conn.CloseNow()
		if closed {
			return
		}
		c.d.onError(fmt.Errorf("mailbus: connection lost: %w", err))
		for {
			if attempt < 30 {
				attempt++
			}
			backoff := min(c.cfg.MinBackoff<<min(attempt-1, 20), c.cfg.MaxBackoff)
			select {
			case <-c.stop:
				return
			case <-time.After(rand.N(backoff) + time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			go func() {
				select {
				case <-c.stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			derr := c.d.lockSubs(ctx)
			if derr == nil {
				conn, derr = c.dial(ctx)
				c.d.unlockSubs()
			}
			cancel()
			if derr == nil {
				attempt = 0
				break
			}
			if errors.Is(derr, ErrClosed) {
				return
			}
			if errors.Is(derr, ErrUnauthorized) || errors.Is(derr, ErrForbidden) {
				c.d.onError(derr)
				return
			}
			c.d.onError(derr)
		}
	}
}

// read consumes frames until the connection fails.
func (c *Client) read(conn *websocket.Conn) error {
	for {
		_, data, err := conn.Read(context.Background())
		if err != nil {
			return err
		}
		data = bytes.TrimSpace(data)
		if len(data) > 0 && data[0] == '[' {
			// A batch: messages, or replies that completed together.
			var elems []json.RawMessage
			if err := json.Unmarshal(data, &elems); err != nil {
				c.d.onError(fmt.Errorf("mailbus: bad frame: %w", err))
				continue
			}
			ms := make([]Message, 0, len(elems))
			for _, e := range elems {
				if m, ok := c.parse(e); ok {
					ms = append(ms, m)
				}
			}
			c.deliver(ms)
			continue
		}
		if m, ok := c.parse(data); ok {
			c.deliver([]Message{m})
		}
	}
}

// parse decodes one frame element; control frames are handled here and
// report false.
func (c *Client) parse(data []byte) (Message, bool) {
	var m struct {
		Message
		Action string `json:"action"`
		Error  string `json:"error"`
		Code   string `json:"code"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		c.d.onError(fmt.Errorf("mailbus: bad frame: %w", err))
		return Message{}, false
	}
	if m.Action != "" {
		if c.leaseAnswer(m.Action, data) {
			return Message{}, false
		}
		if m.Action == "error" {
			c.d.onError(fmt.Errorf("mailbus: server: %s (%s)", m.Error, m.Code))
		}
		return Message{}, false
	}
	return m.Message, true
}

// deliver drops messages already received (by seq) unless they are
// redeliveries of unacknowledged messages, and queues the rest.
func (c *Client) deliver(ms []Message) {
	out := ms[:0]
	c.mu.Lock()
	for _, m := range ms {
		switch {
		case m.Seq == 0: // heartbeat: live only
		case m.Seq > c.lastSeq:
			c.lastSeq = m.Seq
		case !m.AckRequired || m.AckedAt != nil:
			continue
		}
		out = append(out, m)
	}
	c.mu.Unlock()
	if len(out) > 0 {
		c.d.push(out...)
	}
}

// Close implements MailBus.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	conn, started := c.conn, c.started
	c.mu.Unlock()
	close(c.stop)
	// Lease calls in flight get their answers first; later ones go over
	// HTTP.
	if f := c.leaseFrames.Swap(nil); f != nil {
		f.Drain(ctx)
	}
	if conn != nil {
		// The close handshake waits for the server's answer, up to the
		// library's own 5 s (which CloseNow cannot cut short once it has
		// begun). It finishes in the background if ctx ends first.
		go conn.Close(websocket.StatusNormalClosure, "client shutdown")
	}
	var err error
	if started {
		select {
		case <-c.done:
		case <-ctx.Done():
			err = ctx.Err()
		}
	}
	// Handlers still queued run now; their acknowledgements go over HTTP,
	// the connection being gone. With ctx over, this aborts them at once.
	if derr := c.d.close(ctx); err == nil {
		err = derr
	}
	return err
}

// do makes one HTTP call and decodes a JSON answer into out.
func (c *Client) do(ctx context.Context, method, op string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.endpoint(op), body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.cfg.APIKey)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("mailbus: %s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("mailbus: %s: %w", op, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct{ Error, Code string }
		_ = json.Unmarshal(data, &e)
		base := statusError(resp.StatusCode, errors.New(e.Error))
		if resp.StatusCode == http.StatusNotFound {
			base = fmt.Errorf("%w: %s", ErrNotFound, e.Error)
		}
		return fmt.Errorf("mailbus: %s: %w", op, base)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("mailbus: %s: decode answer: %w", op, err)
		}
	}
	return nil
}

func (c *Client) checkOpen() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	return nil
}

// Publish implements MailBus. It returns once the server stored m.
func (c *Client) Publish(ctx context.Context, m Message) (Message, error) {
	if err := c.checkOpen(); err != nil {
		return Message{}, err
	}
	var out Message
	err := c.do(ctx, http.MethodPost, "publish", m, &out)
	return out, err
}

// SendTo implements MailBus. It returns once the server stored m.
func (c *Client) SendTo(ctx context.Context, agentID string, m Message) (Message, error) {
	if err := c.checkOpen(); err != nil {
		return Message{}, err
	}
	var out Message
	req := struct {
		TargetAgent string  `json:"targetAgent"`
		Message     Message `json:"message"`
	}{agentID, m}
	err := c.do(ctx, http.MethodPost, "send", req, &out)
	return out, err
}

// Subscribe implements MailBus. Before Connect it only registers the
// handler; the connection carries it.
func (c *Client) Subscribe(ctx context.Context, pattern string, h Handler) (*Subscription, error) {
	if err := c.checkOpen(); err != nil {
		return nil, err
	}
	if err := c.d.lockSubs(ctx); err != nil {
		return nil, err
	}
	defer c.d.unlockSubs()
	s, isNew, err := c.d.add(pattern, h)
	if err != nil || !isNew {
		return s, err
	}
	if err := c.syncSubscriptions(ctx); err != nil {
		c.d.remove(s)
		return nil, err
	}
	return s, nil
}

// Unsubscribe implements MailBus.
func (c *Client) Unsubscribe(ctx context.Context, s *Subscription) error {
	if s == nil {
		return nil
	}
	if err := c.d.lockSubs(ctx); err != nil {
		return err
	}
	defer c.d.unlockSubs()
	if !c.d.remove(s) {
		return nil
	}
	return c.syncSubscriptions(ctx)
}

// syncSubscriptions puts this client's patterns on the server once it has
// connected (the handshake carries them before). The caller holds the
// dispatcher's subLock.
func (c *Client) syncSubscriptions(ctx context.Context) error {
	c.mu.Lock()
	started := c.started
	c.mu.Unlock()
	if !started {
		return nil
	}
	return c.do(ctx, http.MethodPut, "subscriptions", subscriptionsBody{Types: c.d.patterns()}, nil)
}

// Acknowledge implements MailBus.
func (c *Client) Acknowledge(ctx context.Context, messageID string) error {
	return c.do(ctx, http.MethodPost, "acknowledge", ackRequest{MessageID: messageID}, nil)
}

// ack is the dispatcher's automatic acknowledgement: a frame on the live
// connection when there is one (cheap, and a lost one only means one more
// redelivery), HTTP otherwise.
func (c *Client) ack(ctx context.Context, id string) error {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		b, _ := json.Marshal(frame{Action: "ack", MessageID: id})
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if conn.Write(wctx, websocket.MessageText, b) == nil {
			return nil
		}
	}
	// Also after Close: the handlers it lets finish still acknowledge.
	return c.Acknowledge(ctx, id)
}

// SendHeartbeat implements MailBus.
func (c *Client) SendHeartbeat(ctx context.Context) error {
	c.mu.Lock()
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		// A cancelled write closes the connection; bound it by time instead.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		err := conn.Write(wctx, websocket.MessageText, []byte(`{"action":"heartbeat"}`))
		cancel()
		if err == nil {
			return nil
		}
	}
	return c.do(ctx, http.MethodPost, "heartbeat", struct{}{}, nil)
}

// AcquireLease implements MailBus.
func (c *Client) AcquireLease(ctx context.Context, file string, ttl time.Duration) (lease.Grant, error) {
	return c.leases.acquire(ctx, file, ttl)
}

// ReleaseLease implements MailBus.
func (c *Client) ReleaseLease(ctx context.Context, file string) error {
	return c.leases.release(ctx, file)
}

// IsLeased implements MailBus.
func (c *Client) IsLeased(ctx context.Context, file string) (LeaseStatus, error) {
	return c.leases.status(ctx, file)
}

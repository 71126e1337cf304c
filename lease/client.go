package lease

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/internal/wsframe"
)

// ClientConfig configures a Client. Every zero field has the default
// named in its comment.
type ClientConfig struct {
	// BaseURL is the server's root, e.g. "http://127.0.0.1:8080". Required.
	BaseURL string
	// Exchange is the exchange id and APIKey the agent's key in it; the
	// server derives the agent id from the key. Required.
	Exchange, APIKey string
	// HTTPClient sends the requests. Zero means a client with its own
	// connection pool and no overall timeout: calls are bounded by their
	// ctx, and a blocking acquire may rightly take as long as its wait.
	HTTPClient *http.Client
}

// Client calls the lease API v1 of one exchange as the agent that owns
// its API key, over HTTP, or over the lease WebSocket once Connect has
// opened it. It is safe for concurrent use.
type Client struct {
	base string // .../api/v1/exchanges/{id}/leases/
	key  string
	hc   *http.Client

	fc atomic.Pointer[FrameClient] // the open WebSocket's; nil while there is none

	mu      sync.Mutex
	conn    *wsframe.ClientConn
	started bool               // Connect succeeded once
	life    context.Context    // ended by Close
	end     context.CancelFunc // ends life
	done    chan struct{}      // closed when the connection's goroutine ends
}

// NewClient returns a client for the lease API described by cfg.
func NewClient(cfg ClientConfig) (*Client, error) {
	u, err := url.Parse(cfg.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("lease: ClientConfig.BaseURL %q must be an http(s) URL", cfg.BaseURL)
	}
	if err := validID(cfg.Exchange); err != nil {
		return nil, fmt.Errorf("lease: ClientConfig.Exchange: %w", err)
	}
	if cfg.APIKey == "" {
		return nil, errors.New("lease: ClientConfig.APIKey is required")
	}
	hc := cfg.HTTPClient
	if hc == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 256
		hc = &http.Client{Transport: t}
	}
	life, end := context.WithCancel(context.Background())
	return &Client{
		base: strings.TrimRight(cfg.BaseURL, "/") + "/api/v1/exchanges/" + url.PathEscape(cfg.Exchange) + "/leases/",
		key:  cfg.APIKey,
		hc:   hc,
		life: life,
		end:  end,
		done: make(chan struct{}),
	}, nil
}

// CloseIdleConnections closes the client's idle keep-alive connections.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// APIError is an error answer from the server. It unwraps to the
// package's sentinel for its code and field (ErrStaleToken for
// "stale_token", ErrInvalidTTL for "invalid_input" about "ttlMs", ...), so
// callers test it with errors.Is like in-process errors.
type APIError struct {
	StatusCode int
	Code       string
	// Field is the request member an invalid_input error is about.
	Field   string
	Message string
}

func (e *APIError) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("lease: server: %d %s (%s): %s", e.StatusCode, e.Code, e.Field, e.Message)
	}
	return fmt.Sprintf("lease: server: %d %s: %s", e.StatusCode, e.Code, e.Message)
}

var codeErrors = map[string]error{
	codeStaleToken:         ErrStaleToken,
	codeNotHeld:            ErrNotHeld,
	httpx.CodeUnauthorized: ErrUnauthorized,
	httpx.CodeForbidden:    ErrForbidden,
	httpx.CodeUnavailable:  ErrClosed,
}

var fieldErrors = map[string]error{
	"file":        ErrInvalidName,
	"ttlMs":       ErrInvalidTTL,
	"agentId":     ErrInvalidID,
	"exchange_id": ErrInvalidID,
	"token":       ErrInvalidToken,
}

// Unwrap returns the sentinel matching the error code, if any.
func (e *APIError) Unwrap() error {
	if e.Code == httpx.CodeInvalid {
		return fieldErrors[e.Field]
	}
	return codeErrors[e.Code]
}

func (c *Client) do(ctx context.Context, method, op string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+op, body)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+c.key)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return fmt.Errorf("lease: %s: %w", op, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return fmt.Errorf("lease: %s: read response: %w", op, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e errorResponse
		if json.Unmarshal(data, &e) != nil || e.Code == "" {
			e = errorResponse{Code: httpx.Code(resp.StatusCode), Error: strings.TrimSpace(string(data))}
		}
		return &APIError{StatusCode: resp.StatusCode, Code: e.Code, Field: e.Field, Message: e.Error}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("lease: %s: decode response: %w", op, err)
	}
	return nil
}

func ms(d time.Duration) int64 {
	// Round up so a sub-millisecond TTL is not sent as zero.
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

func (j leaseJSON) grant() Grant {
	return Grant{Name: j.File, Holder: j.AgentID, Token: j.Token, ExpiresAt: time.UnixMilli(j.ExpiresAt)}
}

// Acquire asks for the lease on name for ttl. When another agent holds it,
// the error is a *HeldError (errors.Is(err, ErrHeld)).
func (c *Client) Acquire(ctx context.Context, name string, ttl time.Duration) (Grant, error) {
	return c.AcquireWait(ctx, name, ttl, 0)
}

// AcquireWait is Acquire that waits on the server up to wait for a held
// lease, in first-come-first-served order.
func (c *Client) AcquireWait(ctx context.Context, name string, ttl, wait time.Duration) (Grant, error) {
	if f := c.fc.Load(); f != nil {
		g, err := f.AcquireWait(ctx, name, ttl, wait)
		if !errors.Is(err, ErrDisconnected) {
			return g, err
		}
		// Lost before the answer came. An acquire is safe to repeat: if the
		// first one was granted, the holder's acquire returns that grant.
	}
	var resp acquireResponse
	if err := c.do(ctx, http.MethodPost, "acquire", acquireRequest{File: name, TTLMs: ms(ttl), WaitMs: ms(wait)}, &resp); err != nil {
		return Grant{}, err
	}
	if !resp.Acquired {
		return Grant{}, &HeldError{Name: resp.File, Holder: resp.AgentID, ExpiresAt: time.UnixMilli(resp.ExpiresAt)}
	}
	return Grant{Name: resp.File, Holder: resp.AgentID, Token: resp.Token, ExpiresAt: time.UnixMilli(resp.ExpiresAt)}, nil
}

// Renew extends the lease granted with token to ttl from now (never
// shortening it). Errors match ErrStaleToken or ErrNotHeld.
func (c *Client) Renew(ctx context.Context, name string, token uint64, ttl time.Duration) (Grant, error) {
	if f := c.fc.Load(); f != nil {
		g, err := f.Renew(ctx, name, token, ttl)
		if !errors.Is(err, ErrDisconnected) {
			return g, err
		}
		// A renewal is safe to repeat.
	}
	var resp renewResponse
	if err := c.do(ctx, http.MethodPost, "renew", renewRequest{File: name, Token: token, TTLMs: ms(ttl)}, &resp); err != nil {
		return Grant{}, err
	}
	return resp.grant(), nil
}

// Release gives up the client's lease on name, as Manager.Release does: a
// token of 0 releases the agent's current lease, a non-zero one must be
// the current grant's. A refusal is an error matching ErrNotHeld or
// ErrStaleToken. A release sent over the WebSocket whose connection is
// lost before the answer is not repeated, since a repeat would be refused
// if the first went through: the error matches ErrDisconnected.
func (c *Client) Release(ctx context.Context, name string, token uint64) error {
	if f := c.fc.Load(); f != nil {
		return f.Release(ctx, name, token)
	}
	var resp releaseResponse
	return c.do(ctx, http.MethodPost, "release", releaseRequest{File: name, Token: token}, &resp)
}

// Status reports the lease on name.
func (c *Client) Status(ctx context.Context, name string) (Status, error) {
	if f := c.fc.Load(); f != nil {
		st, err := f.Status(ctx, name)
		if !errors.Is(err, ErrDisconnected) {
			return st, err
		}
	}
	var st Status
	err := c.do(ctx, http.MethodPost, "status", statusRequest{File: name}, &st)
	return st, err
}

// List returns the live leases of the exchange, only agentID's when it is
// not empty. It always goes over HTTP, as ReleaseAll does.
func (c *Client) List(ctx context.Context, agentID string) ([]Grant, error) {
	var resp listResponse
	op := "list"
	if agentID != "" {
		op += "?agent=" + url.QueryEscape(agentID)
	}
	if err := c.do(ctx, http.MethodGet, op, nil, &resp); err != nil {
		return nil, err
	}
	out := make([]Grant, 0, len(resp.Leases))
	for _, l := range resp.Leases {
		out = append(out, l.grant())
	}
	return out, nil
}

// ReleaseAll releases every lease the client's agent holds and returns how
// many were released.
func (c *Client) ReleaseAll(ctx context.Context) (int, error) {
	var resp releaseAllResponse
	err := c.do(ctx, http.MethodPost, "release-all", struct{}{}, &resp)
	return resp.Released, err
}

package lease

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/httpx"
)

// FrameClient makes lease calls as lease frames (see FrameSession) on a
// WebSocket that its owner writes and reads: Client's own lease WebSocket,
// or a mail bus connection. Calls from many goroutines are pipelined on the
// connection; each waits for the answer with its ref. The owner hands every
// frame it reads to Answer and calls Fail when the connection is lost.
// A FrameClient is safe for concurrent use.
type FrameClient struct {
	send func(ctx context.Context, frame []byte) error

	mu    sync.Mutex
	next  uint64
	calls map[string]chan frameReply
	err   error         // set by Fail
	idle  chan struct{} // closed when calls empties, for Drain
}

// frameReply is any answer to a lease frame.
type frameReply struct {
	Action      string `json:"action"`
	Ref         string `json:"ref"`
	Acquired    bool   `json:"acquired"`
	IsLeased    bool   `json:"isLeased"`
	File        string `json:"file"`
	AgentID     string `json:"agentId"`
	Token       uint64 `json:"token"`
	ExpiresAt   int64  `json:"expiresAt"`
	RemainingMs int64  `json:"remainingMs"`
	Error       string `json:"error"`
	Code        string `json:"code"`
	Field       string `json:"field"`
}

// NewFrameClient returns a FrameClient that writes each request frame with
// send, which must be safe for concurrent use and give up when its ctx
// ends.
func NewFrameClient(send func(ctx context.Context, frame []byte) error) *FrameClient {
	return &FrameClient{send: send, calls: map[string]chan frameReply{}}
}

// Answer takes a frame the owner read (one JSON object) and reports
// whether it answered one of f's calls; a frame that did not is the
// owner's to handle.
func (f *FrameClient) Answer(frame []byte) bool {
	var r frameReply
	if json.Unmarshal(frame, &r) != nil {
		return false
	}
	return f.deliver(r)
}

// answerAll takes a frame of the lease WebSocket: one answer, or a JSON
// array of answers.
func (f *FrameClient) answerAll(frame []byte) {
	for i, b := range frame {
		switch b {
		case ' ', '\t', '\r', '\n':
			continue
		case '[':
			var rs []frameReply
			if json.Unmarshal(frame[i:], &rs) == nil {
				for _, r := range rs {
					f.deliver(r)
				}
			}
			return
		}
		f.Answer(frame)
		return
	}
}

func (f *FrameClient) deliver(r frameReply) bool {
	if r.Ref == "" || (r.Action != "error" && !IsFrameAction(r.Action)) {
		return false
	}
	f.mu.Lock()
	c, ok := f.calls[r.Ref]
	f.removeLocked(r.Ref)
	f.mu.Unlock()
	if ok {
		c <- r
	}
	return ok
}

// Fail ends every call waiting for an answer, and every later call, with
// an error wrapping ErrDisconnected and err: the connection is gone.
func (f *FrameClient) Fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return
	}
	if err == nil {
		err = ErrDisconnected
	}
	f.err = err
	for ref, c := range f.calls {
		f.removeLocked(ref)
		close(c)
	}
}

// removeLocked forgets the call with ref. f.mu is held.
func (f *FrameClient) removeLocked(ref string) {
	delete(f.calls, ref)
	if len(f.calls) == 0 && f.idle != nil {
		close(f.idle)
		f.idle = nil
	}
}

// Drain waits until no call waits for an answer, or ctx ends: the owner
// closing the connection lets the calls in flight finish first.
func (f *FrameClient) Drain(ctx context.Context) error {
	for {
		f.mu.Lock()
		if len(f.calls) == 0 {
			f.mu.Unlock()
			return nil
		}
		if f.idle == nil {
			f.idle = make(chan struct{})
		}
		idle := f.idle
		f.mu.Unlock()
		select {
		case <-idle:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// call sends req with a fresh ref and waits for its answer. A waiting
// acquire whose ctx ends is cancelled on the server.
func (f *FrameClient) call(ctx context.Context, req frameRequest) (frameReply, error) {
	c := make(chan frameReply, 1)
	f.mu.Lock()
	if f.err != nil {
		err := f.err
		f.mu.Unlock()
		return frameReply{}, disconnected(err)
	}
	f.next++
	req.Ref = "L" + strconv.FormatUint(f.next, 36)
	f.calls[req.Ref] = c
	f.mu.Unlock()
	b, err := json.Marshal(req)
	if err == nil {
		err = f.send(ctx, b)
	}
	if err != nil {
		f.forget(req.Ref)
		if ctx.Err() != nil {
			return frameReply{}, ctx.Err()
		}
		f.Fail(err)
		return frameReply{}, disconnected(err)
	}
	select {
	case r, ok := <-c:
		if !ok {
			f.mu.Lock()
			err := f.err
			f.mu.Unlock()
			return frameReply{}, disconnected(err)
		}
		return r, nil
	case <-ctx.Done():
		f.forget(req.Ref)
		if req.WaitMs > 0 {
			// Best effort: a lost cancel leaves the waiter queued until
			// its wait runs out, as a lost HTTP request would.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
			if b, err := json.Marshal(frameHead{Action: "lease.cancel", Ref: req.Ref}); err == nil {
				_ = f.send(cctx, b)
			}
			cancel()
		}
		return frameReply{}, ctx.Err()
	}
}

func (f *FrameClient) forget(ref string) {
	f.mu.Lock()
	f.removeLocked(ref)
	f.mu.Unlock()
}

// disconnected wraps err in ErrDisconnected unless it is already.
func disconnected(err error) error {
	if err == ErrDisconnected {
		return err
	}
	return &disconnectedError{err}
}

type disconnectedError struct{ err error }

func (e *disconnectedError) Error() string   { return "lease: connection lost: " + e.err.Error() }
func (e *disconnectedError) Unwrap() []error { return []error{ErrDisconnected, e.err} }

// codeStatus is the HTTP status of each error code, for APIError.
var codeStatus = map[string]int{
	httpx.CodeInvalid:       http.StatusBadRequest,
	httpx.CodeMalformedJSON: http.StatusBadRequest,
	httpx.CodeUnauthorized:  http.StatusUnauthorized,
	httpx.CodeForbidden:     http.StatusForbidden,
	httpx.CodeNotFound:      http.StatusNotFound,
	httpx.CodeConflict:      http.StatusConflict,
	codeStaleToken:          http.StatusConflict,
	codeNotHeld:             http.StatusConflict,
	httpx.CodeTooLarge:      http.StatusRequestEntityTooLarge,
	httpx.CodeUnavailable:   http.StatusServiceUnavailable,
	httpx.CodeInternal:      http.StatusInternalServerError,
}

// apiError is the error an error frame stands for, the one the HTTP API's
// answer would give.
func (r frameReply) apiError() error {
	status, ok := codeStatus[r.Code]
	if !ok {
		status = http.StatusInternalServerError
	}
	return &APIError{StatusCode: status, Code: r.Code, Field: r.Field, Message: r.Error}
}

// AcquireWait is Client.AcquireWait as a frame; wait 0 is Acquire.
func (f *FrameClient) AcquireWait(ctx context.Context, name string, ttl, wait time.Duration) (Grant, error) {
	r, err := f.call(ctx, frameRequest{Action: "lease.acquire", File: name, TTLMs: ms(ttl), WaitMs: ms(wait)})
	switch {
	case err != nil:
		return Grant{}, err
	case r.Action == "error":
		return Grant{}, r.apiError()
	case !r.Acquired:
		return Grant{}, &HeldError{Name: r.File, Holder: r.AgentID, ExpiresAt: time.UnixMilli(r.ExpiresAt)}
	}
	return r.grant(), nil
}

// Renew is Client.Renew as a frame.
func (f *FrameClient) Renew(ctx context.Context, name string, token uint64, ttl time.Duration) (Grant, error) {
	r, err := f.call(ctx, frameRequest{Action: "lease.renew", File: name, Token: token, TTLMs: ms(ttl)})
	switch {
	case err != nil:
		return Grant{}, err
	case r.Action == "error":
		return Grant{}, r.apiError()
	}
	return r.grant(), nil
}

// Release is Client.Release as a frame.
func (f *FrameClient) Release(ctx context.Context, name string, token uint64) error {
	r, err := f.call(ctx, frameRequest{Action: "lease.release", File: name, Token: token})
	switch {
	case err != nil:
		return err
	case r.Action == "error":
		return r.apiError()
	}
	return nil
}

// Status is Client.Status as a frame.
func (f *FrameClient) Status(ctx context.Context, name string) (Status, error) {
	r, err := f.call(ctx, frameRequest{Action: "lease.status", File: name})
	switch {
	case err != nil:
		return Status{}, err
	case r.Action == "error":
		return Status{}, r.apiError()
	}
	return Status{IsLeased: r.IsLeased, AgentID: r.AgentID, ExpiresAt: r.ExpiresAt, Token: r.Token, RemainingMs: r.RemainingMs}, nil
}

func (r frameReply) grant() Grant {
	return Grant{Name: r.File, Holder: r.AgentID, Token: r.Token, ExpiresAt: time.UnixMilli(r.ExpiresAt)}
}

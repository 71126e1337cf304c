package lease

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	json "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/httpx"
)

// Lease frames v1, the lease API as JSON text frames on a WebSocket, are
// described in the package doc. This file is the server side
// (FrameSession); frameclient.go is the client side.

// MaxRefLen bounds a lease frame's ref, which its answer echoes.
const MaxRefLen = 128

// maxInFlight bounds the operations one connection has running, waiting
// acquires included; beyond it the connection's reader stops taking frames
// until one finishes.
const maxInFlight = 1024

// frameRequest is a lease frame from a client.
type frameRequest struct {
	Action  string `json:"action"`
	Ref     string `json:"ref"`
	File    string `json:"file"`
	TTLMs   int64  `json:"ttlMs,omitempty"`
	WaitMs  int64  `json:"waitMs,omitempty"`
	Token   uint64 `json:"token,omitempty"`
	AgentID string `json:"agentId,omitempty"`
}

// frameHead is the part of every answer that says what it answers.
type frameHead struct {
	Action string `json:"action"`
	Ref    string `json:"ref,omitempty"`
}

// errorFrame is an error answer.
type errorFrame struct {
	frameHead
	errorResponse
}

// IsFrameAction reports whether a frame's action is a lease frame's: it
// starts with "lease.". Another protocol's connection (the mail bus's)
// hands such frames to a FrameSession.
func IsFrameAction(action string) bool { return strings.HasPrefix(action, "lease.") }

// FrameSession serves the lease frames of one WebSocket connection, for the
// agent the connection authenticated as. It is what NewHandler's
// .../leases/ws endpoint runs, and what another protocol's connection (the
// mail bus's) uses to accept lease frames too.
type FrameSession struct {
	m        *Manager
	x, agent string
	reply    func([]byte)
	ctx      context.Context
	cancel   context.CancelFunc
	slots    chan struct{}  // a token per operation in flight
	work     chan job       // hands a job to an idle worker
	ops      sync.WaitGroup // workers, and operations on the fast path
	async    bool           // reply never blocks: operations may take the fast path (start)

	mu      sync.Mutex
	waiting map[string]context.CancelFunc // waiting acquires, by ref
}

// NewFrameSession serves lease frames for agentID in exchangeID, whom the
// caller has authenticated. reply receives each answer, one JSON object,
// on the goroutine that finished the operation; calls may be concurrent.
// reply may block to push back on a client that does not read its answers:
// the operations then stay in flight, and Handle blocks once too many are.
func (m *Manager) NewFrameSession(exchangeID, agentID string, reply func(frame []byte)) *FrameSession {
	ctx, cancel := context.WithCancel(context.Background())
	return &FrameSession{m: m, x: exchangeID, agent: agentID, reply: reply, ctx: ctx, cancel: cancel,
		slots: make(chan struct{}, maxInFlight), work: make(chan job), waiting: map[string]context.CancelFunc{}}
}

// Handle takes one text frame. A frame that is not a valid lease request is
// answered at once with an error frame; a valid one is started and answered
// when it completes. Handle returns without waiting for the operation,
// unless maxInFlight operations are running already; then it waits for
// one to finish. Call it from one goroutine at a time (the connection's
// reader), never after Close.
func (s *FrameSession) Handle(frame []byte) {
	var req frameRequest
	if err := json.Unmarshal(frame, &req); err != nil {
		// The decoder's message may quote a cut multi-byte character.
		msg := strings.ToValidUTF8("malformed frame: "+err.Error(), "\uFFFD")
		s.answerErr(salvageRef(frame), &httpx.Error{Status: http.StatusBadRequest, Code: httpx.CodeMalformedJSON, Message: msg})
		return
	}
	if !utf8.Valid(frame) {
		ref := req.Ref
		if strings.ContainsRune(ref, utf8.RuneError) || len(ref) > MaxRefLen {
			ref = "" // the decoder replaced bytes of it: not the ref sent
		}
		s.answerErr(ref, invalidField("frame", "frame is not valid UTF-8"))
		return
	}
	switch {
	case req.Ref == "":
		s.answerErr("", invalidField("ref", "ref is required"))
		return
	case len(req.Ref) > MaxRefLen:
		s.answerErr("", invalidField("ref", fmt.Sprintf("ref longer than %d bytes", MaxRefLen)))
		return
	}
	switch req.Action {
	case "lease.acquire", "lease.renew", "lease.release", "lease.status":
	case "lease.cancel":
		s.mu.Lock()
		cancel := s.waiting[req.Ref]
		s.mu.Unlock()
		if cancel != nil {
			cancel()
		}
		return
	default:
		s.answerErr(req.Ref, invalidField("action", fmt.Sprintf("unknown action %q", req.Action)))
		return
	}
	if req.AgentID != "" && req.AgentID != s.agent && (req.Action == "lease.acquire" || req.Action == "lease.release") {
		s.answerErr(req.Ref, ErrForbidden)
		return
	}
	ctx := s.ctx
	var done context.CancelFunc
	if req.Action == "lease.acquire" && req.WaitMs > 0 {
		s.mu.Lock()
		if s.waiting[req.Ref] != nil {
			s.mu.Unlock()
			s.answerErr(req.Ref, invalidField("ref", "ref is taken by a waiting acquire"))
			return
		}
		ctx, done = context.WithCancel(s.ctx)
		s.waiting[req.Ref] = done
		s.mu.Unlock()
	}
	select {
	case s.slots <- struct{}{}:
	case <-s.ctx.Done():
		if done != nil {
			done()
		}
		return
	}
	if s.async && done == nil && s.start(req) {
		return
	}
	j := job{ctx: ctx, done: done, req: req}
	select {
	case s.work <- j: // an idle worker takes it
	default:
		s.ops.Add(1)
		go s.worker(j)
	}
}

// job is one request for a worker.
type job struct {
	ctx  context.Context
	done context.CancelFunc // ends a waiting acquire's ctx; nil for the rest
	req  frameRequest
}

// workerIdle is how long a worker without a job waits for the next one.
// Workers outlive their jobs so that a busy connection does not pay for a
// fresh goroutine, and its stack growth, per request.
const workerIdle = time.Second

// worker runs jobs until none comes for workerIdle.
func (s *FrameSession) worker(j job) {
	defer s.ops.Done()
	var idle *time.Timer
	for {
		s.run(j)
		if idle == nil {
			idle = time.NewTimer(workerIdle)
			defer idle.Stop()
		} else {
			idle.Reset(workerIdle)
		}
		select {
		case j = <-s.work:
		case <-idle.C:
			return
		case <-s.ctx.Done():
			return
		}
	}
}

// run carries out one request and answers it.
func (s *FrameSession) run(j job) {
	req := j.req
	defer func() { <-s.slots }()
	if j.done != nil {
		defer func() {
			s.mu.Lock()
			delete(s.waiting, req.Ref)
			s.mu.Unlock()
			j.done()
		}()
	}
	var (
		g   Grant
		err error
	)
	switch req.Action {
	case "lease.acquire":
		g, err = s.m.AcquireWait(j.ctx, s.x, s.agent, req.File, msDuration(req.TTLMs), msDuration(req.WaitMs))
	case "lease.renew":
		g, err = s.m.Renew(j.ctx, s.x, s.agent, req.File, req.Token, msDuration(req.TTLMs))
	case "lease.release":
		err = s.m.Release(j.ctx, s.x, s.agent, req.File, req.Token)
	default: // lease.status
		var st Status
		if st, err = s.m.Status(j.ctx, s.x, req.File); err == nil {
			if s.ctx.Err() == nil {
				s.reply(appendStatus(make([]byte, 0, 192), req.Ref, st))
			}
			return
		}
	}
	s.answer(&req, g, err)
}

// answer sends the answer to an acquire, renew or release that ended with
// g and err.
func (s *FrameSession) answer(req *frameRequest, g Grant, err error) {
	if s.ctx.Err() != nil {
		return // the connection is gone: nobody reads the answer
	}
	b := make([]byte, 0, 192)
	switch {
	case err != nil:
		he, ok := errors.AsType[*HeldError](err)
		if !ok {
			s.answerErr(req.Ref, err)
			return
		}
		b = appendHeld(b, req.Ref, he, s.m.cfg.Now())
	case req.Action == "lease.acquire":
		b = appendGrant(b, "lease.acquired", req.Ref, `"acquired":true`, g, s.m.cfg.Now())
	case req.Action == "lease.renew":
		b = appendGrant(b, "lease.renewed", req.Ref, `"renewed":true`, g, s.m.cfg.Now())
	default: // lease.release
		b = append(appendHead(b, "lease.released", req.Ref), `,"released":true}`...)
	}
	s.reply(b)
}

// start starts req on the manager's fast path (async.go), without a
// worker, and reports whether it did. The operation holds its slot and
// counts in ops until it is answered.
func (s *FrameSession) start(req frameRequest) bool {
	done := func(g Grant, err error) {
		s.answer(&req, g, err)
		<-s.slots
		s.ops.Done()
	}
	s.ops.Add(1)
	var started bool
	switch req.Action {
	case "lease.acquire":
		started = req.WaitMs <= 0 && s.m.startAcquire(s.x, s.agent, req.File, msDuration(req.TTLMs), done)
	case "lease.renew":
		started = s.m.startRenew(s.x, s.agent, req.File, req.Token, msDuration(req.TTLMs), done)
	case "lease.release":
		started = s.m.startRelease(s.x, s.agent, req.File, req.Token, done)
	}
	if !started {
		s.ops.Done()
	}
	return started
}

// answerErr sends the error frame for err.
func (s *FrameSession) answerErr(ref string, err error) {
	a := errorAnswer(err)
	if a.status == http.StatusInternalServerError {
		s.m.cfg.Logger.Error("lease: frame failed", "exchange", s.x, "agent", s.agent, "err", err)
	}
	b, _ := json.Marshal(errorFrame{frameHead{Action: "error", Ref: ref}, errorResponse{Error: a.msg, Code: a.code, Field: a.field}})
	s.reply(b)
}

// Cancel ends the waiting acquires now and drops the answers still to
// come, for a connection about to close (its key was revoked): nothing is
// granted on its behalf afterwards. It may be called from any goroutine;
// Close must still follow.
func (s *FrameSession) Cancel() { s.cancel() }

// Close ends the session when its connection ends: waiting acquires stop
// waiting, and Close returns once every operation has finished. Answers
// not sent by then are dropped.
func (s *FrameSession) Close() {
	s.cancel()
	s.ops.Wait()
}

// invalidField is a 400 invalid_input about a frame member.
func invalidField(field, msg string) error { return &fieldError{field: field, msg: msg} }

type fieldError struct{ field, msg string }

func (e *fieldError) Error() string { return e.msg }

// salvageRef finds the ref of a frame that does not decode as a whole (a
// member of the wrong type, say), so that its error frame can still be
// matched to the request.
func salvageRef(frame []byte) string {
	var r struct {
		Ref json.RawMessage `json:"ref"`
	}
	if json.Unmarshal(frame, &r) != nil {
		return ""
	}
	var ref string
	if json.Unmarshal(r.Ref, &ref) != nil || len(ref) > MaxRefLen || strings.ContainsRune(ref, utf8.RuneError) {
		return ""
	}
	return ref
}

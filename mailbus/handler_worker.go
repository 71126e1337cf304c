package mailbus

import (
	"errors"
	"net/http"
	"time"

	"github.com/meatspace-exchange/mess/internal/httpx"
	"github.com/meatspace-exchange/mess/lease"
)

// The worker API is the part of Jetpack's worker (cf-mail-adapter 0.1.0's
// worker-api) that its HttpMailBus calls:
//
//	POST   /api/mail/publish           a Message; with "to" it is direct
//	GET    /api/mail/subscribe?agentId= WebSocket, one message per frame
//	POST   /api/mail/lease             {"file","agentId","ttlMs"} → {"acquired": bool}
//	GET    /api/mail/lease?file=       → {"isLeased": bool, "agentId", "expiresAt"}
//	DELETE /api/mail/lease             {"file","agentId"}: the holder's release, no token
//
// Its requests name no exchange: HandlerConfig.KeyExchange reads it from
// the API key. Every answer is JSON, errors as {"error", "code"}, because
// HttpMailBus rejects a 2xx it cannot parse.

// routeWorker registers the worker API; h.cfg.KeyExchange is set.
func (h *handler) routeWorker() {
	h.workerRoute("/api/mail/publish", http.MethodPost, h.workerPublish)
	h.workerRoute("/api/mail/subscribe", http.MethodGet, h.workerSubscribe)
	if h.cfg.Leaser != nil {
		h.workerRoute("/api/mail/lease", http.MethodPost, h.workerAcquire)
		h.workerRoute("/api/mail/lease", http.MethodGet, h.workerStatus)
		h.workerRoute("/api/mail/lease", http.MethodDelete, h.workerRelease)
	}
}

// workerRoute registers an endpoint of the worker API, authenticated in
// the exchange its key names.
func (h *handler) workerRoute(pattern, method string, fn func(http.ResponseWriter, *http.Request, caller)) {
	h.routeWith(pattern, method, fn, func(w http.ResponseWriter, r *http.Request) (caller, bool) {
		key, ok := httpx.Bearer(r)
		if !ok {
			httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "missing bearer token")
			return caller{}, false
		}
		ex, ok := h.cfg.KeyExchange(key)
		if !ok || !ValidID(ex) {
			httpx.WriteError(w, http.StatusUnauthorized, httpx.CodeUnauthorized, "invalid API key")
			return caller{}, false
		}
		return h.authenticateIn(w, r, ex)
	})
}

// workerPublish answers {"published": true, "id": <the stored id>}.
func (h *handler) workerPublish(w http.ResponseWriter, r *http.Request, c caller) {
	var m wireMessage
	if !h.decode(w, r, &m) {
		return
	}
	out, err := h.b.Publish(r.Context(), c.exchange, c.agent, m.message())
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"published": true, "id": out.ID})
}

// workerSubscribe serves the agent's mail, one message per frame, with no
// welcome frame, resuming after the agent's cursor (HttpMailBus sends no
// position). An agent that never set subscriptions gets every broadcast.
func (h *handler) workerSubscribe(w http.ResponseWriter, r *http.Request, c caller) {
	if !h.sameAgent(w, r.URL.Query().Get("agentId"), c, "agentId is required") {
		return
	}
	h.serveWS(w, r, c, wsOptions{since: -1})
}

// sameAgent checks that a request's agentId is the caller's, answering the
// request when it is not.
func (h *handler) sameAgent(w http.ResponseWriter, id string, c caller, missing string) bool {
	switch {
	case id == "":
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, missing)
		return false
	case id != c.agent:
		httpx.WriteError(w, http.StatusForbidden, httpx.CodeForbidden, "agentId is not the agent of this API key")
		return false
	}
	return true
}

// leaseBody is the body of POST and DELETE /api/mail/lease.
type leaseBody struct {
	File    string  `json:"file"`
	AgentID string  `json:"agentId"`
	TTLMs   float64 `json:"ttlMs"`
}

// workerAcquire answers {"acquired": true, "token", "expiresAt"}, or
// {"acquired": false, "agentId": <holder>, "expiresAt"} while another agent
// holds the file. A holder's acquire renews.
func (h *handler) workerAcquire(w http.ResponseWriter, r *http.Request, c caller) {
	var req leaseBody
	if !h.decode(w, r, &req) {
		return
	}
	const missing = "file, agentId, and ttlMs are required"
	if req.File == "" || req.TTLMs == 0 {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, missing)
		return
	}
	if !h.sameAgent(w, req.AgentID, c, missing) {
		return
	}
	ttl := time.Duration(req.TTLMs * float64(time.Millisecond))
	g, err := h.cfg.Leaser(c.exchange, c.agent).Acquire(r.Context(), req.File, ttl)
	if held, ok := errors.AsType[*lease.HeldError](err); ok {
		httpx.WriteJSON(w, http.StatusOK, map[string]any{"acquired": false, "agentId": held.Holder, "expiresAt": held.ExpiresAt.UnixMilli()})
		return
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"acquired": true, "token": g.Token, "expiresAt": g.ExpiresAt.UnixMilli()})
}

// workerStatus answers the lease status as Jetpack's LeaseStatus, plus the
// token and the time left.
func (h *handler) workerStatus(w http.ResponseWriter, r *http.Request, c caller) {
	file := r.URL.Query().Get("file")
	if file == "" {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, "file is required")
		return
	}
	st, err := h.cfg.Leaser(c.exchange, c.agent).Status(r.Context(), file)
	if err != nil {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, st)
}

// workerRelease releases the caller's lease on file without a token, as
// HttpMailBus sends none: the token is the holder's current one. It answers
// {"released": false} when the caller does not hold the file, which is not
// an error to a client that never reads the answer.
func (h *handler) workerRelease(w http.ResponseWriter, r *http.Request, c caller) {
	var req leaseBody
	if !h.decode(w, r, &req) {
		return
	}
	const missing = "file and agentId are required"
	if req.File == "" {
		httpx.WriteError(w, http.StatusBadRequest, httpx.CodeInvalid, missing)
		return
	}
	if !h.sameAgent(w, req.AgentID, c, missing) {
		return
	}
	// Token 0 is the caller's current lease (lease.Manager.Release).
	err := h.cfg.Leaser(c.exchange, c.agent).Release(r.Context(), req.File, 0)
	released := err == nil
	if err != nil && !errors.Is(err, lease.ErrNotHeld) {
		h.fail(w, err)
		return
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"released": released})
}

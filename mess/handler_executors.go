package mess

import (
	"fmt"
	"net/http"
	"time"

	"github.com/meatspace-exchange/mess/internal/httpx"
)

// register adds an executor. Registrations without a valid invite or the
// registration token are limited per client address.
func (h *handler) register(w http.ResponseWriter, r *http.Request) error {
	var reg Registration
	if err := h.decode(w, r, &reg); err != nil {
		return err
	}
	exID := r.PathValue("exchange_id")
	if h.registered != nil && !h.svc.credentialed(exID, reg) {
		if ok, wait := h.registered.allow(httpx.ClientAddr(r, h.cfg.TrustProxyHeaders), time.Now()); !ok {
			return errorf(ErrRateLimited, "too many registrations from your address; try again in %d s", retryAfter(wait)).
				with("retry_after", retryAfter(wait))
		}
	}
	res, err := h.svc.Register(r.Context(), exID, reg)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusCreated, res)
	return nil
}

func (h *handler) listExecutors(w http.ResponseWriter, r *http.Request, _ string) error {
	list, err := h.svc.Executors(r.Context(), r.PathValue("exchange_id"))
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"executors": list})
	return nil
}

// getExecutor shows an executor its own full profile and everyone else
// only the public one.
func (h *handler) getExecutor(w http.ResponseWriter, r *http.Request, actor string) error {
	exID, id := r.PathValue("exchange_id"), r.PathValue("id")
	if id != actor {
		list, err := h.svc.Executors(r.Context(), exID)
		if err != nil {
			return err
		}
		for _, e := range list {
			if e.ID == id {
				httpx.WriteJSON(w, http.StatusOK, map[string]any{"executor": e})
				return nil
			}
		}
		return errorf(ErrNotFound, "Executor not found")
	}
	e, err := h.svc.Executor(r.Context(), exID, id)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"executor": e})
	return nil
}

// whoAmI shows the caller, by its key alone, its own full profile (as
// GET /executors/{id} does for oneself), so a client holding only a key
// learns whose it is.
func (h *handler) whoAmI(w http.ResponseWriter, r *http.Request, actor string) error {
	e, err := h.svc.Executor(r.Context(), r.PathValue("exchange_id"), actor)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"executor_id": actor, "executor": e})
	return nil
}

func (h *handler) updateExecutor(w http.ResponseWriter, r *http.Request, actor string) error {
	var u ProfileUpdate
	if err := h.decode(w, r, &u); err != nil {
		return err
	}
	id := r.PathValue("id")
	if err := h.svc.UpdateExecutor(r.Context(), r.PathValue("exchange_id"), actor, id, u); err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"executor_id": id, "updated": true})
	return nil
}

func (h *handler) createKey(w http.ResponseWriter, r *http.Request, actor string) error {
	var body struct {
		RevokeOthers bool `json:"revoke_others"`
	}
	if err := h.decode(w, r, &body); err != nil {
		return err
	}
	k, err := h.svc.CreateKey(r.Context(), r.PathValue("exchange_id"), actor, r.PathValue("id"), body.RevokeOthers)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusCreated, k)
	return nil
}

func (h *handler) revokeKey(w http.ResponseWriter, r *http.Request, actor string) error {
	keyID := r.PathValue("key_id")
	if err := h.svc.RevokeKey(r.Context(), r.PathValue("exchange_id"), actor, r.PathValue("id"), keyID); err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"revoked": keyID})
	return nil
}

// maxInviteTTL is the longest expires_in an invite may ask for.
const maxInviteTTL = 365 * 24 * time.Hour

func (h *handler) createInvite(w http.ResponseWriter, r *http.Request, actor string) error {
	var body struct {
		MaxUses      int     `json:"max_uses"`
		ExpiresInSec float64 `json:"expires_in"`
	}
	if err := h.decode(w, r, &body); err != nil {
		return err
	}
	if body.ExpiresInSec < 0 || body.ExpiresInSec > maxInviteTTL.Seconds() {
		return badRequest(fmt.Sprintf("expires_in must be seconds between 1 and %.0f (a year)", maxInviteTTL.Seconds()))
	}
	inv, err := h.svc.CreateInvite(r.Context(), r.PathValue("exchange_id"), actor, InviteOptions{
		MaxUses: body.MaxUses,
		TTL:     time.Duration(body.ExpiresInSec * float64(time.Second)),
	})
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusCreated, inv)
	return nil
}

func (h *handler) listInvites(w http.ResponseWriter, r *http.Request, actor string) error {
	invs, err := h.svc.ListInvites(r.Context(), r.PathValue("exchange_id"), actor)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"invites": invs})
	return nil
}

func (h *handler) revokeInvite(w http.ResponseWriter, r *http.Request, actor string) error {
	id := r.PathValue("id")
	if err := h.svc.RevokeInvite(r.Context(), r.PathValue("exchange_id"), actor, id); err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"revoked": id})
	return nil
}

func (h *handler) capabilities(w http.ResponseWriter, r *http.Request, _ string) error {
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"capabilities": h.cfg.Capabilities.Tagged(r.URL.Query().Get("tag"))})
	return nil
}

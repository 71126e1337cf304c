package mess

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meatspace-exchange/mess/internal/httpx"
)

func (h *handler) createRequest(w http.ResponseWriter, r *http.Request, actor string) error {
	var req Request
	if err := h.decode(w, r, &req); err != nil {
		return err
	}
	res, err := h.svc.CreateRequest(r.Context(), r.PathValue("exchange_id"), actor, req, r.Header.Get("Idempotency-Key"))
	if err != nil {
		return err
	}
	if res.Replayed {
		w.Header().Set("Idempotent-Replayed", "true")
	}
	httpx.WriteJSON(w, http.StatusCreated, res)
	return nil
}

func (h *handler) listRequests(w http.ResponseWriter, r *http.Request, _ string) error {
	q := r.URL.Query()
	opts := ListOptions{
		ExecutorID:  q.Get("executor_id"),
		RequestorID: q.Get("requestor_id"),
		Priority:    Priority(q.Get("priority")),
		Cursor:      q.Get("cursor"),
	}
	for _, v := range q["status"] {
		for s := range strings.SplitSeq(v, ",") {
			st, ok := ParseStatus(strings.TrimSpace(s))
			if !ok {
				return badRequest(fmt.Sprintf("invalid status %q", s))
			}
			opts.Statuses = append(opts.Statuses, st)
		}
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return badRequest("limit must be a positive integer")
		}
		opts.Limit = n
	}
	if v := q.Get("since"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return badRequest("since must be an RFC 3339 time")
		}
		opts.Since = t
	}
	exID := r.PathValue("exchange_id")
	if err := h.waitForList(r, exID); err != nil {
		return err
	}
	res, err := h.svc.List(r.Context(), exID, opts)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, res)
	return nil
}

// etag names a thread's state: it changes with every change to the thread.
func etag(t Thread) string { return `"` + t.Ref + "-" + strconv.FormatInt(t.Seq, 10) + `"` }

// threadBody is the answer to GET .../requests/{ref}.
type threadBody struct {
	Thread Thread `json:"thread"`
}

func (h *handler) getRequest(w http.ResponseWriter, r *http.Request, _ string) error {
	exID, ref := r.PathValue("exchange_id"), r.PathValue("ref")
	if err := h.waitForThread(r, exID, ref); err != nil {
		return err
	}
	t, err := h.svc.GetWithAttachments(r.Context(), exID, ref)
	if err != nil {
		return err
	}
	w.Header().Set("ETag", etag(t))
	httpx.WriteJSON(w, http.StatusOK, threadBody{t})
	return nil
}

func (h *handler) updateRequest(w http.ResponseWriter, r *http.Request, actor string) error {
	var u Update
	if err := h.decode(w, r, &u); err != nil {
		return err
	}
	res, err := h.svc.Update(r.Context(), r.PathValue("exchange_id"), actor, r.PathValue("ref"), u)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, res)
	return nil
}

// attachment serves a file from a thread. Nothing a client sent is served
// so that a browser would run it: the type is the declared one only when
// the content agrees (else application/octet-stream), only images, audio
// and video (not SVG) are inline, everything else is a download, and
// nosniff and a sandboxing CSP go with it.
func (h *handler) attachment(w http.ResponseWriter, r *http.Request, _ string) error {
	name := r.PathValue("filename")
	data, declared, err := h.svc.Attachment(r.Context(), r.PathValue("exchange_id"), r.PathValue("ref"), name)
	if err != nil {
		return err
	}
	ctype, inline := servedType(declared, data)
	hd := w.Header()
	hd.Set("Content-Type", ctype)
	hd.Set("Content-Disposition", contentDisposition(inline, name))
	hd.Set("Content-Length", strconv.Itoa(len(data)))
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Content-Security-Policy", "default-src 'none'; sandbox")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(data)
	return nil
}

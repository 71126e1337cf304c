package mess

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"time"
)

// maxWait caps ?wait= so a client cannot hold a request open for ever.
const maxWait = 2 * time.Minute

// keepAlive is how often an idle event stream sends a comment, so proxies
// and clients do not take the quiet for a dead connection.
const keepAlive = 15 * time.Second

// waitParam parses ?wait= as seconds or a Go duration, capped at maxWait.
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, err2 := strconv.ParseFloat(v, 64)
		if err2 != nil || secs < 0 {
			return 0, badRequest("wait must be seconds or a duration such as 30s")
		}
		d = time.Duration(secs * float64(time.Second))
	}
	return min(max(d, 0), maxWait), nil
}

// waitForList is the long-poll of GET .../requests?wait=&after=: it returns
// once the exchange's version passes after (by default the current one),
// or when the wait ends.
func (h *handler) waitForList(r *http.Request, exID string) error {
	wait, err := waitParam(r)
	if err != nil || wait == 0 {
		return err
	}
	after := h.svc.Version(exID)
	if v := r.URL.Query().Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			return badRequest("after must be a version from a previous listing")
		}
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	_, err = h.svc.WaitForChange(ctx, exID, after)
	return err
}

// waitForThread is the long-poll of GET .../requests/{ref}?wait=&after_seq=:
// it returns once the thread's seq passes after_seq (by default its
// current one), or when the wait ends.
func (h *handler) waitForThread(r *http.Request, exID, ref string) error {
	wait, err := waitParam(r)
	if err != nil || wait == 0 {
		return err
	}
	var after int64
	if v := r.URL.Query().Get("after_seq"); v != "" {
		if after, err = strconv.ParseInt(v, 10, 64); err != nil {
			return badRequest("after_seq must be an integer")
		}
	} else {
		t, err := h.svc.Get(r.Context(), exID, ref)
		if err != nil {
			return err
		}
		after = t.Seq
	}
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	return h.svc.WaitThread(ctx, exID, ref, after)
}

// resetData is the data of a "reset" event.
type resetData struct {
	Reason string `json:"reason"`
}

// events streams the exchange's events as server-sent events: "id:" is
// the event id, "event:" its type, "data:" the event as JSON. A client
// that reconnects with Last-Event-ID (or ?last_event_id=) gets what it
// missed while that is still buffered, and a "reset" event (list requests
// again) when it is not. HEAD answers the stream's headers only.
func (h *handler) events(w http.ResponseWriter, r *http.Request, _ string) error {
	ctx := r.Context()
	exID := r.PathValue("exchange_id")
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("last_event_id")
	}
	if last == "" {
		// A new subscriber starts from now.
		evs, _, _, err := h.svc.EventsAfter(exID, "")
		if err != nil {
			return err
		}
		if len(evs) > 0 {
			last = evs[len(evs)-1].EventID
		}
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	rc := http.NewResponseController(w)
	rc.Flush()
	for {
		evs, version, found, err := h.svc.EventsAfter(exID, last)
		if err != nil {
			return nil // the stream has started; ending it is the answer
		}
		if !found {
			// Marshalled, not formatted: last may come from the query
			// string, and a newline in it must not start an event.
			b, _ := json.Marshal(resetData{Reason: "events since " + last + " are no longer buffered; list requests again"})
			fmt.Fprintf(w, "event: reset\ndata: %s\n\n", b)
			all, _, _, _ := h.svc.EventsAfter(exID, "")
			evs = nil
			if len(all) > 0 {
				last = all[len(all)-1].EventID
			}
		}
		for _, ev := range evs {
			b, _ := json.Marshal(ev)
			fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", ev.EventID, ev.EventType, b)
			last = ev.EventID
		}
		rc.Flush()
		wctx, cancel := context.WithTimeout(ctx, keepAlive)
		h.svc.WaitForChange(wctx, exID, version)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if wctx.Err() != nil {
			fmt.Fprint(w, ": keep-alive\n\n")
		}
	}
}

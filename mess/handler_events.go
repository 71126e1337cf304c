package mess

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/meatspace-exchange/mess/internal/httpx"
)

// maxWait caps ?wait= so a client cannot hold a request open for ever.
const maxWait = 2 * time.Minute

// keepAlive is how often an idle event stream sends a comment, so proxies
// and clients do not take the quiet for a dead connection.
const keepAlive = 15 * time.Second

// errRevoked ends a long-poll whose key stopped admitting its holder while
// it waited.
var errRevoked = &httpx.Error{Status: http.StatusUnauthorized, Code: httpx.CodeUnauthorized, Message: "API key revoked"}

// revokedEvent is the last event of a stream whose key was revoked.
const revokedEvent = "event: revoked\ndata: {\"error\":\"API key revoked\",\"code\":\"unauthorized\"}\n\n"

// waitParam parses ?wait= as seconds or a Go duration, capped at maxWait:
// a long-poll may always answer sooner than asked.
func waitParam(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		secs, err2 := strconv.ParseFloat(v, 64)
		if err2 != nil || math.IsNaN(secs) || math.IsInf(secs, 0) {
			return 0, badRequest("wait must be seconds or a duration such as 30s")
		}
		d = time.Duration(min(secs, maxWait.Seconds()) * float64(time.Second))
	}
	if d < 0 {
		return 0, badRequest("wait must not be negative")
	}
	return min(d, maxWait), nil
}

// watchKey watches the key the request was authenticated with; the
// channel closes when it is revoked.
func (h *handler) watchKey(r *http.Request) (<-chan struct{}, func()) {
	key, _ := httpx.Bearer(r)
	return h.svc.WatchKey(r.PathValue("exchange_id"), key)
}

// waitForList is the long-poll of GET .../requests?wait=&after=: it returns
// once the exchange's version passes after (by default the current one),
// or when the wait ends. A key revoked meanwhile ends it with a 401.
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
	ex, err := h.svc.loadExchangeForRead(exID)
	if err != nil {
		return err
	}
	revoked, stop := h.watchKey(r)
	defer stop()
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	h.svc.waitVersion(ctx, ex, after, revoked)
	return checkRevoked(revoked)
}

// waitForThread is the long-poll of GET .../requests/{ref}?wait=&after_seq=:
// it returns once the thread's seq passes after_seq (by default its
// current one), or when the wait ends. A key revoked meanwhile ends it
// with a 401.
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
	ex, err := h.svc.loadExchangeForRead(exID)
	if err != nil {
		return err
	}
	revoked, stop := h.watchKey(r)
	defer stop()
	ctx, cancel := context.WithTimeout(r.Context(), wait)
	defer cancel()
	if err := h.svc.waitThread(ctx, ex, ref, after, revoked); err != nil {
		return err
	}
	return checkRevoked(revoked)
}

func checkRevoked(revoked <-chan struct{}) error {
	select {
	case <-revoked:
		return errRevoked
	default:
		return nil
	}
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
//
// The stream ends with a "revoked" event when the key that opened it is
// revoked or rotated away, and without one when the client does not take
// a write within HandlerConfig.StreamWriteTimeout.
func (h *handler) events(w http.ResponseWriter, r *http.Request, _ string) error {
	ctx := r.Context()
	exID := r.PathValue("exchange_id")
	ex, err := h.svc.loadExchangeForRead(exID)
	if err != nil {
		return err
	}
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
	revoked, stop := h.watchKey(r)
	defer stop()
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", "no-cache")
	hd.Set("X-Accel-Buffering", "no")
	rc := http.NewResponseController(w)
	// A stuck client must not hold this goroutine in Write: every write
	// gets its own deadline.
	deadline := func() { _ = rc.SetWriteDeadline(time.Now().Add(h.cfg.StreamWriteTimeout)) }
	deadline()
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	if err := rc.Flush(); err != nil {
		return nil
	}
	for {
		evs, version, found, err := h.svc.EventsAfter(exID, last)
		if err != nil {
			return nil // the stream has started; ending it is the answer
		}
		deadline()
		if !found {
			// Marshalled, not formatted: last may come from the query
			// string, and a newline in it must not start an event.
			b, _ := json.Marshal(resetData{Reason: "events since " + last + " are not buffered; list requests again"})
			fmt.Fprintf(w, "event: reset\ndata: %s\n\n", b)
			all, _, _, _ := h.svc.EventsAfter(exID, "")
			evs = nil
			last = ""
			if len(all) > 0 {
				last = all[len(all)-1].EventID
			}
		}
		for _, ev := range evs {
			b, _ := json.Marshal(ev)
			if _, err := fmt.Fprintf(w, "id: %s\nevent: %s\ndata: %s\n\n", ev.EventID, ev.EventType, b); err != nil {
				h.streamEnded(r, err)
				return nil
			}
			last = ev.EventID
		}
		if err := rc.Flush(); err != nil {
			h.streamEnded(r, err)
			return nil
		}
		wctx, cancel := context.WithTimeout(ctx, keepAlive)
		h.svc.waitVersion(wctx, ex, version, revoked)
		cancel()
		if checkRevoked(revoked) != nil {
			deadline()
			fmt.Fprint(w, revokedEvent)
			rc.Flush()
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
		if wctx.Err() != nil {
			deadline()
			fmt.Fprint(w, ": keep-alive\n\n")
		}
	}
}

// streamEnded logs a stream dropped because its client stopped reading.
func (h *handler) streamEnded(r *http.Request, err error) {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		h.cfg.Logger.Info("mess: event stream dropped: the client took no data for the write timeout",
			"exchange", r.PathValue("exchange_id"), "remote", r.RemoteAddr, "timeout", h.cfg.StreamWriteTimeout)
	}
}

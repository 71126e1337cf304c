package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/meatspace-exchange/mess/mess"
)

// errNotYet marks a delivery that cannot be rendered yet (a "complete"
// hook before the external id exists); it is retried like a failure.
var errNotYet = errors.New("not ready")

// permanentError is a failure retrying cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// statusError is a non-2xx answer.
type statusError struct {
	code       int
	retryAfter time.Duration
}

func (e statusError) Error() string { return "HTTP " + strconv.Itoa(e.code) }

func (s *Service) intervalFor(dest string) time.Duration {
	if strings.HasPrefix(dest, ChannelSlack+" ") {
		return s.cfg.SlackInterval
	}
	return s.cfg.GoogleChatInterval
}

// scheduler hands due deliveries to workers: hooks of one thread and
// executor one at a time in order, chat webhooks no faster than their
// rate, with everything due for one webhook coalesced into one post.
func (s *Service) scheduler() {
	defer s.wg.Done()
	defer close(s.jobs)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	lastPrune := s.cfg.Now()
	for {
		now := s.cfg.Now()
		if now.Sub(lastPrune) > time.Minute {
			s.prune()
			lastPrune = now
		}
		s.mu.Lock()
		jobs, wait := s.dueLocked(now)
		s.mu.Unlock()
		for _, j := range jobs {
			select {
			case s.jobs <- j:
			case <-s.stop:
				return
			}
		}
		timer.Reset(wait)
		select {
		case <-s.swake:
		case <-timer.C:
		case <-s.stop:
			return
		}
	}
}

func (s *Service) worker() {
	defer s.wg.Done()
	for batch := range s.jobs {
		s.deliver(batch)
	}
}

// vars is the template context of a delivery: the thread as it is now
// (its external id included) and the event that caused the delivery.
func (s *Service) vars(ctx context.Context, d *Delivery) (map[string]any, error) {
	if d.EventType == EventTest {
		return map[string]any{
			"ref": "", "intent": "A test notification from the exchange " + d.ExchangeID + ": notifications reach you here.",
			"status": "test", "priority": "normal", "exchange_id": d.ExchangeID, "event": "test", "event_type": d.EventType,
			"event_id": d.EventID, "executor_id": d.ExecutorID, "executor_name": d.ExecutorID, "ts": d.TS.UTC().Format(time.RFC3339),
		}, nil
	}
	th, err := s.src.Get(ctx, d.ExchangeID, d.Ref)
	if err != nil {
		if errors.Is(err, mess.ErrNotFound) {
			return nil, permanentError{err}
		}
		return nil, err
	}
	executor := ""
	if th.ExecutorID != nil {
		executor = *th.ExecutorID
	}
	status := d.NewStatus
	if status == "" {
		status = string(th.Status)
	}
	name := d.ExecutorID
	if p, err := s.src.DeliveryProfile(ctx, d.ExchangeID, d.ExecutorID); err == nil && p.DisplayName != "" {
		name = p.DisplayName
	}
	link := ""
	if s.cfg.PublicURL != "" {
		link = s.cfg.PublicURL + "/api/v1/exchanges/" + url.PathEscape(d.ExchangeID) + "/requests/" + url.PathEscape(d.Ref)
	}
	event := d.Hook
	if event == "" {
		event = "created"
		if d.EventType == mess.EventStatusChanged {
			st, _ := mess.ParseStatus(d.NewStatus)
			if h := hookForStatus[st]; h != "" {
				event = h
			} else {
				event = d.NewStatus
			}
		}
	}
	return map[string]any{
		"ref": th.Ref, "intent": th.Intent, "status": status, "old_status": d.OldStatus,
		"priority": string(th.Priority), "requestor_id": th.RequestorID, "executor_id": executor,
		"created_at": th.CreatedAt.Format(time.RFC3339), "updated_at": th.UpdatedAt.Format(time.RFC3339),
		"external_id": th.ExternalID, "exchange_id": d.ExchangeID, "event": event,
		"event_type": d.EventType, "event_id": d.EventID, "actor_id": d.ActorID, "message": d.Message,
		"executor_name": name, "url": link, "ts": d.TS.UTC().Format(time.RFC3339),
	}, nil
}

func (s *Service) deliver(batch []*entry) {
	if s.cfg.Fence != nil && s.cfg.Fence.Valid() != nil {
		// Another process owns the outbox now and delivers what is
		// pending; this one sends nothing more.
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*s.cfg.Timeout)
	defer cancel()
	first := &batch[0].d
	extID, err := func() (string, error) {
		vars, err := s.vars(ctx, first)
		if err != nil {
			return "", err
		}
		var act action
		if first.Kind == KindHook {
			act, err = s.renderHook(first.Config, vars)
		} else {
			texts := []content{notificationContent(vars)}
			for _, e := range batch[1:] {
				v, err := s.vars(ctx, &e.d)
				if err != nil {
					continue
				}
				texts = append(texts, notificationContent(v))
			}
			act, err = s.renderChannel(first.Type, first.Config, vars, texts)
		}
		if err != nil {
			if errors.Is(err, ErrInvalidConfig) || errors.Is(err, ErrBlockedAddress) {
				return "", permanentError{err}
			}
			return "", err
		}
		return act(ctx, func(ctx context.Context, r *outReq) ([]byte, error) { return s.do(ctx, r, first) })
	}()
	if err == nil && extID != "" && first.Kind == KindHook {
		if e := s.src.SetExternalID(ctx, first.ExchangeID, first.Ref, extID); e != nil {
			s.log.Warn("notify: keep external id", "ref", first.Ref, "err", e)
		}
	}
	now := s.cfg.Now()
	var recs []record
	s.mu.Lock()
	for _, e := range batch {
		e.inflight = false
		if err == nil {
			delete(s.pending, e.d.ID)
			s.finishedLocked(e)
			s.known[e.d.ID] = e.d.TS
			s.sent.Add(1)
			s.countLocked(e.d.Type, outcomeSent)
			recs = append(recs, record{Op: "done", ID: e.d.ID, Exchange: e.d.ExchangeID, TS: now})
			continue
		}
		e.attempts++
		e.lastErr = describeErr(err)
		var pe permanentError
		if errors.As(err, &pe) || e.attempts >= s.cfg.MaxAttempts {
			delete(s.pending, e.d.ID)
			s.finishedLocked(e)
			s.known[e.d.ID] = e.d.TS
			s.recordFailureLocked(e, e.attempts, e.lastErr, now)
			s.countLocked(e.d.Type, outcomeFailed)
			recs = append(recs, record{Op: "fail", ID: e.d.ID, Exchange: e.d.ExchangeID, TS: now, Attempts: e.attempts, Error: e.lastErr})
			s.log.Warn("notify: delivery given up", "id", e.d.ID, "type", e.d.Type, "attempts", e.attempts, "err", e.lastErr)
			continue
		}
		s.countLocked(e.d.Type, outcomeRetried)
		wait := s.backoff(e.attempts)
		var se statusError
		if errors.As(err, &se) && se.retryAfter > wait {
			wait = min(se.retryAfter, s.cfg.MaxBackoff)
		}
		e.next = now.Add(wait)
		s.timeLocked(e)
	}
	s.mu.Unlock()
	if len(recs) > 0 {
		if err := s.appendRecords(context.Background(), recs); err != nil {
			s.log.Error("notify: record delivery outcome", "err", err)
		}
	}
	s.wakeScheduler()
}

// do sends one request through the guarded client.
func (s *Service) do(ctx context.Context, r *outReq, d *Delivery) ([]byte, error) {
	if _, err := s.cfg.Policy.CheckURL(r.URL); err != nil {
		return nil, permanentError{err}
	}
	if err := checkHeader(r.Header); err != nil {
		return nil, permanentError{err}
	}
	req, err := http.NewRequestWithContext(ctx, r.Method, r.URL, bytes.NewReader(r.Body))
	if err != nil {
		return nil, permanentError{fmt.Errorf("%w: %v", ErrInvalidConfig, err)}
	}
	if r.Body == nil {
		req.Body, req.ContentLength = http.NoBody, 0
	}
	for k, v := range r.Header {
		req.Header[k] = v
	}
	req.Header.Set("User-Agent", "messd-notify/1")
	if r.Sign {
		secret := r.Secret
		if secret == "" {
			secret = s.cfg.SigningSecret
		}
		now := s.cfg.Now()
		req.Header.Set(HeaderTimestamp, strconv.FormatInt(now.Unix(), 10))
		req.Header.Set(HeaderEvent, d.EventType)
		req.Header.Set(HeaderDelivery, d.ID)
		if secret != "" {
			req.Header.Set(HeaderSignature, Sign([]byte(secret), now, r.Body))
		}
	}
	resp, err := s.client.Do(req)
	if err != nil {
		if errors.Is(err, ErrBlockedAddress) {
			return nil, permanentError{err}
		}
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode/100 == 2 {
		return body, nil
	}
	se := statusError{code: resp.StatusCode}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && ra > 0 {
		se.retryAfter = time.Duration(ra) * time.Second
	}
	switch {
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests,
		resp.StatusCode == http.StatusTooEarly, resp.StatusCode >= 500:
		return nil, se
	}
	return nil, permanentError{se}
}

// checkHeader refuses header names and values that are not a single
// header line. A template can fill a header with a thread's text; a line
// break there would be refused by net/http on every retry, so it is a
// permanent failure, reported by header name.
func checkHeader(h http.Header) error {
	for k, vs := range h {
		if k == "" || strings.IndexFunc(k, func(r rune) bool { return r <= ' ' || r >= 0x7f || r == ':' }) >= 0 {
			return fmt.Errorf("%w: header name %q is not a valid header name", ErrInvalidConfig, k)
		}
		for _, v := range vs {
			if strings.IndexFunc(v, func(r rune) bool { return r < ' ' && r != '\t' || r == 0x7f }) >= 0 {
				return fmt.Errorf("%w: header %s contains a line break or control character", ErrInvalidConfig, k)
			}
		}
	}
	return nil
}

// describeErr says what went wrong for the executor to read. It names the
// URL's host, which the executor configured, but never the URL (Slack and
// IFTTT keep credentials in the path), the address a name resolved to or
// the resolver asked: those describe the operator's network.
func describeErr(err error) string {
	host := ""
	if ue, ok := errors.AsType[*url.Error](err); ok {
		if u, perr := url.Parse(ue.URL); perr == nil && u.Host != "" {
			host = u.Host + ": "
		}
	}
	var msg string
	if be, ok := blockedError(err); ok {
		msg = be
	} else if de, ok := errors.AsType[*net.DNSError](err); ok {
		switch {
		case de.IsNotFound:
			msg = "no such host"
		case de.IsTimeout:
			msg = "DNS lookup timed out"
		default:
			msg = "DNS lookup failed"
		}
	} else if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
		msg = "timeout"
	} else if oe, ok := errors.AsType[*net.OpError](err); ok {
		msg = "connection failed"
		if se, ok := errors.AsType[*os.SyscallError](oe.Err); ok {
			msg = "connection failed: " + se.Err.Error()
		}
	} else if ue, ok := errors.AsType[*url.Error](err); ok {
		// TLS, protocol and redirect errors: their text names no address.
		msg = ue.Err.Error()
	} else {
		msg = err.Error()
	}
	return host + msg
}

// blockedError returns the text of the policy's refusal in err, if any.
func blockedError(err error) (string, bool) {
	for e := err; e != nil; e = errors.Unwrap(e) {
		if strings.HasPrefix(e.Error(), ErrBlockedAddress.Error()) {
			return e.Error(), true
		}
	}
	return "", false
}

func isTimeout(err error) bool {
	te, ok := errors.AsType[interface {
		error
		Timeout() bool
	}](err)
	return ok && te.Timeout()
}

// publicDestination is a channel's or hook's destination reduced to scheme
// and host, for failure reports.
func publicDestination(cfg json.RawMessage) string {
	var c struct {
		Type       string `json:"type"`
		URL        string `json:"url"`
		WebhookURL string `json:"webhook_url"`
		Server     string `json:"server"`
		BaseURL    string `json:"base_url"`
	}
	json.Unmarshal(cfg, &c)
	for _, raw := range []string{c.URL, c.WebhookURL, c.Server, c.BaseURL} {
		if u, err := url.Parse(raw); err == nil && u.Host != "" {
			return u.Scheme + "://" + u.Host
		}
	}
	return c.Type
}

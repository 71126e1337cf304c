package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
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
		var jobs [][]*entry
		var wait time.Duration = time.Hour
		s.mu.Lock()
		first := map[string]int64{}
		for _, e := range s.pending {
			if e.order != "" {
				if f, ok := first[e.order]; !ok || e.seq < f {
					first[e.order] = e.seq
				}
			}
		}
		var due []*entry
		for _, e := range s.pending {
			if e.inflight {
				continue
			}
			if d := e.next.Sub(now); d > 0 {
				wait = min(wait, d)
				continue
			}
			if e.order != "" && first[e.order] != e.seq {
				continue
			}
			due = append(due, e)
		}
		slices.SortFunc(due, func(a, b *entry) int { return int(a.seq - b.seq) })
		for _, e := range due {
			if e.inflight {
				continue
			}
			if e.dest == "" {
				e.inflight = true
				jobs = append(jobs, []*entry{e})
				continue
			}
			if at := s.nextAllowed[e.dest]; at.After(now) {
				wait = min(wait, at.Sub(now))
				continue
			}
			batch := []*entry{e}
			e.inflight = true
			for _, o := range due {
				if !o.inflight && o.dest == e.dest {
					o.inflight = true
					batch = append(batch, o)
				}
			}
			s.nextAllowed[e.dest] = now.Add(s.intervalFor(e.dest))
			jobs = append(jobs, batch)
		}
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
	if cfg, ok := s.src.ExecutorConfig(d.ExchangeID, d.ExecutorID); ok && cfg.DisplayName != "" {
		name = cfg.DisplayName
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
	s.compactMu.RLock()
	defer s.compactMu.RUnlock()
	s.mu.Lock()
	for _, e := range batch {
		e.inflight = false
		if err == nil {
			delete(s.pending, e.d.ID)
			s.known[e.d.ID] = e.d.TS
			s.sent.Add(1)
			recs = append(recs, record{Op: "done", ID: e.d.ID, TS: now})
			continue
		}
		e.attempts++
		e.lastErr = describeErr(err)
		var pe permanentError
		if errors.As(err, &pe) || e.attempts >= s.cfg.MaxAttempts {
			delete(s.pending, e.d.ID)
			s.known[e.d.ID] = e.d.TS
			s.recordFailureLocked(e, e.attempts, e.lastErr, now)
			recs = append(recs, record{Op: "fail", ID: e.d.ID, TS: now, Attempts: e.attempts, Error: e.lastErr})
			s.log.Warn("notify: delivery given up", "id", e.d.ID, "type", e.d.Type, "attempts", e.attempts, "err", e.lastErr)
			continue
		}
		wait := s.backoff(e.attempts)
		var se statusError
		if errors.As(err, &se) && se.retryAfter > wait {
			wait = min(se.retryAfter, s.cfg.MaxBackoff)
		}
		e.next = now.Add(wait)
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

// describeErr says what went wrong without the URL, which may embed a
// credential (Slack and IFTTT put theirs in the path).
func describeErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		host := ""
		if u, perr := url.Parse(ue.URL); perr == nil {
			host = u.Host + ": "
		}
		if errors.Is(ue.Err, context.DeadlineExceeded) || ue.Timeout() {
			return host + "timeout"
		}
		return host + ue.Err.Error()
	}
	return err.Error()
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

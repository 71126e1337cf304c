package mess

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// CreateResult is what creating a request returns.
type CreateResult struct {
	Ref    string `json:"ref"`
	Status Status `json:"status"`
	// Replayed is true when an earlier request with the same idempotency
	// key produced this result.
	Replayed bool `json:"-"`
}

// CreateRequest posts a request on behalf of requestorID. A non-empty
// idempotencyKey makes retries return the first result for IdempotencyTTL;
// the same key with a different request is ErrUnprocessable.
//
// Attachments in the request's context and response_hint (data URIs,
// named objects) are stored apart before it returns (see
// GetWithAttachments). Without them the request may hold at most
// Config.MaxMessageBytes; with them its requestor's attachments at most
// Config.MaxAttachmentBytes. Past either it is ErrTooLarge.
func (s *Service) CreateRequest(ctx context.Context, exchangeID, requestorID string, req Request, idempotencyKey string) (CreateResult, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return CreateResult{}, err
	}
	if err := req.validate(); err != nil {
		return CreateResult{}, err
	}
	if len(idempotencyKey) > 255 {
		return CreateResult{}, errorf(ErrInvalid, "Idempotency-Key longer than 255 bytes")
	}
	if !validText(idempotencyKey) {
		return CreateResult{}, errorf(ErrInvalid, "Idempotency-Key must be UTF-8 text without control characters")
	}
	var idem *idemEntry
	var hash string
	if idempotencyKey != "" {
		hash = requestHash(req)
		k := idemKey(requestorID, idempotencyKey)
		for {
			ex.mu.Lock()
			e := ex.idem[k]
			if e == nil {
				idem = &idemEntry{hash: hash, done: make(chan struct{})}
				ex.idem[k] = idem
				ex.mu.Unlock()
				break
			}
			ex.mu.Unlock()
			if e.hash != "" && e.hash != hash {
				return CreateResult{}, errorf(ErrUnprocessable, "Idempotency-Key was already used with a different request")
			}
			select {
			case <-e.done:
			case <-ctx.Done():
				return CreateResult{}, ctx.Err()
			}
			if e.err == nil && e.ref != "" {
				return CreateResult{Ref: e.ref, Status: StatusPending, Replayed: true}, nil
			}
			// The first attempt failed; this one may try again.
		}
	}
	res, err := s.create(ctx, ex, requestorID, req, idempotencyKey, hash)
	if idem != nil {
		ex.mu.Lock()
		if err != nil {
			idem.err = err
			delete(ex.idem, idemKey(requestorID, idempotencyKey))
		} else {
			idem.ref, idem.at = res.Ref, s.now()
		}
		close(idem.done)
		ex.mu.Unlock()
	}
	return res, err
}

// requestHash identifies a request for idempotency: two bodies that decode
// to the same request have the same hash.
func requestHash(req Request) string {
	b, _ := json.Marshal(req)
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:16])
}

// requestBlock is the request block of a thread's first message. Its
// fields are in the order encoding/json wrote them when it was a map, so
// the message reads as it always has.
type requestBlock struct {
	Context      json.RawMessage `json:"context"`
	Intent       string          `json:"intent"`
	ResponseHint json.RawMessage `json:"response_hint"`
}

func (s *Service) create(ctx context.Context, ex *exchange, requestorID string, req Request, idempotencyKey, hash string) (CreateResult, error) {
	// Attachments go to objects of the thread_created event (seq 1); the
	// first message (seq 2) refers to the same objects.
	x := &extractor{message: 1, seq: 1}
	var ctxRefs, hintRefs []attachmentRef
	var err error
	if req.Context, ctxRefs, err = x.take("context", req.Context); err != nil {
		return CreateResult{}, err
	}
	if req.ResponseHint, hintRefs, err = x.take("response_hint", req.ResponseHint); err != nil {
		return CreateResult{}, err
	}
	req.attachments = append(ctxRefs, hintRefs...)
	first, _ := json.Marshal([]map[string]requestBlock{{"request": {rawOrEmpty(req.Context), req.Intent, rawOrEmpty(req.ResponseHint)}}})
	// The first message refers to the same objects. In it the context's
	// string values come first, then the intent, then the response hint's.
	var firstRefs []attachmentRef
	for i, r := range req.attachments {
		r.Field = ""
		if i >= len(ctxRefs) {
			r.Value += countValues(rawOrEmpty(req.Context)) + 1
		}
		firstRefs = append(firstRefs, r)
	}
	inline := len(req.Intent) + len(req.ID) + len(req.Context) + len(req.ResponseHint) + len(req.Requires) +
		len(req.Constraints) + len(req.Precision) + len(req.Compensation)
	if err := s.checkInline("a request", inline); err != nil {
		return CreateResult{}, err
	}
	release, err := s.reserveAttachments(ex, requestorID, x.size())
	if err != nil {
		return CreateResult{}, err
	}
	defer release()

	now := s.now()
	t := &thread{}
	t.mu.Lock()
	defer t.mu.Unlock()
	ref := ""
	ex.mu.Lock()
	for n := 0; ; n++ {
		ref = newRef(now, 4+n/8)
		if _, taken := ex.threads[ref]; !taken {
			break
		}
	}
	ex.threads[ref] = t // reserved; invisible until ready
	ex.mu.Unlock()

	err = s.storeAttachments(ctx, ex.id, ref, x)
	if err == nil {
		tc := &threadCreatedPayload{Request: req, RequestorID: requestorID, IdempotencyKey: idempotencyKey, IdempotencyHash: hash}
		mp := &messagePayload{Mess: first, Attachments: firstRefs}
		var created, msg Event
		created, err = s.newEvent(ex, ref, EventThreadCreated, requestorID, 1, now, tc)
		if err == nil {
			msg, err = s.newEvent(ex, ref, EventMessageAdded, requestorID, 2, now, mp)
		}
		if err == nil {
			// A failed commit may leave the attachments unreferenced;
			// deleting them could take them from an event that was
			// written after all.
			err = s.commit(ctx, ex, []Event{created, msg}, []any{tc, mp})
		}
	}
	if err != nil {
		ex.mu.Lock()
		if !t.ready {
			delete(ex.threads, ref)
		}
		ex.mu.Unlock()
		return CreateResult{}, err
	}
	return CreateResult{Ref: ref, Status: StatusPending}, nil
}

// checkInline refuses what would keep more than MaxMessageBytes in memory
// besides its attachments.
func (s *Service) checkInline(what string, n int) error {
	if n > s.cfg.MaxMessageBytes {
		return errorf(ErrTooLarge, "%s may hold at most %d bytes besides its attachments; this one holds %d", what, s.cfg.MaxMessageBytes, n).
			with("limit", s.cfg.MaxMessageBytes)
	}
	return nil
}

func rawOrEmpty(r json.RawMessage) json.RawMessage {
	if len(r) == 0 || string(r) == "null" {
		return json.RawMessage("[]")
	}
	return r
}

const refAlphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"

// newRef returns a ref such as 2025-02-01-XY1Z with n random characters
// from crypto/rand. Rejection sampling keeps the characters uniform.
func newRef(now time.Time, n int) string {
	if n > 8 {
		n = 8
	}
	var b strings.Builder
	b.WriteString(now.Format("2006-01-02"))
	b.WriteByte('-')
	buf := make([]byte, 16)
	for b.Len() < 11+n {
		rand.Read(buf)
		for _, c := range buf {
			if c < 252 && b.Len() < 11+n { // 252 = 7*36
				b.WriteByte(refAlphabet[c%36])
			}
		}
	}
	return b.String()
}

// Get returns a copy of a thread with its messages and history.
func (s *Service) Get(ctx context.Context, exchangeID, ref string) (Thread, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return Thread{}, err
	}
	if !ValidRef(ref) {
		return Thread{}, errorf(ErrNotFound, "Thread not found")
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	t := ex.threads[ref]
	if t == nil || !t.ready {
		return Thread{}, errorf(ErrNotFound, "Thread not found")
	}
	out := t.Thread
	out.Messages = slices.Clone(t.Messages)
	out.History = slices.Clone(t.History)
	return out, nil
}

// ListOptions filters and pages a thread listing. Threads come most
// recently updated first.
type ListOptions struct {
	Statuses    []Status
	ExecutorID  string
	RequestorID string
	Priority    Priority
	// Since keeps threads updated at or after this time.
	Since time.Time
	// Limit defaults to 200 and is capped at 1000.
	Limit int
	// Cursor continues a previous listing (ListResult.NextCursor).
	Cursor string
}

// ListResult is one page of threads.
type ListResult struct {
	Threads    []Summary `json:"threads"`
	NextCursor string    `json:"next_cursor,omitempty"`
	// Version identifies the exchange's state; pass it to WaitForChange.
	Version uint64 `json:"version"`
}

// List returns threads of an exchange, newest update first.
func (s *Service) List(ctx context.Context, exchangeID string, opts ListOptions) (ListResult, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return ListResult{}, err
	}
	limit := opts.Limit
	switch {
	case limit <= 0:
		limit = 200
	case limit > 1000:
		limit = 1000
	}
	var before uint64 = 1<<64 - 1
	if opts.Cursor != "" {
		v, err := strconv.ParseUint(strings.TrimPrefix(opts.Cursor, "u"), 10, 64)
		if err != nil || !strings.HasPrefix(opts.Cursor, "u") {
			return ListResult{}, errorf(ErrInvalid, "invalid cursor")
		}
		before = v
	}
	if opts.Priority != "" && opts.Priority.Rank() < 0 {
		return ListResult{}, errorf(ErrInvalid, "invalid priority %q", opts.Priority)
	}
	res := ListResult{Threads: []Summary{}}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	res.Version = ex.version
	// order is sorted by useq; start below the cursor.
	i := sort.Search(len(ex.order), func(i int) bool { return ex.order[i].useq >= before }) - 1
	var lastUseq uint64
	for ; i >= 0; i-- {
		e := ex.order[i]
		t := e.t
		if t.useq != e.useq || !t.ready {
			continue
		}
		if !opts.Since.IsZero() && t.UpdatedAt.Before(opts.Since) {
			break
		}
		if len(opts.Statuses) > 0 && !slices.Contains(opts.Statuses, t.Status) {
			continue
		}
		if opts.ExecutorID != "" && (t.ExecutorID == nil || *t.ExecutorID != opts.ExecutorID) {
			continue
		}
		if opts.RequestorID != "" && t.RequestorID != opts.RequestorID {
			continue
		}
		if opts.Priority != "" && t.Priority != opts.Priority {
			continue
		}
		if len(res.Threads) == limit {
			res.NextCursor = "u" + strconv.FormatUint(lastUseq, 10)
			break
		}
		res.Threads = append(res.Threads, t.Summary)
		lastUseq = e.useq
	}
	return res, nil
}

// SetExternalID records the id an external system (a task tracker a hook
// created a task in) gave the thread, so later hooks can refer to it.
func (s *Service) SetExternalID(ctx context.Context, exchangeID, ref, externalID string) error {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return err
	}
	if len(externalID) > 512 {
		return errorf(ErrInvalid, "external id longer than 512 bytes")
	}
	ex.mu.RLock()
	t := ex.threads[ref]
	ex.mu.RUnlock()
	if t == nil {
		return errorf(ErrNotFound, "Thread not found")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.ready {
		return errorf(ErrNotFound, "Thread not found")
	}
	if t.ExternalID == externalID {
		return nil
	}
	p := &externalIDPayload{ExternalID: externalID}
	ev, err := s.newEvent(ex, ref, EventExternalIDSet, systemActor, t.Seq+1, s.now(), p)
	if err != nil {
		return err
	}
	return s.commit(ctx, ex, []Event{ev}, []any{p})
}

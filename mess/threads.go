package mess

import (
	"context"
	"crypto/rand"
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
// idempotencyKey makes retries return the first result for IdempotencyTTL.
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
	var idem *idemEntry
	if idempotencyKey != "" {
		k := idemKey(requestorID, idempotencyKey)
		for {
			ex.mu.Lock()
			e := ex.idem[k]
			if e == nil {
				idem = &idemEntry{done: make(chan struct{})}
				ex.idem[k] = idem
				ex.mu.Unlock()
				break
			}
			ex.mu.Unlock()
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
	res, err := s.create(ctx, ex, requestorID, req, idempotencyKey)
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

func (s *Service) create(ctx context.Context, ex *exchange, requestorID string, req Request, idempotencyKey string) (CreateResult, error) {
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

	created, err := s.newEvent(ex, ref, EventThreadCreated, requestorID, 1, now, threadCreatedPayload{Request: req, RequestorID: requestorID, IdempotencyKey: idempotencyKey})
	if err == nil {
		first := []map[string]any{{"request": map[string]any{"intent": req.Intent, "context": rawOrEmpty(req.Context), "response_hint": rawOrEmpty(req.ResponseHint)}}}
		var msg Event
		mess, _ := json.Marshal(first)
		msg, err = s.newEvent(ex, ref, EventMessageAdded, requestorID, 2, now, messagePayload{Mess: mess})
		if err == nil {
			err = s.commit(ctx, ex, []Event{created, msg}, []any{&threadCreatedPayload{Request: req, RequestorID: requestorID, IdempotencyKey: idempotencyKey}, &messagePayload{Mess: mess}})
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

// Update is a change to a thread: a status, a MESS message, or both.
type Update struct {
	// Status is the new status; aliases are accepted. Empty leaves it.
	Status string `json:"status,omitempty"`
	// Mess is a MESS message (array of blocks) to append.
	Mess json.RawMessage `json:"mess,omitempty"`
	// Message is a note recorded with the status change.
	Message string `json:"message,omitempty"`
}

// UpdateResult is what Update returns.
type UpdateResult struct {
	Ref        string  `json:"ref"`
	Status     Status  `json:"status"`
	ExecutorID *string `json:"executor_id"`
	Seq        int64   `json:"seq"`
}

// Update applies a status change and/or message by actorID, enforcing the
// transition table (see the package documentation).
func (s *Service) Update(ctx context.Context, exchangeID, actorID, ref string, u Update) (UpdateResult, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return UpdateResult{}, err
	}
	if actorID == systemActor {
		return UpdateResult{}, errorf(ErrForbidden, "reserved actor")
	}
	return s.transition(ctx, ex, actorID, ref, u)
}

func (s *Service) transition(ctx context.Context, ex *exchange, actorID, ref string, u Update) (UpdateResult, error) {
	if !ValidRef(ref) {
		return UpdateResult{}, errorf(ErrNotFound, "Thread not found")
	}
	var to Status
	if u.Status != "" {
		st, ok := ParseStatus(u.Status)
		if !ok {
			return UpdateResult{}, errorf(ErrInvalid, "invalid status %q", u.Status)
		}
		to = st
	}
	if len(u.Message) > 4096 {
		return UpdateResult{}, errorf(ErrInvalid, "message longer than 4096 bytes")
	}
	hasMess := len(u.Mess) > 0 && string(u.Mess) != "null"
	if hasMess && u.Mess[0] != '[' && u.Mess[0] != '{' {
		return UpdateResult{}, errorf(ErrInvalid, "mess must be a MESS message: an array of blocks")
	}
	ex.mu.RLock()
	t := ex.threads[ref]
	ex.mu.RUnlock()
	if t == nil {
		return UpdateResult{}, errorf(ErrNotFound, "Thread not found")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.ready {
		return UpdateResult{}, errorf(ErrNotFound, "Thread not found")
	}
	cur := t.Status
	result := func() UpdateResult {
		return UpdateResult{Ref: ref, Status: t.Status, ExecutorID: t.ExecutorID, Seq: t.Seq}
	}
	var evs []Event
	var decoded []any
	now := s.now()
	seq := t.Seq
	if to != "" && to == cur && executorStatuses[to] && t.ExecutorID != nil && *t.ExecutorID != actorID {
		// Repeating the current status is a no-op only for the claimant.
		return result(), errorf(ErrConflict, "thread is claimed by %s", *t.ExecutorID).with("status", cur).with("executor_id", *t.ExecutorID)
	}
	if to != "" && to != cur {
		exec, confirmed, err := decide(&t.Thread, t.confirmed, actorID, to)
		if err != nil {
			return result(), err
		}
		seq++
		p := &statusPayload{OldStatus: cur, NewStatus: to, ExecutorID: exec, Message: u.Message, Confirmed: confirmed}
		ev, err := s.newEvent(ex, ref, EventStatusChanged, actorID, seq, now, p)
		if err != nil {
			return result(), err
		}
		evs, decoded = append(evs, ev), append(decoded, p)
	}
	if hasMess {
		if actorID == systemActor {
			return result(), errorf(ErrForbidden, "reserved actor")
		}
		participant := actorID == t.RequestorID || (t.ExecutorID != nil && *t.ExecutorID == actorID)
		if cur.Terminal() && len(evs) == 0 && !participant {
			return result(), errorf(ErrConflict, "thread is %s; only its requestor and executor may add messages", cur).with("status", cur)
		}
		seq++
		p := &messagePayload{Mess: u.Mess}
		ev, err := s.newEvent(ex, ref, EventMessageAdded, actorID, seq, now, p)
		if err != nil {
			return result(), err
		}
		evs, decoded = append(evs, ev), append(decoded, p)
	}
	if len(evs) == 0 {
		return result(), nil
	}
	if err := s.commit(ctx, ex, evs, decoded); err != nil {
		return result(), err
	}
	return result(), nil
}

// executorStatuses are the statuses only the thread's executor sets.
var executorStatuses = map[Status]bool{
	StatusClaimed: true, StatusInProgress: true, StatusWaiting: true, StatusHeld: true,
	StatusNeedsInput: true, StatusNeedsConfirmation: true, StatusPartial: true,
	StatusCompleted: true, StatusFailed: true, StatusDeclined: true, StatusDelegated: true,
}

// decide applies the transition table. It returns the thread's executor
// after the change and whether the change records the requestor's
// confirmation.
func decide(t *Thread, confirmed bool, actor string, to Status) (*string, bool, error) {
	from := t.Status
	isRequestor := actor == t.RequestorID
	isClaimant := t.ExecutorID != nil && *t.ExecutorID == actor
	system := actor == systemActor
	if from.Terminal() {
		return nil, false, errorf(ErrConflict, "thread is %s; terminal threads cannot be reopened", from).with("status", from)
	}
	claimedErr := func() error {
		e := errorf(ErrConflict, "thread is claimed by %s", *t.ExecutorID).with("status", from).with("executor_id", *t.ExecutorID)
		return e
	}
	switch {
	case to == StatusExpired:
		if !system {
			return nil, false, errorf(ErrForbidden, "only the exchange expires threads")
		}
		return t.ExecutorID, false, nil
	case system:
		return nil, false, errorf(ErrForbidden, "the exchange only expires threads")
	case to == StatusCancelled || to == StatusSuperseded:
		if !isRequestor {
			return nil, false, errorf(ErrForbidden, "only the requestor may set %s", to)
		}
		return t.ExecutorID, false, nil
	case to == StatusPending:
		if from != StatusPending && isClaimant {
			return nil, false, nil // the executor releases its claim
		}
		if t.ExecutorID != nil && !isClaimant {
			return nil, false, claimedErr()
		}
		return nil, false, errorf(ErrForbidden, "only the executor may release a claim")
	case to == StatusInProgress && isRequestor && !isClaimant &&
		(from == StatusNeedsInput || from == StatusNeedsConfirmation):
		// The requestor answered a question or gave confirmation.
		return t.ExecutorID, from == StatusNeedsConfirmation, nil
	case executorStatuses[to]:
		if from == StatusPending {
			if to == StatusDeclined || to == StatusDelegated {
				return nil, false, errorf(ErrConflict, "claim the thread before setting %s", to).with("status", from)
			}
			if err := needConfirmation(t, confirmed, to); err != nil {
				return nil, false, err
			}
			a := actor
			return &a, false, nil // claiming, explicitly or implicitly
		}
		if !isClaimant {
			if t.ExecutorID == nil {
				return nil, false, errorf(ErrConflict, "thread is %s", from).with("status", from)
			}
			return nil, false, claimedErr()
		}
		if err := needConfirmation(t, confirmed, to); err != nil {
			return nil, false, err
		}
		return t.ExecutorID, false, nil
	}
	return nil, false, errorf(ErrInvalid, "cannot set status %s", to)
}

func needConfirmation(t *Thread, confirmed bool, to Status) error {
	if (to == StatusCompleted || to == StatusPartial) && t.Request != nil && t.Request.ConfirmBefore && !confirmed {
		return errorf(ErrConflict, "this request needs confirmation first: set needs_confirmation and wait for the requestor").with("status", t.Status)
	}
	return nil
}

// WaitForChange blocks until the exchange's version passes version (see
// ListResult.Version) or ctx ends, and returns the current version.
func (s *Service) WaitForChange(ctx context.Context, exchangeID string, version uint64) (uint64, error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return 0, err
	}
	for {
		ex.mu.RLock()
		v, ch := ex.version, ex.changed
		ex.mu.RUnlock()
		if v > version || s.closed.Load() {
			return v, nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return v, nil
		}
	}
}

// Version returns the exchange's current change counter.
func (s *Service) Version(exchangeID string) uint64 {
	ex := s.exchange(exchangeID, false)
	if ex == nil {
		return 0
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	return ex.version
}

// WaitThread blocks until the thread's seq passes afterSeq or ctx ends.
func (s *Service) WaitThread(ctx context.Context, exchangeID, ref string, afterSeq int64) error {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return err
	}
	for {
		ex.mu.RLock()
		t := ex.threads[ref]
		ch := ex.changed
		var seq int64
		ok := t != nil && t.ready
		if ok {
			seq = t.Seq
		}
		ex.mu.RUnlock()
		if !ok {
			return errorf(ErrNotFound, "Thread not found")
		}
		if seq > afterSeq || s.closed.Load() {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil
		}
	}
}

// EventsAfter returns the exchange's buffered events that follow
// lastEventID (all buffered events when it is empty), and the version they
// are current to. found is false when lastEventID is no longer buffered, in
// which case the caller should resynchronise from List.
func (s *Service) EventsAfter(exchangeID, lastEventID string) (evs []Event, version uint64, found bool, err error) {
	ex, err := s.loadExchangeForRead(exchangeID)
	if err != nil {
		return nil, 0, false, err
	}
	ex.mu.RLock()
	defer ex.mu.RUnlock()
	n := len(ex.ring)
	at := func(i int) Event { return ex.ring[(ex.ringStart+i)%n] }
	start := -1
	switch {
	case lastEventID == "":
		start = 0
	case n == 0 || lastEventID >= at(n-1).EventID:
		// Nothing newer yet (ids are ULIDs from one monotonic source).
		start = n
	default:
		for i := n - 1; i >= 0; i-- {
			if at(i).EventID == lastEventID {
				start = i + 1
				break
			}
		}
	}
	if start < 0 {
		return nil, ex.version, false, nil
	}
	for i := start; i < n; i++ {
		evs = append(evs, at(i))
	}
	return evs, ex.version, true, nil
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

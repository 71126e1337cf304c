package mess

// Status changes: the transition table of MESS protocol v1 and who may
// move a thread where.

import (
	"context"
	"encoding/json"
)

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
// transition table (see the package documentation). A message's
// attachments are stored apart, as CreateRequest's are, within the same
// limits.
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
		exec, confirmed, err := decide(&t.Thread, t.confirmedBy, actorID, to)
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
		x := &extractor{message: len(t.Messages) + 1, seq: seq}
		mess, refs, err := x.take("", u.Mess)
		if err != nil {
			return result(), err
		}
		if err := s.checkInline("a message", len(mess)); err != nil {
			return result(), err
		}
		release, err := s.reserveAttachments(ex, actorID, x.size())
		if err != nil {
			return result(), err
		}
		defer release()
		if err := s.storeAttachments(ctx, ex.id, ref, x); err != nil {
			return result(), err
		}
		p := &messagePayload{Mess: mess, Attachments: refs}
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

// decide applies the transition table. confirmedBy is the executor the
// requestor has confirmed to, if any. It returns the thread's executor
// after the change and whether the change records the requestor's
// confirmation.
func decide(t *Thread, confirmedBy string, actor string, to Status) (*string, bool, error) {
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
			switch {
			case to == StatusDelegated:
				return nil, false, errorf(ErrConflict, "claim the thread before setting %s", to).with("status", from)
			case to == StatusDeclined && isRequestor:
				return nil, false, errorf(ErrForbidden, "the requestor cancels its own request; only others decline it")
			case to == StatusDeclined:
				// Declining without a claim (MESS protocol v1): the
				// decliner is recorded as the thread's executor.
				a := actor
				return &a, false, nil
			}
			if err := needConfirmation(t, confirmedBy == actor, to); err != nil {
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
		if err := needConfirmation(t, confirmedBy == actor, to); err != nil {
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

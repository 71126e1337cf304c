package mess

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/meatspace-exchange/mess/internal/ident"
)

// Status is the lifecycle state of a thread (MESS protocol v1).
type Status string

// The statuses of protocol v1.
const (
	StatusPending           Status = "pending"
	StatusClaimed           Status = "claimed"
	StatusInProgress        Status = "in_progress"
	StatusWaiting           Status = "waiting"
	StatusHeld              Status = "held"
	StatusNeedsInput        Status = "needs_input"
	StatusNeedsConfirmation Status = "needs_confirmation"
	StatusPartial           Status = "partial"
	StatusCompleted         Status = "completed"
	StatusFailed            Status = "failed"
	StatusDeclined          Status = "declined"
	StatusCancelled         Status = "cancelled"
	StatusExpired           Status = "expired"
	StatusSuperseded        Status = "superseded"
	StatusDelegated         Status = "delegated"
)

var statusAliases = map[string]Status{
	"in-progress":        StatusInProgress,
	"needs-input":        StatusNeedsInput,
	"needs-confirmation": StatusNeedsConfirmation,
	"rejected":           StatusDeclined,
	"canceled":           StatusCancelled,
	"received":           StatusPending,
}

var allStatuses = []Status{
	StatusPending, StatusClaimed, StatusInProgress, StatusWaiting, StatusHeld,
	StatusNeedsInput, StatusNeedsConfirmation, StatusPartial, StatusCompleted,
	StatusFailed, StatusDeclined, StatusCancelled, StatusExpired, StatusSuperseded,
	StatusDelegated,
}

// ParseStatus returns the canonical status for s, accepting the aliases
// other clients send (in-progress, needs-input, rejected, canceled, received).
func ParseStatus(s string) (Status, bool) {
	for _, st := range allStatuses {
		if string(st) == s {
			return st, true
		}
	}
	st, ok := statusAliases[s]
	return st, ok
}

// Terminal reports whether no further status change is allowed.
func (s Status) Terminal() bool {
	switch s {
	case StatusCompleted, StatusFailed, StatusDeclined, StatusCancelled,
		StatusExpired, StatusSuperseded, StatusDelegated:
		return true
	}
	return false
}

// Priority orders requests for executors' notification preferences.
type Priority string

// Priorities, lowest first.
const (
	PriorityBackground Priority = "background"
	PriorityNormal     Priority = "normal"
	PriorityElevated   Priority = "elevated"
	PriorityUrgent     Priority = "urgent"
)

// Rank returns the priority's position (background 0 … urgent 3), or -1.
func (p Priority) Rank() int {
	switch p {
	case PriorityBackground:
		return 0
	case PriorityNormal:
		return 1
	case PriorityElevated:
		return 2
	case PriorityUrgent:
		return 3
	}
	return -1
}

var refPattern = regexp.MustCompile(`^\d{4}-\d{2}-\d{2}-[A-Z0-9]{4,8}$`)

// ValidID reports whether s is acceptable as an exchange or executor id:
// 1 to 64 ASCII letters, digits, "_" or "-", the first a letter or digit
// (^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$). Such an id is safe in a storage key
// and a URL path as it is. The mail bus and the lease service accept the
// same ids, so one executor id works in all of them.
func ValidID(s string) bool { return ident.Valid(s) }

// idRule says what ValidID accepts, for error messages.
const idRule = "use 1 to 64 ASCII letters, digits, '_' or '-', starting with a letter or digit"

// validText reports whether s is UTF-8 text without control characters,
// as anything stored from a header or query parameter must be.
func validText(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// ValidRef reports whether s has the shape of a thread ref (2025-02-01-XY1Z).
func ValidRef(s string) bool { return refPattern.MatchString(s) }

// Request is what a requestor posts: the protocol's request block plus the
// thread's priority. Fields the server does not interpret are kept verbatim.
type Request struct {
	// Intent says what is wanted in one sentence. Required.
	Intent string `json:"intent"`
	// ID is the requestor's own identifier for the request.
	ID string `json:"id,omitempty"`
	// Priority defaults to normal.
	Priority Priority `json:"priority,omitempty"`
	// Context entries: text, images, URLs, ... (protocol §context).
	Context json.RawMessage `json:"context,omitempty"`
	// ResponseHint says what kind of answer is wanted. The web client's
	// "response_hints" spelling is accepted on input.
	ResponseHint json.RawMessage `json:"response_hint,omitempty"`
	// Requires lists capability ids (or {cap: meta} objects) an executor must have.
	Requires json.RawMessage `json:"requires,omitempty"`
	// Constraints on location, timing and environment.
	Constraints json.RawMessage `json:"constraints,omitempty"`
	// Precision is loose, guided or exact.
	Precision string `json:"precision,omitempty"`
	// Compensation offered.
	Compensation json.RawMessage `json:"compensation,omitempty"`
	// NeededBy is when the request expires if nobody has claimed it.
	NeededBy *time.Time `json:"needed_by,omitempty"`
	// ConfirmBefore requires the executor to ask for confirmation
	// (needs_confirmation) and get it before completing.
	ConfirmBefore bool `json:"confirm_before,omitempty"`

	// attachments are the files taken out of Context and ResponseHint.
	attachments []attachmentRef
}

// UnmarshalJSON accepts the "response_hints" spelling.
func (r *Request) UnmarshalJSON(b []byte) error {
	type plain Request
	var aux struct {
		plain
		ResponseHints json.RawMessage `json:"response_hints"`
	}
	if err := json.Unmarshal(b, &aux); err != nil {
		if te, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
			// The field path starts with the alias type's name.
			te.Field = strings.TrimPrefix(te.Field, "plain.")
		}
		return err
	}
	*r = Request(aux.plain)
	if len(r.ResponseHint) == 0 && len(aux.ResponseHints) > 0 {
		r.ResponseHint = aux.ResponseHints
	}
	return nil
}

const maxIntent = 4096

func (r *Request) validate() error {
	r.Intent = strings.TrimSpace(r.Intent)
	if r.Intent == "" {
		return errorf(ErrInvalid, "intent required")
	}
	if len(r.Intent) > maxIntent {
		return errorf(ErrInvalid, "intent longer than %d bytes", maxIntent)
	}
	if r.Priority == "" {
		r.Priority = PriorityNormal
	}
	if r.Priority.Rank() < 0 {
		return errorf(ErrInvalid, "invalid priority %q: must be background, normal, elevated or urgent", r.Priority)
	}
	if len(r.ID) > 256 {
		return errorf(ErrInvalid, "id longer than 256 bytes")
	}
	switch r.Precision {
	case "", "loose", "guided", "exact":
	default:
		return errorf(ErrInvalid, "invalid precision %q: must be loose, guided or exact", r.Precision)
	}
	for name, raw := range map[string]json.RawMessage{"context": r.Context, "response_hint": r.ResponseHint, "requires": r.Requires} {
		if len(raw) > 0 && raw[0] != '[' && string(raw) != "null" {
			return errorf(ErrInvalid, "%s must be an array", name)
		}
	}
	if len(r.Constraints) > 0 && r.Constraints[0] != '{' && string(r.Constraints) != "null" {
		return errorf(ErrInvalid, "constraints must be an object")
	}
	if _, err := r.RequiredCapabilities(); err != nil {
		return err
	}
	return nil
}

// RequiredCapabilities returns the capability ids in Requires: plain strings
// and the keys of {cap: meta} objects.
func (r *Request) RequiredCapabilities() ([]string, error) {
	if len(r.Requires) == 0 || string(r.Requires) == "null" {
		return nil, nil
	}
	var items []json.RawMessage
	if err := json.Unmarshal(r.Requires, &items); err != nil {
		return nil, errorf(ErrInvalid, "requires must be an array")
	}
	var caps []string
	for _, it := range items {
		var s string
		if json.Unmarshal(it, &s) == nil {
			caps = append(caps, s)
			continue
		}
		var m map[string]json.RawMessage
		if json.Unmarshal(it, &m) != nil || len(m) != 1 {
			return nil, errorf(ErrInvalid, "requires entries must be capability ids or {id: metadata}")
		}
		for k := range m {
			caps = append(caps, k)
		}
	}
	return caps, nil
}

// Message is one entry of a thread's conversation: a MESS message array
// (the protocol's list of single-key blocks) as its author sent it, except
// that Service.Get shows each attachment (a data URI or a named object's
// base64 data) as the string "mess-attachment:{name}";
// Service.GetWithAttachments puts them back.
type Message struct {
	From string          `json:"from"`
	TS   time.Time       `json:"ts"`
	Mess json.RawMessage `json:"mess"`

	// attachments are the files taken out of Mess.
	attachments []attachmentRef
}

// HistoryEntry is one recorded change of a thread, status changes and
// their notes included.
type HistoryEntry struct {
	Seq       int64     `json:"seq"`
	TS        time.Time `json:"ts"`
	ActorID   string    `json:"actor_id"`
	Type      string    `json:"type"` // created, status, message
	OldStatus Status    `json:"old_status,omitempty"`
	NewStatus Status    `json:"new_status,omitempty"`
	Message   string    `json:"message,omitempty"`
}

// Thread is a request and everything that happened to it.
// Its JSON is the Summary's fields followed by the rest.
type Thread struct {
	Summary
	ExternalID string `json:"external_id,omitempty"`

	Request  *Request       `json:"request,omitempty"`
	Messages []Message      `json:"messages,omitempty"`
	History  []HistoryEntry `json:"history,omitempty"`
}

// Summary is the list view of a thread.
type Summary struct {
	Ref         string     `json:"ref"`
	Status      Status     `json:"status"`
	Intent      string     `json:"intent"`
	RequestorID string     `json:"requestor_id"`
	ExecutorID  *string    `json:"executor_id"`
	Priority    Priority   `json:"priority"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	Seq         int64      `json:"seq"`
	NeededBy    *time.Time `json:"needed_by,omitempty"`
	// Requires is the request's requires as it was asked, so a client can
	// tell from the listing which threads an executor is able to take.
	Requires json.RawMessage `json:"requires,omitempty"`
}

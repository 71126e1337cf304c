package mess

import (
	"encoding/json"
	"fmt"
	"time"

	fastjson "github.com/goccy/go-json"
)

// Event types written to the log.
const (
	EventThreadCreated      = "thread_created"
	EventMessageAdded       = "message_added"
	EventStatusChanged      = "status_changed"
	EventExternalIDSet      = "external_id_set"
	EventExecutorRegistered = "executor_registered"
	EventExecutorUpdated    = "executor_updated"
)

// tsLayout is the event log's timestamp format in MESS protocol v1:
// ISO-8601, milliseconds, UTC.
const tsLayout = "2006-01-02T15:04:05.000Z07:00"

// Event is one line of the event log, the source of truth for threads. The
// JSON field names are those of MESS protocol v1's event log, so DuckDB
// views over events/**/*.jsonl keep working; seq is the per-thread
// sequence number.
type Event struct {
	EventID    string          `json:"event_id"`
	TS         time.Time       `json:"-"`
	ExchangeID string          `json:"exchange_id"`
	ThreadRef  *string         `json:"thread_ref"`
	EventType  string          `json:"event_type"`
	ActorID    string          `json:"actor_id"`
	Seq        int64           `json:"seq"`
	Payload    json.RawMessage `json:"payload"`
}

type eventJSON struct {
	EventID    string          `json:"event_id"`
	TS         string          `json:"ts"`
	ExchangeID string          `json:"exchange_id"`
	ThreadRef  *string         `json:"thread_ref"`
	EventType  string          `json:"event_type"`
	ActorID    string          `json:"actor_id"`
	Seq        int64           `json:"seq"`
	Payload    json.RawMessage `json:"payload"`
}

// MarshalJSON writes ts in the log's fixed millisecond format.
func (e Event) MarshalJSON() ([]byte, error) {
	return json.Marshal(eventJSON{e.EventID, e.TS.UTC().Format(tsLayout), e.ExchangeID, e.ThreadRef, e.EventType, e.ActorID, e.Seq, e.Payload})
}

// UnmarshalJSON reads an event line.
func (e *Event) UnmarshalJSON(b []byte) error {
	var j eventJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return err
	}
	ts, err := time.Parse(time.RFC3339Nano, j.TS)
	if err != nil {
		return fmt.Errorf("event ts: %w", err)
	}
	*e = Event{j.EventID, ts, j.ExchangeID, j.ThreadRef, j.EventType, j.ActorID, j.Seq, j.Payload}
	return nil
}

// threadCreatedPayload is the payload of thread_created: the request as
// kept (attachments replaced by references, listed in attachments), who
// made it, and its idempotency key with a hash of the request it was
// first used with.
type threadCreatedPayload struct {
	Request
	RequestorID     string `json:"requestor_id"`
	IdempotencyKey  string `json:"idempotency_key,omitempty"`
	IdempotencyHash string `json:"idempotency_hash,omitempty"`
}

// MarshalJSON keeps Request's field list flat beside requestor_id.
func (p threadCreatedPayload) MarshalJSON() ([]byte, error) {
	type plain Request
	return json.Marshal(struct {
		plain
		RequestorID     string          `json:"requestor_id"`
		IdempotencyKey  string          `json:"idempotency_key,omitempty"`
		IdempotencyHash string          `json:"idempotency_hash,omitempty"`
		Attachments     []attachmentRef `json:"attachments,omitempty"`
	}{plain(p.Request), p.RequestorID, p.IdempotencyKey, p.IdempotencyHash, p.attachments})
}

// threadCreatedWire is threadCreatedPayload flattened, so a log line decodes
// in one pass during replay.
type threadCreatedWire struct {
	Intent          string          `json:"intent"`
	ID              string          `json:"id"`
	Priority        Priority        `json:"priority"`
	Context         json.RawMessage `json:"context"`
	ResponseHint    json.RawMessage `json:"response_hint"`
	ResponseHints   json.RawMessage `json:"response_hints"`
	Requires        json.RawMessage `json:"requires"`
	Constraints     json.RawMessage `json:"constraints"`
	Precision       string          `json:"precision"`
	Compensation    json.RawMessage `json:"compensation"`
	NeededBy        *time.Time      `json:"needed_by"`
	ConfirmBefore   bool            `json:"confirm_before"`
	RequestorID     string          `json:"requestor_id"`
	IdempotencyKey  string          `json:"idempotency_key"`
	IdempotencyHash string          `json:"idempotency_hash"`
	Attachments     []attachmentRef `json:"attachments"`
}

func (w *threadCreatedWire) payload() *threadCreatedPayload {
	hint := w.ResponseHint
	if len(hint) == 0 {
		hint = w.ResponseHints
	}
	return &threadCreatedPayload{
		Request: Request{
			Intent: w.Intent, ID: w.ID, Priority: w.Priority, Context: w.Context, ResponseHint: hint,
			Requires: w.Requires, Constraints: w.Constraints, Precision: w.Precision,
			Compensation: w.Compensation, NeededBy: w.NeededBy, ConfirmBefore: w.ConfirmBefore,
			attachments: w.Attachments,
		},
		RequestorID:     w.RequestorID,
		IdempotencyKey:  w.IdempotencyKey,
		IdempotencyHash: w.IdempotencyHash,
	}
}

// messagePayload is the payload of message_added: the message as kept
// (attachments replaced by references) and the references.
type messagePayload struct {
	Mess        json.RawMessage `json:"mess"`
	Attachments []attachmentRef `json:"attachments,omitempty"`
}

type statusPayload struct {
	OldStatus  Status  `json:"old_status"`
	NewStatus  Status  `json:"new_status"`
	ExecutorID *string `json:"executor_id"`
	Message    string  `json:"message,omitempty"`
	Confirmed  bool    `json:"confirmed,omitempty"`
}

type externalIDPayload struct {
	ExternalID string `json:"external_id"`
}

type executorPayload struct {
	DisplayName  string          `json:"display_name"`
	Capabilities json.RawMessage `json:"capabilities"`
}

// decodeLine parses one log line and its payload. It is the replay hot
// path, so it decodes each line once with a faster decoder than
// encoding/json; the wire format is the same.
func decodeLine(line []byte) (Event, any, error) {
	var j eventJSON
	if err := fastjson.Unmarshal(line, &j); err != nil {
		return Event{}, nil, err
	}
	ts, err := time.Parse(time.RFC3339Nano, j.TS)
	if err != nil {
		return Event{}, nil, fmt.Errorf("event ts: %w", err)
	}
	ev := Event{j.EventID, ts, j.ExchangeID, j.ThreadRef, j.EventType, j.ActorID, j.Seq, j.Payload}
	var p any
	switch ev.EventType {
	case EventThreadCreated:
		var w threadCreatedWire
		if err := fastjson.Unmarshal(ev.Payload, &w); err != nil {
			return ev, nil, fmt.Errorf("%s payload: %w", ev.EventType, err)
		}
		return ev, w.payload(), nil
	case EventMessageAdded:
		p = &messagePayload{}
	case EventStatusChanged:
		p = &statusPayload{}
	case EventExternalIDSet:
		p = &externalIDPayload{}
	default:
		return ev, nil, nil
	}
	if err := fastjson.Unmarshal(ev.Payload, p); err != nil {
		return ev, nil, fmt.Errorf("%s payload: %w", ev.EventType, err)
	}
	return ev, p, nil
}

package mess

import (
	"encoding/json"
	"fmt"
	"time"
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

// tsLayout is the original's timestamp format: ISO-8601, milliseconds, UTC.
const tsLayout = "2006-01-02T15:04:05.000Z07:00"

// Event is one line of the event log, the source of truth for threads. The
// JSON field names are the original server's, so existing DuckDB views over
// events/**/*.jsonl keep working; seq is the per-thread sequence number.
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

type threadCreatedPayload struct {
	Request
	RequestorID    string `json:"requestor_id"`
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// MarshalJSON keeps Request's field list flat beside requestor_id.
func (p threadCreatedPayload) MarshalJSON() ([]byte, error) {
	type plain Request
	return json.Marshal(struct {
		plain
		RequestorID    string `json:"requestor_id"`
		IdempotencyKey string `json:"idempotency_key,omitempty"`
	}{plain(p.Request), p.RequestorID, p.IdempotencyKey})
}

// UnmarshalJSON is the inverse of MarshalJSON.
func (p *threadCreatedPayload) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &p.Request); err != nil {
		return err
	}
	var extra struct {
		RequestorID    string `json:"requestor_id"`
		IdempotencyKey string `json:"idempotency_key"`
	}
	if err := json.Unmarshal(b, &extra); err != nil {
		return err
	}
	p.RequestorID, p.IdempotencyKey = extra.RequestorID, extra.IdempotencyKey
	return nil
}

type messagePayload struct {
	Mess json.RawMessage `json:"mess"`
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

// decodePayload returns the typed payload of ev, or nil for types this
// version does not fold into state.
func decodePayload(ev *Event) (any, error) {
	var p any
	switch ev.EventType {
	case EventThreadCreated:
		p = &threadCreatedPayload{}
	case EventMessageAdded:
		p = &messagePayload{}
	case EventStatusChanged:
		p = &statusPayload{}
	case EventExternalIDSet:
		p = &externalIDPayload{}
	default:
		return nil, nil
	}
	if err := json.Unmarshal(ev.Payload, p); err != nil {
		return nil, fmt.Errorf("%s payload: %w", ev.EventType, err)
	}
	return p, nil
}

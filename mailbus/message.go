package mailbus

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	gojson "github.com/goccy/go-json"

	"github.com/meatspace-exchange/mess/internal/ident"
)

// Message types of Jetpack's mail protocol (its MessageType, cf-mail-adapter
// 0.1.0). Any other dotted type made of
// letters, digits, '_' and '-' segments is accepted as well.
const (
	TypeTaskCreated          = "task.created"
	TypeTaskClaimed          = "task.claimed"
	TypeTaskAssigned         = "task.assigned"
	TypeTaskUpdated          = "task.updated"
	TypeTaskCompleted        = "task.completed"
	TypeTaskFailed           = "task.failed"
	TypeTaskRetryScheduled   = "task.retry_scheduled"
	TypeTaskProgress         = "task.progress"
	TypeTaskAvailable        = "task.available"
	TypeTaskInterrupted      = "task.interrupted"
	TypeAgentStarted         = "agent.started"
	TypeAgentStopped         = "agent.stopped"
	TypeAgentError           = "agent.error"
	TypeAgentStatus          = "agent.status"
	TypeFileLock             = "file.lock"
	TypeFileUnlock           = "file.unlock"
	TypeCoordinationRequest  = "coordination.request"
	TypeCoordinationResponse = "coordination.response"
	TypeHeartbeat            = "heartbeat"
)

// Message is the unit of mail. Field names and JSON keys are those of
// Jetpack's Message (cf-mail-adapter 0.1.0); Seq is this bus's addition.
type Message struct {
	// ID identifies the message; the server assigns msg-<ms>-<8hex> when
	// empty. Receivers deduplicate redeliveries by it.
	ID string `json:"id"`
	// Type is a dotted type such as "task.created".
	Type string `json:"type"`
	// From is the sender. The server overwrites it with the authenticated
	// agent, so it cannot be spoofed.
	From string `json:"from"`
	// To, when set, makes the message direct: only that agent receives it,
	// whether it was sent with Publish or SendTo.
	To string `json:"to,omitempty"`
	// Payload is a JSON object; empty means {}.
	Payload json.RawMessage `json:"payload"`
	// Timestamp is set by the server when zero.
	Timestamp time.Time `json:"timestamp"`
	// CorrelationID threads replies to requests.
	CorrelationID string `json:"correlationId,omitempty"`
	// AckRequired makes delivery at-least-once: the message is redelivered
	// after the visibility timeout until the recipient acknowledges it.
	AckRequired bool `json:"ackRequired,omitempty"`
	// AckedAt and AckedBy are set on a recipient's copy once that recipient
	// acknowledged it.
	AckedAt *time.Time `json:"ackedAt,omitempty"`
	AckedBy string     `json:"ackedBy,omitempty"`
	// Seq is the message's position in the recipient's inbox, assigned by
	// the server; resume with since=<last Seq seen>. Zero on messages that
	// are not stored (heartbeats) and on the sender's side.
	Seq uint64 `json:"seq,omitempty"`
}

// ValidID reports whether s is a valid exchange or agent identifier:
// ^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$.
func ValidID(s string) bool { return ident.Valid(s) }

// ValidType reports whether t is an acceptable message type: up to 128
// bytes of dot-separated words of [A-Za-z0-9_-].
func ValidType(t string) bool { return ident.ValidDotted(t, 128) }

// validMessageID is ^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$.
func validMessageID(s string) bool { return ident.ValidToken(s, 128, "._:-") }

// ValidPattern reports whether p is an acceptable subscription: a type,
// a prefix pattern "a.b.*", or "*".
func ValidPattern(p string) bool {
	if p == "*" {
		return true
	}
	if base, ok := strings.CutSuffix(p, ".*"); ok {
		return ValidType(base)
	}
	return ValidType(p)
}

// Match reports whether message type t matches subscription pattern p.
// "task.*" matches "task.created" and "task.x.y" but not "task".
func Match(p, t string) bool {
	if p == "*" {
		return true
	}
	if base, ok := strings.CutSuffix(p, ".*"); ok {
		return len(t) > len(base)+1 && t[len(base)] == '.' && strings.HasPrefix(t, base)
	}
	return p == t
}

// NewMessageID returns an id in the format of Jetpack's generateMessageId,
// msg-<ms>-<8hex>.
func NewMessageID(now time.Time) string {
	// The suffix keeps ids of one millisecond apart; it need not be
	// secret, and the runtime's generator costs no system call.
	var r [4]byte
	binary.LittleEndian.PutUint32(r[:], mrand.Uint32())
	var buf [40]byte
	b := append(buf[:0], "msg-"...)
	b = strconv.AppendInt(b, now.UnixMilli(), 10)
	b = append(b, '-')
	return string(hex.AppendEncode(b, r[:]))
}

// ackedMessage returns the id of the message m acknowledges, or "". Jetpack's
// HttpMailBus (cf-mail-adapter 0.1.0) acknowledges message id by publishing
// {"type":"coordination.response","payload":{"messageId":id,"action":"ack"}}.
func ackedMessage(m *Message) string {
	if m.Type != TypeCoordinationResponse {
		return ""
	}
	var p struct {
		MessageID string `json:"messageId"`
		Action    string `json:"action"`
	}
	if json.Unmarshal(m.Payload, &p) != nil || p.Action != "ack" {
		return ""
	}
	return p.MessageID
}

// wireMessage is a Message as a client sends it, whose timestamp may be an
// RFC 3339 string (as Jetpack's clients write a Date) or a number of
// milliseconds since the epoch. Messages the bus encodes itself always carry
// RFC 3339, so only what clients send is decoded this way.
type wireMessage struct {
	Message
	Timestamp wireTime `json:"timestamp"`
}

func (w *wireMessage) message() Message {
	m := w.Message
	m.Timestamp = w.Timestamp.Time
	return m
}

// wireTime is a timestamp as a client sends it.
type wireTime struct{ time.Time }

func (t *wireTime) UnmarshalJSON(data []byte) error {
	ts := bytes.TrimSpace(data)
	switch {
	case len(ts) == 0 || bytes.Equal(ts, []byte("null")):
		t.Time = time.Time{}
		return nil
	case ts[0] == '"':
		if err := t.Time.UnmarshalJSON(ts); err != nil {
			return fmt.Errorf("%w: timestamp %.40s is not RFC 3339", ErrInvalid, ts)
		}
		return nil
	}
	ms, err := strconv.ParseFloat(string(ts), 64)
	if err != nil || math.IsInf(ms, 0) || math.IsNaN(ms) || math.Abs(ms) > maxEpochMs {
		return fmt.Errorf("%w: timestamp %.40s is neither an RFC 3339 string nor epoch milliseconds", ErrInvalid, ts)
	}
	t.Time = time.UnixMilli(int64(ms)).UTC()
	return nil
}

// maxEpochMs is the end of year 9999 in milliseconds since the epoch.
const maxEpochMs = 253402300799999

// normalize validates m for sending and fills server-side fields.
func normalize(m *Message, from string, now time.Time) error {
	if !ValidType(m.Type) {
		return fmt.Errorf("%w: message type %q (want dotted segments of letters, digits, '_' or '-')", ErrInvalid, m.Type)
	}
	if m.ID == "" {
		m.ID = NewMessageID(now)
	} else if !validMessageID(m.ID) {
		return fmt.Errorf("%w: message id %q", ErrInvalid, m.ID)
	}
	if m.To != "" && !ValidID(m.To) {
		return fmt.Errorf("%w: target agent %q", ErrInvalid, m.To)
	}
	if len(m.CorrelationID) > 256 {
		return fmt.Errorf("%w: correlationId longer than 256 bytes", ErrInvalid)
	}
	// Every frame the bus sends is a text frame, which must be UTF-8
	// (RFC 6455 section 5.6): invalid bytes are refused here, on every
	// path in, rather than replaced or passed on.
	if !utf8.ValidString(m.CorrelationID) || !utf8.Valid(m.Payload) {
		return fmt.Errorf("%w: message is not valid UTF-8", ErrInvalid)
	}
	p := bytes.TrimSpace(m.Payload)
	switch {
	case len(p) == 0 || bytes.Equal(p, []byte("null")):
		m.Payload = json.RawMessage("{}")
	case p[0] != '{':
		return fmt.Errorf("%w: payload must be a JSON object", ErrInvalid)
	case isCompact(p) && gojson.Valid(p):
		// What clients send usually is compact already: no copy, and
		// goccy's validator (which FuzzNormalizePayload holds to
		// encoding/json's verdict) takes a sixth of the time.
		m.Payload = p[:len(p):len(p)]
	default:
		var c bytes.Buffer
		c.Grow(len(p))
		if err := json.Compact(&c, p); err != nil { // validates too
			return fmt.Errorf("%w: payload must be a JSON object: %v", ErrInvalid, err)
		}
		m.Payload = c.Bytes()
	}
	m.From = from
	if m.Timestamp.IsZero() {
		m.Timestamp = now
	}
	m.Timestamp = m.Timestamp.UTC()
	m.AckedAt, m.AckedBy, m.Seq = nil, "", 0
	return nil
}

// isCompact reports whether p has no whitespace outside its strings, so
// that json.Compact would leave it as it is.
func isCompact(p []byte) bool {
	if bytes.IndexByte(p, ' ') < 0 && bytes.IndexByte(p, '\n') < 0 &&
		bytes.IndexByte(p, '\t') < 0 && bytes.IndexByte(p, '\r') < 0 {
		return true // the common case, in a few vector instructions
	}
	inString := false
	for i := 0; i < len(p); i++ {
		c := p[i]
		if inString {
			switch c {
			case '\\':
				i++
			case '"':
				inString = false
			}
			continue
		}
		switch c {
		case '"':
			inString = true
		case ' ', '\t', '\n', '\r':
			return false
		}
	}
	return true
}

// appendJSON encodes m the way encoding/json does (same keys, omitempty
// rules, RFC 3339 times) without reflection: every delivered message is
// encoded once on the hot path.
func (m *Message) appendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, m.ID)
	b = append(b, `,"type":`...)
	b = appendString(b, m.Type)
	b = append(b, `,"from":`...)
	b = appendString(b, m.From)
	if m.To != "" {
		b = append(b, `,"to":`...)
		b = appendString(b, m.To)
	}
	b = append(b, `,"payload":`...)
	if len(m.Payload) == 0 {
		b = append(b, "null"...)
	} else {
		b = append(b, m.Payload...)
	}
	b = append(b, `,"timestamp":"`...)
	b = m.Timestamp.AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	if m.CorrelationID != "" {
		b = append(b, `,"correlationId":`...)
		b = appendString(b, m.CorrelationID)
	}
	if m.AckRequired {
		b = append(b, `,"ackRequired":true`...)
	}
	if m.AckedAt != nil {
		b = append(b, `,"ackedAt":"`...)
		b = m.AckedAt.AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	if m.AckedBy != "" {
		b = append(b, `,"ackedBy":`...)
		b = appendString(b, m.AckedBy)
	}
	if m.Seq != 0 {
		b = append(b, `,"seq":`...)
		b = strconv.AppendUint(b, m.Seq, 10)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string.
func appendString(b []byte, s string) []byte {
	if !utf8.ValidString(s) {
		q, _ := json.Marshal(s) // replaces invalid bytes as encoding/json does
		return append(b, q...)
	}
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			switch c {
			case '\n':
				b = append(b, `\n`...)
			case '\r':
				b = append(b, `\r`...)
			case '\t':
				b = append(b, `\t`...)
			default:
				b = append(b, `\u00`...)
				b = append(b, "0123456789abcdef"[c>>4], "0123456789abcdef"[c&0xf])
			}
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

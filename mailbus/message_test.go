package mailbus

import (
	"encoding/json"
	"testing"
	"time"
)

func TestMessage_appendJSON(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 6, time.UTC)
	tests := []Message{
		{ID: "msg-1", Type: "a.b", From: "x", Payload: json.RawMessage(`{}`), Timestamp: at},
		{ID: "m", Type: "t", From: "f", To: "g", Payload: json.RawMessage(`{"k":[1,"\u00e9"]}`), Timestamp: at,
			CorrelationID: "c \"q\" \\ \n\t\x01 é \xff", AckRequired: true, AckedAt: &at, AckedBy: "g", Seq: 42},
	}
	for _, m := range tests {
		want, err := json.Marshal(&m)
		if err != nil {
			t.Fatal(err)
		}
		var a, b any
		if err := json.Unmarshal(m.appendJSON(nil), &a); err != nil {
			t.Fatalf("invalid JSON %s: %v", m.appendJSON(nil), err)
		}
		json.Unmarshal(want, &b)
		ga, _ := json.Marshal(a)
		gb, _ := json.Marshal(b)
		if string(ga) != string(gb) {
			t.Errorf("got  %s\nwant %s", ga, gb)
		}
	}
}

func TestMatch(t *testing.T) {
	tests := []struct {
		pattern, typ string
		want         bool
	}{
		{"*", "task.created", true},
		{"task.*", "task.created", true},
		{"task.*", "task.a.b", true},
		{"task.*", "task", false},
		{"task.*", "tasks.created", false},
		{"task.created", "task.created", true},
		{"task.created", "task.createdx", false},
	}
	for _, tc := range tests {
		if got := Match(tc.pattern, tc.typ); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.pattern, tc.typ, got, tc.want)
		}
	}
}

func FuzzNormalize(f *testing.F) {
	f.Add("task.created", "msg-1-abcdef12", `{"a":1}`, "corr")
	f.Add("", "", "", "")
	f.Fuzz(func(t *testing.T, typ, id, payload, corr string) {
		m := Message{Type: typ, ID: id, Payload: json.RawMessage(payload), CorrelationID: corr}
		if normalize(&m, "agent", time.Unix(0, 0)) != nil {
			return
		}
		var back Message
		if err := json.Unmarshal(m.appendJSON(nil), &back); err != nil {
			t.Fatalf("encoding of accepted message is invalid: %v", err)
		}
	})
}

// A payload is stored compact whatever whitespace the sender put between
// its tokens, a compact one as it is; whitespace and escaped quotes inside
// strings stay; an invalid one is refused whether or not it looks compact.
func TestNormalizePayload(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := []struct {
		in, want string // want "" for refused
	}{
		{`{}`, `{}`},
		{`  {"a":1}  `, `{"a":1}`},
		{`{"a": 1, "b" : [1, 2]}`, `{"a":1,"b":[1,2]}`},
		{"{\n\t\"a\":\r\n1}", `{"a":1}`},
		{`{"s":"two  spaces\t\"quoted \\\" still\" "}`, `{"s":"two  spaces\t\"quoted \\\" still\" "}`},
		{`{"s":"a\\"}`, `{"s":"a\\"}`},
		{`{"s":"a\\", "b":2}`, `{"s":"a\\","b":2}`},
		{`{"a":1,}`, ""},
		{`{"a" 1}`, ""},
		{`{"a":"unterminated}`, ""},
		{`{"a":1}{`, ""},
	}
	for _, tt := range tests {
		m := Message{Type: "a.b", Payload: json.RawMessage(tt.in)}
		err := normalize(&m, "f", now)
		switch {
		case tt.want == "" && err == nil:
			t.Errorf("%q accepted as %q", tt.in, m.Payload)
		case tt.want != "" && err != nil:
			t.Errorf("%q refused: %v", tt.in, err)
		case tt.want != "" && string(m.Payload) != tt.want:
			t.Errorf("%q stored as %q, want %q", tt.in, m.Payload, tt.want)
		}
	}
}

// Message ids have Jetpack's shape, msg-<ms>-<8 hex>.
func TestNewMessageID(t *testing.T) {
	at := time.UnixMilli(1767323045006)
	id := NewMessageID(at)
	if len(id) != len("msg-1767323045006-")+8 || id[:18] != "msg-1767323045006-" || !validMessageID(id) {
		t.Errorf("NewMessageID = %q", id)
	}
	if NewMessageID(at) == id {
		t.Error("two ids in one millisecond are equal")
	}
}

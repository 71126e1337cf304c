package mailbus

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
	"unicode/utf8"
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

// normalize accepts a payload exactly when encoding/json finds it a valid
// JSON object (or it is empty or null) of valid UTF-8, and stores what
// json.Compact makes of it: the fast path for compact payloads must agree
// with the reference on everything.
func FuzzNormalizePayload(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1}`, ` {"a" : [1, 2]} `, `{"a":"\u00e9\n"}`, `{"a":-0.5e+10}`, `{"a":01}`, "{\"a\":\"\x01\"}",
		"{\"a\":1}\x00", "{\"a\":1}\x00}", `{"a":1}}`, `{"a":tru}`, `{"a":"\ud800"}`, `{"a":1.}`, `{"a":.5}`, `{"a":[1,]}`,
		`{"a":"\q"}`, "{\"a\":\"\xff\"}", `{"a":1e}`, `{"a":-}`, `{"a":"x"`, `null`, `[1]`, `"s"`, `{"a":[]}x`, `{,}`,
		`{"a":1,"a":2}`, `{"a":"\\"}`, `{"a":"\\\""}`, "{\"a\":\"\x7f\"}", `{"a":{"b":{"c":[true,false,null]}}}`,
	} {
		f.Add([]byte(s))
	}
	now := time.Unix(0, 0)
	f.Fuzz(func(t *testing.T, b []byte) {
		m := Message{Type: "a.b", Payload: json.RawMessage(bytes.Clone(b))}
		err := normalize(&m, "f", now)
		p := bytes.TrimSpace(b)
		switch {
		case len(p) == 0 || string(p) == "null":
			if err != nil || string(m.Payload) != "{}" {
				t.Fatalf("%q: %q, %v; want {}", b, m.Payload, err)
			}
			return
		case p[0] != '{' || !json.Valid(p) || !utf8.Valid(b):
			if err == nil {
				t.Fatalf("%q accepted as %q", b, m.Payload)
			}
			return
		}
		var want bytes.Buffer
		if err := json.Compact(&want, p); err != nil {
			t.Fatal(err)
		}
		if err != nil || !bytes.Equal(m.Payload, want.Bytes()) {
			t.Fatalf("%q: %q, %v; want %q", b, m.Payload, err, want.Bytes())
		}
	})
}

// BenchmarkNormalize measures the checks and defaults every message gets on
// the way in, with a compact 100-byte payload as messbench sends.
func BenchmarkNormalize(b *testing.B) {
	p := json.RawMessage(`{"t":1796025472698506229,"pad":"` + string(bytes.Repeat([]byte{'x'}, 67)) + `"}`)
	now := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		m := Message{Type: "bench.direct", To: "agent-1", Payload: p}
		if err := normalize(&m, "agent-2", now); err != nil {
			b.Fatal(err)
		}
	}
}

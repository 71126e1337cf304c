package httpx

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestBearer(t *testing.T) {
	for _, tt := range []struct {
		header string
		key    string
		ok     bool
	}{
		{"Bearer abc", "abc", true},
		{"bearer abc", "abc", true},
		{"BEARER  abc ", "abc", true},
		{"Bearer ", "", false},
		{"Basic abc", "", false},
		{"", "", false},
		{"Bearerabc", "", false},
	} {
		r := httptest.NewRequest(http.MethodGet, "/", nil)
		if tt.header != "" {
			r.Header.Set("Authorization", tt.header)
		}
		key, ok := Bearer(r)
		if key != tt.key || ok != tt.ok {
			t.Errorf("Bearer(%q) = %q, %v; want %q, %v", tt.header, key, ok, tt.key, tt.ok)
		}
	}
}

// chunked hides the length so the limit is found while reading.
type chunked struct{ io.Reader }

func TestDecodeJSON(t *testing.T) {
	type body struct {
		Name string `json:"name"`
		N    int    `json:"n"`
	}
	for _, tt := range []struct {
		name    string
		body    io.Reader
		status  int
		code    string
		message string
		want    body
	}{
		{name: "ok", body: strings.NewReader(`{"name":"a","n":2}`), want: body{"a", 2}},
		{name: "empty", body: strings.NewReader("  "), want: body{}},
		{name: "syntax", body: strings.NewReader(`{"name":`), status: 400, code: CodeMalformedJSON, message: "malformed JSON at byte"},
		{name: "type", body: strings.NewReader(`{"n":"x"}`), status: 400, code: CodeMalformedJSON, message: "n must be an integer, not string"},
		{name: "trailing", body: strings.NewReader(`{} {}`), status: 400, code: CodeMalformedJSON},
		{name: "utf8", body: strings.NewReader("{\"name\":\"\xff\"}"), status: 400, code: CodeInvalid, message: "UTF-8"},
		{name: "sized over limit", body: strings.NewReader(`{"name":"` + strings.Repeat("x", 100) + `"}`), status: 413, code: CodeTooLarge},
		{name: "chunked over limit", body: chunked{strings.NewReader(`{"name":"` + strings.Repeat("x", 100) + `"}`)}, status: 413, code: CodeTooLarge},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodPost, "/", tt.body)
			var got body
			err := DecodeJSON(httptest.NewRecorder(), r, 64, &got)
			if tt.status == 0 {
				if err != nil || got != tt.want {
					t.Fatalf("got %+v, %v; want %+v", got, err, tt.want)
				}
				return
			}
			e, ok := errors.AsType[*Error](err)
			if !ok || e.Status != tt.status || e.Code != tt.code || !strings.Contains(e.Message, tt.message) {
				t.Fatalf("err = %#v; want %d %s containing %q", err, tt.status, tt.code, tt.message)
			}
			if strings.Contains(e.Message, "main.") || strings.Contains(e.Message, "httpx.") {
				t.Fatalf("message names a Go type: %q", e.Message)
			}
		})
	}
}

func TestWriteError(t *testing.T) {
	w := httptest.NewRecorder()
	WriteErrorDetails(w, http.StatusConflict, CodeConflict, "claimed by alice", map[string]any{"executor_id": "alice", "code": "spoof"})
	var got map[string]string
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if w.Code != 409 || got["code"] != "conflict" || got["error"] != "claimed by alice" || got["executor_id"] != "alice" {
		t.Fatalf("%d %v", w.Code, got)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
}

func TestCode(t *testing.T) {
	for status, want := range map[int]string{400: CodeInvalid, 401: CodeUnauthorized, 404: CodeNotFound, 413: CodeTooLarge, 429: CodeRateLimited, 500: CodeInternal, 502: CodeInternal, 503: CodeUnavailable, 418: "i'm_a_teapot"} {
		if got := Code(status); got != want {
			t.Errorf("Code(%d) = %q, want %q", status, got, want)
		}
	}
}

func TestClientAddr(t *testing.T) {
	tests := []struct {
		remote, xff string
		trust       bool
		want        string
	}{
		{"192.0.2.7:5000", "", false, "192.0.2.7/32"},
		{"192.0.2.7:5000", "198.51.100.1", false, "192.0.2.7/32"},
		{"192.0.2.7:5000", "198.51.100.1, 203.0.113.5", true, "203.0.113.5/32"},
		{"192.0.2.7:5000", "not an address", true, "192.0.2.7/32"},
		{"[2001:db8:1:2:3:4:5:6]:443", "", false, "2001:db8:1:2::/64"},
		{"[::ffff:192.0.2.9]:1", "", false, "192.0.2.9/32"},
		{"garbage", "", false, "invalid Prefix"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = tt.remote
		if tt.xff != "" {
			r.Header.Set("X-Forwarded-For", tt.xff)
		}
		if got := ClientAddr(r, tt.trust).String(); got != tt.want {
			t.Errorf("ClientAddr(%s, XFF %q, trust %v) = %s, want %s", tt.remote, tt.xff, tt.trust, got, tt.want)
		}
	}
}

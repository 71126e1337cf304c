package lease_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/meatspace-exchange/mess/lease"
)

// fuzzHandler is the lease API over an in-memory manager whose blocking
// acquires wait 10 ms at most, so no input holds the fuzzer up.
func fuzzHandler(f *testing.F) http.Handler {
	f.Helper()
	m := MustNew(f, lease.Config{MaxWait: 10 * time.Millisecond})
	h, err := lease.NewHandler(m, lease.HandlerConfig{Auth: keys{}, MaxBodyBytes: 4096})
	if err != nil {
		f.Fatal(err)
	}
	return h
}

// leaseCall sends body to op as alice and checks the answer is JSON with a
// 2xx or 4xx status. It returns the status and the decoded answer.
func leaseCall(t *testing.T, h http.Handler, method, op, body string) (int, map[string]any) {
	t.Helper()
	r := httptest.NewRequest(method, "/api/v1/exchanges/x1/leases/"+op, strings.NewReader(body))
	r.Header.Set("Authorization", "Bearer key-alice")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if w.Code >= 500 || w.Code < 200 || (w.Code >= 300 && w.Code < 400) {
		t.Fatalf("%s %s %q = %d %s", method, op, body, w.Code, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s %q = %d with Content-Type %q", method, op, body, w.Code, ct)
	}
	var out map[string]any
	if err := json.Unmarshal(w.Body.Bytes(), &out); err != nil {
		t.Fatalf("%s %s %q = %d, not a JSON object: %s", method, op, body, w.Code, w.Body)
	}
	return w.Code, out
}

// stillServing checks an ordinary acquire and release work.
func stillServing(t *testing.T, h http.Handler) {
	t.Helper()
	if code, out := leaseCall(t, h, "POST", "acquire", `{"file":"probe/ok.txt","ttlMs":1000}`); code != 200 || out["acquired"] != true {
		t.Fatalf("acquire after fuzzing = %d %v", code, out)
	}
	if code, out := leaseCall(t, h, "POST", "release", `{"file":"probe/ok.txt"}`); code != 200 || out["released"] != true {
		t.Fatalf("release after fuzzing = %d %v", code, out)
	}
}

// FuzzLeaseName runs a lease's whole life on a fuzzed name: every answer
// is JSON, and a name accepted once is accepted throughout.
func FuzzLeaseName(f *testing.F) {
	for _, seed := range []string{
		"src/main.go", "./a//b", "/abs/path", "..", "../../etc/passwd", ".", "/", "", "a\x00b", "a\nb",
		"\xff\xfe", "日本語/ファイル", strings.Repeat("x", 1025), "a/./b/../c", "\u2028", `a"b\c`,
	} {
		f.Add(seed)
	}
	h := fuzzHandler(f)
	f.Fuzz(func(t *testing.T, name string) {
		file, _ := json.Marshal(name)
		code, out := leaseCall(t, h, "POST", "acquire", `{"file":`+string(file)+`,"ttlMs":60000}`)
		if code == 200 && out["acquired"] == true {
			if code, out := leaseCall(t, h, "POST", "status", `{"file":`+string(file)+`}`); code != 200 || out["isLeased"] != true {
				t.Fatalf("status of an acquired lease = %d %v", code, out)
			}
			if code, out := leaseCall(t, h, "POST", "release", `{"file":`+string(file)+`}`); code != 200 || out["released"] != true {
				t.Fatalf("release of an acquired lease = %d %v", code, out)
			}
		}
		stillServing(t, h)
	})
}

// FuzzLeaseBody throws bodies at every lease operation.
func FuzzLeaseBody(f *testing.F) {
	for _, seed := range []string{
		`{"file":"f","ttlMs":1000}`, `{"file":"f","ttlMs":1000,"waitMs":5}`, `{"file":"f","token":1,"ttlMs":1000}`,
		`{"file":"f","token":0}`, `{"file":"f","agentId":"bob"}`, `{"file":"f","ttlMs":-1}`, `{"file":"f","ttlMs":1e300}`,
		`{"file":"f","token":-1}`, `{"file":"f","token":18446744073709551616}`, `{"file":5}`, `[]`, `null`, ``, `{`,
		`{"file":"f","ttlMs":1000}{"x":1}`, "{\"file\":\"\xff\"}",
	} {
		for _, op := range []string{"acquire", "renew", "release", "status", "release-all"} {
			f.Add(op, seed)
		}
	}
	h := fuzzHandler(f)
	f.Fuzz(func(t *testing.T, op, body string) {
		switch op {
		case "acquire", "renew", "release", "status", "release-all":
		default:
			op = "acquire"
		}
		leaseCall(t, h, "POST", op, body)
		stillServing(t, h)
	})
}

// FuzzLeaseFrame throws frames at a FrameSession: every frame but a
// cancel gets exactly one answer, a JSON object naming its action, and an
// error answer carries a code; the session goes on serving.
func FuzzLeaseFrame(f *testing.F) {
	for _, seed := range []string{
		`{"action":"lease.acquire","ref":"1","file":"f","ttlMs":1000}`,
		`{"action":"lease.acquire","ref":"1","file":"f","ttlMs":1000,"waitMs":5}`,
		`{"action":"lease.renew","ref":"2","file":"f","token":1,"ttlMs":1000}`,
		`{"action":"lease.release","ref":"3","file":"f","token":0}`,
		`{"action":"lease.status","ref":"4","file":"f"}`,
		`{"action":"lease.cancel","ref":"1"}`,
		`{"action":"lease.release","ref":"5","file":"f","agentId":"bob"}`,
		`{"action":"lease.acquire","ref":"6","file":"f","ttlMs":1e300}`,
		`{"action":"lease.acquire","ref":"7","file":5}`, `{"action":"lease.x","ref":"8"}`, `{"ref":"9"}`,
		`{"action":"lease.status","file":"f"}`, `[]`, `null`, ``, `{`, `"x"`, "{\"action\":\"lease.status\",\"ref\":\"\xff\"}",
	} {
		f.Add(seed)
	}
	m := MustNew(f, lease.Config{MaxWait: 10 * time.Millisecond})
	f.Fuzz(func(t *testing.T, frame string) {
		got := make(chan []byte, 4)
		s := m.NewFrameSession("x1", "alice", func(b []byte) { got <- b })
		s.Handle([]byte(frame))
		s.Handle([]byte(`{"action":"lease.status","ref":"probe","file":"probe"}`))
		// Only a well-formed cancel goes unanswered.
		var req struct{ Action, Ref string }
		want := 2
		if json.Unmarshal([]byte(frame), &req) == nil && req.Action == "lease.cancel" &&
			req.Ref != "" && len(req.Ref) <= lease.MaxRefLen && utf8.ValidString(frame) {
			want = 1
		}
		var answers [][]byte
		for range want {
			select {
			case a := <-got:
				answers = append(answers, a)
			case <-time.After(10 * time.Second):
				t.Fatalf("%q: %d answers %q, want %d", frame, len(answers), answers, want)
			}
		}
		s.Close()
		if len(got) > 0 {
			t.Fatalf("%q: more than %d answers: %q then %q", frame, want, answers, <-got)
		}
		probed := false
		for _, a := range answers {
			var out map[string]any
			if err := json.Unmarshal(a, &out); err != nil {
				t.Fatalf("%q: answer %q is not a JSON object", frame, a)
			}
			if out["ref"] == "probe" && out["action"] == "lease.status" {
				probed = true
			}
			if act, _ := out["action"].(string); act == "" || (act == "error" && out["code"] == "") {
				t.Fatalf("%q: answer %q", frame, a)
			}
		}
		if !probed {
			t.Fatalf("%q: the probe after it was not answered: %q", frame, answers)
		}
	})
}

// FuzzAppendString checks the answers' hand-written string encoder against
// encoding/json: valid JSON, decoding to what encoding/json's own encoding
// decodes to (bytes that are not UTF-8 become U+FFFD each).
func FuzzAppendString(f *testing.F) {
	for _, seed := range []string{"", "src/a.go", `a"b\c`, "tab\there\nline\r", "\x00\x1f\x7f", "日本語", "\xff\xfe", "a\xe2\x82", "\u2028\u2029", "<&>"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := lease.AppendString([]byte("x"), s)
		if got[0] != 'x' {
			t.Fatalf("%q: prefix lost: %q", s, got)
		}
		var dec, want string
		if err := json.Unmarshal(got[1:], &dec); err != nil {
			t.Fatalf("%q encodes as %q, not a JSON string: %v", s, got[1:], err)
		}
		std, _ := json.Marshal(s)
		if err := json.Unmarshal(std, &want); err != nil {
			t.Fatal(err)
		}
		if dec != want {
			t.Fatalf("%q encodes as %q, which decodes to %q; encoding/json's decodes to %q", s, got[1:], dec, want)
		}
	})
}

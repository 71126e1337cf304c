package mess_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/meatspace-exchange/mess/mess"
)

// fuzzExchange is a handler over an in-memory service with a requestor,
// an executor and a thread, for fuzz targets to throw input at.
type fuzzExchange struct {
	h        http.Handler
	req, exe string // keys
	ref      string
}

func newFuzzExchange(f *testing.F) *fuzzExchange { return newFuzzExchangeT(f) }

func newFuzzExchangeT(f testing.TB) *fuzzExchange {
	f.Helper()
	s, err := mess.New(ctx, mess.Config{OpenRegistration: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close(ctx) })
	h, err := mess.NewHandler(s, mess.HandlerConfig{MaxBodyBytes: 64 << 10, RegisterRate: -1})
	if err != nil {
		f.Fatal(err)
	}
	fx := &fuzzExchange{h: h, req: mustRegister(f, s, "fz", "req"), exe: mustRegister(f, s, "fz", "exe")}
	res, err := s.CreateRequest(ctx, "fz", "req", mess.Request{Intent: "fuzz me"}, "")
	if err != nil {
		f.Fatal(err)
	}
	fx.ref = res.Ref
	return fx
}

// call sends a request straight to the handler and checks the answer is
// JSON with a 2xx or 4xx status. It returns the status and body.
func (fx *fuzzExchange) call(t *testing.T, method, path, key string, body []byte, header map[string]string) (int, []byte) {
	t.Helper()
	r := httptest.NewRequest(method, "/api/v1/exchanges/fz"+path, bytes.NewReader(body))
	if key != "" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	for k, v := range header {
		r.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	fx.h.ServeHTTP(w, r)
	out := w.Body.Bytes()
	if w.Code >= 500 || w.Code < 200 || (w.Code >= 300 && w.Code < 400) {
		t.Fatalf("%s %s %q = %d %s", method, path, body, w.Code, out)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("%s %s %q = %d with Content-Type %q", method, path, body, w.Code, ct)
	}
	if !json.Valid(out) {
		t.Fatalf("%s %s %q = %d, not JSON: %s", method, path, body, w.Code, out)
	}
	return w.Code, out
}

// stillServing checks the exchange answers an ordinary request.
func (fx *fuzzExchange) stillServing(t *testing.T) {
	t.Helper()
	if code, body := fx.call(t, "GET", "/requests/"+fx.ref, fx.req, nil, nil); code != 200 {
		t.Fatalf("the exchange stopped serving: %d %s", code, body)
	}
}

// FuzzCreateRequest throws request bodies (and Idempotency-Keys) at POST
// .../requests; what is created must read back.
func FuzzCreateRequest(f *testing.F) {
	for _, seed := range []string{
		`{"intent":"check the door"}`,
		`{"intent":"photo","priority":"urgent","context":["the red door",{"image":"data:image/png;base64,iVBORw0KGgo="}],"response_hints":["image"]}`,
		`{"intent":"x","requires":["photo:capture",{"door:check":{"min":1}}],"constraints":{"location":"home"},"needed_by":"2099-01-01T00:00:00Z","confirm_before":true}`,
		`{"intent":"x","context":[{"attachment":{"name":"a.txt","data":"aGVsbG8="}},{"file":{"name":"../x","data":"aGVsbG8="}}]}`,
		`{"intent":"x","context":"not an array"}`,
		`{"intent":"x","response_hint":[{"image":"data:text/html;base64,PHNjcmlwdD4="}],"context":[{"x":"data:;base64,"}]}`,
		`{"intent":42}`, `[]`, `{"intent":"\ud800"}`, `{"intent":"x","priority":"asap"}`, `{"intent":"x","needed_by":"soon"}`,
		`{"intent":"x","context":["data:image/png;base64,@@","data:image/png;base64"]}`,
	} {
		f.Add([]byte(seed), "")
	}
	f.Add([]byte(`{"intent":"again"}`), "key-1")
	fx := newFuzzExchange(f)
	f.Fuzz(func(t *testing.T, body []byte, idem string) {
		code, out := fx.call(t, "POST", "/requests", fx.req, body, map[string]string{"Idempotency-Key": idem})
		if code == 201 {
			var res struct{ Ref string }
			json.Unmarshal(out, &res)
			if code, got := fx.call(t, "GET", "/requests/"+res.Ref, fx.req, nil, nil); code != 200 {
				t.Fatalf("created %s, read back %d %s", res.Ref, code, got)
			}
		}
		fx.stillServing(t)
	})
}

// FuzzUpdate throws update bodies at PATCH .../requests/{ref}, as the
// executor and as the requestor.
func FuzzUpdate(f *testing.F) {
	for _, seed := range []string{
		`{"status":"claimed"}`,
		`{"status":"in-progress","message":"on my way"}`,
		`{"status":"completed","mess":[{"response":{"content":[{"image":"data:image/jpeg;base64,/9j/4AAQ"},"done"]}}]}`,
		`{"mess":[{"attachment":{"name":"notes.txt","data":"aGVsbG8="}}]}`,
		`{"mess":{"status":{"code":"claimed"}}}`,
		`{"mess":"hi"}`, `{"status":5}`, `{"status":"banana"}`, `{"status":"pending"}`, `{"status":"cancelled"}`,
		`{"mess":[{"image":{"name":"x.png","data":"data:text/html;base64,PHA+"}}],"status":"needs_confirmation"}`,
		`null`, ``, `{"mess":[` + strings.Repeat(`"data:a/b;base64,AA==",`, 3) + `1]}`,
	} {
		f.Add([]byte(seed), false)
		f.Add([]byte(seed), true)
	}
	fx := newFuzzExchange(f)
	f.Fuzz(func(t *testing.T, body []byte, asRequestor bool) {
		key := fx.exe
		if asRequestor {
			key = fx.req
		}
		fx.call(t, "PATCH", "/requests/"+fx.ref, key, body, nil)
		fx.stillServing(t)
	})
}

// FuzzProfile throws profiles at registration and at PATCH
// .../executors/{id}.
func FuzzProfile(f *testing.F) {
	for _, seed := range []string{
		`{"executor_id":"phone","display_name":"My Phone"}`,
		`{"executor_id":"p2","capabilities":["photo:capture",{"door:check":{}}],"notifications":[{"type":"ntfy","topic":"t"}],"hooks":{"on_request_created":[{"type":"webhook","url":"https://example.com/h"}]},"preferences":{"min_priority":"urgent","quiet_hours":{"enabled":true,"start":"22:00","end":"07:00"}}}`,
		`{"executor_id":"../x"}`, `{"executor_id":""}`, `{"executor_id":"exchange"}`, `{"executor_id":5}`,
		`{"display_name":"x","capabilities":"nope"}`, `{"hooks":[]}`, `{"preferences":{"quiet_hours":5}}`,
		`{"executor_id":"p3","invite_token":"inv_x","registration_token":"t"}`,
	} {
		f.Add([]byte(seed))
	}
	fx := newFuzzExchange(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		fx.call(t, "POST", "/register", "", body, nil)
		fx.call(t, "PATCH", "/executors/exe", fx.exe, body, nil)
		fx.stillServing(t)
		if code, out := fx.call(t, "GET", "/executors/exe", fx.exe, nil, nil); code != 200 {
			t.Fatalf("profile unreadable after an update: %d %s", code, out)
		}
	})
}

package mailbus_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/mailbus"
)

// fuzzServer serves a bus with the worker API too, for the fuzz targets.
func fuzzServer(f *testing.F) *httptest.Server {
	b, err := mailbus.New(context.Background(), mailbus.Config{})
	if err != nil {
		f.Fatal(err)
	}
	h, err := mailbus.NewHandler(b, mailbus.HandlerConfig{
		Auth: keyAuth{}, MaxBodyBytes: 64 << 10,
		KeyExchange: func(k string) (string, bool) {
			ex, _, ok := strings.Cut(strings.TrimPrefix(k, "key-"), "-")
			return ex, ok
		},
	})
	if err != nil {
		f.Fatal(err)
	}
	srv := httptest.NewServer(h)
	f.Cleanup(func() {
		srv.Close()
		b.Close(context.Background())
	})
	return srv
}

// checkJSONAnswer fails unless resp is a JSON 2xx or 4xx.
func checkJSONAnswer(t *testing.T, what string, resp *http.Response) {
	t.Helper()
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s: read: %v", what, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode >= 500 || (resp.StatusCode >= 300 && resp.StatusCode < 400) {
		t.Fatalf("%s = %d %s, want 2xx or 4xx", what, resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" || !json.Valid(body) || !utf8.Valid(body) {
		t.Fatalf("%s = %d %q %q, want JSON", what, resp.StatusCode, ct, body)
	}
}

// FuzzREST sends arbitrary bodies to every endpoint that reads one, and
// checks each answer is JSON 2xx or 4xx and the handler keeps serving.
func FuzzREST(f *testing.F) {
	srv := fuzzServer(f)
	for _, s := range []struct {
		ep   uint8
		body string
	}{
		{0, `{"targetAgent":"w","message":{"type":"a.b","payload":{"x":1},"ackRequired":true}}`},
		{0, `{"targetAgent":"w","message":{"type":"a.b","to":"v"}}`},
		{1, `{"type":"a.b","payload":{"x":"\u00e9"},"timestamp":1700000000000}`},
		{1, `{"type":"a.b","payload":[1],"timestamp":"yesterday"}`},
		{2, `{"messageId":"msg-1-00000000"}`},
		{2, `{"messageId":"m","agentId":"other"}`},
		{3, `{"types":["task.*","*","a.b"]}`},
		{3, `{"types":["bad pattern"]}`},
		{4, `{"type":"a.b","to":"w","payload":{}}`},
		{0, "{\"targetAgent\":\"w\",\"message\":{\"type\":\"a.b\",\"payload\":{\"x\":\"\xff\"}}}"},
		{1, `{"type":"a.b","payload":{"x":1e999999}}`},
	} {
		f.Add(s.ep, []byte(s.body))
	}
	endpoints := []struct{ method, path string }{
		{"POST", "/api/v1/exchanges/ex/mailbus/send"},
		{"POST", "/api/v1/exchanges/ex/mailbus/publish"},
		{"POST", "/api/v1/exchanges/ex/mailbus/acknowledge"},
		{"PUT", "/api/v1/exchanges/ex/mailbus/subscriptions"},
		{"POST", "/api/mail/publish"},
	}
	do := func(t *testing.T, method, path string, body []byte) *http.Response {
		req, _ := http.NewRequest(method, srv.URL+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key("ex", "fz"))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		return resp
	}
	f.Fuzz(func(t *testing.T, ep uint8, body []byte) {
		e := endpoints[int(ep)%len(endpoints)]
		checkJSONAnswer(t, e.method+" "+e.path, do(t, e.method, e.path, body))
		resp := do(t, "GET", "/api/v1/exchanges/ex/mailbus/subscriptions", nil)
		if resp.StatusCode != 200 {
			t.Fatalf("the handler stopped serving: %d", resp.StatusCode)
		}
		checkJSONAnswer(t, "GET subscriptions", resp)
	})
}

// FuzzFrames sends an arbitrary text frame on a WebSocket and checks that
// every frame the server answers with is JSON in valid UTF-8, that no
// error is internal, and that the connection keeps serving.
func FuzzFrames(f *testing.F) {
	srv := fuzzServer(f)
	for _, s := range []string{
		`{"action":"send","targetAgent":"w","message":{"type":"a.b","payload":{"x":1}},"ref":"1"}`,
		`{"action":"publish","message":{"type":"a.b","payload":{}}}`,
		`{"action":"publish"}`,
		`{"action":"ack","messageId":"msg-1-00000000"}`,
		`{"action":"subscribe","type":"a.*"}`,
		`{"action":"unsubscribe","type":"a.*"}`,
		`{"action":"heartbeat"}`,
		`{"action":"nope","ref":"\u00e9"}`,
		"{\"action\":\"send\",\"targetAgent\":\"w\",\"message\":{\"type\":\"a.b\",\"payload\":{\"x\":\"\xc3\"}}}",
		`[1,2`,
		``,
	} {
		f.Add([]byte(s))
	}
	u := "ws" + strings.TrimPrefix(srv.URL, "http") + "/api/v1/exchanges/ex/mailbus/subscribe"
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key("ex", "fz")}}})
		if err != nil {
			t.Fatal(err)
		}
		defer c.CloseNow()
		c.SetReadLimit(1 << 20)
		if err := c.Write(ctx, websocket.MessageText, data); err != nil {
			t.Fatal(err)
		}
		if err := c.Write(ctx, websocket.MessageText, []byte(`{"action":"subscribe","type":"probe.x","ref":"probe"}`)); err != nil {
			t.Fatal(err)
		}
		for {
			typ, b, err := c.Read(ctx)
			if err != nil {
				t.Fatalf("connection ended before the probe's reply: %v", err)
			}
			if typ != websocket.MessageText || !utf8.Valid(b) || !json.Valid(b) {
				t.Fatalf("frame %q is not JSON text", b)
			}
			var fr mailbus.Frame
			json.Unmarshal(b, &fr)
			if fr.Code == "internal" {
				t.Fatalf("internal error frame %s", b)
			}
			if fr.Ref == "probe" {
				if fr.Action != "subscribed" {
					t.Fatalf("probe answered %s", b)
				}
				break
			}
		}
		c.Close(websocket.StatusNormalClosure, "")
	})
}

// Ensure a frame that is not valid UTF-8 is refused with an error frame
// and stores nothing, and the connection goes on.
func TestFrames_invalidUTF8(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	r := dialRaw(t, e, "ex", "a", "")
	bad := "{\"action\":\"send\",\"targetAgent\":\"w\",\"ref\":\"r\",\"message\":{\"type\":\"a.b\",\"payload\":{\"x\":\"\xff\"}}}"
	if err := r.c.Write(context.Background(), websocket.MessageText, []byte(bad)); err != nil {
		t.Fatal(err)
	}
	if f := r.frame(); f.Action != "error" || f.Code != "invalid_input" {
		t.Fatalf("reply %+v, want an invalid_input error", f)
	}
	r.send(map[string]any{"action": "subscribe", "type": "still.here", "ref": "r2"})
	if f := r.frame(); f.Action != "subscribed" || f.Ref != "r2" {
		t.Fatalf("reply %+v, want subscribed r2", f)
	}
	var res mailbus.InboxResponse
	post(t, "GET", e.url("ex", "inbox?since=0"), key("ex", "w"), nil, &res)
	if len(res.Messages) != 0 {
		t.Fatalf("stored %+v", res.Messages)
	}
}

// Ensure every body over the limit is answered 413 too_large.
func TestHandler_tooLarge(t *testing.T) {
	e := startEnv(t, mailbus.Config{})
	big := `{"types":["` + strings.Repeat("x", 2<<20) + `"]}`
	for _, c := range []struct{ method, op string }{{"POST", "send"}, {"POST", "publish"}, {"POST", "acknowledge"}, {"PUT", "subscriptions"}} {
		var res struct{ Code string }
		if code := post(t, c.method, e.url("ex", c.op), key("ex", "a"), big, &res); code != 413 || res.Code != "too_large" {
			t.Errorf("%s %s oversized = %d %q, want 413 too_large", c.method, c.op, code, res.Code)
		}
	}
}

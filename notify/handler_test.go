package notify_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/notify"
)

type keyAuth map[string]string // key → agent in exchange "home"

func (a keyAuth) Authenticate(_ context.Context, exchangeID, token string) (string, error) {
	id, ok := a[token]
	if !ok {
		return "", fmt.Errorf("%w: unknown key", notify.ErrUnauthorized)
	}
	if exchangeID != x {
		return "", fmt.Errorf("%w: other exchange", notify.ErrForbidden)
	}
	return id, nil
}

func TestNewHandler_deliveries(t *testing.T) {
	rv := newReceiver(t, func(received, int) (int, string) { return 400, `{}` })
	e := newEnv(t, notify.Config{})
	e.register("req", nil, nil, nil, nil)
	e.register("w", nil, []any{map[string]any{"type": "google_chat", "webhook_url": rv.URL + "/v1/spaces/S/messages?key=K&token=T"}}, nil, nil)
	e.create("req", mess.Request{Intent: "x"})
	e.settle()
	srv := httptest.NewServer(notify.NewHandler(e.n, notify.HandlerConfig{Auth: keyAuth{"kw": "w", "kr": "req"}}))
	defer srv.Close()
	get := func(exchange, key string) (int, map[string]json.RawMessage) {
		req, _ := http.NewRequest("GET", srv.URL+"/api/v1/exchanges/"+exchange+"/notifications/deliveries", nil)
		if key != "" {
			req.Header.Set("Authorization", "Bearer "+key)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		var m map[string]json.RawMessage
		json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	code, m := get(x, "kw")
	var fails []notify.Failure
	json.Unmarshal(m["failures"], &fails)
	// A 400 is not worth retrying: given up after one attempt.
	if code != 200 || len(fails) != 1 || fails[0].Attempts != 1 || fails[0].Error != "HTTP 400" || fails[0].Destination != rv.URL {
		t.Errorf("w: %d %s", code, m["failures"])
	}
	if code, m := get(x, "kr"); code != 200 || string(m["failures"]) != "[]" {
		t.Errorf("req: %d %s", code, m["failures"])
	}
	tests := []struct {
		exchange, key string
		code          int
		errCode       string
	}{
		{x, "", 401, "unauthorized"},
		{x, "nope", 401, "unauthorized"},
		{"other", "kw", 403, "forbidden"},
		{"bad%20id", "kw", 400, "invalid_id"},
	}
	for _, tt := range tests {
		code, m := get(tt.exchange, tt.key)
		if code != tt.code || string(m["code"]) != `"`+tt.errCode+`"` {
			t.Errorf("%s key %q: %d %v, want %d %s", tt.exchange, tt.key, code, m, tt.code, tt.errCode)
		}
	}
}

package mailbus_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/mailbus"
)

// watchAuth is keyAuth whose keys can be revoked, counting live watches.
type watchAuth struct {
	keyAuth
	mu      sync.Mutex
	revoked map[string]chan struct{}
	live    int
}

func (a *watchAuth) WatchKey(exchangeID, key string) (<-chan struct{}, func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.revoked[key]
	if c == nil {
		c = make(chan struct{})
		a.revoked[key] = c
	}
	a.live++
	var once sync.Once
	return c, func() {
		once.Do(func() {
			a.mu.Lock()
			a.live--
			a.mu.Unlock()
		})
	}
}

// revoke revokes key; a watch that starts later gets a closed channel, as
// WatchKey promises: the server watches a key only once the welcome frame
// is out, so a client may revoke before that.
func (a *watchAuth) revoke(key string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := a.revoked[key]
	if c == nil {
		c = make(chan struct{})
		a.revoked[key] = c
	}
	close(c)
}

func (a *watchAuth) watches() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.live
}

// Ensure a connection whose key is revoked is closed with 1008, another
// agent's stays, and every watch is released when its connection ends.
func TestHandler_revokedKey(t *testing.T) {
	b, err := mailbus.New(context.Background(), mailbus.Config{})
	if err != nil {
		t.Fatal(err)
	}
	auth := &watchAuth{revoked: map[string]chan struct{}{}}
	h, err := mailbus.NewHandler(b, mailbus.HandlerConfig{Auth: auth})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer func() {
		srv.Close()
		b.Close(context.Background())
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dial := func(agent string) *websocket.Conn {
		u := "ws" + strings.TrimPrefix(srv.URL, "http") + "/api/v1/exchanges/ex/mailbus/subscribe"
		c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key("ex", agent)}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := c.Read(ctx); err != nil { // the welcome
			t.Fatal(err)
		}
		return c
	}
	a, other := dial("a"), dial("b")
	defer other.CloseNow()
	auth.revoke(key("ex", "a"))
	_, _, err = a.Read(ctx)
	if websocket.CloseStatus(err) != websocket.StatusPolicyViolation {
		t.Fatalf("revoked connection ended with %v, want 1008", err)
	}
	var ce websocket.CloseError
	if errors.As(err, &ce) && ce.Reason != "API key revoked" {
		t.Errorf("close reason %q", ce.Reason)
	}
	if err := other.Write(ctx, websocket.MessageText, []byte(`{"action":"subscribe","type":"x.y","ref":"r"}`)); err != nil {
		t.Fatal(err)
	}
	if _, data, err := other.Read(ctx); err != nil || !strings.Contains(string(data), `"subscribed"`) {
		t.Fatalf("other connection: %s, %v", data, err)
	}
	other.Close(websocket.StatusNormalClosure, "")
	for auth.watches() != 0 {
		if ctx.Err() != nil {
			t.Fatalf("%d watches outlived their connections", auth.watches())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

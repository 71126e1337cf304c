package main

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// revokeSocket is a raw WebSocket of the mail bus whose frames are read
// in the background until it ends.
type revokeSocket struct {
	conn   *websocket.Conn
	frames chan string
	ended  chan error // the read error that ended it
}

func dialRevokeSocket(t *testing.T, url, key string) *revokeSocket {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := "ws" + strings.TrimPrefix(url, "http")
	conn, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { conn.CloseNow() })
	s := &revokeSocket{conn: conn, frames: make(chan string, 16), ended: make(chan error, 1)}
	go func() {
		for {
			_, b, err := conn.Read(context.Background())
			if err != nil {
				s.ended <- err
				return
			}
			s.frames <- string(b)
		}
	}()
	return s
}

func (s *revokeSocket) frame(t *testing.T) string {
	t.Helper()
	select {
	case f := <-s.frames:
		return f
	case err := <-s.ended:
		t.Fatalf("socket ended while a frame was expected: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("no frame within 10s")
	}
	return ""
}

// closedRevoked asserts the socket gets closed with 1008 "API key revoked"
// soon after revokedAt, and that nothing can be sent on it afterwards.
func (s *revokeSocket) closedRevoked(t *testing.T, revokedAt time.Time) {
	t.Helper()
	select {
	case err := <-s.ended:
		if took := time.Since(revokedAt); took > revokeBound {
			t.Errorf("socket closed %v after the revocation", took)
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.StatusPolicyViolation || ce.Reason != "API key revoked" {
			t.Fatalf("socket ended with %v, want close 1008 \"API key revoked\"", err)
		}
	case f := <-s.frames:
		t.Fatalf("frame %s after the revocation", f)
	case <-time.After(30 * time.Second):
		t.Fatal("the socket outlived its key")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.conn.Write(ctx, websocket.MessageText, []byte(`{"action":"send","targetAgent":"carol","message":{"type":"a.b","payload":{}}}`)); err == nil {
		t.Error("a send on the revoked socket succeeded")
	}
}

// Ensure revoking a key closes the mail-bus WebSockets it opened, on both
// the bus's own API and the worker API, with 1008 at once, while a socket
// of another key of the same executor stays open; and that what a revoked
// socket tried to send was not stored.
func TestMailbus_revokedKeyClosesSocket(t *testing.T) {
	ts := startServer(t)
	key1 := ts.register(t, "rv", "carol")
	var key2 struct {
		ID  string `json:"id"`
		Key string `json:"api_key"`
	}
	if code := ts.do(t, "POST", ts.api("rv")+"/executors/carol/keys", key1, map[string]any{}, &key2); code != 201 {
		t.Fatalf("second key = %d", code)
	}
	s1 := dialRevokeSocket(t, ts.api("rv")+"/mailbus/subscribe", key1)
	if f := s1.frame(t); !strings.Contains(f, `"welcome"`) {
		t.Fatalf("first frame %s, want welcome", f)
	}
	s2 := dialRevokeSocket(t, ts.URL+"/api/mail/subscribe?agentId=carol", key2.Key)

	if code := ts.do(t, "DELETE", ts.api("rv")+"/executors/carol/keys/"+key2.ID, key1, nil, nil); code != 200 {
		t.Fatalf("revoke the second key = %d", code)
	}
	s2.closedRevoked(t, time.Now())

	// key1's socket was not revoked: it still acts.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s1.conn.Write(ctx, websocket.MessageText, []byte(`{"action":"subscribe","type":"still.here","ref":"r1"}`)); err != nil {
		t.Fatal(err)
	}
	if f := s1.frame(t); !strings.Contains(f, `"subscribed"`) || !strings.Contains(f, `"r1"`) {
		t.Fatalf("reply %s, want subscribed r1", f)
	}

	var key3 struct {
		Key string `json:"api_key"`
	}
	if code := ts.do(t, "POST", ts.api("rv")+"/executors/carol/keys", key1, map[string]any{"revoke_others": true}, &key3); code != 201 {
		t.Fatalf("rotate carol's keys = %d", code)
	}
	s1.closedRevoked(t, time.Now())

	// Neither revoked socket stored the send it tried.
	var box struct {
		Messages []map[string]any `json:"messages"`
	}
	if code := ts.do(t, "GET", ts.api("rv")+"/mailbus/inbox?since=0", key3.Key, nil, &box); code != 200 || len(box.Messages) != 0 {
		t.Fatalf("inbox after the revocations = %d %v, want 200 and empty", code, box.Messages)
	}
}

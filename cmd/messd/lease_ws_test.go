package main

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// Ensure the lease WebSocket through the real server answers bad frames
// with error frames and keeps the connection, closes it with 1009 for a
// frame over LEASE_MAX_BODY_BYTES, and refuses a plain GET with JSON.
func TestLease_wsFrames(t *testing.T) {
	ts := startServer(t, withEnv("LEASE_MAX_BODY_BYTES", "2048"))
	key := ts.register(t, "lw", "alice")
	s := dialRevokeSocket(t, ts.api("lw")+"/leases/ws", key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, tt := range []struct{ frame, code, ref string }{
		{`{"action":"lease.acquire","ref":`, "malformed_json", ""},
		{`{"action":"lease.take","ref":"1"}`, "invalid_input", "1"},
		{`{"action":"lease.status","file":"f"}`, "invalid_input", ""},
		{`{"action":"lease.status","ref":"` + strings.Repeat("x", 129) + `","file":"f"}`, "invalid_input", ""},
		{`{"action":"lease.acquire","ref":"2","file":"f","ttlMs":7200000}`, "invalid_input", "2"},
	} {
		if err := s.conn.Write(ctx, websocket.MessageText, []byte(tt.frame)); err != nil {
			t.Fatal(err)
		}
		var a struct{ Action, Ref, Code, Error string }
		if f := s.frame(t); json.Unmarshal([]byte(f), &a) != nil || a.Action != "error" || a.Code != tt.code || a.Ref != tt.ref || a.Error == "" {
			t.Errorf("%s: answer %s, want an error frame with code %s and ref %q", tt.frame, f, tt.code, tt.ref)
		}
	}
	if err := s.conn.Write(ctx, websocket.MessageText, []byte(`{"action":"lease.acquire","ref":"ok","file":"f","ttlMs":1000}`)); err != nil {
		t.Fatal(err)
	}
	if f := s.frame(t); !strings.Contains(f, `"acquired":true`) || !strings.Contains(f, `"ref":"ok"`) {
		t.Fatalf("acquire after bad frames: %s", f)
	}
	s.conn.Write(ctx, websocket.MessageText, []byte(`{"action":"lease.status","ref":"big","file":"`+strings.Repeat("a", 4096)+`"}`))
	select {
	case err := <-s.ended:
		if websocket.CloseStatus(err) != websocket.StatusMessageTooBig {
			t.Fatalf("frame over the limit ended the socket with %v, want 1009", err)
		}
	case f := <-s.frames:
		t.Fatalf("frame over the limit answered %s, want close 1009", f)
	case <-time.After(10 * time.Second):
		t.Fatal("frame over the limit: socket still open")
	}

	var body map[string]any
	if code := ts.do(t, "GET", ts.api("lw")+"/leases/ws", key, nil, &body); code != http.StatusUpgradeRequired || body["code"] != "upgrade_required" {
		t.Fatalf("plain GET of the lease WebSocket = %d %v, want 426 upgrade_required", code, body)
	}
}

// Ensure revoking a key closes the lease WebSockets it opened with 1008 at
// once, and ends their waiting acquires.
func TestLease_wsRevokedKey(t *testing.T) {
	ts := startServer(t)
	holder := leaseClient(t, ts, "lv", "alice")
	if _, err := holder.Acquire(context.Background(), "f", time.Hour); err != nil {
		t.Fatal(err)
	}
	key1 := ts.register(t, "lv", "carol")
	var key2 struct {
		ID  string `json:"id"`
		Key string `json:"api_key"`
	}
	if code := ts.do(t, "POST", ts.api("lv")+"/executors/carol/keys", key1, map[string]any{}, &key2); code != 201 {
		t.Fatalf("second key = %d", code)
	}
	s := dialRevokeSocket(t, ts.api("lv")+"/leases/ws", key2.Key)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.conn.Write(ctx, websocket.MessageText, []byte(`{"action":"lease.acquire","ref":"w","file":"f","ttlMs":60000,"waitMs":60000}`)); err != nil {
		t.Fatal(err)
	}
	if err := s.conn.Write(ctx, websocket.MessageText, []byte(`{"action":"lease.status","ref":"s","file":"f"}`)); err != nil {
		t.Fatal(err)
	}
	if f := s.frame(t); !strings.Contains(f, `"ref":"s"`) {
		t.Fatalf("answer %s, want the status (the acquire waits)", f)
	}
	if code := ts.do(t, "DELETE", ts.api("lv")+"/executors/carol/keys/"+key2.ID, key1, nil, nil); code != 200 {
		t.Fatalf("revoke = %d", code)
	}
	s.closedRevoked(t, time.Now())
	// The waiter left the queue: alice's release frees the file for all,
	// rather than handing it to carol for a minute.
	if err := holder.Release(context.Background(), "f", 0); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		st, err := holder.Status(context.Background(), "f")
		if err == nil && !st.IsLeased {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the release: %+v, %v; the revoked waiter must not get the lease", st, err)
		}
	}
}

// mailLeasePaths records the lease API requests a mail bus client makes
// over HTTP.
type mailLeasePaths struct{ paths chan string }

func (m mailLeasePaths) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/leases/") {
		select {
		case m.paths <- r.URL.Path:
		default:
		}
	}
	return http.DefaultTransport.RoundTrip(r)
}

var errLeaseOverHTTP = errors.New("a lease call went over HTTP")

func (m mailLeasePaths) none() error {
	select {
	case p := <-m.paths:
		return errors.Join(errLeaseOverHTTP, errors.New(p))
	default:
		return nil
	}
}

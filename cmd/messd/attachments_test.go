package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// dataURI is a data URI of n pseudo-random bytes declared as ctype.
func dataURI(ctype string, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return "data:" + ctype + ";base64," + base64.StdEncoding.EncodeToString(b)
}

// getAttachment fetches an attachment and returns status, headers, body.
func (ts *testServer) getAttachment(t *testing.T, exchange, key, ref, name string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", ts.api(exchange)+"/requests/"+ref+"/attachments/"+name, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b
}

// Ensure attachments are kept out of the event log and served back as
// they were sent: in the thread, and by name, across a restart.
func TestAttachments_storedApart(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "att", "a")
	photo := dataURI("image/png", 40000)
	ref := ts.create(t, "att", key, map[string]any{"intent": "look", "context": []any{"the door", map[string]any{"image": photo}}})
	notes := base64.StdEncoding.EncodeToString([]byte("hello"))
	answer := `[{"response":{"content":[{"image":"` + strings.ReplaceAll(photo, "/", `\/`) + `"},{"attachment":{"name":"notes.txt","data":"` + notes + `"}}]}}]`
	if code := ts.do(t, "PATCH", ts.api("att")+"/requests/"+ref, key, `{"status":"completed","mess":`+answer+`}`, nil); code != 200 {
		t.Fatalf("complete = %d", code)
	}
	check := func(ts *testServer) {
		t.Helper()
		req, _ := http.NewRequest("GET", ts.api("att")+"/requests/"+ref, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var th struct {
			Thread struct {
				Request  struct{ Context json.RawMessage }
				Messages []struct{ Mess json.RawMessage }
			}
		}
		json.NewDecoder(resp.Body).Decode(&th)
		resp.Body.Close()
		if got := string(th.Thread.Request.Context); got != `["the door",{"image":"`+photo+`"}]` {
			t.Errorf("request context = %.200s", got)
		}
		if len(th.Thread.Messages) != 2 || !strings.Contains(string(th.Thread.Messages[0].Mess), photo) {
			t.Errorf("first message lacks the photo")
		}
		if len(th.Thread.Messages) == 2 && string(th.Thread.Messages[1].Mess) != answer {
			t.Errorf("answer = %.200s, want it as sent", th.Thread.Messages[1].Mess)
		}
		for _, name := range []string{"att-1-1.png", "att-2-1.png"} {
			code, h, b := ts.getAttachment(t, "att", key, ref, name)
			if want, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(photo, "data:image/png;base64,")); code != 200 || !bytes.Equal(b, want) || h.Get("Content-Type") != "application/octet-stream" {
				// The bytes are not a PNG, so they are not served as one.
				t.Errorf("%s = %d %s %d bytes", name, code, h.Get("Content-Type"), len(b))
			}
		}
		if code, _, b := ts.getAttachment(t, "att", key, ref, "notes.txt"); code != 200 || string(b) != "hello" {
			t.Errorf("notes.txt = %d %q", code, b)
		}
	}
	check(ts)
	// The log holds references, not the data.
	encoded := strings.TrimPrefix(photo, "data:image/png;base64,")[:1000]
	filepath.Walk(filepath.Join(ts.DataDir, "events"), func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			b, _ := os.ReadFile(p)
			if bytes.Contains(b, []byte(encoded)) || bytes.Contains(b, []byte(notes)) {
				t.Errorf("%s holds attachment data", p)
			}
		}
		return nil
	})
	ts.Stop()
	check(startServer(t, withDataDir(ts.DataDir)))
}

// Ensure what a client sent is never served so that a browser runs it.
func TestAttachments_servedSafely(t *testing.T) {
	ts := startServer(t)
	key := ts.register(t, "safe", "a")
	png := "\x89PNG\r\n\x1a\n" + strings.Repeat("\x00", 64)
	html := "<html><script>alert(document.cookie)</script></html>"
	svg := `<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>`
	enc := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	mess := fmt.Sprintf(`[{"response":{"content":[`+
		`{"image":{"name":"x.png","data":"data:text/html;base64,%s"}},`+
		`{"image":{"name":"real.png","data":"data:image/png;base64,%s"}},`+
		`{"image":{"name":"pic.svg","data":"data:image/svg+xml;base64,%s"}},`+
		`{"image":{"name":"fake.png","data":"data:image/png;base64,%s"}},`+
		`{"attachment":{"name":"page.html","data":"%s"}}]}}]`, enc(html), enc(png), enc(svg), enc(html), enc(html))
	ref := ts.create(t, "safe", key, map[string]any{"intent": "x"})
	if code := ts.do(t, "PATCH", ts.api("safe")+"/requests/"+ref, key, `{"mess":`+mess+`}`, nil); code != 200 {
		t.Fatalf("message = %d", code)
	}
	for _, tc := range []struct{ name, ctype, disposition string }{
		{"x.png", "text/html", "attachment"},
		{"real.png", "image/png", "inline"},
		{"pic.svg", "application/octet-stream", "attachment"},
		{"fake.png", "application/octet-stream", "attachment"},
		{"page.html", "application/octet-stream", "attachment"},
	} {
		code, h, _ := ts.getAttachment(t, "safe", key, ref, tc.name)
		if code != 200 || h.Get("Content-Type") != tc.ctype || !strings.HasPrefix(h.Get("Content-Disposition"), tc.disposition) ||
			h.Get("X-Content-Type-Options") != "nosniff" || !strings.Contains(h.Get("Content-Security-Policy"), "sandbox") {
			t.Errorf("%s = %d %q %q %q %q, want %s %s", tc.name, code, h.Get("Content-Type"), h.Get("Content-Disposition"),
				h.Get("X-Content-Type-Options"), h.Get("Content-Security-Policy"), tc.ctype, tc.disposition)
		}
	}
}

// Ensure each member's share is bounded: the inline part of a request or
// message, and the attachment bytes one member stores, each with a 413
// naming the limit.
func TestAttachments_limits(t *testing.T) {
	ts := startServer(t, withEnv("MESS_MAX_MESSAGE_BYTES", "10000"), withEnv("MESS_MAX_ATTACHMENT_BYTES", "300000"))
	key := ts.register(t, "lim", "a")
	other := ts.register(t, "lim", "b")
	var res map[string]any
	if code := ts.do(t, "POST", ts.api("lim")+"/requests", key, map[string]any{"intent": "x", "context": []string{strings.Repeat("y", 20000)}}, &res); code != 413 || res["code"] != "too_large" || !strings.Contains(fmt.Sprint(res["error"]), "10000") {
		t.Fatalf("inline request over the limit = %d %v", code, res)
	}
	// Attachments do not count against the inline limit...
	ref := ts.create(t, "lim", key, map[string]any{"intent": "x", "context": []string{dataURI("image/png", 150000)}})
	// ...but against the member's allowance.
	code := ts.do(t, "PATCH", ts.api("lim")+"/requests/"+ref, key, map[string]any{"mess": []any{map[string]any{"image": dataURI("image/png", 150000)}}}, &res)
	if code != 413 || res["code"] != "too_large" || !strings.Contains(fmt.Sprint(res["error"]), "300000") {
		t.Fatalf("attachments past the member's allowance = %d %v", code, res)
	}
	// Another member has an allowance of its own.
	if code := ts.do(t, "PATCH", ts.api("lim")+"/requests/"+ref, other, map[string]any{"mess": []any{map[string]any{"image": dataURI("image/png", 150000)}}}, &res); code != 200 {
		t.Fatalf("another member's attachment = %d %v", code, res)
	}
	// The allowance is remembered across a restart.
	ts.Stop()
	ts = startServer(t, withDataDir(ts.DataDir), withEnv("MESS_MAX_MESSAGE_BYTES", "10000"), withEnv("MESS_MAX_ATTACHMENT_BYTES", "300000"))
	if code := ts.do(t, "POST", ts.api("lim")+"/requests", key, map[string]any{"intent": "x", "context": []string{dataURI("image/png", 150000)}}, &res); code != 413 {
		t.Fatalf("after a restart, attachments past the allowance = %d %v", code, res)
	}
}

// heapInUse is the live heap after collecting garbage.
func heapInUse() int64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return int64(m.HeapInuse)
}

// Ensure large requests cost the server about nothing in memory once
// answered, and nothing after a restart: their attachments live in
// storage, not in the projection, the event buffer or the log.
func TestAttachments_memoryBounded(t *testing.T) {
	const n, size = 10, 1 << 20
	ts := startServer(t)
	key := ts.register(t, "mem", "a")
	bodies := make([][]byte, n)
	for i := range bodies {
		bodies[i], _ = json.Marshal(map[string]any{"intent": fmt.Sprint("big ", i), "context": []any{map[string]any{"image": dataURI("image/jpeg", size)}}})
	}
	content := int64(n * len(bodies[0]))
	post := func(body []byte) string {
		req, _ := http.NewRequest("POST", ts.api("mem")+"/requests", bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var res struct{ Ref string }
		json.NewDecoder(resp.Body).Decode(&res)
		if resp.StatusCode != 201 {
			t.Fatalf("create = %d", resp.StatusCode)
		}
		return res.Ref
	}
	post(bodies[0]) // warm up the server's buffers
	before := heapInUse()
	for _, b := range bodies[1:] {
		post(b)
	}
	grew := heapInUse() - before
	t.Logf("%d requests of %d bytes: heap grew %d bytes", n-1, len(bodies[0]), grew)
	if limit := content / 10; grew > limit {
		t.Errorf("heap grew %d bytes for %d bytes of requests; want under %d", grew, content, limit)
	}

	ts.Stop()
	before = heapInUse()
	ts = startServer(t, withDataDir(ts.DataDir))
	grew = heapInUse() - before
	t.Logf("restart: heap grew %d bytes", grew)
	if limit := content / 10; grew > limit {
		t.Errorf("after a restart the heap grew %d bytes for %d bytes of requests; want under %d", grew, content, limit)
	}
}

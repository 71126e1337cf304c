package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

// BenchmarkHTTP_Create measures durable creates through the real server,
// client in the same process (messbench runs it from its own process).
func BenchmarkHTTP_Create(b *testing.B) {
	ts := startServer(b)
	key := ts.register(b, "bench", "a")
	url := ts.api("bench") + "/requests"
	client := benchClient(b)
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("POST", url, strings.NewReader(`{"intent":"check the front door","priority":"normal"}`))
			req.Header.Set("Authorization", "Bearer "+key)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 201 {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
}

// benchClient is a client with enough idle connections for RunParallel,
// closed when the benchmark ends.
func benchClient(b *testing.B) *http.Client {
	c := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	b.Cleanup(c.CloseIdleConnections)
	return c
}

// benchDo sends one request and fails the benchmark on an unexpected status.
func benchDo(b *testing.B, c *http.Client, method, url, key, body string, want int) bool {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, _ := http.NewRequest(method, url, rd)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := c.Do(req)
	if err != nil {
		b.Error(err)
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != want {
		b.Errorf("%s %s: status %d, want %d", method, url, resp.StatusCode, want)
		return false
	}
	return true
}

// BenchmarkHTTP_Get measures reading one thread through the real server.
func BenchmarkHTTP_Get(b *testing.B) {
	ts := startServer(b)
	key := ts.register(b, "bench", "a")
	url := ts.api("bench") + "/requests/" + ts.create(b, "bench", key, map[string]any{"intent": "check the front door"})
	c := benchClient(b)
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() && benchDo(b, c, "GET", url, key, "", 200) {
		}
	})
}

// BenchmarkHTTP_List measures a page of 50 out of 1,000 threads.
func BenchmarkHTTP_List(b *testing.B) {
	ts := startServer(b)
	key := ts.register(b, "bench", "a")
	for i := range 1000 {
		ts.create(b, "bench", key, map[string]any{"intent": fmt.Sprint("job ", i)})
	}
	url := ts.api("bench") + "/requests?limit=50"
	c := benchClient(b)
	b.SetParallelism(4)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() && benchDo(b, c, "GET", url, key, "", 200) {
		}
	})
}

// BenchmarkHTTP_Update measures durable status changes, each caller on its
// own thread.
func BenchmarkHTTP_Update(b *testing.B) {
	ts := startServer(b)
	key := ts.register(b, "bench", "a")
	const callers = 32
	refs := make(chan string, callers*2)
	for range cap(refs) {
		refs <- ts.create(b, "bench", key, map[string]any{"intent": "check the front door"})
	}
	c := benchClient(b)
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		url := ts.api("bench") + "/requests/" + <-refs
		bodies := [2]string{`{"status":"in_progress"}`, `{"status":"waiting"}`}
		for i := 0; pb.Next() && benchDo(b, c, "PATCH", url, key, bodies[i%2], 200); i++ {
		}
	})
}

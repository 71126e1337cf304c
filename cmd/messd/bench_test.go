package main

import (
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
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
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

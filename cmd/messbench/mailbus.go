package main

// Mail bus scenarios. Fan-out subscribers read with a minimal WebSocket
// reader (rawws.go) so the load generator spends as little CPU per message
// as possible; the other connections use the WebSocket client.
//
//	mailbus-fanout      1 publisher, -n subscribers (default 1000), 100-byte
//	                    messages, unthrottled: deliveries/s and
//	                    publish-to-receive latency.
//	mailbus-fanout-paced  the same at a fixed rate of MESSBENCH_RATE
//	                    deliveries/s (default 250000).
//	mailbus-direct      -c senders pipelining durable direct messages to
//	                    offline agents: accepted messages/s and accept latency
//	                    (direct.go).
//	mailbus-replay      preloads -n messages (default 200000) into one inbox,
//	                    then times a reconnect from since=0 (the server must
//	                    retain them: MAILBUS_RETENTION_COUNT >= -n).
//	mailbus-idle        holds -n idle connections (default 10000) for -d;
//	                    prints the server's RSS when MESSD_PID is set.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coder/websocket"
)

// benchMailFanoutPaced runs the fan-out at MESSBENCH_RATE deliveries/s
// (default 250,000) to measure latency below saturation.
func benchMailFanoutPaced(ctx context.Context, o options) error {
	rate := 250000
	if v, err := strconv.Atoi(os.Getenv("MESSBENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	return benchMailFanout(ctx, o, rate)
}

// raiseFileLimit lifts this process's open-file limit to its hard limit;
// thousands of sockets need it.
func raiseFileLimit() {
	var l syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l) == nil && l.Cur < l.Max {
		l.Cur = l.Max
		syscall.Setrlimit(syscall.RLIMIT_NOFILE, &l)
	}
}

// registerMany registers n agents, in parallel after the owner.
func registerMany(ctx context.Context, o options, n int) ([]agent, error) {
	base := o.URL + "/api/v1/exchanges/" + o.Exchange
	owner, err := registerAgents(ctx, o, 1)
	if err != nil || n <= 1 {
		return owner, err
	}
	var inv struct{ Token string }
	if _, err := call(ctx, "POST", base+"/invites", owner[0].Key, map[string]any{"max_uses": n - 1}, &inv); err != nil {
		return nil, err
	}
	agents := make([]agent, n)
	agents[0] = owner[0]
	var next atomic.Int64
	next.Store(1)
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || firstErr.Load() != nil {
					return
				}
				var r struct {
					APIKey string `json:"api_key"`
				}
				id := fmt.Sprintf("agent-%d", i)
				if _, err := call(ctx, "POST", base+"/register", "", map[string]any{"executor_id": id, "invite_token": inv.Token}, &r); err != nil {
					firstErr.Store(err)
					return
				}
				agents[i] = agent{id, r.APIKey}
			}
		})
	}
	wg.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return nil, err
	}
	return agents, nil
}

var wsHTTP = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1024}}

func dialMail(ctx context.Context, o options, a agent, query string) (*websocket.Conn, error) {
	u := "ws" + strings.TrimPrefix(o.URL, "http") + "/api/v1/exchanges/" + o.Exchange + "/mailbus/subscribe?" + query
	c, _, err := websocket.Dial(ctx, u, &websocket.DialOptions{
		HTTPClient: wsHTTP,
		HTTPHeader: http.Header{"Authorization": {"Bearer " + a.Key}},
	})
	if err != nil {
		return nil, err
	}
	c.SetReadLimit(64 << 20)
	if _, _, err := c.Read(ctx); err != nil { // welcome
		c.CloseNow()
		return nil, err
	}
	return c, nil
}

// dialAll connects every agent with the WebSocket client, a few at a time.
func dialAll(ctx context.Context, o options, agents []agent, query string) ([]*websocket.Conn, error) {
	return dialEach(agents, func(a agent) (*websocket.Conn, error) { return dialMail(ctx, o, a, query) },
		func(c *websocket.Conn) { c.CloseNow() })
}

// dialEach runs dial for every agent, 16 at a time; on an error it closes
// what it opened.
func dialEach[C any](agents []agent, dial func(agent) (C, error), closeConn func(C)) ([]C, error) {
	conns := make([]C, len(agents))
	ok := make([]bool, len(agents))
	var next atomic.Int64
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= len(agents) || firstErr.Load() != nil {
					return
				}
				c, err := dial(agents[i])
				if err != nil {
					firstErr.Store(fmt.Errorf("dial %s: %w", agents[i].ID, err))
					return
				}
				conns[i], ok[i] = c, true
			}
		})
	}
	wg.Wait()
	if err, isErr := firstErr.Load().(error); isErr {
		for i, c := range conns {
			if ok[i] {
				closeConn(c)
			}
		}
		return nil, err
	}
	return conns, nil
}

// payload100 builds a message whose JSON payload is about 100 bytes and
// carries the send time.
func payload100(now time.Time) json.RawMessage {
	p := fmt.Sprintf(`{"t":%d,"pad":"`, now.UnixNano())
	return json.RawMessage(p + strings.Repeat("x", max(0, 98-len(p))) + `"}`)
}

var tKey = []byte(`"t":`)

// sendTimes extracts the send times embedded in a frame's messages.
func sendTimes(frame []byte, fn func(int64)) {
	for {
		i := bytes.Index(frame, tKey)
		if i < 0 {
			return
		}
		frame = frame[i+len(tKey):]
		j := 0
		for j < len(frame) && frame[j] >= '0' && frame[j] <= '9' {
			j++
		}
		if n, err := strconv.ParseInt(string(frame[:j]), 10, 64); err == nil {
			fn(n)
		}
	}
}

// publisher pipelines publish or send frames on one connection with at most
// window unacknowledged, recording accept latency.
type publisher struct {
	c      *websocket.Conn
	window chan struct{}
	mu     sync.Mutex
	sent   map[string]time.Time
	rec    *recorder
	done   chan struct{}
}

// fanoutWindow bounds the messages mailbus-fanout has published but not
// every subscriber has received.
const fanoutWindow = 1024

func newPublisher(c *websocket.Conn, window int, rec *recorder) *publisher {
	p := &publisher{c: c, window: make(chan struct{}, window), sent: map[string]time.Time{}, rec: rec, done: make(chan struct{})}
	go func() {
		defer close(p.done)
		for {
			_, data, err := c.Read(context.Background())
			if err != nil {
				return
			}
			// Replies that completed together come as one array frame.
			type reply struct{ Action, Ref, Error string }
			var fs []reply
			if len(data) > 0 && data[0] == '[' {
				if json.Unmarshal(data, &fs) != nil {
					continue
				}
			} else {
				var f reply
				if json.Unmarshal(data, &f) != nil {
					continue
				}
				fs = []reply{f}
			}
			for _, f := range fs {
				p.mu.Lock()
				t, ok := p.sent[f.Ref]
				delete(p.sent, f.Ref)
				p.mu.Unlock()
				if f.Ref == "" || !ok {
					continue
				}
				if f.Action == "accepted" {
					rec.add(time.Since(t))
				} else {
					rec.fail(fmt.Errorf("%s: %s", f.Action, f.Error))
				}
				<-p.window
			}
		}
	}()
	return p
}

func (p *publisher) send(ctx context.Context, ref string, frame []byte) error {
	select {
	case p.window <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.Lock()
	p.sent[ref] = time.Now()
	p.mu.Unlock()
	// Not ctx: cancelling a write closes the connection, and the replies
	// still in flight are part of the measurement.
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return p.c.Write(wctx, websocket.MessageText, frame)
}

// drain waits until every frame sent was answered.
func (p *publisher) drain(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for len(p.window) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

func benchMailFanout(ctx context.Context, o options, rate int) error {
	raiseFileLimit()
	n := o.N
	if n <= 0 {
		n = 1000
	}
	fmt.Fprintf(o.Out, "registering %d agents...\n", n+1)
	agents, err := registerMany(ctx, o, n+1)
	if err != nil {
		return err
	}
	subs, err := dialEach(agents[1:], func(a agent) (*rawConn, error) { return dialRaw(ctx, o, a, "batch=1&types=bench.*") },
		func(c *rawConn) { c.Close() })
	if err != nil {
		return err
	}
	pubConn, err := dialMail(ctx, o, agents[0], "batch=1&types=")
	if err != nil {
		return err
	}
	var received atomic.Int64
	var lat recorder
	sample := 1 // record every latency at paced rates, 1 in 16 flat out
	if rate == 0 {
		sample = 16
	}
	// The load generator shares the machine with the server: one goroutine
	// reads every subscriber (readFrames) and keeps its samples locally.
	var (
		local  []time.Duration
		counts = make([]int, len(subs))
	)
	stopReading, err := readFrames(subs, func(i int, frame []byte) {
		now := time.Now().UnixNano()
		sendTimes(frame, func(t int64) {
			received.Add(1)
			if counts[i]++; (counts[i]+i)%sample == 0 {
				local = append(local, time.Duration(now-t))
			}
		})
	})
	if err != nil {
		return err // readFrames closed subs
	}
	var acc recorder
	pub := newPublisher(pubConn, 256, &acc)
	fmt.Fprintf(o.Out, "%d subscribers connected; publishing for %s\n", n, o.Duration)
	runCtx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	start := time.Now()
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(time.Second) * float64(n) / float64(rate))
	}
	published := 0
	for runCtx.Err() == nil {
		// As bench/peers drives NATS: the messages published but not yet
		// received by every subscriber stay bounded, so the figure is the
		// rate the subscribers take them at, not a backlog's.
		for int64(published)*int64(n)-received.Load() > fanoutWindow*int64(n) && runCtx.Err() == nil {
			time.Sleep(100 * time.Microsecond)
		}
		if interval > 0 {
			if d := time.Until(start.Add(time.Duration(published) * interval)); d > 0 {
				time.Sleep(d)
			}
		}
		ref := strconv.Itoa(published)
		frame, _ := json.Marshal(map[string]any{"action": "publish", "ref": ref,
			"message": map[string]any{"type": "bench.tick", "payload": payload100(time.Now())}})
		if err := pub.send(runCtx, ref, frame); err != nil {
			break
		}
		published++
	}
	elapsed := time.Since(start)
	pub.drain(30 * time.Second)
	want := int64(published) * int64(n)
	deadline := time.Now().Add(60 * time.Second)
	for received.Load() < want && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	total := time.Since(start)
	fmt.Fprintf(o.Out, "published %d messages in %s (%.0f/s) to %d subscribers\n", published, elapsed.Round(time.Millisecond), float64(published)/elapsed.Seconds(), n)
	fmt.Fprintf(o.Out, "deliveries: %d of %d in %s = %.0f deliveries/s\n", received.Load(), want, total.Round(time.Millisecond), float64(received.Load())/total.Seconds())
	pubConn.Close(websocket.StatusNormalClosure, "")
	<-pub.done
	stopReading()
	lat.addAll(local)
	acc.report(o.Out, "publish accepted (durable)", elapsed)
	lat.report(o.Out, "publish-to-receive (sampled)", total)
	return nil
}

func benchMailReplay(ctx context.Context, o options) error {
	n := o.N
	if n <= 0 {
		n = 200000
	}
	senders := max(min(o.Concurrency, 64), 1)
	agents, err := registerMany(ctx, o, senders+1)
	if err != nil {
		return err
	}
	target := agents[senders]
	conns, err := dialAll(ctx, o, agents[:senders], "batch=1&types=")
	if err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "preloading %d messages into %s's inbox...\n", n, target.ID)
	var rec recorder
	var wg sync.WaitGroup
	var next atomic.Int64
	pubs := make([]*publisher, senders)
	start := time.Now()
	for w, c := range conns {
		pubs[w] = newPublisher(c, 64, &rec)
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(n) {
					return
				}
				ref := strconv.FormatInt(i, 10)
				frame, _ := json.Marshal(map[string]any{"action": "send", "ref": ref, "targetAgent": target.ID,
					"message": map[string]any{"type": "bench.replay", "payload": payload100(time.Now())}})
				if pubs[w].send(ctx, ref, frame) != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	for i, p := range pubs {
		p.drain(60 * time.Second)
		conns[i].Close(websocket.StatusNormalClosure, "")
		<-p.done
	}
	rec.report(o.Out, "preload sends accepted", time.Since(start))

	start = time.Now()
	c, err := dialMail(ctx, o, target, "batch=1&since=0")
	if err != nil {
		return err
	}
	defer c.CloseNow()
	got := 0
	var last uint64
	seqKey := []byte(`{"seq":`)
	for got < n {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, data, err := c.Read(rctx)
		cancel()
		if err != nil {
			return fmt.Errorf("after %d messages: %w (run messd with MAILBUS_RETENTION_COUNT >= -n)", got, err)
		}
		got += bytes.Count(data, seqKey)
		if i := bytes.LastIndex(data, seqKey); i >= 0 {
			rest := data[i+len(seqKey):]
			j := bytes.IndexByte(rest, ',')
			last, _ = strconv.ParseUint(string(rest[:j]), 10, 64)
		}
	}
	d := time.Since(start)
	fmt.Fprintf(o.Out, "replay: %d messages (last seq %d) in %s = %.0f messages/s to one client\n", got, last, d.Round(time.Millisecond), float64(got)/d.Seconds())
	return nil
}

func benchMailIdle(ctx context.Context, o options) error {
	raiseFileLimit()
	n := o.N
	if n <= 0 {
		n = 10000
	}
	pid := os.Getenv("MESSD_PID")
	before := rss(pid)
	fmt.Fprintf(o.Out, "registering %d agents...\n", n)
	agents, err := registerMany(ctx, o, n)
	if err != nil {
		return err
	}
	mid := rss(pid)
	start := time.Now()
	conns, err := dialAll(ctx, o, agents, "types=bench.*")
	if err != nil {
		return err
	}
	for _, c := range conns {
		// Idle, not dead: something must read for pings to be answered.
		c.CloseRead(context.Background())
	}
	fmt.Fprintf(o.Out, "%d connections open in %s; holding for %s\n", n, time.Since(start).Round(time.Millisecond), o.Duration)
	select {
	case <-time.After(o.Duration):
	case <-ctx.Done():
	}
	after := rss(pid)
	// A figure for connections the server has dropped would mean nothing.
	var presence struct {
		Agents []struct {
			Connected bool `json:"connected"`
		} `json:"agents"`
	}
	if _, err := call(ctx, "GET", o.URL+"/api/v1/exchanges/"+o.Exchange+"/mailbus/presence", agents[0].Key, nil, &presence); err != nil {
		return err
	}
	open := 0
	for _, p := range presence.Agents {
		if p.Connected {
			open++
		}
	}
	fmt.Fprintf(o.Out, "server reports %d of %d agents connected (%d listed)\n", open, n, len(presence.Agents))
	if open != n {
		return fmt.Errorf("%d connections were dropped", n-open)
	}
	if pid != "" {
		fmt.Fprintf(o.Out, "server RSS: %.1f MiB at start, %.1f MiB after registering, %.1f MiB with %d idle connections (%.1f KiB each)\n",
			mb(before), mb(mid), mb(after), n, float64(after-mid)/1024/float64(n))
	} else {
		fmt.Fprintln(o.Out, "set MESSD_PID to the server's pid to print its memory")
	}
	for _, c := range conns {
		c.CloseNow()
	}
	return nil
}

func mb(b int64) float64 { return float64(b) / (1 << 20) }

// rss reads a process's resident set size from /proc.
func rss(pid string) int64 {
	if pid == "" {
		return 0
	}
	data, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

// Command messbench is a load generator for a running messd. It runs one
// scenario against the server at -url from its own process and prints what
// it measured.
//
//	go run ./cmd/messd &
//	go run ./cmd/messbench -scenario create -c 64 -d 10s
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/pprof"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// options are what every scenario receives.
type options struct {
	URL         string // server base URL, e.g. http://127.0.0.1:3000
	Exchange    string // a fresh exchange for this run
	Concurrency int
	Duration    time.Duration
	N           int // scenario-specific size (threads to preload, subscribers, ...)
	Out         io.Writer
}

// scenarios maps -scenario names to their functions.
var scenarios = map[string]func(ctx context.Context, o options) error{
	"create":       benchCreate,
	"list":         benchList,
	"lease":        benchLease,
	"lease-status": benchLeaseStatus,
	"lease-fair":   benchLeaseFair,
	"lease-pairs":  benchLeasePairs,
	"lease-ws":     benchLeaseWS,
	"mailbus-fanout": func(ctx context.Context, o options) error {
		return benchMailFanout(ctx, o, 0)
	},
	"mailbus-fanout-paced": benchMailFanoutPaced,
	"mailbus-direct":       benchMailDirect,
	"mailbus-replay":       benchMailReplay,
	"mailbus-idle":         benchMailIdle,
	"mcp-lease":            benchMCPLease, "mcp-create": benchMCPCreate,
	// The fan-out's floor on this machine: loopback writes, no server.
	"loopback-floor":        benchLoopbackFloor,
	"loopback-floor-writer": benchLoopbackFloorWriter,
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "messbench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("messbench", flag.ContinueOnError)
	var names []string
	for n := range scenarios {
		names = append(names, n)
	}
	sort.Strings(names)
	scenario := fs.String("scenario", "create", "scenario: "+strings.Join(names, ", "))
	url := fs.String("url", "http://127.0.0.1:3000", "messd base URL (loopback only)")
	c := fs.Int("c", 64, "concurrent clients")
	d := fs.Duration("d", 10*time.Second, "how long to run")
	n := fs.Int("n", 0, "scenario size (0: the scenario's default)")
	cpuProfile := fs.String("cpuprofile", "", "write the load generator's CPU profile to this file")
	spawnOn := fs.String("spawn", "", "build and start messd for the run on a fresh backend, fs or minio, instead of using -url")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	switch *scenario {
	case "takeover":
		return benchTakeover(ctx, *spawnOn, options{Concurrency: *c, Duration: *d, N: *n, Out: out})
	case "s3-floor":
		return benchS3Floor(ctx, options{Concurrency: *c, Duration: *d, N: *n, Out: out})
	}
	fn, ok := scenarios[*scenario]
	if !ok {
		return fmt.Errorf("unknown scenario %q (have %s, s3-floor, takeover)", *scenario, strings.Join(names, ", "))
	}
	if err := checkLoopback(*url); err != nil {
		return err
	}
	o := options{URL: strings.TrimRight(*url, "/"), Exchange: "bench-" + randHex(4), Concurrency: *c, Duration: *d, N: *n, Out: out}
	fmt.Fprintf(out, "scenario %s: exchange %s, %d clients, %s\n", *scenario, o.Exchange, o.Concurrency, o.Duration)
	if *spawnOn != "" {
		return runSpawned(ctx, *spawnOn, o, fn)
	}
	return fn(ctx, o)
}

// checkLoopback refuses targets other than this machine: load is only ever
// sent to loopback.
func checkLoopback(raw string) error {
	host := raw
	if i := strings.Index(host, "://"); i >= 0 {
		host = host[i+3:]
	}
	host, _, _ = strings.Cut(host, "/")
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(strings.Trim(host, "[]")); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("refusing to load %s: only loopback targets", raw)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

var httpClient = &http.Client{Transport: &leanTransport{}}

// agent is a registered executor.
type agent struct{ ID, Key string }

// call sends a JSON request; out may be nil.
func call(ctx context.Context, method, url, key string, body, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	if key != "" {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode >= 300 {
		return resp.StatusCode, fmt.Errorf("%s %s: %d %s", method, url, resp.StatusCode, data)
	}
	if out != nil {
		return resp.StatusCode, json.Unmarshal(data, out)
	}
	return resp.StatusCode, nil
}

// registerAgents registers n executors in o.Exchange: the first owns the
// exchange and invites the rest.
func registerAgents(ctx context.Context, o options, n int) ([]agent, error) {
	base := o.URL + "/api/v1/exchanges/" + o.Exchange
	var first struct {
		APIKey string `json:"api_key"`
	}
	if _, err := call(ctx, "POST", base+"/register", "", map[string]any{"executor_id": "agent-0"}, &first); err != nil {
		return nil, err
	}
	agents := []agent{{"agent-0", first.APIKey}}
	if n <= 1 {
		return agents, nil
	}
	var inv struct{ Token string }
	if _, err := call(ctx, "POST", base+"/invites", first.APIKey, map[string]any{"max_uses": n - 1}, &inv); err != nil {
		return nil, err
	}
	for i := 1; i < n; i++ {
		var r struct {
			APIKey string `json:"api_key"`
		}
		id := fmt.Sprintf("agent-%d", i)
		if _, err := call(ctx, "POST", base+"/register", "", map[string]any{"executor_id": id, "invite_token": inv.Token}, &r); err != nil {
			return nil, err
		}
		agents = append(agents, agent{id, r.APIKey})
	}
	return agents, nil
}

// recorder collects latencies from many goroutines.
type recorder struct {
	mu   sync.Mutex
	lat  []time.Duration
	errs atomic.Int64
	last atomic.Value
}

func (r *recorder) add(d time.Duration) { r.mu.Lock(); r.lat = append(r.lat, d); r.mu.Unlock() }

func (r *recorder) addAll(ds []time.Duration) {
	r.mu.Lock()
	r.lat = append(r.lat, ds...)
	r.mu.Unlock()
}

func (r *recorder) fail(err error) {
	r.errs.Add(1)
	r.last.Store(err.Error())
}

// report prints throughput and latency percentiles.
func (r *recorder) report(w io.Writer, what string, elapsed time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	slices.Sort(r.lat)
	pct := func(p float64) time.Duration {
		if len(r.lat) == 0 {
			return 0
		}
		return r.lat[min(len(r.lat)-1, int(float64(len(r.lat))*p))]
	}
	fmt.Fprintf(w, "%s: %d ok, %d errors in %s = %.0f/s; latency p50 %s p99 %s max %s\n",
		what, len(r.lat), r.errs.Load(), elapsed.Round(time.Millisecond), float64(len(r.lat))/elapsed.Seconds(),
		pct(0.50).Round(10*time.Microsecond), pct(0.99).Round(10*time.Microsecond), pct(1).Round(10*time.Microsecond))
	if e, ok := r.last.Load().(string); ok {
		fmt.Fprintf(w, "  last error: %s\n", e)
	}
}

// loop runs fn from o.Concurrency goroutines for o.Duration and records
// each call's latency.
// expired reports whether ctx is done or past its deadline: the context's
// timer may fire a little after the deadline, and calls failing at once in
// between would count as errors.
func expired(ctx context.Context) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

func loop(ctx context.Context, o options, rec *recorder, fn func(ctx context.Context, worker, i int) error) time.Duration {
	ctx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	start := time.Now()
	var wg sync.WaitGroup
	for w := range o.Concurrency {
		wg.Go(func() {
			for i := 0; !expired(ctx); i++ {
				t := time.Now()
				err := fn(ctx, w, i)
				if errors.Is(err, context.DeadlineExceeded) && expired(ctx) {
					return
				}
				if err != nil {
					rec.fail(err)
					continue
				}
				rec.add(time.Since(t))
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

func benchCreate(ctx context.Context, o options) error {
	agents, err := registerAgents(ctx, o, 1)
	if err != nil {
		return err
	}
	url := o.URL + "/api/v1/exchanges/" + o.Exchange + "/requests"
	body := map[string]any{"intent": "check the front door", "priority": "normal", "context": []string{"the red one"}}
	var rec recorder
	elapsed := loop(ctx, o, &rec, func(ctx context.Context, _, _ int) error {
		_, err := call(ctx, "POST", url, agents[0].Key, body, nil)
		return err
	})
	rec.report(o.Out, "POST /requests (durable creates)", elapsed)
	return nil
}

func benchList(ctx context.Context, o options) error {
	n := o.N
	if n == 0 {
		n = 100000
	}
	agents, err := registerAgents(ctx, o, 1)
	if err != nil {
		return err
	}
	base := o.URL + "/api/v1/exchanges/" + o.Exchange + "/requests"
	fmt.Fprintf(o.Out, "preloading %d threads...\n", n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var loadErr atomic.Value
	for range 64 {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				if _, err := call(ctx, "POST", base, agents[0].Key, map[string]any{"intent": "preloaded"}, nil); err != nil {
					loadErr.Store(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, ok := loadErr.Load().(error); ok {
		return err
	}
	var rec recorder
	elapsed := loop(ctx, o, &rec, func(ctx context.Context, _, i int) error {
		_, err := call(ctx, "GET", base+"?limit=50", agents[0].Key, nil, nil)
		return err
	})
	rec.report(o.Out, fmt.Sprintf("GET /requests?limit=50 of %d threads", n), elapsed)
	return nil
}

package main

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/meatspace-exchange/mess/lease"
)

// Lease scenarios:
//
//	lease        each client is an agent cycling acquire, status, renew,
//	             release on its own file; every HTTP call is one op.
//	lease-status status reads of one held lease.
//	lease-fair   -n clients (default 1000) contending for 10 files with
//	             blocking acquires; reports grants per client (starvation
//	             shows as a client with none) and wait percentiles.
//	lease-pairs  each client is an agent looping acquire, then release with
//	             the grant's token, on its own file over HTTP: one op is a
//	             pair, two durable writes.
//	lease-ws     the same pairs as lease frames on the lease WebSocket
//	             (lease.Client after Connect). The -c clients share -n
//	             connections, one agent each (default 1), and pipeline
//	             their frames on them; -n equal to -c is a connection per
//	             client, as over HTTP.

func leaseClients(ctx context.Context, o options, n int) ([]*lease.Client, []agent, error) {
	agents, err := registerAgents(ctx, o, n)
	if err != nil {
		return nil, nil, err
	}
	cs := make([]*lease.Client, len(agents))
	for i, a := range agents {
		if cs[i], err = lease.NewClient(lease.ClientConfig{BaseURL: o.URL, Exchange: o.Exchange, APIKey: a.Key, HTTPClient: httpClient}); err != nil {
			return nil, nil, err
		}
	}
	return cs, agents, nil
}

func benchLease(ctx context.Context, o options) error {
	cs, _, err := leaseClients(ctx, o, o.Concurrency)
	if err != nil {
		return err
	}
	var rec recorder
	tokens := make([]uint64, len(cs))
	elapsed := loop(ctx, o, &rec, func(ctx context.Context, w, i int) error {
		c, name := cs[w], fmt.Sprintf("src/file-%d.go", w)
		switch i % 4 {
		case 0:
			g, err := c.Acquire(ctx, name, 10*time.Second)
			tokens[w] = g.Token
			return err
		case 1:
			_, err := c.Status(ctx, name)
			return err
		case 2:
			_, err := c.Renew(ctx, name, tokens[w], 10*time.Second)
			return err
		default:
			return c.Release(ctx, name, tokens[w])
		}
	})
	rec.report(o.Out, "lease acquire/status/renew/release (HTTP, 3 of 4 durable)", elapsed)
	return nil
}

func benchLeaseStatus(ctx context.Context, o options) error {
	cs, _, err := leaseClients(ctx, o, 1)
	if err != nil {
		return err
	}
	if _, err := cs[0].Acquire(ctx, "src/hot.go", time.Hour); err != nil {
		return err
	}
	var rec recorder
	elapsed := loop(ctx, o, &rec, func(ctx context.Context, _, _ int) error {
		_, err := cs[0].Status(ctx, "src/hot.go")
		return err
	})
	rec.report(o.Out, "lease status (HTTP, reads)", elapsed)
	return nil
}

func benchLeaseFair(ctx context.Context, o options) error {
	n := o.N
	if n <= 0 {
		n = 1000
	}
	const files = 10
	cs, _, err := leaseClients(ctx, o, n)
	if err != nil {
		return err
	}
	runCtx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	var (
		mu     sync.Mutex
		waits  []time.Duration
		errs   int
		last   error
		grants = make([]int, n)
		wg     sync.WaitGroup
	)
	start := time.Now()
	for i, c := range cs {
		wg.Go(func() {
			name := fmt.Sprintf("src/shared-%d.go", i%files)
			for !expired(runCtx) {
				t := time.Now()
				g, err := c.AcquireWait(runCtx, name, 5*time.Second, time.Minute)
				if err != nil {
					if !expired(runCtx) {
						mu.Lock()
						errs, last = errs+1, err
						mu.Unlock()
					}
					continue
				}
				w := time.Since(t)
				// Release with a fresh context so a grant made as the run
				// ends is still given back.
				err = c.Release(context.WithoutCancel(ctx), name, g.Token)
				mu.Lock()
				waits = append(waits, w)
				grants[i]++
				if err != nil {
					errs, last = errs+1, err
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	slices.Sort(waits)
	pct := func(p float64) time.Duration {
		if len(waits) == 0 {
			return 0
		}
		return waits[min(len(waits)-1, int(float64(len(waits))*p))].Round(time.Millisecond)
	}
	g := slices.Clone(grants)
	slices.Sort(g)
	starved := 0
	var sum, sq float64
	for _, x := range g {
		if x == 0 {
			starved++
		}
		sum += float64(x)
		sq += float64(x) * float64(x)
	}
	jain := 0.0
	if sq > 0 {
		jain = sum * sum / (float64(n) * sq)
	}
	fmt.Fprintf(o.Out, "lease-fair: %d clients on %d files, %d grants in %s = %.0f grants/s, %d errors\n",
		n, files, len(waits), elapsed.Round(time.Millisecond), float64(len(waits))/elapsed.Seconds(), errs)
	fmt.Fprintf(o.Out, "  grants per client: min %d median %d max %d; starved clients %d; Jain fairness %.3f\n",
		g[0], g[len(g)/2], g[len(g)-1], starved, jain)
	fmt.Fprintf(o.Out, "  wait for grant: p50 %s p99 %s max %s\n", pct(0.5), pct(0.99), pct(1))
	if last != nil {
		fmt.Fprintf(o.Out, "  last error: %v\n", last)
	}
	return nil
}

func benchLeasePairs(ctx context.Context, o options) error { return benchPairs(ctx, o, false) }

func benchLeaseWS(ctx context.Context, o options) error { return benchPairs(ctx, o, true) }

func benchPairs(ctx context.Context, o options, ws bool) error {
	n := o.Concurrency
	if ws {
		n = min(max(o.N, 1), o.Concurrency)
	}
	agents, err := registerAgents(ctx, o, n)
	if err != nil {
		return err
	}
	cs := make([]*lease.Client, len(agents))
	for i, a := range agents {
		cfg := lease.ClientConfig{BaseURL: o.URL, Exchange: o.Exchange, APIKey: a.Key, HTTPClient: httpClient}
		if ws {
			cfg.HTTPClient = nil // the handshake needs net/http's upgrade support
		}
		if cs[i], err = lease.NewClient(cfg); err != nil {
			return err
		}
		if ws {
			if err := cs[i].Connect(ctx); err != nil {
				return err
			}
		}
	}
	defer func() {
		for _, c := range cs {
			c.Close(context.WithoutCancel(ctx))
		}
	}()
	var rec recorder
	elapsed := loop(ctx, o, &rec, func(ctx context.Context, w, _ int) error {
		c, name := cs[w%len(cs)], fmt.Sprintf("src/pair-%d.go", w)
		g, err := c.Acquire(ctx, name, 10*time.Second)
		if err != nil {
			return err
		}
		return c.Release(ctx, name, g.Token)
	})
	what := fmt.Sprintf("lease acquire+release pairs over HTTP, %d clients (each pair two durable writes)", o.Concurrency)
	if ws {
		what = fmt.Sprintf("lease acquire+release pairs over WebSocket, %d clients on %d connections (each pair two durable writes)", o.Concurrency, len(cs))
	}
	rec.report(o.Out, what, elapsed)
	return nil
}

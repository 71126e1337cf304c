package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const redisDurability = "appendonly yes, appendfsync always: every write is in the append-only file and fsynced " +
	"before its reply, one fsync per pass of the event loop"

// releaseScript deletes the lock only if it still holds the caller's token.
const releaseScript = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`

func lookRedis() (string, error) {
	p, err := exec.LookPath("redis-server")
	if err != nil {
		return "", errors.New("redis-server is not installed (bench/peers/run installs it: apt-get install redis-server)")
	}
	return p, nil
}

// startRedis starts redis-server on a loopback port in a fresh directory,
// with every write fsynced before its reply.
func (e *env) startRedis(ctx context.Context) (*server, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := loopback(port)
	srv, err := startServer(ctx, e.cfg.Dir, serverSpec{name: "redis", bin: e.redisServer, args: []string{
		"--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--dir", ".",
		"--appendonly", "yes", "--appendfsync", "always", "--save", "",
		"--daemonize", "no", "--maxclients", "10000",
	}, ready: dialReady(addr)})
	if err != nil {
		return nil, "", err
	}
	// Say what the server is actually running with, not what was asked.
	c, err := dialRESP(ctx, addr)
	if err == nil {
		defer c.Close()
		var v any
		if v, err = c.do("CONFIG", "GET", "appendfsync"); err == nil {
			if a, ok := v.([]any); !ok || len(a) != 2 || a[1] != "always" {
				err = fmt.Errorf("appendfsync is %v, not always", v)
			}
		}
	}
	if err != nil {
		srv.stop()
		return nil, "", err
	}
	return srv, addr, nil
}

// redisLocks is the lock workload on Redis: each client takes its own name
// with SET NX PX and releases it with a compare-and-delete script; a pair
// is one op.
func (e *env) redisLocks(ctx context.Context) (result, error) {
	srv, addr, err := e.startRedis(ctx)
	if err != nil {
		return result{}, err
	}
	r, err := runRedisLocks(ctx, addr, e.cfg.LockClients, e.cfg.Duration)
	if serr := srv.stop(); err == nil {
		err = serr
	}
	return r, err
}

func runRedisLocks(ctx context.Context, addr string, clients int, d time.Duration) (result, error) {
	conns := make([]*respConn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		c, err := dialRESP(ctx, addr)
		if err != nil {
			return result{}, err
		}
		conns[i] = c
	}
	v, err := conns[0].do("SCRIPT", "LOAD", releaseScript)
	if err != nil {
		return result{}, err
	}
	sha, _ := v.(string)
	prefix := randHex(6)
	var (
		pairs, errs atomic.Int64
		lastErr     atomic.Value
		wg          sync.WaitGroup
	)
	fail := func(err error) { errs.Add(1); lastErr.Store(err.Error()) }
	start := time.Now()
	deadline := start.Add(d)
	for w, c := range conns {
		wg.Go(func() {
			key := fmt.Sprintf("locks/name-%d", w)
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				token := prefix + "-" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				v, err := c.do("SET", key, token, "NX", "PX", "10000")
				if err != nil || v != "OK" {
					fail(fmt.Errorf("SET NX: %v %v", v, err))
					continue
				}
				v, err = c.do("EVALSHA", sha, "1", key, token)
				if err != nil || v != int64(1) {
					fail(fmt.Errorf("release: %v %v", v, err))
					continue
				}
				pairs.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := result{Rate: float64(pairs.Load()) / elapsed.Seconds()}
	if n := errs.Load(); n > 0 {
		r.Note = fmt.Sprintf("%d errors, last: %v", n, lastErr.Load())
	}
	return r, ctx.Err()
}

// respConn is a Redis connection speaking RESP2, one request at a time.
type respConn struct {
	c net.Conn
	r *bufio.Reader
	w *bufio.Writer
}

func dialRESP(ctx context.Context, addr string) (*respConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	return &respConn{c: c, r: bufio.NewReader(c), w: bufio.NewWriter(c)}, nil
}

func (c *respConn) Close() error { return c.c.Close() }

// do sends one command and reads its reply: a string, an int64, nil, a
// []any, or an error for a Redis error reply.
func (c *respConn) do(args ...string) (any, error) {
	c.w.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		c.w.WriteString("$" + strconv.Itoa(len(a)) + "\r\n" + a + "\r\n")
	}
	if err := c.w.Flush(); err != nil {
		return nil, err
	}
	return readRESP(c.r)
}

// redisError is an error reply.
type redisError string

func (e redisError) Error() string { return "redis: " + string(e) }

func readRESP(r *bufio.Reader) (any, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	if len(line) < 3 || !strings.HasSuffix(line, "\r\n") {
		return nil, fmt.Errorf("redis: bad reply line %q", line)
	}
	kind, rest := line[0], line[1:len(line)-2]
	switch kind {
	case '+':
		return rest, nil
	case '-':
		return nil, redisError(rest)
	case ':':
		return strconv.ParseInt(rest, 10, 64)
	case '$':
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 {
			return nil, err
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(rest)
		if err != nil || n < 0 {
			return nil, err
		}
		a := make([]any, n)
		for i := range a {
			if a[i], err = readRESP(r); err != nil {
				return nil, err
			}
		}
		return a, nil
	}
	return nil, fmt.Errorf("redis: unknown reply %q", line)
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

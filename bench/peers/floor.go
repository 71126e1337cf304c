package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The lock floor: the least a Go server on this machine can do for the
// lock workload with messd's durability, measured beside Redis so that a
// goal the floor itself does not reach reads as the machine's bound, not
// messd's. The server (the floorServer mode of this binary, a process of
// its own as Redis is) takes fixed 16-byte requests on plain TCP, one
// goroutine per connection, appends each to a file, and answers 8 bytes
// once an fdatasync covers it: one fdatasync per batch of the requests
// that arrived meanwhile, written by one committer goroutine, as Redis's
// event loop does. No WebSocket, no JSON, no lock table: only the system
// calls and goroutine hand-overs any Go implementation pays. The client is
// as lean: 16 bytes out, 8 bytes in, one goroutine per connection.

const floorDurability = "a plain-TCP Go server: each request appended to a file and fdatasynced before its 8-byte answer, " +
	"one fdatasync per batch (group commit); no protocol, no lock logic"

// floorServerArg is the first argument that runs this binary as the floor
// server: floor-server ADDR.
const floorServerArg = "floor-server"

// floorLocks is the lock workload on the floor: a pair is two requests.
func (e *env) floorLocks(ctx context.Context) (result, error) {
	port, err := freePort()
	if err != nil {
		return result{}, err
	}
	addr := loopback(port)
	self, err := os.Executable()
	if err != nil {
		return result{}, err
	}
	srv, err := startServer(ctx, e.cfg.Dir, serverSpec{name: "floor", bin: self, args: []string{floorServerArg, addr}, ready: dialReady(addr)})
	if err != nil {
		return result{}, err
	}
	r, err := runFloorLocks(ctx, addr, e.cfg.LockClients, e.cfg.Duration)
	if serr := srv.stop(); err == nil {
		err = serr
	}
	return r, err
}

func runFloorLocks(ctx context.Context, addr string, clients int, d time.Duration) (result, error) {
	conns := make([]net.Conn, clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range conns {
		var dl net.Dialer
		c, err := dl.DialContext(ctx, "tcp", addr)
		if err != nil {
			return result{}, err
		}
		conns[i] = c
	}
	var (
		pairs   atomic.Int64
		lastErr atomic.Value
		wg      sync.WaitGroup
	)
	start := time.Now()
	deadline := start.Add(d)
	for w, c := range conns {
		wg.Go(func() {
			var req [16]byte
			var ans [8]byte
			binary.LittleEndian.PutUint64(req[:], uint64(w))
			for i := uint64(0); time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				for range 2 { // acquire, then release
					binary.LittleEndian.PutUint64(req[8:], i)
					if _, err := c.Write(req[:]); err != nil {
						lastErr.Store(err.Error())
						return
					}
					if _, err := io.ReadFull(c, ans[:]); err != nil {
						lastErr.Store(err.Error())
						return
					}
				}
				pairs.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := result{Rate: float64(pairs.Load()) / elapsed.Seconds()}
	if err, _ := lastErr.Load().(string); err != "" {
		r.Note = "error: " + err
	}
	return r, ctx.Err()
}

// floorServer serves the floor on addr, its journal in the working
// directory, until SIGTERM.
func floorServer(addr string) error {
	f, err := os.OpenFile("journal", os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, os.Interrupt)
	go func() {
		<-sig
		ln.Close()
	}()
	serveFloor(ln, f)
	return nil
}

// serveFloor serves the floor on ln, appending to f, until ln is closed and
// its connections have ended.
func serveFloor(ln net.Listener, f *os.File) {
	c := &floorCommitter{f: f, wake: make(chan struct{}, 1)}
	committed := make(chan struct{})
	go func() {
		defer close(committed)
		c.run()
	}()
	var conns sync.WaitGroup
	for {
		conn, err := ln.Accept()
		if err != nil {
			break
		}
		conns.Go(func() { c.serve(conn) })
	}
	conns.Wait()
	close(c.wake)
	<-committed
}

type floorCommitter struct {
	f    *os.File
	wake chan struct{}

	mu    sync.Mutex
	queue []floorReq
}

type floorReq struct {
	conn net.Conn
	rec  [16]byte
}

func (c *floorCommitter) serve(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	var r floorReq
	r.conn = conn
	for {
		if _, err := io.ReadFull(br, r.rec[:]); err != nil {
			return
		}
		c.mu.Lock()
		c.queue = append(c.queue, r)
		c.mu.Unlock()
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// run is the group commit: everything queued is written, synced, then
// answered, and what arrived meanwhile is the next batch.
func (c *floorCommitter) run() {
	var buf []byte
	var q []floorReq
	ans := []byte("ok:durab")
	for range c.wake {
		for {
			c.mu.Lock()
			q, c.queue = c.queue, q[:0]
			c.mu.Unlock()
			if len(q) == 0 {
				break
			}
			buf = buf[:0]
			for _, r := range q {
				buf = append(buf, r.rec[:]...)
			}
			if _, err := c.f.Write(buf); err != nil {
				panic(err)
			}
			if err := syscall.Fdatasync(int(c.f.Fd())); err != nil {
				panic(err)
			}
			for _, r := range q {
				r.conn.Write(ans)
			}
		}
	}
}

// floorMain runs the floor server when this binary was started as one,
// and reports whether it was.
func floorMain(args []string) bool {
	if len(args) != 2 || args[0] != floorServerArg {
		return false
	}
	if err := floorServer(args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "floor-server:", err)
		os.Exit(1)
	}
	return true
}

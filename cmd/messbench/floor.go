package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// benchLoopbackFloor measures what mailbus-fanout-paced costs without the
// bus: no server, no JSON, no journal. A child process (the
// loopback-floor-writer scenario) writes the same frames, a 100-byte
// payload carrying its send time, to -n loopback TCP connections at
// MESSBENCH_RATE deliveries/s, one write per frame from one goroutine, and
// this process reads them exactly as that scenario's subscribers do. The
// latency and CPU it prints are the floor of the real scenario on the
// machine it runs on: the kernel's loopback path and the reader.
func benchLoopbackFloor(ctx context.Context, o options) error {
	raiseFileLimit()
	n := o.N
	if n <= 0 {
		n = 1000
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	child := exec.CommandContext(ctx, exe, "-scenario", "loopback-floor-writer",
		"-n", strconv.Itoa(n), "-d", o.Duration.String())
	child.Stderr = os.Stderr
	stdout, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	stdin, err := child.StdinPipe()
	if err != nil {
		return err
	}
	if err := child.Start(); err != nil {
		return err
	}
	defer child.Wait()
	defer child.Process.Kill() // a no-op once it has exited
	lines := bufio.NewScanner(stdout)
	addr, ok := floorLine(lines, "listening ")
	if !ok {
		return fmt.Errorf("writer did not start: %v", lines.Err())
	}
	subs := make([]*rawConn, 0, n)
	for range n {
		s, err := dialSocket(ctx, addr)
		if err != nil {
			for _, c := range subs {
				c.Close()
			}
			return err
		}
		subs = append(subs, &rawConn{c: s, br: bufio.NewReaderSize(s, 16)})
	}
	var received atomic.Int64
	var local []time.Duration
	stopReading, err := readFrames(subs, func(_ int, frame []byte) {
		now := time.Now().UnixNano()
		sendTimes(frame, func(t int64) {
			received.Add(1)
			local = append(local, time.Duration(now-t))
		})
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdin, "go") // now that every connection is being read
	start := time.Now()
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	sent, ok := floorLine(lines, "published ")
	if !ok {
		stopReading()
		return fmt.Errorf("writer failed: %v", lines.Err())
	}
	published, _ := strconv.ParseInt(sent, 10, 64)
	want := published * int64(n)
	for deadline := time.Now().Add(30 * time.Second); received.Load() < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	elapsed := time.Since(start)
	var ru1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
	stopReading()
	child.Wait()
	var lat recorder
	lat.addAll(local)
	lat.report(o.Out, "loopback floor: write-to-receive, no server", elapsed)
	fmt.Fprintf(o.Out, "  %d frames of %d connections; CPU: writer %.2f cores, reader %.2f cores\n",
		received.Load(), n, cpuSeconds(child.ProcessState.SysUsage())/elapsed.Seconds(),
		(tv(ru1.Utime)+tv(ru1.Stime)-tv(ru0.Utime)-tv(ru0.Stime))/elapsed.Seconds())
	return nil
}

// benchLoopbackFloorWriter is the writing side of loopback-floor, run by it
// as a child process. It prints "listening <addr>", accepts -n
// connections, waits for a line on standard input, writes for -d, then
// prints "published <messages>".
func benchLoopbackFloorWriter(ctx context.Context, o options) error {
	raiseFileLimit()
	rate := 250000
	if v, err := strconv.Atoi(os.Getenv("MESSBENCH_RATE")); err == nil && v > 0 {
		rate = v
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Fprintf(o.Out, "listening %s\n", ln.Addr())
	conns := make([]net.Conn, 0, o.N)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for len(conns) < o.N {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	if _, err := bufio.NewReader(os.Stdin).ReadString('\n'); err != nil {
		return err
	}
	interval := time.Duration(float64(time.Second) * float64(o.N) / float64(rate))
	start := time.Now()
	published := 0
	for time.Since(start) < o.Duration && ctx.Err() == nil {
		if d := time.Until(start.Add(time.Duration(published) * interval)); d > 0 {
			time.Sleep(d)
		}
		p := payload100(time.Now())
		frame := append([]byte{0x81, byte(len(p))}, p...) // text frame, length < 126
		for _, c := range conns {
			if _, err := c.Write(frame); err != nil {
				return err
			}
		}
		published++
	}
	fmt.Fprintf(o.Out, "published %d\n", published)
	return nil
}

// floorLine returns the rest of the next line that starts with prefix.
func floorLine(s *bufio.Scanner, prefix string) (string, bool) {
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), prefix); ok {
			return rest, true
		}
	}
	return "", false
}

func cpuSeconds(u any) float64 {
	if ru, ok := u.(*syscall.Rusage); ok {
		return tv(ru.Utime) + tv(ru.Stime)
	}
	return 0
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

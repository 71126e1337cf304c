package main

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

// readFrames reads the data frames of every connection in subs on one
// goroutine with an epoll set of its own, and calls onFrame(i, payload)
// for each, never concurrently; payload is only valid during the call.
// It answers pings. stop ends it and closes the connections, which must
// come from dialSocket; so does an error.
//
// A goroutine per connection costs two reads per frame at one frame per
// connection at a time (the one that returns data, and the one that finds
// the socket empty and parks): a fifth of the machine at 250,000 frames/s.
// Here a socket is read only when epoll reports data, and a reader that
// falls behind gets several frames per read.
func readFrames(subs []*rawConn, onFrame func(i int, payload []byte)) (stop func(), err error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	conns := make([]*epConn, len(subs))
	cleanup := func() {
		for _, s := range subs {
			s.Close()
		}
		syscall.Close(epfd)
	}
	for i, s := range subs {
		fc, ok := s.c.(fdConn)
		if !ok {
			cleanup()
			return nil, errors.New("readFrames: not a socket from dialSocket")
		}
		c := &epConn{fd: fc.fd, open: true}
		if n := s.br.Buffered(); n > 0 {
			b, _ := s.br.Peek(n)
			c.pending = append(c.pending, b...)
		}
		conns[i] = c
		if err := syscall.SetNonblock(c.fd, true); err != nil {
			cleanup()
			return nil, err
		}
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP, Fd: int32(i)}
		if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
			cleanup()
			return nil, fmt.Errorf("epoll_ctl: %w", err)
		}
	}
	var quit atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		events := make([]syscall.EpollEvent, 256)
		scratch := make([]byte, 256<<10)
		open := len(conns)
		for open > 0 && !quit.Load() {
			n, err := syscall.EpollWait(epfd, events, 100)
			if err != nil && err != syscall.EINTR {
				return
			}
			for _, ev := range events[:max(n, 0)] {
				i := int(ev.Fd)
				if c := conns[i]; c.open && !c.read(scratch, func(p []byte) { onFrame(i, p) }) {
					c.open = false
					open--
					syscall.EpollCtl(epfd, syscall.EPOLL_CTL_DEL, c.fd, nil)
				}
			}
		}
	}()
	return func() {
		quit.Store(true)
		<-done
		cleanup()
	}, nil
}

// epConn is one connection being read.
type epConn struct {
	fd      int
	pending []byte // the start of a frame not yet complete
	open    bool
}

// fdConn is a socket the Go runtime's poller never sees, read and written
// with plain system calls: blocking during the handshake, then
// non-blocking under readFrames' epoll set. With a net.Conn the runtime's
// own poller would also wake up for every frame.
type fdConn struct{ fd int }

func (c fdConn) Read(p []byte) (int, error) {
	n, err := syscall.Read(c.fd, p)
	for err == syscall.EINTR { // the runtime's preemption signals interrupt blocking calls
		n, err = syscall.Read(c.fd, p)
	}
	if err != nil {
		return 0, err
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (c fdConn) Write(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		n, err := syscall.Write(c.fd, p)
		if err == syscall.EAGAIN || err == syscall.EINTR {
			runtime.Gosched()
			continue
		}
		if err != nil {
			return total, err
		}
		total += n
		p = p[n:]
	}
	return total, nil
}

func (c fdConn) Close() error { return syscall.Close(c.fd) }

// dialSocket connects a blocking socket to host:port, with a timeout on
// each read and write of the handshake.
func dialSocket(ctx context.Context, host string) (io.ReadWriteCloser, error) {
	addr, err := net.ResolveTCPAddr("tcp", host)
	if err != nil {
		return nil, err
	}
	var (
		family = syscall.AF_INET
		sa     syscall.Sockaddr
	)
	if ip4 := addr.IP.To4(); ip4 != nil {
		sa4 := &syscall.SockaddrInet4{Port: addr.Port}
		copy(sa4.Addr[:], ip4)
		sa = sa4
	} else {
		family = syscall.AF_INET6
		sa6 := &syscall.SockaddrInet6{Port: addr.Port}
		copy(sa6.Addr[:], addr.IP.To16())
		sa = sa6
	}
	fd, err := syscall.Socket(family, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	tv := syscall.NsecToTimeval(int64(30 * time.Second))
	if d, ok := ctx.Deadline(); ok {
		tv = syscall.NsecToTimeval(max(int64(time.Until(d)), int64(time.Millisecond)))
	}
	for _, opt := range []int{syscall.SO_RCVTIMEO, syscall.SO_SNDTIMEO} {
		if err := syscall.SetsockoptTimeval(fd, syscall.SOL_SOCKET, opt, &tv); err != nil {
			syscall.Close(fd)
			return nil, err
		}
	}
	// An interrupted connect goes on in the background; calling again
	// reports its progress.
	for err = syscall.Connect(fd, sa); err == syscall.EINTR || err == syscall.EALREADY; err = syscall.Connect(fd, sa) {
		time.Sleep(time.Millisecond)
	}
	if err == syscall.EISCONN {
		err = nil
	}
	if err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("connect %s: %w", host, err)
	}
	return fdConn{fd}, nil
}

// read drains what the socket has and hands complete data frames to fn.
// It reports false once the connection is finished.
func (c *epConn) read(scratch []byte, fn func([]byte)) bool {
	n, err := syscall.Read(c.fd, scratch)
	if err == syscall.EAGAIN || err == syscall.EINTR {
		return true
	}
	if err != nil || n == 0 {
		return false
	}
	buf := scratch[:n]
	if len(c.pending) > 0 {
		c.pending = append(c.pending, buf...)
		buf = c.pending
	}
	for len(buf) > 0 {
		op, payload, size, err := parseFrame(buf)
		if err != nil {
			fmt.Fprintln(os.Stderr, "messbench:", err)
			return false
		}
		if size == 0 {
			break // incomplete
		}
		switch op {
		case 0x8: // close
			return false
		case 0x9: // ping
			if pong(c.fd, payload) != nil {
				return false
			}
		case 0xA: // pong
		default:
			fn(payload)
		}
		buf = buf[size:]
	}
	c.pending = append(c.pending[:0], buf...)
	return true
}

// parseFrame decodes the server frame at the start of b. size is zero
// while the frame is incomplete.
func parseFrame(b []byte) (op byte, payload []byte, size int, err error) {
	if len(b) < 2 {
		return 0, nil, 0, nil
	}
	if b[0]&0x80 == 0 {
		return 0, nil, 0, errors.New("fragmented frame from server")
	}
	if b[1]&0x80 != 0 {
		return 0, nil, 0, errors.New("masked frame from server")
	}
	h, n := 2, uint64(b[1]&0x7f)
	switch n {
	case 126:
		if h = 4; len(b) < h {
			return 0, nil, 0, nil
		}
		n = uint64(binary.BigEndian.Uint16(b[2:]))
	case 127:
		if h = 10; len(b) < h {
			return 0, nil, 0, nil
		}
		n = binary.BigEndian.Uint64(b[2:])
	}
	if n > 64<<20 {
		return 0, nil, 0, fmt.Errorf("frame of %d bytes", n)
	}
	if uint64(len(b)-h) < n {
		return 0, nil, 0, nil
	}
	return b[0] & 0x0f, b[h : h+int(n)], h + int(n), nil
}

// pong answers a ping.
func pong(fd int, p []byte) error {
	f, err := controlFrame(0xA, p)
	if err != nil {
		return err
	}
	_, err = fdConn{fd}.Write(f)
	return err
}

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// benchMailDirect runs mailbus-direct: -c senders, each on its own
// WebSocket, keep up to directWindow durable direct messages unanswered,
// to directTargets offline agents, and record each message's accept
// latency.
//
// A sender writes what its window lets it send in one write, as a client
// library with a write buffer does (NATS's flushes its buffer once per
// batch of publishes): the frames are the same, masked as RFC 6455 has
// every client frame, but not one system call each. Replies are read with
// the minimal reader of rawws.go and scanned for their refs. The load
// generator shares the two cores with the server, and with the WebSocket
// library's client and encoding/json on both sides it took more CPU per
// message than the server.
func benchMailDirect(ctx context.Context, o options) error {
	raiseFileLimit()
	senders := max(o.Concurrency, 1)
	fmt.Fprintf(o.Out, "registering %d agents...\n", senders+directTargets)
	agents, err := registerMany(ctx, o, senders+directTargets)
	if err != nil {
		return err
	}
	u, err := url.Parse(o.URL)
	if err != nil {
		return err
	}
	conns, err := dialEach(agents[:senders], func(a agent) (*rawConn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return nil, err
		}
		return handshakeRaw(c, u.Host, o, a, "batch=1&types=")
	}, func(c *rawConn) { c.Close() })
	if err != nil {
		return err
	}
	targets := make([]string, directTargets)
	for i := range targets {
		targets[i] = agents[senders+i].ID
	}
	var rec recorder
	runCtx, cancel := context.WithTimeout(ctx, o.Duration)
	defer cancel()
	start := time.Now()
	ss := make([]*directSender, senders)
	var wg sync.WaitGroup
	for w, c := range conns {
		s := newDirectSender(c, &rec)
		ss[w] = s
		wg.Go(func() { s.run(runCtx, w, targets) })
	}
	wg.Wait()
	for _, s := range ss {
		s.drain(30 * time.Second)
	}
	elapsed := time.Since(start)
	for _, s := range ss {
		s.c.Close()
		<-s.done
		rec.addAll(s.lat)
	}
	rec.report(o.Out, "direct messages accepted (fsync before ack, group commit)", elapsed)
	fmt.Fprintf(o.Out, "  (%d senders over WebSocket, up to %d unacknowledged each, %d offline targets)\n", senders, directWindow, directTargets)
	return nil
}

const (
	directWindow  = 32
	directTargets = 16
	// directRing must exceed how far apart the oldest unanswered ref
	// and the newest can be: directWindow, as replies come in order.
	directRing = 1024
)

// directSender is one connection of mailbus-direct.
type directSender struct {
	c      *rawConn
	rec    *recorder
	window chan struct{} // a token per unanswered message
	// sentAt[ref%directRing] is the send time (unix ns) of ref, written
	// before the frame is and read once its reply is.
	sentAt [directRing]atomic.Int64
	lat    []time.Duration // the reader's; read after done
	done   chan struct{}   // closed when the reader has ended
}

func newDirectSender(c *rawConn, rec *recorder) *directSender {
	s := &directSender{c: c, rec: rec, window: make(chan struct{}, directWindow), done: make(chan struct{})}
	go s.read()
	return s
}

// run sends until ctx ends: it waits for room in the window, takes all the
// room there is, and writes that many frames at once.
func (s *directSender) run(ctx context.Context, w int, targets []string) {
	var (
		buf  []byte
		mask = rand.Uint32()
		ref  int
	)
	for {
		select {
		case s.window <- struct{}{}:
		case <-ctx.Done():
			return
		}
		n := 1
	more:
		for n < directWindow {
			select {
			case s.window <- struct{}{}:
				n++
			default:
				break more
			}
		}
		buf = buf[:0]
		now := time.Now().UnixNano()
		for range n {
			s.sentAt[ref%directRing].Store(now)
			mask = mask*1664525 + 1013904223
			buf = appendSendFrame(buf, mask, ref, targets[(w+ref)%len(targets)], now)
			ref++
		}
		s.c.wmu.Lock()
		_, err := s.c.c.Write(buf)
		s.c.wmu.Unlock()
		if err != nil {
			s.rec.fail(err)
			return
		}
	}
}

// appendSendFrame appends a masked text frame (RFC 6455 section 5.2)
// carrying the send frame of message ref to agent to, whose payload of
// about 100 bytes holds the send time, as payload100 writes it.
func appendSendFrame(b []byte, mask uint32, ref int, to string, now int64) []byte {
	start := len(b)
	b = append(b, 0x81, 0x80|126, 0, 0, 0, 0, 0, 0) // FIN text, masked, 16-bit length, key
	p := len(b)
	b = append(b, `{"action":"send","ref":"`...)
	b = strconv.AppendInt(b, int64(ref), 10)
	b = append(b, `","targetAgent":"`...)
	b = append(b, to...)
	b = append(b, `","message":{"type":"bench.direct","payload":{"t":`...)
	t := len(b)
	b = strconv.AppendInt(b, now, 10)
	b = append(b, `,"pad":"`...)
	for range max(0, 98-len(`{"t":`)-(len(b)-t)-len(`,"pad":"`)) {
		b = append(b, 'x')
	}
	b = append(b, `"}}}`...)
	n := len(b) - p
	if n < 126 {
		// Too short for the 16-bit length: move the payload up two bytes.
		copy(b[start+6:], b[p:])
		b = b[:len(b)-2]
		b[start+1], p = 0x80|byte(n), start+6
	} else {
		binary.BigEndian.PutUint16(b[start+2:], uint16(n))
	}
	var key [4]byte
	binary.BigEndian.PutUint32(key[:], mask)
	copy(b[p-4:p], key[:])
	for i := range b[p:] {
		b[p+i] ^= key[i&3]
	}
	return b
}

var refKey = []byte(`"ref":"`)

// read takes the replies: each frame holds one or (for replies completed
// by the same group commit) an array of several.
func (s *directSender) read() {
	defer close(s.done)
	var buf []byte
	for {
		var err error
		if buf, err = s.c.next(buf); err != nil {
			return
		}
		now := time.Now().UnixNano()
		if bytes.Contains(buf, []byte(`"action":"error"`)) {
			s.failed(buf)
			continue
		}
		for rest := buf; ; {
			i := bytes.Index(rest, refKey)
			if i < 0 {
				break
			}
			rest = rest[i+len(refKey):]
			j := bytes.IndexByte(rest, '"')
			ref, err := strconv.Atoi(string(rest[:j]))
			if err != nil {
				continue
			}
			s.lat = append(s.lat, time.Duration(now-s.sentAt[ref%directRing].Load()))
			<-s.window
		}
	}
}

// failed counts the errors among replies and takes the rest as accepted.
func (s *directSender) failed(frame []byte) {
	type reply struct{ Action, Ref, Error string }
	var rs []reply
	if len(frame) > 0 && frame[0] == '[' {
		json.Unmarshal(frame, &rs)
	} else {
		var r reply
		json.Unmarshal(frame, &r)
		rs = []reply{r}
	}
	now := time.Now().UnixNano()
	for _, r := range rs {
		ref, err := strconv.Atoi(r.Ref)
		if err != nil {
			continue
		}
		if r.Action == "accepted" {
			s.lat = append(s.lat, time.Duration(now-s.sentAt[ref%directRing].Load()))
		} else {
			s.rec.fail(fmt.Errorf("%s: %s", r.Action, r.Error))
		}
		<-s.window
	}
}

// drain waits until every message sent was answered.
func (s *directSender) drain(timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for len(s.window) > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
}

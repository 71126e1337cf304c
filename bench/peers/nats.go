package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// inFlight is how many unacknowledged messages each direct sender keeps:
// cmd/messbench's mailbus-direct uses the same.
const inFlight = 32

// directTargets is how many inboxes the direct messages go to, as in
// mailbus-direct.
const directTargets = 16

const (
	jetstreamDefaultDurability = "file store, default sync_interval (2 min): a message is acknowledged once written " +
		"to the operating system, and fsynced within two minutes"
	jetstreamAlwaysDurability = "file store, sync_interval: always: each message is fsynced before it is acknowledged"
	natsCoreDurability        = "in memory, nothing stored: a subscriber that is not connected misses the message"
)

// startNATS starts nats-server from the Go module on a loopback port in a
// fresh directory: with a JetStream file store when sync is "default" (the
// server's own sync_interval) or a sync_interval value, without JetStream
// when sync is "".
func (e *env) startNATS(ctx context.Context, sync string) (*server, string, error) {
	port, err := freePort()
	if err != nil {
		return nil, "", err
	}
	addr := loopback(port)
	srv, err := startServer(ctx, e.cfg.Dir, serverSpec{
		name:  "nats",
		bin:   filepath.Join(e.cfg.Bin, "nats-server"),
		args:  []string{"-c", "nats.conf"},
		files: map[string]string{"nats.conf": natsConfig(addr, sync)},
		ready: dialReady(addr),
	})
	return srv, addr, err
}

// natsConfig is nats-server's configuration file for startNATS.
func natsConfig(addr, sync string) string {
	conf := fmt.Sprintf("listen: %q\n", addr)
	if sync == "" {
		return conf
	}
	conf += "jetstream {\n  store_dir: \"js\"\n"
	if sync != "default" {
		conf += "  sync_interval: " + sync + "\n"
	}
	return conf + "}\n"
}

// payload100 is a 100-byte message body carrying its send time, like
// messbench's.
func payload100(now time.Time) []byte {
	p := fmt.Sprintf(`{"t":%d,"pad":"`, now.UnixNano())
	return []byte(p + strings.Repeat("x", max(0, 98-len(p))) + `"}`)
}

// jetstreamDirect is the direct-message workload on JetStream: each sender
// has its own connection and keeps inFlight acknowledged publishes
// outstanding to one file-store stream whose subjects stand for
// directTargets inboxes. A message counts once the stream acknowledged it.
func (e *env) jetstreamDirect(ctx context.Context, sync string) (result, error) {
	srv, addr, err := e.startNATS(ctx, sync)
	if err != nil {
		return result{}, err
	}
	r, err := runJetstreamDirect(ctx, "nats://"+addr, e.cfg.Senders, e.cfg.Duration)
	if serr := srv.stop(); err == nil {
		err = serr
	}
	return r, err
}

func runJetstreamDirect(ctx context.Context, url string, senders int, d time.Duration) (result, error) {
	conns := make([]*nats.Conn, senders)
	defer func() {
		for _, nc := range conns {
			if nc != nil {
				nc.Close()
			}
		}
	}()
	var (
		acked, errs atomic.Int64
		lastErr     atomic.Value
	)
	streams := make([]jetstream.JetStream, senders)
	for i := range conns {
		nc, err := nats.Connect(url, nats.MaxReconnects(0))
		if err != nil {
			return result{}, err
		}
		conns[i] = nc
		streams[i], err = jetstream.New(nc,
			jetstream.WithPublishAsyncMaxPending(inFlight),
			jetstream.WithPublishAsyncAckHandler(func(jetstream.JetStream, *nats.Msg, *jetstream.PubAck) { acked.Add(1) }),
			jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, _ *nats.Msg, err error) {
				errs.Add(1)
				lastErr.Store(err.Error())
			}))
		if err != nil {
			return result{}, err
		}
	}
	if _, err := streams[0].CreateStream(ctx, jetstream.StreamConfig{
		Name: "DIRECT", Subjects: []string{"direct.>"}, Storage: jetstream.FileStorage, Replicas: 1,
	}); err != nil {
		return result{}, err
	}
	subjects := make([]string, directTargets)
	for i := range subjects {
		subjects[i] = "direct.agent-" + strconv.Itoa(i)
	}
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w, js := range streams {
		wg.Go(func() {
			for i := 0; time.Now().Before(deadline) && ctx.Err() == nil; i++ {
				if _, err := js.PublishAsync(subjects[(w+i)%directTargets], payload100(time.Now()), jetstream.WithStallWait(time.Minute)); err != nil {
					errs.Add(1)
					lastErr.Store(err.Error())
					return
				}
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(30 * time.Second):
				errs.Add(1)
				lastErr.Store("acknowledgements still missing 30 s after the run")
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	r := result{Rate: float64(acked.Load()) / elapsed.Seconds()}
	if n := errs.Load(); n > 0 {
		r.Note = fmt.Sprintf("%d errors, last: %v", n, lastErr.Load())
	}
	return r, ctx.Err()
}

// fanoutWindow bounds the messages published but not yet received by every
// subscriber, so the server's buffers stay bounded however fast the
// publisher is.
const fanoutWindow = 1024

// natsFanout is the fan-out workload on NATS core: one publisher sends
// 100-byte messages as fast as the subscribers take them to n subscribers,
// each on its own connection. Deliveries are counted until the last one
// arrives, as messbench's mailbus-fanout counts them.
func (e *env) natsFanout(ctx context.Context) (result, error) {
	srv, addr, err := e.startNATS(ctx, "")
	if err != nil {
		return result{}, err
	}
	r, err := runNATSFanout(ctx, addr, e.cfg.Subscribers, e.cfg.Duration)
	if serr := srv.stop(); err == nil {
		err = serr
	}
	return r, err
}

func runNATSFanout(ctx context.Context, addr string, n int, d time.Duration) (result, error) {
	const subject = "fanout.tick"
	var received atomic.Int64
	subs := make([]*rawSub, n)
	defer func() {
		for _, s := range subs {
			if s != nil {
				s.c.Close()
			}
		}
	}()
	var next atomic.Int64
	var firstErr atomic.Value
	var dial sync.WaitGroup
	for range 16 {
		dial.Go(func() {
			for i := int(next.Add(1) - 1); i < n && firstErr.Load() == nil; i = int(next.Add(1) - 1) {
				s, err := subscribeRaw(ctx, addr, subject)
				if err != nil {
					firstErr.Store(err)
					return
				}
				subs[i] = s
			}
		})
	}
	dial.Wait()
	if err, ok := firstErr.Load().(error); ok {
		return result{}, err
	}
	var readers sync.WaitGroup
	var dropped atomic.Int64
	for _, s := range subs {
		readers.Go(func() {
			if err := s.read(&received); err != nil && ctx.Err() == nil {
				dropped.Add(1)
			}
		})
	}
	defer readers.Wait()
	defer func() {
		for _, s := range subs {
			s.c.Close()
		}
	}()
	pub, err := nats.Connect("nats://"+addr, nats.MaxReconnects(0))
	if err != nil {
		return result{}, err
	}
	defer pub.Close()
	start := time.Now()
	deadline := start.Add(d)
	published := int64(0)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		for published*int64(n)-received.Load() > fanoutWindow*int64(n) && time.Now().Before(deadline) {
			time.Sleep(100 * time.Microsecond)
		}
		if err := pub.Publish(subject, payload100(time.Now())); err != nil {
			return result{}, err
		}
		published++
	}
	if err := pub.Flush(); err != nil {
		return result{}, err
	}
	want := published * int64(n)
	last, lastChange := received.Load(), time.Now()
	for received.Load() < want && ctx.Err() == nil && time.Since(lastChange) < 5*time.Second {
		time.Sleep(10 * time.Millisecond)
		if got := received.Load(); got != last {
			last, lastChange = got, time.Now()
		}
	}
	total := time.Since(start)
	got := received.Load()
	r := result{Rate: float64(got) / total.Seconds()}
	if got < want {
		r.Note = fmt.Sprintf("%d of %d delivered", got, want)
	}
	if k := dropped.Load(); k > 0 {
		r.Note = strings.TrimPrefix(r.Note+fmt.Sprintf(", %d subscribers dropped", k), ", ")
	}
	return r, ctx.Err()
}

// rawSub is a NATS core subscriber that reads the protocol itself and only
// counts messages: like messbench's fan-out subscribers, it spends as
// little of the shared CPU as it can.
type rawSub struct {
	c  net.Conn
	br *bufio.Reader
}

func subscribeRaw(ctx context.Context, addr, subject string) (*rawSub, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	s := &rawSub{c: c, br: bufio.NewReaderSize(c, 64<<10)}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if line, err := s.br.ReadString('\n'); err != nil || !strings.HasPrefix(line, "INFO ") {
		c.Close()
		return nil, fmt.Errorf("nats: no INFO (%v): %q", err, line)
	}
	if _, err := fmt.Fprintf(c, "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1}\r\nSUB %s 1\r\nPING\r\n", subject); err != nil {
		c.Close()
		return nil, err
	}
	for {
		line, err := s.br.ReadString('\n')
		if err != nil || strings.HasPrefix(line, "-ERR") {
			c.Close()
			return nil, fmt.Errorf("nats: subscribe: %v %q", err, line)
		}
		if line == "PONG\r\n" {
			break
		}
	}
	c.SetDeadline(time.Time{})
	return s, nil
}

var (
	msgPrefix = []byte("MSG ")
	pingLine  = []byte("PING\r\n")
)

// read counts MSG frames into received until the connection ends,
// answering the server's pings. It adds to received each time the buffer
// runs dry, not per message, so a thousand readers do not contend on it.
func (s *rawSub) read(received *atomic.Int64) error {
	var local int64
	for {
		if local > 0 && s.br.Buffered() == 0 {
			received.Add(local)
			local = 0
		}
		line, err := s.br.ReadSlice('\n')
		if err != nil {
			received.Add(local)
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		switch {
		case bytes.HasPrefix(line, msgPrefix):
			// MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n
			size, ok := lastNumber(line)
			if !ok {
				return fmt.Errorf("nats: bad MSG line %q", line)
			}
			if _, err := s.br.Discard(size + 2); err != nil {
				received.Add(local)
				return err
			}
			local++
		case bytes.Equal(line, pingLine):
			if _, err := s.c.Write([]byte("PONG\r\n")); err != nil {
				return err
			}
		case bytes.HasPrefix(line, []byte("-ERR")):
			received.Add(local)
			return fmt.Errorf("nats: %s", bytes.TrimSpace(line))
		}
	}
}

// lastNumber parses the decimal number that ends a protocol line.
func lastNumber(line []byte) (int, bool) {
	line = bytes.TrimRight(line, "\r\n")
	i := bytes.LastIndexByte(line, ' ')
	if i < 0 || i == len(line)-1 {
		return 0, false
	}
	n := 0
	for _, b := range line[i+1:] {
		if b < '0' || b > '9' {
			return 0, false
		}
		n = n*10 + int(b-'0')
	}
	return n, true
}

package main

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestParseConfig(t *testing.T) {
	for _, tc := range []struct {
		name    string
		args    []string
		want    func(config) bool
		wantErr string
	}{
		{"defaults", []string{"-bin", "b"}, func(c config) bool {
			return c.Rounds == 3 && c.Duration == 10*time.Second && strings.Join(c.Workloads, ",") == "locks,direct,fanout" &&
				c.LockClients == 32 && c.Senders == 64 && c.Subscribers == 1000 && c.Order == "alternate"
		}, ""},
		{"workloads in the order given, repeats and blanks dropped", []string{"-bin", "b", "-workloads", "fanout, locks,,fanout"},
			func(c config) bool { return strings.Join(c.Workloads, ",") == "fanout,locks" }, ""},
		{"unknown workload", []string{"-bin", "b", "-workloads", "locks,queues"}, nil, `unknown "queues"`},
		{"no workload", []string{"-bin", "b", "-workloads", " , "}, nil, "names none"},
		{"no bin", nil, nil, "-bin is required"},
		{"zero rounds", []string{"-bin", "b", "-rounds", "0"}, nil, "at least 1"},
		{"negative duration", []string{"-bin", "b", "-d", "-1s"}, nil, "positive duration"},
		{"bad order", []string{"-bin", "b", "-order", "random"}, nil, "-order"},
		{"no subscribers", []string{"-bin", "b", "-subscribers", "0"}, nil, "at least 1"},
		{"stray argument", []string{"-bin", "b", "extra"}, nil, "unexpected arguments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseConfig(tc.args, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !tc.want(c) {
				t.Fatalf("parseConfig(%q) = %+v, %v", tc.args, c, err)
			}
		})
	}
}

func TestPeerFirst(t *testing.T) {
	for _, tc := range []struct {
		order string
		want  []bool // rounds 1 to 4
	}{
		{"alternate", []bool{true, false, true, false}},
		{"peer-first", []bool{true, true, true, true}},
		{"messd-first", []bool{false, false, false, false}},
	} {
		for i, want := range tc.want {
			if got := (config{Order: tc.order}).peerFirst(i + 1); got != want {
				t.Errorf("%s: round %d peer first = %v, want %v", tc.order, i+1, got, want)
			}
		}
	}
}

func TestFormat(t *testing.T) {
	for _, tc := range []struct {
		x    float64
		want string
	}{
		{0, "0"}, {999.6, "1,000"}, {12345, "12,345"}, {123456.4, "123,456"}, {999999, "999,999"},
		{1_020_000, "1.02 M"}, {math.Inf(1), "n/a"},
	} {
		if got := formatRate(tc.x); got != tc.want {
			t.Errorf("formatRate(%v) = %q, want %q", tc.x, got, tc.want)
		}
	}
	if got := span([]float64{0.56, 0.41, 0.5}, formatRatio); got != "0.41–0.56" {
		t.Errorf("span = %q", got)
	}
	if got := span([]float64{1.001, 1.004}, formatRatio); got != "1.00" {
		t.Errorf("span of equal figures = %q", got)
	}
	if got := (sample{PeerRate: 0, MessdRate: 5}).Ratio(); !math.IsInf(got, 1) {
		t.Errorf("ratio over a peer that did nothing = %v", got)
	}
}

func TestSummary(t *testing.T) {
	ws := []workload{
		{name: "locks", unit: "pairs/s", peers: []peer{{name: "Redis", goal: true}}},
		{name: "direct", unit: "msgs/s", peers: []peer{{name: "JS default", goal: true}, {name: "JS always"}}},
	}
	ss := []sample{
		{Round: 1, Workload: "locks", Peer: "Redis", PeerRate: 10000, MessdRate: 13000},
		{Round: 2, Workload: "locks", Peer: "Redis", PeerRate: 10000, MessdRate: 11000},
		{Round: 1, Workload: "direct", Peer: "JS default", PeerRate: 1000, MessdRate: 1300},
		{Round: 2, Workload: "direct", Peer: "JS default", PeerRate: 1000, MessdRate: 1250},
		{Round: 1, Workload: "direct", Peer: "JS always", PeerRate: 100, MessdRate: 1300},
		{Round: 2, Workload: "direct", Peer: "JS always", PeerRate: 100, MessdRate: 1250},
	}
	var b bytes.Buffer
	printSummary(&b, ws, ss, 2)
	for _, want := range []string{
		"| locks | Redis | 10,000 pairs/s | 11,000–13,000 pairs/s | 1.10–1.30 | no |",
		"| direct | JS default | 1,000 msgs/s | 1,250–1,300 msgs/s | 1.25–1.30 | yes |",
		"| direct | JS always | 100 msgs/s | 1,250–1,300 msgs/s | 12.50–13.00 | — |",
	} {
		if !strings.Contains(b.String(), want+"\n") {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
}

func TestParseMessbench(t *testing.T) {
	for _, tc := range []struct {
		workload, out string
		want          result
		wantErr       bool
	}{
		{"locks", "scenario lease-pairs: exchange bench-1, 32 clients, 3s\n" +
			"lease acquire+release pairs (HTTP, both durable): 33458 ok, 0 errors in 3.001s = 11149/s; latency p50 2.64ms p99 6.31ms max 10.86ms\n",
			result{Rate: 11149}, false},
		{"locks", "lease acquire+release pairs (HTTP): 10 ok, 3 errors in 1s = 10/s; latency\n  last error: boom\n",
			result{Rate: 10, Note: "3 errors"}, false},
		{"direct", "registering 80 agents...\n" +
			"direct messages accepted (fsync before ack, group commit): 750000 ok, 0 errors in 10.01s = 74925/s; latency p50 20ms\n" +
			"  (64 senders over WebSocket, up to 32 unacknowledged each, 16 offline targets)\n",
			result{Rate: 74925}, false},
		{"fanout", "published 2000 messages in 10s (200/s) to 1000 subscribers\n" +
			"deliveries: 1999000 of 2000000 in 10.5s = 1903809 deliveries/s\n" +
			"publish accepted (durable): 2000 ok, 0 errors in 10s = 200/s; latency\n" +
			"publish-to-receive (sampled): 124937 ok, 0 errors in 10.5s = 11898/s; latency\n",
			result{Rate: 1903809, Note: "1999000 of 2000000 delivered"}, false},
		{"direct", "lease acquire+release pairs (HTTP): 10 ok, 0 errors in 1s = 10/s\n", result{}, true},
	} {
		got, err := parseMessbench(tc.workload, tc.out)
		if (err != nil) != tc.wantErr || got != tc.want {
			t.Errorf("parseMessbench(%s) = %+v, %v; want %+v (error %v)", tc.workload, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestNATSConfig(t *testing.T) {
	for _, tc := range []struct{ sync, want string }{
		{"", "listen: \"127.0.0.1:4222\"\n"},
		{"default", "listen: \"127.0.0.1:4222\"\njetstream {\n  store_dir: \"js\"\n}\n"},
		{"always", "listen: \"127.0.0.1:4222\"\njetstream {\n  store_dir: \"js\"\n  sync_interval: always\n}\n"},
	} {
		if got := natsConfig("127.0.0.1:4222", tc.sync); got != tc.want {
			t.Errorf("natsConfig(%q) = %q, want %q", tc.sync, got, tc.want)
		}
	}
}

func TestVersionOf(t *testing.T) {
	for in, want := range map[string]string{
		"Redis server v=7.0.15 sha=00000000:0 malloc=jemalloc-5.3.0 bits=64 build=ae4d7c971a948f0\n": "Redis server 7.0.15",
		"nats-server: v2.15.2\n": "nats-server: v2.15.2",
	} {
		if got := versionOf(in); got != want {
			t.Errorf("versionOf(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadRESP(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // fmt %v of the value, or the error
	}{
		{"+OK\r\n", "OK"},
		{":1\r\n", "1"},
		{"$-1\r\n", "<nil>"},
		{"$5\r\nhe\r\no\r\n", "he\r\no"},
		{"*2\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n", "[appendfsync always]"},
		{"-NOSCRIPT No matching script\r\n", "redis: NOSCRIPT No matching script"},
		{"?what\r\n", `redis: unknown reply "?what\r\n"`},
	} {
		v, err := readRESP(bufio.NewReader(strings.NewReader(tc.in)))
		got := fmtAny(v)
		if err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("readRESP(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func fmtAny(v any) string {
	if v == nil {
		return "<nil>"
	}
	var b strings.Builder
	switch v := v.(type) {
	case []any:
		b.WriteString("[")
		for i, x := range v {
			if i > 0 {
				b.WriteString(" ")
			}
			b.WriteString(fmtAny(x))
		}
		b.WriteString("]")
	case string:
		b.WriteString(v)
	case int64:
		b.WriteString(formatRate(float64(v)))
	}
	return b.String()
}

// TestRawSubRead feeds a subscriber the NATS protocol through a pipe: it
// counts messages whatever their payload holds and answers pings.
func TestRawSubRead(t *testing.T) {
	client, srv := net.Pipe()
	s := &rawSub{c: client, br: bufio.NewReader(client)}
	var received atomic.Int64
	done := make(chan error, 1)
	go func() { done <- s.read(&received) }()
	msg := "MSG fanout.tick 1 11\r\nMSG x 1 2\r\n\r\n" // a payload that looks like a frame
	if _, err := io.WriteString(srv, msg+"MSG fanout.tick 1 reply.to 0\r\n\r\nPING\r\n"); err != nil {
		t.Fatal(err)
	}
	pong := make([]byte, 6)
	if _, err := io.ReadFull(srv, pong); err != nil || string(pong) != "PONG\r\n" {
		t.Fatalf("answer to PING = %q, %v", pong, err)
	}
	if _, err := io.WriteString(srv, "-ERR 'Slow Consumer Detected'\r\n"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err == nil || !strings.Contains(err.Error(), "Slow Consumer") {
		t.Fatalf("read ended with %v, want the server's error", err)
	}
	if got := received.Load(); got != 2 {
		t.Fatalf("received %d messages, want 2", got)
	}
	client.Close()
	srv.Close()
}

func TestLastNumber(t *testing.T) {
	for in, want := range map[string]int{"MSG a 1 100\r\n": 100, "MSG a 1 r 0\r\n": 0, "MSG a 1 x\r\n": -1, "MSG\r\n": -1, "MSG a \r\n": -1} {
		got, ok := lastNumber([]byte(in))
		if !ok {
			got = -1
		}
		if got != want {
			t.Errorf("lastNumber(%q) = %d, want %d", in, got, want)
		}
	}
}

// The floor answers every request once it is in the journal: a run's
// pairs are all there, two 16-byte records each.
func TestFloor(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		serveFloor(ln, f)
	}()
	r, err := runFloorLocks(context.Background(), ln.Addr().String(), 4, 200*time.Millisecond)
	ln.Close()
	<-served
	if err != nil || r.Note != "" || r.Rate <= 0 {
		t.Fatalf("floor run: %+v, %v", r, err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() == 0 || st.Size()%32 != 0 {
		t.Fatalf("journal of %d bytes: want whole pairs of 16-byte records", st.Size())
	}
}

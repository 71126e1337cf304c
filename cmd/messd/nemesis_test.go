package main

// Nemesis tests: several messd processes on one MinIO bucket serve a burst
// of concurrent clients (request creates, claims raced by several
// executors, reads, direct mail over HTTP and WebSocket, a WebSocket
// reader of that mail, lease acquires, status reads and releases raced by
// several agents) while the writer is killed, paused, or cut off from the
// store. They check what fencing promises, from what the clients were told
// and what a replay of the bucket serves: every acknowledged write is
// there, no claim or lease is granted twice (linearizability checks of
// every request's claims and reads and of every lease name's history, with
// tokens growing across writers), each mail is delivered once and in seq
// order, a replaced writer acknowledges nothing, and every log audits
// clean. They assert nothing about timing: each step waits, with a
// deadline, for a state it observes.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/coder/websocket"

	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/internal/miniotest"
	"github.com/meatspace-exchange/mess/mailbus"
	"github.com/meatspace-exchange/mess/storage"
	"github.com/meatspace-exchange/mess/storage/s3store"
)

// Short owner settings, so a takeover takes seconds, yet long enough that
// a heartbeat (which may take a quarter of the timeout) is not lost on a
// loaded 2-core machine.
const (
	nemHeartbeat = 400 * time.Millisecond
	nemTimeout   = 4 * time.Second
	nemExchange  = "nx"
)

// nemEnv is the environment of every messd of a nemesis test.
func nemEnv(s3 map[string]string, heartbeat, timeout time.Duration) map[string]string {
	env := map[string]string{
		"MESS_OWNER_HEARTBEAT": heartbeat.String(),
		"MESS_OWNER_TIMEOUT":   timeout.String(),
		"MESS_REGISTER_RATE":   "-1",
		// Compact often, so compaction runs across takeovers too.
		"LEASE_COMPACT_INTERVAL": "2s",
		"MAILBUS_SNAPSHOT_EVERY": "40",
	}
	for k, v := range s3 {
		env[k] = v
	}
	return env
}

// node is one messd process on the shared bucket.
type node struct {
	name, addr string
	cmd        *exec.Cmd
	done       chan struct{} // closed once the process exited
	exitErr    error         // set before done is closed
	logs       *syncBuffer   // its log, shown when the test fails
}

// startNode runs messd on env at a fresh loopback address. It does not wait
// for it to serve: a standby never does.
func startNode(t *testing.T, env map[string]string, name string) *node {
	t.Helper()
	n := &node{name: name, addr: freeAddr(t), done: make(chan struct{}), logs: &syncBuffer{}}
	n.cmd = exec.Command(os.Args[0])
	n.cmd.Env = append(os.Environ(), "MESSD_TEST_CHILD="+filepath.Join(t.TempDir(), "addr"), "ADDR="+n.addr,
		"MESS_OPEN_REGISTRATION=true", "LOG_LEVEL=warn")
	for k, v := range env {
		n.cmd.Env = append(n.cmd.Env, k+"="+v)
	}
	n.cmd.Stderr = n.logs
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		n.exitErr = n.cmd.Wait()
		close(n.done)
	}()
	t.Cleanup(func() {
		n.cmd.Process.Kill() // a stopped process dies of SIGKILL too
		<-n.done
		if t.Failed() {
			t.Logf("log of %s (%s):\n%s", n.name, n.addr, n.logs.String())
		}
	})
	return n
}

func (n *node) url() string { return "http://" + n.addr }

func (n *node) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := n.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("signal %v to %s: %v", sig, n.name, err)
	}
}

func (n *node) exited() bool {
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// waitExit waits for the process to end and returns how it ended.
func (n *node) waitExit(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case <-n.done:
		return n.exitErr
	case <-time.After(within):
		t.Fatalf("%s still runs after %v", n.name, within)
		return nil
	}
}

// waitReady waits until one of nodes answers /ready with 200 and returns it.
func waitReady(t *testing.T, within time.Duration, nodes ...*node) *node {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, n := range nodes {
			if statusOf(n.url()+"/ready") == http.StatusOK {
				return n
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Their goroutines, in their logs, say where they are stuck.
	for _, n := range nodes {
		n.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-n.done:
		case <-time.After(5 * time.Second):
		}
	}
	t.Fatalf("none of %d nodes became ready within %v", len(nodes), within)
	return nil
}

// role reads a node's /health role: writer, standby or starting.
func role(n *node) string {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(n.url() + "/health")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var h struct {
		Role string `json:"role"`
	}
	json.NewDecoder(resp.Body).Decode(&h)
	return h.Role
}

// bucketStore opens the bucket the nodes write, to audit it.
func bucketStore(t *testing.T, env map[string]string) storage.Store {
	t.Helper()
	st, err := s3store.New(context.Background(), s3store.Config{Endpoint: env["S3_ENDPOINT"], Bucket: env["S3_BUCKET"],
		AccessKey: env["S3_ACCESS_KEY"], SecretKey: env["S3_SECRET_KEY"]})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// ownerState is what the tests read of the process owner record.
type ownerState struct {
	Epoch  uint64 `json:"epoch"`
	Holder string `json:"holder"`
	Beat   uint64 `json:"beat"`
}

func readOwner(t *testing.T, st storage.Store) ownerState {
	t.Helper()
	obj, err := st.Get(context.Background(), ownerKey)
	if err != nil {
		t.Fatal(err)
	}
	var o ownerState
	if err := json.Unmarshal(obj.Data, &o); err != nil {
		t.Fatal(err)
	}
	return o
}

// privateMinio starts a MinIO server of the test's own, for tests that
// stop it, and returns it with the settings of a fresh bucket on it.
func privateMinio(t *testing.T) (*miniotest.Server, map[string]string) {
	t.Helper()
	dir := t.TempDir()
	srv, err := miniotest.Start(dir)
	if err != nil {
		t.Fatalf("MinIO: %v", err)
	}
	t.Cleanup(srv.Stop)
	bucket, err := srv.NewBucket(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return srv, map[string]string{
		"STORAGE_TYPE": "s3", "S3_ENDPOINT": srv.Endpoint, "S3_BUCKET": bucket,
		"S3_ACCESS_KEY": miniotest.AccessKey, "S3_SECRET_KEY": miniotest.SecretKey,
	}
}

// The agents of the burst.
var (
	nemClaimers = []string{"e0", "e1", "e2"}
	nemSenders  = []string{"s0", "s1"} // over HTTP
	nemWSSender = "s2"
	nemLeases   = []string{"f0", "f1"} // contended by the claimers, as lease agents
)

const (
	nemRequestor = "req"
	nemReceiver  = "rcv"
	nemProbe     = "probe"
)

// burst is a set of concurrent clients and what each was told. Each client
// keeps to one node until it fails or answers 503, then tries the next:
// a load balancer's health check, without its delay.
type burst struct {
	t     *testing.T
	hc    *http.Client
	start time.Time
	keys  map[string]string
	// noHangs: a client timeout is a defect (the writer must answer, if
	// only 503, while the store is down). noDrops: so is a dropped
	// connection (no node exits).
	noHangs, noDrops bool
	// dirtyLeases: only what leaseProblems checks is asserted of the
	// lease history, not linearizability (see leaseProblems).
	dirtyLeases bool
	// halt ends the clients after the request each has in flight, so that
	// every request was answered (or timed out) once they are done; ctx
	// then ends the receiver.
	halt     chan struct{}
	haltOnce sync.Once
	ctx      context.Context
	cancel   context.CancelFunc
	clients  sync.WaitGroup
	readers  sync.WaitGroup

	mu       sync.Mutex
	nodes    []*node
	zombie   *node // a replaced writer...
	zombieAt int64 // ...from this time on (ns since start) must acknowledge nothing
	defects  []string
	creates  []createOp
	refs     []string              // acknowledged refs, raced for by every claimer
	history  []porcupine.Operation // claims and reads of requests
	leases   []porcupine.Operation // acquires, releases and status reads of leases
	sends    map[string][]sendOp   // by sender, in send order
	received []mailbus.Message     // what the receiver's sockets delivered, in order
	// unanswered counts, by node, requests whose answer never came: the
	// node may still be working on them when the burst is over.
	unanswered map[*node]int

	nCreated, nDecided, nSent, nReceived, nLeased, nUnavailable atomic.Int64
}

type createOp struct {
	intent, ref string
	acked       bool
}

type sendOp struct {
	id    string
	acked bool
}

// claimIn and claimOut are a claim or read of one request, for porcupine.
type claimIn struct {
	read       bool
	ref, agent string
}

type claimOut struct {
	kind   byte   // 'o' granted, 'r' refused, '?' unknown (no answer, or 503), 'v' a read
	holder string // the claimant the answer named
}

// claimModel is one request's claim: a pending request is granted to the
// first claimant and refused to every other, naming the holder; its
// claimant's repeated claim is granted again; a read shows the holder. A
// claim whose answer is unknown may have taken effect at any point from
// its call on (its return is the end of time).
var claimModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		var order []string
		for _, op := range h {
			ref := op.Input.(claimIn).ref
			if _, ok := by[ref]; !ok {
				order = append(order, ref)
			}
			by[ref] = append(by[ref], op)
		}
		out := make([][]porcupine.Operation, 0, len(order))
		for _, ref := range order {
			out = append(out, by[ref])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(s, in, out any) (bool, any) {
		st, i, o := s.(string), in.(claimIn), out.(claimOut)
		if i.read {
			return o.holder == st, st
		}
		switch o.kind {
		case 'o':
			return (st == "" || st == i.agent) && o.holder == i.agent, i.agent
		case 'r':
			return st != "" && st != i.agent && o.holder == st, st
		default:
			if st == "" {
				return true, i.agent
			}
			return true, st
		}
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(claimIn), out.(claimOut)
		if i.read {
			return fmt.Sprintf("read(%s) -> %q", i.ref, o.holder)
		}
		return fmt.Sprintf("claim(%s, %s) -> %c %q", i.ref, i.agent, o.kind, o.holder)
	},
}

// leaseIn and leaseOut are an operation on one lease name, for porcupine.
type leaseIn struct {
	op          byte // 'a' acquire, 'r' release, 's' status
	name, agent string
	token       uint64 // a release's
}

type leaseOut struct {
	// 'o' done (acquired, released), 'r' refused, 'm' a release refused
	// after a try whose answer was lost (so done by that try if the lease
	// was still the caller's), 'v' a status.
	kind   byte
	holder string
	token  uint64
}

type leaseState struct {
	holder      string
	token, last uint64
}

// leaseModel is one lease name: a free lease is granted with a token above
// every earlier one (across every writer), the holder's acquire is granted
// its own token again, anyone else is refused with the holder's name, only
// the holder's release with its token releases, a status shows the holder
// and token. Leases are long enough never to expire during a test.
var leaseModel = porcupine.Model{
	Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
		by := map[string][]porcupine.Operation{}
		for _, op := range h {
			n := op.Input.(leaseIn).name
			by[n] = append(by[n], op)
		}
		out := make([][]porcupine.Operation, 0, len(by))
		for _, ops := range by {
			out = append(out, ops)
		}
		return out
	},
	Init: func() any { return leaseState{} },
	Step: func(s, in, out any) (bool, any) {
		st, i, o := s.(leaseState), in.(leaseIn), out.(leaseOut)
		switch i.op {
		case 'a':
			switch {
			case o.kind == 'o' && st.holder == "":
				return o.holder == i.agent && o.token > st.last, leaseState{i.agent, o.token, o.token}
			case o.kind == 'o':
				return st.holder == i.agent && o.holder == i.agent && o.token == st.token, st
			default:
				return st.holder != "" && st.holder != i.agent && o.holder == st.holder, st
			}
		case 'r':
			held := st.holder == i.agent && st.token == i.token
			switch {
			case o.kind == 'o' && held, o.kind == 'm' && held:
				return true, leaseState{last: st.last}
			case o.kind == 'o':
				return false, st
			default:
				return !held || o.kind == 'm', st
			}
		default:
			return o.holder == st.holder && o.token == st.token, st
		}
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(leaseIn), out.(leaseOut)
		return fmt.Sprintf("%c(%s,%s,%d) -> %c %s/%d", i.op, i.name, i.agent, i.token, o.kind, o.holder, o.token)
	},
}

// newBurst registers the agents on n, the writer.
func newBurst(t *testing.T, n *node, nodes ...*node) *burst {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr := &http.Transport{MaxIdleConnsPerHost: 16}
	w := &burst{t: t, hc: &http.Client{Timeout: 5 * time.Second, Transport: tr}, start: time.Now(),
		keys: map[string]string{}, halt: make(chan struct{}), ctx: ctx, cancel: cancel, nodes: nodes, sends: map[string][]sendOp{},
		unanswered: map[*node]int{}}
	t.Cleanup(func() {
		w.stop()
		tr.CloseIdleConnections()
	})
	ts := &testServer{URL: n.url()}
	agents := append([]string{nemRequestor, nemReceiver, nemProbe, nemWSSender}, nemClaimers...)
	for _, a := range append(agents, nemSenders...) {
		w.keys[a] = ts.register(t, nemExchange, a)
	}
	return w
}

func (w *burst) now() int64 { return time.Since(w.start).Nanoseconds() }

func (w *burst) nodeList() []*node {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.nodes
}

// replaced marks n as a writer that from now on must acknowledge nothing.
func (w *burst) replaced(n *node) {
	w.mu.Lock()
	w.zombie, w.zombieAt = n, w.now()
	w.mu.Unlock()
}

func (w *burst) defect(format string, args ...any) {
	w.mu.Lock()
	w.defects = append(w.defects, fmt.Sprintf(format, args...))
	w.mu.Unlock()
}

func (w *burst) stopped() bool {
	select {
	case <-w.halt:
		return true
	default:
		return false
	}
}

// pause spaces a client's retries after a failure.
func (w *burst) pause() {
	select {
	case <-w.halt:
	case <-time.After(25 * time.Millisecond):
	}
}

// answer is one HTTP exchange as its client saw it.
type answer struct {
	node      *node
	status    int // 0: no answer
	body      []byte
	err       error
	call, ret int64
	what      string
}

func (a answer) ok() bool { return a.status >= 200 && a.status < 300 }

// do sends one request to the client's node, judges the answer and moves
// the client to the next node if it got none or a 503.
func (w *burst) do(pref *int, method, path, agent string, body any) answer {
	nodes := w.nodeList()
	a := w.doAt(nodes[*pref%len(nodes)], method, path, agent, body)
	if a.status == 0 || a.status == http.StatusServiceUnavailable {
		*pref = (*pref + 1) % len(nodes)
		w.pause()
	}
	return a
}

// doAt sends one request to n and judges the answer.
func (w *burst) doAt(n *node, method, path, agent string, body any) answer {
	a := answer{node: n, what: method + " " + path}
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, n.url()+path, rd)
	if err != nil {
		w.t.Error(err)
		return a
	}
	req.Header.Set("Content-Type", "application/json")
	if agent != "" {
		req.Header.Set("Authorization", "Bearer "+w.keys[agent])
	}
	a.call = w.now()
	resp, err := w.hc.Do(req)
	if err == nil {
		a.body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		a.status = resp.StatusCode
	}
	a.ret = w.now()
	a.err = err
	w.judge(a)
	return a
}

// judge records what no answer may be: a server error other than 503, an
// error that is not the JSON error shape, a 2xx from a replaced writer to
// a request sent after it was replaced, and (strict) no answer at all.
func (w *burst) judge(a answer) {
	if a.err != nil {
		var ne net.Error
		switch {
		case errors.As(a.err, &ne) && ne.Timeout():
			w.mu.Lock()
			w.unanswered[a.node]++
			w.mu.Unlock()
			w.t.Logf("%s to %s at %v: no answer", a.what, a.node.name, time.Duration(a.call))
			if w.noHangs {
				w.defect("%s to %s: no answer within the client's timeout: %v", a.what, a.node.name, a.err)
			}
		case w.noDrops:
			w.defect("%s to %s: %v", a.what, a.node.name, a.err)
		}
		return
	}
	if a.status == http.StatusServiceUnavailable {
		w.nUnavailable.Add(1)
	}
	if a.status >= 400 {
		var e struct {
			Error, Code string
		}
		if err := json.Unmarshal(a.body, &e); err != nil || e.Error == "" || e.Code == "" {
			w.defect("%s to %s: %d with a body that is not a JSON error: %.200s", a.what, a.node.name, a.status, a.body)
		}
		if a.status >= 500 && (a.status != http.StatusServiceUnavailable || e.Code != "unavailable") {
			w.defect("%s to %s: %d %.200s", a.what, a.node.name, a.status, a.body)
		}
	}
	w.mu.Lock()
	if a.ok() && a.node == w.zombie && a.call > w.zombieAt {
		w.defects = append(w.defects, fmt.Sprintf("%s to %s, replaced: answered %d %.200s", a.what, a.node.name, a.status, a.body))
	}
	w.mu.Unlock()
}

// run starts every client.
func (w *burst) run() {
	for i := range 2 {
		w.clients.Go(func() { w.creator(i) })
	}
	for i, agent := range nemClaimers {
		w.clients.Go(func() { w.claimer(i, agent) })
	}
	w.clients.Go(w.reader)
	for i, agent := range nemClaimers {
		w.clients.Go(func() { w.leaser(i, agent) })
	}
	for i, s := range nemSenders {
		w.clients.Go(func() { w.httpSender(i, s) })
	}
	w.clients.Go(w.wsSender)
	w.readers.Go(w.receiver)
}

// stop ends the burst and waits for its clients: every request they made
// has been answered, or timed out, when it returns.
func (w *burst) stop() {
	w.haltOnce.Do(func() { close(w.halt) })
	w.clients.Wait()
	w.cancel()
	w.readers.Wait()
}

func (w *burst) api(rest string) string { return "/api/v1/exchanges/" + nemExchange + rest }

func (w *burst) creator(id int) {
	pref := id
	for n := 0; !w.stopped(); n++ {
		intent := fmt.Sprintf("burst %d/%d", id, n)
		a := w.do(&pref, "POST", w.api("/requests"), nemRequestor, map[string]any{"intent": intent})
		op := createOp{intent: intent}
		switch {
		case a.status == http.StatusCreated:
			var res struct{ Ref string }
			json.Unmarshal(a.body, &res)
			op.ref, op.acked = res.Ref, true
			w.nCreated.Add(1)
		case a.status != 0 && a.status != http.StatusServiceUnavailable:
			w.defect("create: %d %.200s", a.status, a.body)
		}
		w.mu.Lock()
		w.creates = append(w.creates, op)
		if op.acked {
			w.refs = append(w.refs, op.ref)
		}
		w.mu.Unlock()
	}
}

// claimer claims every acknowledged request in creation order, racing the
// other claimers for each, and tries again until it gets an answer. Its
// tries of one request are one operation, from the first call to the
// answer (the end of time if none came): whichever try took effect did so
// in between, and a claim that took effect is granted again to its
// claimant, since no claim is ever released here.
func (w *burst) claimer(id int, agent string) {
	pref := id
	for i := 0; ; {
		w.mu.Lock()
		var ref string
		if i < len(w.refs) {
			ref = w.refs[i]
		}
		w.mu.Unlock()
		if ref == "" {
			if w.stopped() {
				return
			}
			w.pause()
			continue
		}
		op := porcupine.Operation{ClientId: 1 + id, Input: claimIn{ref: ref, agent: agent}, Call: -1,
			Output: claimOut{kind: '?'}, Return: math.MaxInt64}
		for !w.stopped() {
			a := w.do(&pref, "PATCH", w.api("/requests/"+ref), agent, map[string]any{"status": "claimed"})
			if op.Call < 0 {
				op.Call = a.call
			}
			var res struct {
				ExecutorID *string `json:"executor_id"`
			}
			json.Unmarshal(a.body, &res)
			holder := ""
			if res.ExecutorID != nil {
				holder = *res.ExecutorID
			}
			if a.status == http.StatusOK || a.status == http.StatusConflict {
				op.Output, op.Return = claimOut{kind: 'o', holder: holder}, a.ret
				if a.status == http.StatusConflict {
					op.Output = claimOut{kind: 'r', holder: holder}
				}
				w.nDecided.Add(1)
				break
			}
			if a.status != 0 && a.status != http.StatusServiceUnavailable {
				w.defect("claim %s by %s: %d %.200s", ref, agent, a.status, a.body)
			}
		}
		if op.Call >= 0 {
			w.mu.Lock()
			w.history = append(w.history, op)
			w.mu.Unlock()
		}
		if w.stopped() {
			return
		}
		i++
	}
}

// settle sends a lease request until it gets an answer that decides it,
// trying the next node after a 503 or no answer; after the burst is over
// it goes on until then (the writer serves by then). It returns the first
// try's call, the deciding answer, and whether a try went unanswered.
func (w *burst) settle(pref *int, path, agent string, body any) (call int64, a answer, lost bool) {
	call = -1
	deadline := time.Time{}
	for {
		a = w.do(pref, "POST", w.api(path), agent, body)
		if call < 0 {
			call = a.call
		}
		switch {
		case a.status == http.StatusOK, a.status == http.StatusConflict:
			return call, a, lost
		case a.status != 0 && a.status != http.StatusServiceUnavailable:
			w.defect("%s by %s: %d %.200s", path, agent, a.status, a.body)
			return call, a, lost
		}
		lost = true
		if w.stopped() {
			if deadline.IsZero() {
				deadline = time.Now().Add(20 * time.Second)
			}
			if time.Now().After(deadline) {
				w.defect("%s by %s: no answer after the burst", path, agent)
				return call, a, lost
			}
			time.Sleep(25 * time.Millisecond)
		}
	}
}

// leaser acquires the lease names in turn, reads the status of what it
// got, and releases it with its token. Each operation is tried until an
// answer decides it; its tries are one operation, as a claimer's are. A
// retried acquire whose first try was granted unseen is granted again with
// the same token; a retried release whose first try took effect unseen is
// refused, which the model allows only for a lease that was the caller's.
func (w *burst) leaser(id int, agent string) {
	pref := id
	record := func(in leaseIn, out leaseOut, call int64, a answer) {
		w.mu.Lock()
		w.leases = append(w.leases, porcupine.Operation{ClientId: 1 + id, Input: in, Output: out, Call: call, Return: a.ret})
		w.mu.Unlock()
		w.nLeased.Add(1)
	}
	for n := 0; !w.stopped(); n++ {
		name := nemLeases[(n+id)%len(nemLeases)]
		call, a, _ := w.settle(&pref, "/leases/acquire", agent, map[string]any{"file": name, "ttlMs": 600000})
		var g struct {
			Acquired bool   `json:"acquired"`
			AgentID  string `json:"agentId"`
			Token    uint64 `json:"token"`
		}
		if a.status != http.StatusOK || json.Unmarshal(a.body, &g) != nil {
			return
		}
		out := leaseOut{kind: 'r', holder: g.AgentID}
		if g.Acquired {
			out = leaseOut{kind: 'o', holder: g.AgentID, token: g.Token}
		}
		record(leaseIn{op: 'a', name: name, agent: agent}, out, call, a)
		if !g.Acquired {
			continue
		}
		if st := w.do(&pref, "POST", w.api("/leases/status"), agent, map[string]any{"file": name}); st.ok() {
			var v struct {
				AgentID string `json:"agentId"`
				Token   uint64 `json:"token"`
			}
			json.Unmarshal(st.body, &v)
			record(leaseIn{op: 's', name: name}, leaseOut{kind: 'v', holder: v.AgentID, token: v.Token}, st.call, st)
		}
		call, a, lost := w.settle(&pref, "/leases/release", agent, map[string]any{"file": name, "token": g.Token})
		switch {
		case a.status == http.StatusOK:
			out = leaseOut{kind: 'o'}
		case a.status == http.StatusConflict && lost:
			out = leaseOut{kind: 'm'}
		case a.status == http.StatusConflict:
			out = leaseOut{kind: 'r'}
		default:
			return
		}
		record(leaseIn{op: 'r', name: name, agent: agent, token: g.Token}, out, call, a)
	}
}

// reader reads requests being claimed; what it is told goes into the
// history the claims are checked against.
func (w *burst) reader() {
	pref := 0
	for n := 0; !w.stopped(); n++ {
		w.mu.Lock()
		var ref string
		if len(w.refs) > 0 {
			ref = w.refs[max(0, len(w.refs)-1-n%8)] // the newest, contended ones
		}
		w.mu.Unlock()
		if ref == "" {
			w.pause()
			continue
		}
		a := w.do(&pref, "GET", w.api("/requests/"+ref), nemRequestor, nil)
		switch {
		case a.status == http.StatusOK:
			var th struct {
				Thread struct {
					ExecutorID *string `json:"executor_id"`
				} `json:"thread"`
			}
			json.Unmarshal(a.body, &th)
			holder := ""
			if th.Thread.ExecutorID != nil {
				holder = *th.Thread.ExecutorID
			}
			w.mu.Lock()
			w.history = append(w.history, porcupine.Operation{ClientId: 0, Input: claimIn{read: true, ref: ref},
				Output: claimOut{kind: 'v', holder: holder}, Call: a.call, Return: a.ret})
			w.mu.Unlock()
		case a.status != 0 && a.status != http.StatusServiceUnavailable:
			w.defect("read %s: %d %.200s", ref, a.status, a.body)
		}
	}
}

func mailBody(id string, n int) map[string]any {
	return map[string]any{"targetAgent": nemReceiver, "message": map[string]any{
		"id": id, "type": "task.progress", "payload": map[string]any{"n": n}}}
}

// httpSender sends direct mail to the receiver, one message at a time.
func (w *burst) httpSender(id int, agent string) {
	pref := id
	for n := 0; !w.stopped(); n++ {
		msgID := fmt.Sprintf("m-%s-%d", agent, n)
		a := w.do(&pref, "POST", w.api("/mailbus/send"), agent, mailBody(msgID, n))
		if a.status != 0 && !a.ok() && a.status != http.StatusServiceUnavailable {
			w.defect("send %s: %d %.200s", msgID, a.status, a.body)
		}
		if a.ok() {
			w.nSent.Add(1)
		}
		w.mu.Lock()
		w.sends[agent] = append(w.sends[agent], sendOp{id: msgID, acked: a.ok()})
		w.mu.Unlock()
	}
}

// dial opens the mail bus socket of agent on the client's node.
func (w *burst) dial(ctx context.Context, n *node, agent, query string) (*websocket.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, resp, err := websocket.Dial(ctx, "ws://"+n.addr+w.api("/mailbus/subscribe")+query, &websocket.DialOptions{
		HTTPHeader: http.Header{"Authorization": {"Bearer " + w.keys[agent]}},
		HTTPClient: w.hc,
	})
	if err != nil {
		if resp != nil && resp.StatusCode >= 500 && resp.StatusCode != http.StatusServiceUnavailable {
			w.defect("socket of %s to %s: handshake answered %d", agent, n.name, resp.StatusCode)
		}
		return nil, err
	}
	c.SetReadLimit(1 << 20)
	_, data, err := c.Read(ctx) // the welcome
	if err != nil || !bytes.Contains(data, []byte(`"welcome"`)) {
		c.CloseNow()
		return nil, fmt.Errorf("no welcome: %v %.100s", err, data)
	}
	return c, nil
}

// wsFrame is what the sender and receiver read: a control frame or a
// message.
type wsFrame struct {
	mailbus.Message
	Action string `json:"action"`
	Ref    string `json:"ref"`
}

// wsSender sends direct mail over the socket, one message at a time,
// counting it sent on its "accepted" frame.
func (w *burst) wsSender() {
	pref := 0
	var conn *websocket.Conn
	defer func() {
		if conn != nil {
			conn.CloseNow()
		}
	}()
	for n := 0; !w.stopped(); n++ {
		nodes := w.nodeList()
		nd := nodes[pref%len(nodes)]
		if conn == nil {
			var err error
			if conn, err = w.dial(context.Background(), nd, nemWSSender, ""); err != nil {
				pref = (pref + 1) % len(nodes)
				w.pause()
				n--
				continue
			}
		}
		msgID := fmt.Sprintf("m-%s-%d", nemWSSender, n)
		f := mailBody(msgID, n)
		f["action"], f["ref"] = "send", msgID
		b, _ := json.Marshal(f)
		acked := w.exchangeFrame(nd, conn, b, msgID)
		w.mu.Lock()
		w.sends[nemWSSender] = append(w.sends[nemWSSender], sendOp{id: msgID, acked: acked})
		w.mu.Unlock()
		if acked {
			w.nSent.Add(1)
			continue
		}
		conn.CloseNow()
		conn = nil
		pref = (pref + 1) % len(nodes)
		w.pause()
	}
}

// exchangeFrame writes a send frame and reads until its answer; false for
// an error frame or no answer.
func (w *burst) exchangeFrame(n *node, conn *websocket.Conn, frame []byte, ref string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := conn.Write(ctx, websocket.MessageText, frame); err != nil {
		return false
	}
	for {
		_, data, err := conn.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				w.mu.Lock()
				w.unanswered[n]++
				w.mu.Unlock()
				w.t.Logf("socket send %s to %s: no answer", ref, n.name)
			}
			return false
		}
		var f wsFrame
		if json.Unmarshal(data, &f) != nil || f.Ref != ref {
			continue
		}
		return f.Action == "accepted"
	}
}

// receiver reads the receiver's mail over the socket, resuming after the
// last seq it saw on whichever node serves.
func (w *burst) receiver() {
	pref := 0
	var last uint64
	for w.ctx.Err() == nil {
		nodes := w.nodeList()
		nd := nodes[pref%len(nodes)]
		conn, err := w.dial(w.ctx, nd, nemReceiver, fmt.Sprintf("?since=%d", last))
		if err != nil {
			pref = (pref + 1) % len(nodes)
			w.pause()
			continue
		}
		for {
			_, data, err := conn.Read(w.ctx)
			if err != nil {
				break
			}
			var f wsFrame
			if err := json.Unmarshal(data, &f); err != nil {
				w.defect("receiver: bad frame %.200s", data)
				continue
			}
			if f.Action != "" {
				continue
			}
			w.mu.Lock()
			if f.Message.Seq > last {
				last = f.Message.Seq
			}
			w.received = append(w.received, f.Message)
			w.mu.Unlock()
			w.nReceived.Add(1)
		}
		conn.CloseNow()
		pref = (pref + 1) % len(nodes)
	}
}

// waitProgress waits until the burst has, since it was called, created and
// decided claims on n requests, sent n messages, delivered at least
// received and settled n lease operations.
func (w *burst) waitProgress(n, received int64, within time.Duration, what string) {
	w.t.Helper()
	c0, d0, s0, r0, l0 := w.nCreated.Load(), w.nDecided.Load(), w.nSent.Load(), w.nReceived.Load(), w.nLeased.Load()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		if w.nCreated.Load()-c0 >= n && w.nDecided.Load()-d0 >= n && w.nSent.Load()-s0 >= n &&
			w.nReceived.Load()-r0 >= received && w.nLeased.Load()-l0 >= n {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	w.t.Fatalf("%s: the burst made no progress within %v (created %d, claims decided %d, sent %d, received %d, lease operations %d)",
		what, within, w.nCreated.Load()-c0, w.nDecided.Load()-d0, w.nSent.Load()-s0, w.nReceived.Load()-r0, w.nLeased.Load()-l0)
}

// renameAll has every agent change its display name on n. The records
// are updated in place, outside the fenced logs: a writer that was
// replaced must not have changed them behind n's back. A 503 is tried
// again (n may find a record changed and reload it).
func (w *burst) renameAll(n *node, name string) {
	w.t.Helper()
	for agent := range w.keys {
		for try := 0; ; try++ {
			a := w.doAt(n, "PATCH", w.api("/executors/"+agent), agent, map[string]any{"display_name": name})
			if a.ok() {
				break
			}
			if a.status != http.StatusServiceUnavailable || try == 3 {
				w.t.Fatalf("rename %s on %s: %d %s", agent, n.name, a.status, a.body)
			}
		}
	}
}

// checkNames fails unless n serves name as every agent's display name.
func (w *burst) checkNames(n *node, name string) {
	w.t.Helper()
	for agent := range w.keys {
		var res struct {
			Executor struct {
				DisplayName string `json:"display_name"`
			} `json:"executor"`
		}
		getOK(w.t, w.hc, n, w.api("/executors/"+agent), w.keys[agent], &res)
		if res.Executor.DisplayName != name {
			w.t.Errorf("%s serves %s's name as %q, want %q", n.name, agent, res.Executor.DisplayName, name)
		}
	}
}

// served is what a node serves of the exchange: every request and the
// receiver's inbox.
type served struct {
	threads map[string]servedThread
	inbox   []mailbus.Message
	leases  map[string]leaseState
}

type servedThread struct {
	Status, Intent string
	ExecutorID     string
	Seq            int64
}

// getOK GETs path from n until it answers 200 (a node that just took over
// may still be loading an exchange).
func getOK(t *testing.T, hc *http.Client, n *node, path, key string, out any) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest("GET", n.url()+path, nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := hc.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if err := json.Unmarshal(body, out); err != nil {
					t.Fatalf("GET %s: %v", path, err)
				}
				return
			}
			err = fmt.Errorf("%d %.200s", resp.StatusCode, body)
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s from %s: %v", path, n.name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// getOKPost is getOK for a read sent with POST (lease status).
func getOKPost(t *testing.T, hc *http.Client, n *node, path, key string, body, out any) {
	t.Helper()
	b, _ := json.Marshal(body)
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequest("POST", n.url()+path, bytes.NewReader(b))
		req.Header.Set("Authorization", "Bearer "+key)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err == nil {
			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if err := json.Unmarshal(data, out); err != nil {
					t.Fatalf("POST %s: %v", path, err)
				}
				return
			}
			err = fmt.Errorf("%d %.200s", resp.StatusCode, data)
		}
		if time.Now().After(deadline) {
			t.Fatalf("POST %s to %s: %v", path, n.name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// readServed reads everything n serves of the exchange, and adds a read of
// every raced request to the claim history.
func (w *burst) readServed(n *node) served {
	w.t.Helper()
	s := served{threads: map[string]servedThread{}, leases: map[string]leaseState{}}
	call := w.now()
	cursor := ""
	for {
		var page struct {
			Threads []struct {
				Ref, Status, Intent string
				ExecutorID          *string `json:"executor_id"`
				Seq                 int64
			} `json:"threads"`
			NextCursor string `json:"next_cursor"`
		}
		getOK(w.t, w.hc, n, w.api("/requests?limit=1000&cursor="+cursor), w.keys[nemRequestor], &page)
		for _, th := range page.Threads {
			st := servedThread{Status: th.Status, Intent: th.Intent, Seq: th.Seq}
			if th.ExecutorID != nil {
				st.ExecutorID = *th.ExecutorID
			}
			s.threads[th.Ref] = st
		}
		if page.NextCursor == "" {
			break
		}
		cursor = page.NextCursor
	}
	since := uint64(0)
	for {
		var in struct {
			Messages []mailbus.Message `json:"messages"`
			Next     uint64            `json:"next"`
		}
		getOK(w.t, w.hc, n, w.api(fmt.Sprintf("/mailbus/inbox?since=%d&limit=1000", since)), w.keys[nemReceiver], &in)
		if len(in.Messages) == 0 {
			break
		}
		s.inbox = append(s.inbox, in.Messages...)
		since = in.Next
	}
	for _, name := range nemLeases {
		var st struct {
			AgentID string `json:"agentId"`
			Token   uint64 `json:"token"`
		}
		getOKPost(w.t, w.hc, n, w.api("/leases/status"), w.keys[nemRequestor], map[string]any{"file": name}, &st)
		s.leases[name] = leaseState{holder: st.AgentID, token: st.Token}
	}
	ret := w.now()
	w.mu.Lock()
	for _, ref := range w.refs {
		w.history = append(w.history, porcupine.Operation{ClientId: 0, Input: claimIn{read: true, ref: ref},
			Output: claimOut{kind: 'v', holder: s.threads[ref].ExecutorID}, Call: call, Return: ret})
	}
	for name, st := range s.leases {
		w.leases = append(w.leases, porcupine.Operation{Input: leaseIn{op: 's', name: name},
			Output: leaseOut{kind: 'v', holder: st.holder, token: st.token}, Call: call, Return: ret})
	}
	w.mu.Unlock()
	return s
}

// check runs every checker on what a node serves after the burst.
func (w *burst) check(s served) {
	t := w.t
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, d := range w.defects {
		t.Error(d)
	}

	// Every acknowledged create is there; nothing is there that no client
	// asked for, and nothing twice.
	attempted := map[string]bool{}
	acked := 0
	for _, c := range w.creates {
		attempted[c.intent] = true
		if !c.acked {
			continue
		}
		acked++
		if th, ok := s.threads[c.ref]; !ok || th.Intent != c.intent {
			t.Errorf("acknowledged create %s (%q) lost: %+v", c.ref, c.intent, th)
		}
	}
	intents := map[string]string{}
	for ref, th := range s.threads {
		if !attempted[th.Intent] {
			t.Errorf("request %s (%q) was never asked for", ref, th.Intent)
		}
		if other, dup := intents[th.Intent]; dup {
			t.Errorf("request %q is there twice: %s and %s", th.Intent, other, ref)
		}
		intents[th.Intent] = ref
	}

	// No claim granted twice, and every granted claim stands.
	granted := map[string]string{}
	unknown, decided := 0, 0
	for _, op := range w.history {
		in, out := op.Input.(claimIn), op.Output.(claimOut)
		switch {
		case in.read:
		case out.kind == 'o':
			decided++
			if g, ok := granted[in.ref]; ok && g != in.agent {
				t.Errorf("claim of %s granted to %s and to %s", in.ref, g, in.agent)
			}
			granted[in.ref] = in.agent
		case out.kind == 'r':
			decided++
		default:
			unknown++
		}
	}
	for ref, agent := range granted {
		if got := s.threads[ref].ExecutorID; got != agent {
			t.Errorf("claim of %s granted to %s, but it is claimed by %q", ref, agent, got)
		}
	}
	res, info := porcupine.CheckOperationsVerbose(claimModel, w.history, time.Minute)
	if res != porcupine.Ok {
		f, err := os.CreateTemp("", "nemesis-claims-*.html")
		if err == nil {
			porcupine.Visualize(claimModel, info, f)
			f.Close()
		}
		t.Errorf("claim history of %d operations is not linearizable (%v); see %s", len(w.history), res, f.Name())
	}

	// Leases: one holder at a time, tokens growing across every writer.
	for _, p := range leaseProblems(w.leases) {
		t.Error(p)
	}
	if w.dirtyLeases {
		res = porcupine.Ok
	} else {
		res, info = porcupine.CheckOperationsVerbose(leaseModel, w.leases, time.Minute)
	}
	if res != porcupine.Ok {
		f, err := os.CreateTemp("", "nemesis-leases-*.html")
		if err == nil {
			porcupine.Visualize(leaseModel, info, f)
			f.Close()
		}
		t.Errorf("lease history of %d operations is not linearizable (%v); see %s", len(w.leases), res, f.Name())
		if d, err := os.CreateTemp("", "nemesis-leases-*.txt"); err == nil {
			ops := slices.Clone(w.leases)
			slices.SortFunc(ops, func(a, b porcupine.Operation) int { return int(a.Call - b.Call) })
			for _, op := range ops {
				fmt.Fprintf(d, "%d..%d %s\n", op.Call, op.Return, leaseModel.DescribeOperation(op.Input, op.Output))
			}
			d.Close()
			t.Logf("lease history in %s", d.Name())
		}
	}

	// Each mail once, in seq order; every acknowledged one is there, and
	// each sender's acknowledged mail in the order it was sent.
	seqOf := map[string]uint64{}
	var prev uint64
	for _, m := range s.inbox {
		if m.Seq <= prev {
			t.Errorf("inbox seq %d after %d", m.Seq, prev)
		}
		prev = m.Seq
		if _, dup := seqOf[m.ID]; dup {
			t.Errorf("mail %s delivered twice", m.ID)
		}
		seqOf[m.ID] = m.Seq
	}
	sentIDs := map[string]bool{}
	ackedMail := 0
	for sender, ops := range w.sends {
		var last uint64
		lastID := ""
		for _, op := range ops {
			sentIDs[op.id] = true
			if !op.acked {
				continue
			}
			ackedMail++
			seq, ok := seqOf[op.id]
			if !ok {
				t.Errorf("acknowledged mail %s from %s lost", op.id, sender)
				continue
			}
			if seq <= last {
				t.Errorf("mail %s (seq %d) was acknowledged after %s (seq %d) yet comes first", op.id, seq, lastID, last)
			}
			last, lastID = seq, op.id
		}
	}
	for _, m := range s.inbox {
		if !sentIDs[m.ID] {
			t.Errorf("mail %s in the inbox was never sent", m.ID)
		}
	}
	// The sockets delivered a prefix of the inbox, each message once.
	if len(w.received) > len(s.inbox) {
		t.Errorf("the receiver got %d messages, the inbox holds %d", len(w.received), len(s.inbox))
	}
	for i, m := range w.received {
		if i >= len(s.inbox) || m.ID != s.inbox[i].ID || m.Seq != s.inbox[i].Seq {
			var want mailbus.Message
			if i < len(s.inbox) {
				want = s.inbox[i]
			}
			t.Errorf("delivery %d over the socket was %s (seq %d); the inbox has %s (seq %d) there", i, m.ID, m.Seq, want.ID, want.Seq)
			break
		}
	}
	t.Logf("checked: %d creates acknowledged of %d, %d requests; %d claim answers (%d unknown), %d granted; %d mails acknowledged of %d, %d delivered over sockets; %d lease operations; %d answers were 503",
		acked, len(w.creates), len(s.threads), decided, unknown, len(granted), ackedMail, len(sentIDs), len(w.received), len(w.leases), w.nUnavailable.Load())
}

// leaseProblems lists what breaks the promises of acknowledged lease
// operations whatever the store does: a name is never granted to a second
// agent before the first one's release of it was sent (no lease here
// lives long enough to expire), and a grant acknowledged before another
// was asked for has the smaller token. This holds even where the lease
// history is not linearizable: a release takes effect in memory before
// its journal write, and one whose write fails stays in effect, so the
// caller's retry is told "not held"; after a takeover the new writer,
// which never saw the release, has the lease held again until its holder
// releases it or it expires, as the lease package documents (Durability).
func leaseProblems(ops []porcupine.Operation) []string {
	var problems []string
	type grant struct {
		agent      string
		token      uint64
		call, ret  int64
		releasedAt int64 // call of its release; -1: never released
	}
	byName := map[string][]*grant{}
	releases := map[string]int64{} // name/agent/token -> call of its release
	for _, op := range ops {
		in, out := op.Input.(leaseIn), op.Output.(leaseOut)
		switch {
		case in.op == 'a' && out.kind == 'o':
			byName[in.name] = append(byName[in.name], &grant{agent: in.agent, token: out.token, call: op.Call, ret: op.Return, releasedAt: -1})
		case in.op == 'r' && (out.kind == 'o' || out.kind == 'm'):
			releases[fmt.Sprintf("%s/%s/%d", in.name, in.agent, in.token)] = op.Call
		}
	}
	for name, gs := range byName {
		for _, g := range gs {
			if at, ok := releases[fmt.Sprintf("%s/%s/%d", name, g.agent, g.token)]; ok {
				g.releasedAt = at
			}
		}
		for _, a := range gs {
			for _, b := range gs {
				switch {
				case a.token == b.token:
					if a.agent != b.agent {
						problems = append(problems, fmt.Sprintf("lease %s: token %d granted to %s and to %s", name, a.token, a.agent, b.agent))
					}
				case a.ret < b.call && a.token > b.token:
					problems = append(problems, fmt.Sprintf("lease %s: token %d granted after token %d", name, b.token, a.token))
				case a.token < b.token && a.agent != b.agent && (a.releasedAt < 0 || a.releasedAt > b.ret):
					problems = append(problems, fmt.Sprintf("lease %s: granted to %s (token %d) while %s held it (token %d)", name, b.agent, b.token, a.agent, a.token))
				}
			}
		}
	}
	return problems
}

// sameServed fails unless a replay serves the same requests and inbox as
// the writer did. With exact false (a request to the writer went
// unanswered, so it may have gone on changing its state after it was
// read) the replay may have more: later states of requests, more mail.
func sameServed(t *testing.T, a, b served, exact bool) {
	t.Helper()
	for ref, th := range a.threads {
		got, ok := b.threads[ref]
		if exact && got != th || !exact && (!ok || got.Seq < th.Seq || got.Seq == th.Seq && got != th) {
			t.Errorf("request %s: %+v, after replay %+v", ref, th, got)
		}
	}
	for ref, th := range b.threads {
		if _, ok := a.threads[ref]; !ok && exact {
			t.Errorf("request %s appeared in the replay: %+v", ref, th)
		}
	}
	for name, st := range a.leases {
		if got := b.leases[name]; exact && got != st || got.token < st.token {
			t.Errorf("lease %s: %+v, after replay %+v", name, st, got)
		}
	}
	if exact && len(a.inbox) != len(b.inbox) || len(a.inbox) > len(b.inbox) {
		t.Errorf("inbox: %d messages, after replay %d", len(a.inbox), len(b.inbox))
	}
	for i := range min(len(a.inbox), len(b.inbox)) {
		if a.inbox[i].ID != b.inbox[i].ID || a.inbox[i].Seq != b.inbox[i].Seq {
			t.Errorf("inbox %d: %s (seq %d), after replay %s (seq %d)", i, a.inbox[i].ID, a.inbox[i].Seq, b.inbox[i].ID, b.inbox[i].Seq)
			break
		}
	}
}

// stopAll stops the nodes still running, so that the logs hold still
// (compaction deletes what a snapshot covers) while they are audited.
func stopAll(t *testing.T, nodes ...*node) {
	t.Helper()
	var running []*node
	for _, n := range nodes {
		if !n.exited() {
			n.signal(t, syscall.SIGTERM)
			running = append(running, n)
		}
	}
	for _, n := range running {
		if err := n.waitExit(t, 30*time.Second); err != nil {
			t.Errorf("%s stopped with %v", n.name, err)
		}
	}
}

// auditLogs audits the exchange's logs: events, mail, leases and the
// notification outbox (slots contiguous, compacted ones aside; epochs never decreasing; each
// epoch's writes after its fence) and checks that the first writer and the
// last (whose epoch the owner record holds) both fenced them. Writers in
// between may have lost their term before they opened a log.
func auditLogs(t *testing.T, st storage.Store) {
	t.Helper()
	ctx := context.Background()
	epochs := []uint64{1, readOwner(t, st).Epoch}
	for _, l := range []struct {
		log    string
		gaps   bool // compacted: data slots may be gone, fences stay
		opened bool // by every writer that served (the outbox: only by one with something to send)
	}{
		{"events/exchange=" + nemExchange, false, true},
		{"mailbus/" + nemExchange + "/log", true, true},
		{"leases/exchange=" + nemExchange + "/log", true, true},
		{"notify/exchange=" + nemExchange + "/outbox", true, false},
	} {
		rep, err := journal.Audit(ctx, st, l.log, l.gaps)
		if err != nil {
			t.Errorf("audit %s: %v", l.log, err)
			continue
		}
		if rep.Lines == 0 && !l.gaps {
			t.Errorf("audit %s: no data: %+v", l.log, rep)
		}
		for _, e := range epochs {
			if !l.opened {
				break
			}
			if rep.Fences[e] == 0 {
				t.Errorf("audit %s: epoch %d never fenced it: %+v", l.log, e, rep.Fences)
			}
		}
		t.Logf("audit %s: %d slots, %d lines, fences by epoch %v", l.log, rep.Slots, rep.Lines, rep.Fences)
	}
}

// Kill -9 of the writer in the middle of a burst: the standby takes over
// and serves every write that was acknowledged, no claim is granted twice,
// each mail is delivered once and in seq order.
func TestNemesis_killWriter(t *testing.T) {
	s3 := s3Env(t)
	env := nemEnv(s3, nemHeartbeat, nemTimeout)
	a := startNode(t, env, "A")
	waitReady(t, 30*time.Second, a)
	b := startNode(t, env, "B")
	waitStatus(t, b.url()+"/health", 200, 30*time.Second)

	w := newBurst(t, a, a, b)
	w.run()
	w.waitProgress(15, 1, 30*time.Second, "before the kill")
	a.signal(t, syscall.SIGKILL)
	a.waitExit(t, 10*time.Second)
	waitReady(t, 30*time.Second, b)
	w.waitProgress(15, 1, 30*time.Second, "after the takeover")
	w.stop()

	w.check(w.readServed(b))
	stopAll(t, b)
	st := bucketStore(t, s3)
	if o := readOwner(t, st); o.Epoch < 2 {
		t.Errorf("owner record after a takeover: %+v", o)
	}
	auditLogs(t, st)
}

// SIGSTOP of the writer in the middle of a burst: the standby takes over.
// On SIGCONT the old writer acknowledges nothing (every answer to a request
// sent from then on is an error), closes its sockets with 1013 (try again
// later) and waits as a standby, having changed nothing behind the new
// writer's back; a fresh process replaying the bucket serves exactly what
// the new writer served.
func TestNemesis_pausedWriter(t *testing.T) {
	// MinIO takes an object's lock before it reads a conditional PUT's
	// body and holds it until the body is in or its read timeout
	// (MINIO_IDLE_TIMEOUT, 30s by default) passes. A writer stopped
	// between the headers and the body of a PUT thus holds up every
	// write of that key: the owner record's, or a log slot's fence. Here
	// that ends well before the standby takes over.
	t.Setenv("MINIO_IDLE_TIMEOUT", "2s")
	_, s3 := privateMinio(t)
	env := nemEnv(s3, nemHeartbeat, nemTimeout)
	a := startNode(t, env, "A")
	waitReady(t, 30*time.Second, a)
	b := startNode(t, env, "B")
	waitStatus(t, b.url()+"/health", 200, 30*time.Second)

	w := newBurst(t, a, a, b)
	w.run()
	w.waitProgress(15, 1, 30*time.Second, "before the pause")
	// A socket held open on the writer through the pause.
	probe, err := w.dial(context.Background(), a, nemProbe, "")
	if err != nil {
		t.Fatal(err)
	}
	defer probe.CloseNow()

	a.signal(t, syscall.SIGSTOP)
	t.Logf("SIGSTOP at %v", time.Since(w.start))
	waitReady(t, 30*time.Second, b)
	t.Logf("B ready at %v", time.Since(w.start))
	w.waitProgress(15, 0, 40*time.Second, "after the takeover") // the receiver still waits on A
	w.replaced(a)
	a.signal(t, syscall.SIGCONT)
	t.Logf("SIGCONT at %v", time.Since(w.start))

	// Everything asked of the old writer from now on is refused.
	w.mu.Lock()
	ref := w.refs[len(w.refs)-1]
	w.mu.Unlock()
	for i := range 3 {
		for _, l := range []answer{
			w.doAt(a, "POST", w.api("/requests"), nemRequestor, map[string]any{"intent": fmt.Sprintf("after SIGCONT %d", i)}),
			w.doAt(a, "PATCH", w.api("/requests/"+ref), nemClaimers[0], map[string]any{"status": "claimed"}),
			w.doAt(a, "POST", w.api("/mailbus/send"), nemSenders[0], mailBody(fmt.Sprintf("late-http-%d", i), 0)),
			w.doAt(a, "GET", w.api("/requests/"+ref), nemRequestor, nil),
		} {
			if l.ok() {
				t.Errorf("replaced writer answered %s with %d %s", l.what, l.status, l.body)
			}
		}
	}
	if code := statusOf(a.url() + "/ready"); code == http.StatusOK {
		t.Error("replaced writer is ready")
	}
	// The socket held through the pause is closed with "try again later",
	// and mail sent on it now is not accepted.
	f := mailBody("late-ws", 0)
	f["action"], f["ref"] = "send", "late-ws"
	frame, _ := json.Marshal(f)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	probe.Write(ctx, websocket.MessageText, frame) // may fail: the socket may be closed already
	for {
		_, data, err := probe.Read(ctx)
		if err != nil {
			if ctx.Err() != nil {
				t.Fatal("the replaced writer's socket stayed open")
			}
			if got := websocket.CloseStatus(err); got != websocket.StatusTryAgainLater {
				t.Errorf("the replaced writer closed its socket with %v (%v), want %v", got, err, websocket.StatusTryAgainLater)
			}
			break
		}
		if bytes.Contains(data, []byte(`"accepted"`)) {
			t.Errorf("replaced writer accepted mail on a socket: %s", data)
		}
	}
	// It waits as a standby.
	waitRole(t, a.url()+"/health", "standby", 20*time.Second)
	if code := statusOf(a.url() + "/ready"); code == http.StatusOK {
		t.Error("replaced writer is ready")
	}
	w.renameAll(b, "renamed by B")

	w.waitProgress(10, 1, 30*time.Second, "after the old writer stepped down")
	w.stop()
	atB := w.readServed(b)

	// A fresh process replays the bucket after the writer hands over (and
	// the old one is gone, or it might take over first).
	a.signal(t, syscall.SIGKILL)
	a.waitExit(t, 10*time.Second)
	b.signal(t, syscall.SIGTERM)
	if err := b.waitExit(t, 20*time.Second); err != nil {
		t.Fatalf("the writer stopped with %v", err)
	}
	c := startNode(t, env, "C")
	waitReady(t, 30*time.Second, c)
	atC := w.readServed(c)
	w.mu.Lock()
	exact := w.unanswered[b] == 0
	w.mu.Unlock()
	if !exact {
		t.Logf("a request to %s went unanswered: the replay may serve more than was read from it", b.name)
	}
	sameServed(t, atB, atC, exact)
	w.checkNames(c, "renamed by B")
	w.check(atC)
	stopAll(t, c)
	auditLogs(t, bucketStore(t, s3))
}

// Three processes: when the writer is killed one standby takes over and
// the other stays a standby; when that one is killed too, the third takes
// over, serving everything both acknowledged.
func TestNemesis_threeProcesses(t *testing.T) {
	s3 := s3Env(t)
	env := nemEnv(s3, nemHeartbeat, nemTimeout)
	a := startNode(t, env, "A")
	waitReady(t, 30*time.Second, a)
	b := startNode(t, env, "B")
	c := startNode(t, env, "C")
	waitStatus(t, b.url()+"/health", 200, 30*time.Second)
	waitStatus(t, c.url()+"/health", 200, 30*time.Second)
	st := bucketStore(t, s3)

	w := newBurst(t, a, a, b, c)
	w.run()
	w.waitProgress(10, 1, 30*time.Second, "before the first kill")
	a.signal(t, syscall.SIGKILL)
	a.waitExit(t, 10*time.Second)
	first := waitReady(t, 30*time.Second, b, c)
	other := b
	if first == b {
		other = c
	}
	// The winner heartbeats well past a timeout: the other must have seen
	// the record change all along, and stays a standby.
	o := readOwner(t, st)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		cur := readOwner(t, st)
		if cur.Epoch != o.Epoch || cur.Holder != o.Holder {
			t.Fatalf("owner changed from %+v to %+v", o, cur)
		}
		if cur.Beat >= o.Beat+uint64(nemTimeout/nemHeartbeat)+3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the new writer's heartbeat stalled: %+v", cur)
		}
	}
	if o.Epoch < 2 {
		t.Errorf("owner after a takeover: %+v", o)
	}
	if r := role(other); r != "standby" || statusOf(other.url()+"/ready") == http.StatusOK {
		t.Errorf("%s is %q beside the writer %s", other.name, r, first.name)
	}
	w.waitProgress(10, 1, 30*time.Second, "after the first takeover")

	first.signal(t, syscall.SIGKILL)
	first.waitExit(t, 10*time.Second)
	waitReady(t, 30*time.Second, other)
	w.waitProgress(10, 1, 30*time.Second, "after the second takeover")
	w.stop()
	w.check(w.readServed(other))
	stopAll(t, other)
	if o := readOwner(t, st); o.Epoch < 3 {
		t.Errorf("owner record after two takeovers: %+v", o)
	}
	auditLogs(t, st)
}

// MinIO stopped (gracefully or killed) for less than half the owner
// timeout under load: every answer meanwhile is a 503 JSON error or a
// success (never a 500, never no answer), nothing acknowledged is lost,
// and the same messd serves again once MinIO is back.
func TestNemesis_storeOutage(t *testing.T) {
	for _, tc := range []struct {
		name string
		stop func(*miniotest.Server)
	}{{"Stop", (*miniotest.Server).Stop}, {"Kill", (*miniotest.Server).Kill}} {
		t.Run(tc.name, func(t *testing.T) {
			srv, s3 := privateMinio(t)
			// Half the timeout (the writer gives up then) is well beyond
			// the outage.
			env := nemEnv(s3, 500*time.Millisecond, 30*time.Second)
			a := startNode(t, env, "A")
			waitReady(t, 30*time.Second, a)

			w := newBurst(t, a, a)
			w.hc.Timeout = 10 * time.Second
			w.noHangs, w.noDrops = true, true
			w.run()
			w.waitProgress(15, 1, 30*time.Second, "before the outage")
			tc.stop(srv)
			// Down until writes were refused a good number of times.
			u0 := w.nUnavailable.Load()
			for deadline := time.Now().Add(30 * time.Second); w.nUnavailable.Load()-u0 < 20; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("only %d answers were 503 while MinIO was down", w.nUnavailable.Load()-u0)
				}
			}
			if err := srv.Restart(); err != nil {
				t.Fatal(err)
			}
			w.waitProgress(15, 1, 40*time.Second, "after MinIO came back")
			w.stop()
			if a.exited() || role(a) != "writer" {
				t.Fatalf("the writer did not stay one: role %q, exited %v", role(a), a.exitErr)
			}
			w.check(w.readServed(a))
			stopAll(t, a)
			auditLogs(t, bucketStore(t, s3))
		})
	}
}

// MinIO stopped for longer than half the owner timeout: the writer gives
// up its ownership and steps down to a standby, answering 503s (never a
// 500, never no answer). Once MinIO is back one of the two standbys takes
// over cleanly and serves everything that was acknowledged.
func TestNemesis_longStoreOutage(t *testing.T) {
	srv, s3 := privateMinio(t)
	env := nemEnv(s3, nemHeartbeat, nemTimeout)
	a := startNode(t, env, "A")
	waitReady(t, 30*time.Second, a)
	b := startNode(t, env, "B")
	waitStatus(t, b.url()+"/health", 200, 30*time.Second)

	w := newBurst(t, a, a, b)
	w.hc.Timeout = 10 * time.Second
	w.noHangs, w.noDrops = true, true
	// A release whose write failed comes back after the takeover.
	w.dirtyLeases = true
	w.run()
	w.waitProgress(15, 1, 30*time.Second, "before the outage")
	srv.Kill()
	waitRole(t, a.url()+"/health", "standby", 30*time.Second)
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	writer := waitReady(t, 30*time.Second, a, b)
	w.waitProgress(15, 1, 40*time.Second, "after MinIO came back")
	w.stop()
	w.check(w.readServed(writer))
	for _, n := range []*node{a, b} {
		if n != writer && (role(n) != "standby" || statusOf(n.url()+"/ready") == http.StatusOK) {
			t.Errorf("%s is %q beside the writer %s", n.name, role(n), writer.name)
		}
		if n.exited() {
			t.Errorf("%s exited: %v", n.name, n.exitErr)
		}
	}
	stopAll(t, a, b)
	st := bucketStore(t, s3)
	if o := readOwner(t, st); o.Epoch < 2 {
		t.Errorf("owner record after the outage: %+v", o)
	}
	auditLogs(t, st)
}

// The claim checker refuses what the nemesis tests look for.
func TestNemesis_claimModel(t *testing.T) {
	claim := func(agent string, kind byte, holder string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: claimIn{ref: "r", agent: agent}, Output: claimOut{kind: kind, holder: holder}, Call: call, Return: ret}
	}
	read := func(holder string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: claimIn{read: true, ref: "r"}, Output: claimOut{kind: 'v', holder: holder}, Call: call, Return: ret}
	}
	tests := []struct {
		name string
		ops  []porcupine.Operation
		ok   bool
	}{
		{"one grant", []porcupine.Operation{claim("a", 'o', "a", 0, 2), claim("b", 'r', "a", 1, 3), read("a", 4, 5)}, true},
		{"granted twice", []porcupine.Operation{claim("a", 'o', "a", 0, 2), claim("b", 'o', "b", 1, 3)}, false},
		{"grant lost", []porcupine.Operation{claim("a", 'o', "a", 0, 1), read("", 2, 3)}, false},
		{"refused by nobody", []porcupine.Operation{claim("b", 'r', "a", 0, 1)}, false},
		{"stale read", []porcupine.Operation{claim("a", 'o', "a", 0, 1), read("a", 2, 3), read("", 4, 5)}, false},
		{"unknown that landed", []porcupine.Operation{claim("a", '?', "", 0, math.MaxInt64), claim("b", 'r', "a", 1, 2), read("a", 3, 4)}, true},
		{"unknown that did not", []porcupine.Operation{claim("a", '?', "", 0, math.MaxInt64), claim("b", 'o', "b", 1, 2), read("b", 3, 4)}, true},
		{"re-claim by the holder", []porcupine.Operation{claim("a", 'o', "a", 0, 1), claim("a", 'o', "a", 2, 3)}, true},
	}
	for _, tt := range tests {
		if got := porcupine.CheckOperations(claimModel, tt.ops); got != tt.ok {
			t.Errorf("%s: linearizable = %v, want %v", tt.name, got, tt.ok)
		}
	}
}

// The lease checkers refuse what the nemesis tests look for.
func TestNemesis_leaseChecks(t *testing.T) {
	acquire := func(agent string, kind byte, holder string, token uint64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: leaseIn{op: 'a', name: "f", agent: agent},
			Output: leaseOut{kind: kind, holder: holder, token: token}, Call: call, Return: ret}
	}
	release := func(agent string, token uint64, kind byte, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: leaseIn{op: 'r', name: "f", agent: agent, token: token}, Output: leaseOut{kind: kind}, Call: call, Return: ret}
	}
	status := func(holder string, token uint64, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: leaseIn{op: 's', name: "f"}, Output: leaseOut{kind: 'v', holder: holder, token: token}, Call: call, Return: ret}
	}
	tests := []struct {
		name           string
		ops            []porcupine.Operation
		linearizable   bool
		acknowledgedOK bool // leaseProblems finds nothing
	}{
		{"hand over", []porcupine.Operation{acquire("a", 'o', "a", 1, 0, 1), acquire("b", 'r', "a", 0, 2, 3),
			release("a", 1, 'o', 4, 5), acquire("b", 'o', "b", 2, 6, 7), status("b", 2, 8, 9)}, true, true},
		{"granted twice", []porcupine.Operation{acquire("a", 'o', "a", 1, 0, 1), acquire("b", 'o', "b", 2, 2, 3)}, false, false},
		{"token went back", []porcupine.Operation{acquire("a", 'o', "a", 2, 0, 1), release("a", 2, 'o', 2, 3),
			acquire("b", 'o', "b", 1, 4, 5)}, false, false},
		{"same token twice", []porcupine.Operation{acquire("a", 'o', "a", 1, 0, 1), release("a", 1, 'o', 2, 3),
			acquire("b", 'o', "b", 1, 4, 5)}, false, false},
		{"refused by a holder that never was", []porcupine.Operation{acquire("b", 'r', "a", 0, 0, 1), acquire("b", 'o', "b", 1, 2, 3)}, false, true},
		{"release lost, then refused", []porcupine.Operation{acquire("a", 'o', "a", 1, 0, 1), release("a", 1, 'm', 2, 5),
			acquire("b", 'o', "b", 2, 3, 4)}, true, true},
		{"released twice", []porcupine.Operation{acquire("a", 'o', "a", 1, 0, 1), release("a", 1, 'o', 2, 3), release("a", 1, 'o', 4, 5)}, false, true},
	}
	for _, tt := range tests {
		if got := porcupine.CheckOperations(leaseModel, tt.ops); got != tt.linearizable {
			t.Errorf("%s: linearizable = %v, want %v", tt.name, got, tt.linearizable)
		}
		if got := leaseProblems(tt.ops); (len(got) == 0) != tt.acknowledgedOK {
			t.Errorf("%s: problems %q", tt.name, got)
		}
	}
}

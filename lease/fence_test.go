package lease_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meatspace-exchange/mess/internal/backends"
	"github.com/meatspace-exchange/mess/internal/faultstore"
	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/lease"
	"github.com/meatspace-exchange/mess/storage"
)

var (
	claimOwner = backends.Owner
	takeOver   = backends.TakeOver
)

// auditLogs checks every lease journal in store and returns the epochs
// that fenced each one.
func auditLogs(t *testing.T, store storage.Store, exchanges ...string) map[string]map[uint64]int {
	t.Helper()
	out := map[string]map[uint64]int{}
	for _, x := range exchanges {
		log := "leases/exchange=" + x + "/log"
		rep, err := journal.Audit(context.Background(), store, log, true)
		if err != nil {
			t.Fatalf("audit %s: %v", log, err)
		}
		out[x] = rep.Fences
	}
	return out
}

// wantHeld fails unless m holds name in x under g's holder and token.
func wantHeld(t *testing.T, m *lease.Manager, x string, g lease.Grant) {
	t.Helper()
	st, err := m.Status(context.Background(), x, g.Name)
	if err != nil || !st.IsLeased || st.AgentID != g.Holder || st.Token != g.Token {
		t.Fatalf("%s/%s = %+v, %v; want held by %s with token %d", x, g.Name, st, err, g.Holder, g.Token)
	}
}

func wantFenced(t *testing.T, err error) {
	t.Helper()
	if !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("err = %v, want storage.ErrFenced", err)
	}
}

// A new owner loads everything the old one acknowledged (over HTTP and in
// process, before and after a compaction), hands out higher tokens, and
// the old one is fenced off at its next write: 503 over HTTP.
func TestManager_takeover(t *testing.T) {
	for _, b := range []backend{memoryBackend, fsBackend, minioBackend} {
		t.Run(b.name, func(t *testing.T) { testTakeover(t, b) })
	}
}

func testTakeover(t *testing.T, b backend) {
	ctx := context.Background()
	store := b.new(t)
	oa := claimOwner(t, store, "a")
	a, srvA := MustServer(t, lease.Config{Store: store, Fence: oa, CompactInterval: -1})

	type acked struct {
		g        lease.Grant
		released bool
	}
	acks := map[string]*acked{} // "x/name"
	maxToken := map[string]uint64{}
	for i := range 16 {
		x := []string{"x1", "x2"}[i%2]
		name := fmt.Sprintf("f%d", i%5)
		g, err := a.Acquire(ctx, x, "alice", name, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		acks[x+"/"+name] = &acked{g: g}
		maxToken[x] = max(maxToken[x], g.Token)
		if i%3 == 0 {
			if err := a.Release(ctx, x, "alice", name, g.Token); err != nil {
				t.Fatal(err)
			}
			acks[x+"/"+name].released = true
		}
		if i == 7 {
			if err := a.Compact(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	code, body := post(t, srvA, "carol", "acquire", `{"file":"http","ttlMs":60000}`)
	if code != http.StatusOK || body["acquired"] != true {
		t.Fatalf("acquire over HTTP: %d %v", code, body)
	}
	httpGrant := lease.Grant{Name: "http", Holder: "carol", Token: uint64(body["token"].(float64))}

	ob := takeOver(t, store, oa, "b")
	bm := MustNew(t, lease.Config{Store: store, Fence: ob, CompactInterval: -1})
	bTop := map[string]uint64{} // B's highest token per exchange
	for k, ack := range acks {
		x, _, _ := strings.Cut(k, "/")
		if !ack.released {
			wantHeld(t, bm, x, ack.g)
			continue
		}
		if st, err := bm.Status(ctx, x, ack.g.Name); err != nil || st.IsLeased {
			t.Fatalf("%s released by A, after takeover %+v, %v", k, st, err)
		}
		g, err := bm.Acquire(ctx, x, "bob", ack.g.Name, time.Minute)
		if err != nil || g.Token <= maxToken[x] {
			t.Fatalf("%s: B granted %+v, %v; want a token above %d", k, g, err, maxToken[x])
		}
		bTop[x] = max(bTop[x], g.Token)
	}
	wantHeld(t, bm, "x1", httpGrant)
	if _, err := bm.Acquire(ctx, "x1", "bob", "http", time.Minute); !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("B granted a lease A acknowledged: %v", err)
	}

	// A's next write meets B's fence; nothing more is acknowledged, and
	// it no longer answers from memory either.
	_, err := a.Acquire(ctx, "x1", "alice", "late", time.Minute)
	wantFenced(t, err)
	_, err = a.Status(ctx, "x1", "late")
	wantFenced(t, err)
	code, body = post(t, srvA, "carol", "acquire", `{"file":"late2","ttlMs":60000}`)
	if code != http.StatusServiceUnavailable || body["code"] != "unavailable" {
		t.Fatalf("fenced acquire over HTTP: %d %v", code, body)
	}
	if st, err := bm.Status(ctx, "x1", "late"); err != nil || st.IsLeased {
		t.Fatalf("A's refused grant is visible to B: %+v, %v", st, err)
	}

	// An exchange first used after the takeover is claimed and fenced too.
	if _, err := bm.Acquire(ctx, "x3", "bob", "f", time.Minute); err != nil {
		t.Fatal(err)
	}
	fences := auditLogs(t, store, "x1", "x2", "x3")
	for _, x := range []string{"x1", "x2"} {
		if fences[x][1] == 0 || fences[x][2] == 0 {
			t.Fatalf("%s fenced by epochs %v, want 1 and 2", x, fences[x])
		}
	}
	if fences["x3"][2] == 0 || fences["x3"][1] != 0 {
		t.Fatalf("x3 fenced by epochs %v, want 2 only", fences["x3"])
	}

	// B compacts and hands over to C: still the same leases, tokens still rising.
	if err := bm.Close(ctx); err != nil {
		t.Fatal(err)
	}
	oc := takeOver(t, store, ob, "c")
	cm := MustNew(t, lease.Config{Store: store, Fence: oc, CompactInterval: -1})
	wantHeld(t, cm, "x1", httpGrant)
	for k, ack := range acks {
		x, _, _ := strings.Cut(k, "/")
		if !ack.released {
			wantHeld(t, cm, x, ack.g)
		}
	}
	g, err := cm.Acquire(ctx, "x1", "dave", "fresh", time.Minute)
	if err != nil || g.Token <= bTop["x1"] {
		t.Fatalf("C granted %+v, %v; want a token above B's", g, err)
	}
	auditLogs(t, store, "x1", "x2", "x3")
}

// parkOn installs a hook on fs that parks the first call matching op and
// key (a prefix for List) until gate opens, after the store answered.
func parkOn(fs *faultstore.Store, gate *faultstore.Gate, op faultstore.Op, match func(key string) bool) {
	fs.Add(&faultstore.Hook{
		Once:  true,
		Match: func(o faultstore.Op, key string) bool { return o == op && match(key) },
		After: func(ctx context.Context, _ faultstore.Op, _ string, err error) error {
			if werr := gate.Wait(ctx); werr != nil {
				return werr
			}
			return err
		},
	})
}

const x1Log = "leases/exchange=x1/log/"

// A's journal write lands, then A stalls before acknowledging it while B
// takes over: B's fence goes after that write, so B holds the grant A
// then acknowledges, and A's next write is refused.
func TestManager_takeover_parkedAcknowledgement(t *testing.T) {
	for _, b := range []backend{memoryBackend, minioBackend} {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			store := b.new(t)
			fa := faultstore.New(store)
			oa := claimOwner(t, store, "a")
			a := MustNew(t, lease.Config{Store: fa, Fence: oa, CompactInterval: -1})
			MustAcquire(t, a, "alice", "f0", time.Minute)

			gate := faultstore.NewGate()
			parkOn(fa, gate, faultstore.Create, func(k string) bool { return strings.HasPrefix(k, x1Log) })
			type result struct {
				g   lease.Grant
				err error
			}
			done := make(chan result, 1)
			go func() {
				g, err := a.Acquire(ctx, "x1", "alice", "f1", time.Minute)
				done <- result{g, err}
			}()
			<-gate.Reached

			ob := takeOver(t, store, oa, "b")
			bm := MustNew(t, lease.Config{Store: store, Fence: ob, CompactInterval: -1})
			gate.Open()
			r := <-done
			if r.err != nil {
				t.Fatalf("A's parked acquire: %v", r.err)
			}
			wantHeld(t, bm, "x1", r.g)
			if _, err := bm.Acquire(ctx, "x1", "bob", "f1", time.Minute); !errors.Is(err, lease.ErrHeld) {
				t.Fatalf("f1 granted twice: %v", err)
			}
			g, err := bm.Acquire(ctx, "x1", "bob", "f2", time.Minute)
			if err != nil || g.Token <= r.g.Token {
				t.Fatalf("B granted %+v, %v; want a token above %d", g, err, r.g.Token)
			}
			_, err = a.Acquire(ctx, "x1", "alice", "f3", time.Minute)
			wantFenced(t, err)
			auditLogs(t, store, "x1")
		})
	}
}

// B lists A's journal, then stalls before writing its fence while A (not
// knowing it was replaced) writes three more grants: B's fence lands after
// them and B's replay includes them.
func TestManager_takeover_writeBetweenListingAndFence(t *testing.T) {
	for _, b := range []backend{memoryBackend, minioBackend} {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			store := b.new(t)
			oa := claimOwner(t, store, "a")
			a := MustNew(t, lease.Config{Store: store, Fence: oa, CompactInterval: -1})
			gs := []lease.Grant{MustAcquire(t, a, "alice", "f0", time.Minute)}

			fb := faultstore.New(store)
			gate := faultstore.NewGate()
			parkOn(fb, gate, faultstore.List, func(k string) bool { return k == x1Log })
			ob := takeOver(t, store, oa, "b")
			type made struct {
				m   *lease.Manager
				err error
			}
			done := make(chan made, 1)
			go func() {
				m, err := lease.New(ctx, lease.Config{Store: fb, Fence: ob, CompactInterval: -1})
				done <- made{m, err}
			}()
			<-gate.Reached
			for i := 1; i <= 3; i++ {
				gs = append(gs, MustAcquire(t, a, "alice", fmt.Sprintf("f%d", i), time.Minute))
			}
			gate.Open()
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			bm := r.m
			t.Cleanup(func() { _ = bm.Close(ctx) })
			for _, g := range gs {
				wantHeld(t, bm, "x1", g)
			}
			_, err := a.Acquire(ctx, "x1", "alice", "f9", time.Minute)
			wantFenced(t, err)
			g, err := bm.Acquire(ctx, "x1", "bob", "f9", time.Minute)
			if err != nil || g.Token <= gs[len(gs)-1].Token {
				t.Fatalf("B granted %+v, %v; want a token above %d", g, err, gs[len(gs)-1].Token)
			}
			if fences := auditLogs(t, store, "x1"); fences["x1"][2] == 0 {
				t.Fatalf("no fence of epoch 2: %v", fences)
			}
		})
	}
}

// A, replaced without knowing it, compacts its journal (writing a snapshot,
// then deleting what it covers) while B replays that journal: B reads the
// journal again from A's snapshot and misses nothing. B's own compaction
// then builds on A's snapshot, and a third owner loads the same leases.
func TestManager_takeover_compactionDuringLoad(t *testing.T) {
	for _, b := range []backend{memoryBackend, minioBackend} {
		t.Run(b.name, func(t *testing.T) {
			ctx := context.Background()
			store := b.new(t)
			oa := claimOwner(t, store, "a")
			a := MustNew(t, lease.Config{Store: store, Fence: oa, CompactInterval: -1})
			var held []lease.Grant
			var top uint64
			for i := range 6 {
				g := MustAcquire(t, a, "alice", fmt.Sprintf("f%d", i), time.Minute)
				top = g.Token
				if i%2 == 0 {
					if err := a.Release(ctx, "x1", "alice", g.Name, g.Token); err != nil {
						t.Fatal(err)
					}
					continue
				}
				held = append(held, g)
			}

			fb := faultstore.New(store)
			gate := faultstore.NewGate()
			var lists atomic.Int32
			fb.Add(&faultstore.Hook{
				Match: func(op faultstore.Op, key string) bool { return op == faultstore.List && key == x1Log },
				After: func(ctx context.Context, _ faultstore.Op, _ string, err error) error {
					if lists.Add(1) == 2 { // the replay's listing; the first found the end for the fence
						if werr := gate.Wait(ctx); werr != nil {
							return werr
						}
					}
					return err
				},
			})
			ob := takeOver(t, store, oa, "b")
			type made struct {
				m   *lease.Manager
				err error
			}
			done := make(chan made, 1)
			go func() {
				m, err := lease.New(ctx, lease.Config{Store: fb, Fence: ob, CompactInterval: -1})
				done <- made{m, err}
			}()
			<-gate.Reached
			if err := a.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			gate.Open()
			r := <-done
			if r.err != nil {
				t.Fatal(r.err)
			}
			bm := r.m
			t.Cleanup(func() { _ = bm.Close(ctx) })
			if n := lists.Load(); n < 3 {
				t.Fatalf("B listed the journal %d times; want it to read again after A's compaction", n)
			}
			check := func(m *lease.Manager) {
				t.Helper()
				for _, g := range held {
					wantHeld(t, m, "x1", g)
				}
				for i := 0; i < 6; i += 2 {
					if st, err := m.Status(ctx, "x1", fmt.Sprintf("f%d", i)); err != nil || st.IsLeased {
						t.Fatalf("f%d released by A, held after takeover: %+v, %v", i, st, err)
					}
				}
			}
			check(bm)
			g := MustAcquire(t, bm, "bob", "g", time.Minute)
			if g.Token <= top {
				t.Fatalf("B's token %d, want above %d", g.Token, top)
			}
			if err := bm.Compact(ctx); err != nil {
				t.Fatal(err)
			}
			auditLogs(t, store, "x1")

			if err := bm.Close(ctx); err != nil {
				t.Fatal(err)
			}
			oc := takeOver(t, store, ob, "c")
			cm := MustNew(t, lease.Config{Store: store, Fence: oc, CompactInterval: -1})
			check(cm)
			wantHeld(t, cm, "x1", g)
			if g2 := MustAcquire(t, cm, "carol", "h", time.Minute); g2.Token <= g.Token {
				t.Fatalf("C's token %d, want above %d", g2.Token, g.Token)
			}
			page, err := store.List(ctx, "leases/exchange=x1/snap/", storage.ListOptions{})
			if err != nil || len(page.Keys) != 1 {
				t.Fatalf("snapshots %v, %v; want the newest only", page.Keys, err)
			}
			auditLogs(t, store, "x1")
		})
	}
}

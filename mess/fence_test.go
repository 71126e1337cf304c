package mess_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/meatspace-exchange/mess/internal/backends"
	"github.com/meatspace-exchange/mess/internal/faultstore"
	"github.com/meatspace-exchange/mess/internal/journal"
	"github.com/meatspace-exchange/mess/mess"
	"github.com/meatspace-exchange/mess/storage"
)

var own = backends.Owner

// A writer replaced while it still believes it owns the store (its lease
// has not run out: the worst case) can acknowledge nothing more: its event
// writes meet the new owner's fence and its record updates fail to
// confirm. The new owner serves everything the old one acknowledged.
func TestFence_ReplacedWriterAcknowledgesNothing(t *testing.T) {
	backends.Each(t, testReplacedWriter)
}

func testReplacedWriter(t *testing.T, open backends.Opener) {
	st := open(t)
	oa := own(t, st, "a")
	a, err := mess.New(ctx, mess.Config{Store: st, Fence: oa, OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	mustRegister(t, a, "x", "req")
	mustRegister(t, a, "x", "exe")
	first, err := a.CreateRequest(ctx, "x", "req", mess.Request{Intent: "before"}, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Update(ctx, "x", "exe", first.Ref, mess.Update{Status: "claimed"}); err != nil {
		t.Fatal(err)
	}

	// The standby takes over (a's record released, as after its timeout).
	if err := oa.Release(ctx); err != nil {
		t.Fatal(err)
	}
	ob := own(t, st, "b")
	b, err := mess.New(ctx, mess.Config{Store: st, Fence: ob, OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)

	if _, err := a.CreateRequest(ctx, "x", "req", mess.Request{Intent: "after"}, ""); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("replaced writer's create: %v, want ErrFenced", err)
	}
	if err := a.UpdateExecutor(ctx, "x", "exe", "exe", mess.ProfileUpdate{DisplayName: new("late")}); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("replaced writer's profile update: %v, want ErrFenced", err)
	}
	th, err := b.Get(ctx, "x", first.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if th.Status != "claimed" {
		t.Fatalf("the new owner lost an acknowledged claim: %+v", th)
	}
	if _, err := b.Update(ctx, "x", "req", first.Ref, mess.Update{Status: "cancelled"}); err != nil {
		t.Fatal(err)
	}
	rep, err := journal.Audit(ctx, st, "events/exchange=x", false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Fences[ob.Epoch()] == 0 || rep.Fences[oa.Epoch()] == 0 {
		t.Fatalf("audit %+v: each owner should have fenced the log", rep)
	}
}

// A restart on either backend rebuilds exactly the state that was served,
// and on a shared store every event log passes the fencing audit.
func TestBackends_Rebuild(t *testing.T) {
	backends.Each(t, func(t *testing.T, open backends.Opener) {
		st := open(t)
		oa := own(t, st, "a")
		s, err := mess.New(ctx, mess.Config{Store: st, Fence: oa, OpenRegistration: true})
		if err != nil {
			t.Fatal(err)
		}
		mustRegister(t, s, "home", "agent")
		mustRegister(t, s, "home", "human")
		var refs []string
		for i := range 20 {
			res, err := s.CreateRequest(ctx, "home", "agent", mess.Request{Intent: fmt.Sprint("job ", i)}, "")
			if err != nil {
				t.Fatal(err)
			}
			refs = append(refs, res.Ref)
		}
		for i, ref := range refs[:8] {
			if _, err := s.Update(ctx, "home", "human", ref, mess.Update{Status: "claimed"}); err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 {
				if _, err := s.Update(ctx, "home", "human", ref, mess.Update{Status: "completed", Mess: json.RawMessage(`[{"response":{"content":["done"]}}]`)}); err != nil {
					t.Fatal(err)
				}
			}
		}
		before, err := s.List(ctx, "home", mess.ListOptions{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := oa.Release(ctx); err != nil {
			t.Fatal(err)
		}

		st2 := open(t) // as a new process sees it
		ob := own(t, st2, "b")
		s2, err := mess.New(ctx, mess.Config{Store: st2, Fence: ob})
		if err != nil {
			t.Fatal(err)
		}
		defer s2.Close(ctx)
		after, err := s2.List(ctx, "home", mess.ListOptions{Limit: 1000})
		if err != nil {
			t.Fatal(err)
		}
		b1, _ := json.Marshal(before.Threads)
		b2, _ := json.Marshal(after.Threads)
		if string(b1) != string(b2) {
			t.Fatalf("listing differs after rebuild:\n%s\n%s", b1, b2)
		}
		if _, err := s2.CreateRequest(ctx, "home", "agent", mess.Request{Intent: "after"}, ""); err != nil {
			t.Fatal(err)
		}
		rep, err := journal.Audit(ctx, st2, "events/exchange=home", false)
		if err != nil {
			t.Fatal(err)
		}
		if rep.Lines < 20+8+4+1 {
			t.Fatalf("audit %+v: events missing", rep)
		}
	})
}

// A write whose reply was lost (the store took it, then the connection
// broke) stands in the log, like one made just before a crash. A change
// acknowledged after it must not contradict it: here a claim that was
// answered 503 but landed, then a rival's claim of the same request.
func TestFence_lostReplyIsNotContradicted(t *testing.T) {
	mem := storage.NewMemory()
	fs := faultstore.New(mem)
	oa := own(t, mem, "a")
	a, err := mess.New(ctx, mess.Config{Store: fs, Fence: oa, OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	mustRegister(t, a, "x", "req")
	mustRegister(t, a, "x", "e1")
	mustRegister(t, a, "x", "e2")
	req, err := a.CreateRequest(ctx, "x", "req", mess.Request{Intent: "raced"}, "")
	if err != nil {
		t.Fatal(err)
	}
	fs.Add(&faultstore.Hook{
		Match: func(op faultstore.Op, key string) bool {
			return op == faultstore.Create && strings.HasPrefix(key, "events/")
		},
		After: func(_ context.Context, _ faultstore.Op, _ string, err error) error {
			return errors.Join(err, fmt.Errorf("%w: connection reset", storage.ErrUnavailable))
		},
		Once: true,
	})
	if _, err := a.Update(ctx, "x", "e1", req.Ref, mess.Update{Status: "claimed"}); err == nil {
		t.Fatal("the lost reply was not reported")
	}
	// The next write finds e1's claim in the log: it is refused, and e1's
	// claim is served from then on.
	if _, err := a.Update(ctx, "x", "e2", req.Ref, mess.Update{Status: "claimed"}); !errors.Is(err, storage.ErrUnavailable) {
		t.Fatalf("e2's claim after e1's landed unseen: %v, want a 503 (storage.ErrUnavailable)", err)
	}
	if th, err := a.Get(ctx, "x", req.Ref); err != nil || th.ExecutorID == nil || *th.ExecutorID != "e1" {
		t.Fatalf("after the landed claim was found: %+v, %v", th.Summary, err)
	}
	if _, err := a.Update(ctx, "x", "e2", req.Ref, mess.Update{Status: "claimed"}); !errors.Is(err, mess.ErrConflict) {
		t.Fatalf("e2's claim again: %v, want ErrConflict", err)
	}
	if _, err := a.Update(ctx, "x", "e1", req.Ref, mess.Update{Status: "in_progress"}); err != nil {
		t.Fatal(err)
	}

	if err := oa.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := mess.New(ctx, mess.Config{Store: mem, Fence: own(t, mem, "b"), OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	th, err := b.Get(ctx, "x", req.Ref)
	if err != nil {
		t.Fatal(err)
	}
	if th.ExecutorID == nil || *th.ExecutorID != "e1" || th.Status != "in_progress" {
		t.Fatalf("after replay: %+v", th.Summary)
	}
	if _, err := journal.Audit(ctx, mem, "events/exchange=x", false); err != nil {
		t.Fatal(err)
	}
}

// Records updated in place are not fenced by the store: a replaced writer
// that wakes may still update one (it is then told ErrFenced, and
// acknowledges nothing). The new owner's own updates of that record must
// go on working, and land.
func TestFence_replacedWritersLateUpdateOfARecord(t *testing.T) {
	st := storage.NewMemory()
	oa := own(t, st, "a")
	a, err := mess.New(ctx, mess.Config{Store: st, Fence: oa, OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close(ctx)
	mustRegister(t, a, "x", "boss")
	mustRegister(t, a, "x", "exe")
	if err := oa.Release(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := mess.New(ctx, mess.Config{Store: st, Fence: own(t, st, "b"), OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close(ctx)
	if err := a.UpdateExecutor(ctx, "x", "exe", "exe", mess.ProfileUpdate{DisplayName: new("late")}); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("replaced writer's profile update: %v, want ErrFenced", err)
	}
	if _, err := a.CreateInvite(ctx, "x", "boss", mess.InviteOptions{}); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("replaced writer's invite: %v, want ErrFenced", err)
	}

	// The new owner finds the records changed behind it: it may refuse
	// its first try (503), and the next works.
	update := func() error {
		return b.UpdateExecutor(ctx, "x", "exe", "exe", mess.ProfileUpdate{DisplayName: new("current")})
	}
	err = update()
	if errors.Is(err, storage.ErrUnavailable) {
		err = update()
	}
	if err != nil {
		t.Fatalf("the new owner's profile update: %v", err)
	}
	invite := func() (mess.Invite, error) { return b.CreateInvite(ctx, "x", "boss", mess.InviteOptions{}) }
	inv, err := invite()
	if errors.Is(err, storage.ErrUnavailable) {
		inv, err = invite()
	}
	if err != nil {
		t.Fatalf("the new owner's invite: %v", err)
	}
	if _, err := b.Register(ctx, "x", mess.Registration{ExecutorID: "guest", InviteToken: inv.Token}); err != nil {
		t.Fatalf("register with the new owner's invite: %v", err)
	}
	if e, err := b.Executor(ctx, "x", "exe"); err != nil || e.DisplayName != "current" {
		t.Fatalf("the new owner serves %+v, %v", e, err)
	}
	// A writer that knows it may have been replaced writes nothing.
	before, err := st.Get(ctx, "executors/exchange=x/exe.json")
	if err != nil {
		t.Fatal(err)
	}
	oa.Fenced(storage.ErrFenced)
	if err := a.UpdateExecutor(ctx, "x", "exe", "exe", mess.ProfileUpdate{DisplayName: new("later")}); !errors.Is(err, storage.ErrFenced) {
		t.Fatalf("lost writer's profile update: %v, want ErrFenced", err)
	}
	if after, err := st.Get(ctx, "executors/exchange=x/exe.json"); err != nil || after.Version != before.Version {
		t.Fatalf("a writer that lost its ownership changed the record: %v", err)
	}
}

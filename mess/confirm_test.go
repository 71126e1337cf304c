package mess_test

import (
	"errors"
	"testing"

	"github.com/meatspace-exchange/mess/mess"
)

// Ensure a confirmation belongs to the executor it was given to, across a
// restart too.
func TestConfirmBefore_belongsToExecutor(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, mess.Config{OpenRegistration: true})
	for _, id := range []string{"req", "bob", "carol"} {
		mustRegister(t, s, "c", id)
	}
	step := func(s *mess.Service, who, ref, status string) error {
		_, err := s.Update(ctx, "c", who, ref, mess.Update{Status: status})
		return err
	}
	res, err := s.CreateRequest(ctx, "c", "req", mess.Request{Intent: "delete the files", ConfirmBefore: true}, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, st := range []struct{ who, status string }{{"bob", "claimed"}, {"bob", "needs_confirmation"}, {"req", "in_progress"}} {
		if err := step(s, st.who, res.Ref, st.status); err != nil {
			t.Fatalf("%s sets %s: %v", st.who, st.status, err)
		}
	}
	s.Close(ctx)
	s = mustOpen(t, dir, mess.Config{OpenRegistration: true})
	if err := step(s, "bob", res.Ref, "pending"); err != nil {
		t.Fatal(err)
	}
	if err := step(s, "carol", res.Ref, "completed"); !errors.Is(err, mess.ErrConflict) {
		t.Fatalf("carol completes bob's confirmed request: %v, want ErrConflict", err)
	}
	s.Close(ctx)
	s = mustOpen(t, dir, mess.Config{OpenRegistration: true})
	if err := step(s, "bob", res.Ref, "completed"); !errors.Is(err, mess.ErrConflict) {
		t.Fatalf("bob completes after releasing his claim: %v, want ErrConflict", err)
	}
}

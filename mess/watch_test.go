package mess_test

import (
	"testing"

	"github.com/meatspace-exchange/mess/mess"
)

func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// Ensure a watch ends when its key is revoked or rotated away, and only
// then; and that stopped watches are forgotten.
func TestWatchKey(t *testing.T) {
	s, err := mess.New(ctx, mess.Config{OpenRegistration: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(ctx)
	k1 := mustRegister(t, s, "w", "carol")
	other := mustRegister(t, s, "w", "dave")

	t.Run("not admitted now", func(t *testing.T) {
		for _, tc := range []struct{ exchange, key string }{
			{"w", ""}, {"w", "mess_w_00000000000000000000000000000000"}, {"elsewhere", k1},
		} {
			ch, stop := s.WatchKey(tc.exchange, tc.key)
			if !closed(ch) {
				t.Errorf("WatchKey(%q, %q) is open", tc.exchange, tc.key)
			}
			stop()
		}
	})

	t.Run("many watches, none leaked", func(t *testing.T) {
		stops := make([]func(), 0, 10000)
		for range 10000 {
			ch, stop := s.WatchKey("w", k1)
			if closed(ch) {
				t.Fatal("watch of a valid key is closed")
			}
			stops = append(stops, stop)
		}
		if n := s.WatchCount(); n != 10000 {
			t.Fatalf("%d watches open, want 10000", n)
		}
		for _, stop := range stops {
			stop()
			stop() // idempotent
		}
		if n := s.WatchCount(); n != 0 {
			t.Fatalf("%d watches left after stop", n)
		}
	})

	t.Run("revoke and rotate", func(t *testing.T) {
		nk, err := s.CreateKey(ctx, "w", "carol", "carol", false)
		if err != nil {
			t.Fatal(err)
		}
		w1, stop1 := s.WatchKey("w", k1)
		defer stop1()
		w2, stop2 := s.WatchKey("w", nk.Key)
		defer stop2()
		wo, stopo := s.WatchKey("w", other)
		defer stopo()
		// A profile change keeps every key.
		name := "Carol"
		if err := s.UpdateExecutor(ctx, "w", "carol", "carol", mess.ProfileUpdate{DisplayName: &name}); err != nil {
			t.Fatal(err)
		}
		if closed(w1) || closed(w2) {
			t.Fatal("a profile change ended a watch")
		}
		if err := s.RevokeKey(ctx, "w", "carol", "carol", nk.ID); err != nil {
			t.Fatal(err)
		}
		if !closed(w2) || closed(w1) {
			t.Fatalf("after revoking the second key: first closed %v, second closed %v", closed(w1), closed(w2))
		}
		if _, err := s.CreateKey(ctx, "w", "carol", "carol", true); err != nil {
			t.Fatal(err)
		}
		if !closed(w1) {
			t.Fatal("rotation left the old key's watch open")
		}
		if closed(wo) {
			t.Fatal("another executor's watch ended")
		}
		if n := s.WatchCount(); n != 1 {
			t.Fatalf("%d watches open, want dave's only", n)
		}
	})
}

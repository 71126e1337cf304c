package mess_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"testing"

	"github.com/meatspace-exchange/mess/mess"
)

func TestAdmin_ownerKeySurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	s := mustOpen(t, dir, mess.Config{})
	old := mustRegister(t, s, "ax", "alice")
	execs, err := s.AdminExecutors(ctx, "ax")
	if err != nil || len(execs) != 1 || len(execs[0].APIKeys) != 1 {
		t.Fatalf("AdminExecutors = %+v, %v", execs, err)
	}
	if err := s.AdminRevokeKey(ctx, "ax", "alice", execs[0].APIKeys[0].ID); err != nil {
		t.Fatalf("revoke the last key: %v", err)
	}
	if _, err := s.Authenticate(ctx, "ax", old); !errors.Is(err, mess.ErrUnauthorized) {
		t.Fatalf("revoked key: %v", err)
	}
	nk, err := s.AdminOwnerKey(ctx, "ax")
	if err != nil || nk.ExecutorID != "alice" {
		t.Fatalf("AdminOwnerKey = %+v, %v", nk, err)
	}
	s.Close(ctx)

	s = mustOpen(t, dir, mess.Config{})
	if who, err := s.Authenticate(ctx, "ax", nk.Key); err != nil || who != "alice" {
		t.Fatalf("new owner key after restart = %q, %v", who, err)
	}
	if _, err := s.Authenticate(ctx, "ax", old); !errors.Is(err, mess.ErrUnauthorized) {
		t.Fatalf("revoked key after restart: %v", err)
	}
	infos, err := s.AdminExchanges(ctx)
	if err != nil || len(infos) != 1 || infos[0].ID != "ax" || infos[0].Owner != "alice" || infos[0].Executors != 1 {
		t.Fatalf("AdminExchanges = %+v, %v", infos, err)
	}
	inv, err := s.AdminInvite(ctx, "ax", mess.InviteOptions{MaxUses: 2})
	if err != nil || inv.MaxUses != 2 {
		t.Fatalf("AdminInvite = %+v, %v", inv, err)
	}
	if _, err := s.Register(ctx, "ax", mess.Registration{ExecutorID: "bob", InviteToken: inv.Token}); err != nil {
		t.Fatalf("register with the operator's invite: %v", err)
	}
}

func TestAdmin_badInput(t *testing.T) {
	s := mustOpen(t, t.TempDir(), mess.Config{})
	mustRegister(t, s, "bx", "alice")
	tests := []struct {
		name string
		run  func() error
		want error
	}{
		{"owner key, bad id", func() error { _, err := s.AdminOwnerKey(ctx, "../x"); return err }, mess.ErrInvalid},
		{"owner key, unknown exchange", func() error { _, err := s.AdminOwnerKey(ctx, "nope"); return err }, mess.ErrNotFound},
		{"invite, too many uses", func() error {
			_, err := s.AdminInvite(ctx, "bx", mess.InviteOptions{MaxUses: 10001})
			return err
		}, mess.ErrInvalid},
		{"revoke, bad executor", func() error { return s.AdminRevokeKey(ctx, "bx", "a/b", "k_1") }, mess.ErrInvalid},
		{"revoke, no key id", func() error { return s.AdminRevokeKey(ctx, "bx", "alice", "") }, mess.ErrInvalid},
		{"revoke, unknown executor", func() error { return s.AdminRevokeKey(ctx, "bx", "bob", "k_1") }, mess.ErrNotFound},
		{"revoke, unknown key", func() error { return s.AdminRevokeKey(ctx, "bx", "alice", "k_1") }, mess.ErrNotFound},
		{"executors, unknown exchange", func() error { _, err := s.AdminExecutors(ctx, "nope"); return err }, mess.ErrNotFound},
		{"export, unknown exchange", func() error { return s.ExportEvents(ctx, "nope", &bytes.Buffer{}) }, mess.ErrNotFound},
	}
	for _, tt := range tests {
		if err := tt.run(); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	execs, err := s.AdminExecutors(ctx, "bx")
	if err != nil || len(execs) != 1 || len(execs[0].APIKeys) != 1 {
		t.Errorf("bad input changed the executors: %+v, %v", execs, err)
	}
}

func TestAdmin_exportEvents(t *testing.T) {
	s := mustOpen(t, t.TempDir(), mess.Config{})
	key := mustRegister(t, s, "ex", "alice")
	alice, err := s.Authenticate(ctx, "ex", key)
	if err != nil {
		t.Fatal(err)
	}
	mustRegister(t, s, "other", "bob")
	var refs []string
	for i := range 3 {
		r, err := s.CreateRequest(ctx, "ex", alice, mess.Request{Intent: fmt.Sprint("task ", i)}, "")
		if err != nil {
			t.Fatal(err)
		}
		refs = append(refs, r.Ref)
	}
	var buf bytes.Buffer
	if err := s.ExportEvents(ctx, "ex", &buf); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	sc := bufio.NewScanner(&buf)
	for sc.Scan() {
		var ev mess.Event
		if err := ev.UnmarshalJSON(sc.Bytes()); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if ev.ExchangeID != "ex" {
			t.Errorf("event of %s exported", ev.ExchangeID)
		}
		if ev.EventType == mess.EventThreadCreated {
			seen[*ev.ThreadRef] = true
		}
	}
	for _, r := range refs {
		if !seen[r] {
			t.Errorf("thread_created of %s not exported", r)
		}
	}
}

package storage

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
)

// BatchDeleter is an optional capability of a Store: deleting many keys in
// few requests (S3's multi-object delete). DeleteMany uses it when present.
type BatchDeleter interface {
	// DeleteMany removes keys; missing keys are not an error.
	DeleteMany(ctx context.Context, keys []string) error
}

// DeleteMany removes keys from s, in batches where s is a BatchDeleter and
// one at a time otherwise.
func DeleteMany(ctx context.Context, s Store, keys []string) error {
	if b, ok := s.(BatchDeleter); ok {
		return b.DeleteMany(ctx, keys)
	}
	for _, k := range keys {
		if err := s.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// ErrNotConditional is returned by VerifyConditionalWrites when a store
// accepts a write it should have refused.
var ErrNotConditional = errors.New("storage: the store does not honour conditional writes")

// VerifyConditionalWrites checks, with a probe object under "probe/", that
// s refuses a second Create of a key, an Update with a stale version and
// an Update of a missing key.
// Every guarantee of the services (one claim wins, tokens never repeat, a
// replaced writer is fenced) rests on those two refusals, and some stores
// that call themselves S3-compatible silently ignore the headers; run it
// at start and refuse to serve on such a store.
func VerifyConditionalWrites(ctx context.Context, s Store) error {
	var b [8]byte
	_, _ = rand.Read(b[:])
	key := "probe/conditional-" + hex.EncodeToString(b[:])
	defer s.Delete(context.WithoutCancel(ctx), key)
	v1, err := s.Create(ctx, key, []byte("1"))
	if err != nil {
		return fmt.Errorf("storage: probe create: %w", err)
	}
	if _, err := s.Create(ctx, key, []byte("2")); !errors.Is(err, ErrExists) {
		return fmt.Errorf("%w: a second create-only write of one key was not refused (%v)", ErrNotConditional, err)
	}
	v2, err := s.Update(ctx, key, []byte("3"), v1)
	if err != nil {
		return fmt.Errorf("storage: probe update: %w", err)
	}
	if v2 == v1 {
		return fmt.Errorf("%w: an update kept the object's version", ErrNotConditional)
	}
	if _, err := s.Update(ctx, key, []byte("4"), v1); !errors.Is(err, ErrVersionMismatch) {
		return fmt.Errorf("%w: an update with a stale version was not refused (%v)", ErrNotConditional, err)
	}
	missing := key + "-missing"
	if _, err := s.Update(ctx, missing, []byte("5"), v2); !errors.Is(err, ErrNotFound) {
		s.Delete(context.WithoutCancel(ctx), missing)
		return fmt.Errorf("%w: an update of a missing key was not refused (%v)", ErrNotConditional, err)
	}
	obj, err := s.Get(ctx, key)
	if err != nil {
		return fmt.Errorf("storage: probe read: %w", err)
	}
	if string(obj.Data) != "3" {
		return fmt.Errorf("%w: the probe reads %q, want %q", ErrNotConditional, obj.Data, "3")
	}
	return nil
}

package storage_test

import (
	"context"
	"errors"
	"testing"

	"github.com/meatspace-exchange/mess/storage"
)

// unconditional turns conditional writes into plain ones, as a store that
// ignores If-None-Match and If-Match behaves.
type unconditional struct{ storage.Store }

func (u unconditional) Create(ctx context.Context, key string, data []byte) (string, error) {
	return u.Put(ctx, key, data)
}

func (u unconditional) Update(ctx context.Context, key string, data []byte, _ string) (string, error) {
	return u.Put(ctx, key, data)
}

// createOnly honours Create but ignores the version of an Update.
type createOnly struct{ storage.Store }

func (c createOnly) Update(ctx context.Context, key string, data []byte, _ string) (string, error) {
	return c.Put(ctx, key, data)
}

// upsert creates a missing key on Update, as one MinIO release did with
// If-Match.
type upsert struct{ storage.Store }

func (u upsert) Update(ctx context.Context, key string, data []byte, version string) (string, error) {
	v, err := u.Store.Update(ctx, key, data, version)
	if errors.Is(err, storage.ErrNotFound) {
		return u.Put(ctx, key, data)
	}
	return v, err
}

func TestVerifyConditionalWrites(t *testing.T) {
	ctx := context.Background()
	for _, tt := range []struct {
		name  string
		store storage.Store
		want  error
	}{
		{"memory", storage.NewMemory(), nil},
		{"fs", newFS(t), nil},
		{"ignores both", unconditional{storage.NewMemory()}, storage.ErrNotConditional},
		{"ignores versions", createOnly{storage.NewMemory()}, storage.ErrNotConditional},
		{"updates create", upsert{storage.NewMemory()}, storage.ErrNotConditional},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := storage.VerifyConditionalWrites(ctx, tt.store)
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
			// The probe cleans up after itself.
			page, err := tt.store.List(ctx, "", storage.ListOptions{})
			if err != nil || len(page.Keys) != 0 {
				t.Fatalf("probe left %q, %v", page.Keys, err)
			}
		})
	}
}

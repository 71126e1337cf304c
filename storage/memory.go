package storage

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// Memory is a Store held in process memory. It is what a service uses when
// its Config names no store: state lasts as long as the process, which suits
// tests, examples and throwaway setups. It is not durable.
type Memory struct {
	mu      sync.RWMutex
	objects map[string]Object
	seq     uint64 // versions are a counter: unique for the store's life
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory {
	return &Memory{objects: make(map[string]Object)}
}

func (m *Memory) nextVersion() string {
	m.seq++
	return strconv.FormatUint(m.seq, 10)
}

// Get implements Store.
func (m *Memory) Get(ctx context.Context, key string) (Object, error) {
	if err := check(ctx, key); err != nil {
		return Object{}, err
	}
	m.mu.RLock()
	obj, ok := m.objects[key]
	m.mu.RUnlock()
	if !ok {
		return Object{}, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	return Object{Data: slices.Clone(obj.Data), Version: obj.Version}, nil
}

// Put implements Store.
func (m *Memory) Put(ctx context.Context, key string, data []byte) (string, error) {
	return m.write(ctx, key, data, func(Object, bool) error { return nil })
}

// Create implements Store.
func (m *Memory) Create(ctx context.Context, key string, data []byte) (string, error) {
	return m.write(ctx, key, data, func(_ Object, exists bool) error {
		if exists {
			return fmt.Errorf("%w: %s", ErrExists, key)
		}
		return nil
	})
}

// Update implements Store.
func (m *Memory) Update(ctx context.Context, key string, data []byte, version string) (string, error) {
	return m.write(ctx, key, data, func(cur Object, exists bool) error {
		switch {
		case !exists:
			return fmt.Errorf("%w: %s", ErrNotFound, key)
		case cur.Version != version:
			return fmt.Errorf("%w: %s", ErrVersionMismatch, key)
		}
		return nil
	})
}

func (m *Memory) write(ctx context.Context, key string, data []byte, cond func(cur Object, exists bool) error) (string, error) {
	if err := check(ctx, key); err != nil {
		return "", err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	cur, exists := m.objects[key]
	if err := cond(cur, exists); err != nil {
		return "", err
	}
	v := m.nextVersion()
	m.objects[key] = Object{Data: slices.Clone(data), Version: v}
	return v, nil
}

// Delete implements Store.
func (m *Memory) Delete(ctx context.Context, key string) error {
	if err := check(ctx, key); err != nil {
		return err
	}
	m.mu.Lock()
	delete(m.objects, key)
	m.mu.Unlock()
	return nil
}

// List implements Store. It sorts the matching keys on every call, which
// is fine for the sizes an in-memory store is meant for.
func (m *Memory) List(ctx context.Context, prefix string, opts ListOptions) (ListPage, error) {
	if err := ctx.Err(); err != nil {
		return ListPage{}, err
	}
	if err := ValidPrefix(prefix); err != nil {
		return ListPage{}, err
	}
	limit := opts.Limit
	if limit <= 0 {
		limit = DefaultListLimit
	}
	m.mu.RLock()
	var keys []string
	for k := range m.objects {
		if strings.HasPrefix(k, prefix) && k > opts.After {
			keys = append(keys, k)
		}
	}
	m.mu.RUnlock()
	slices.Sort(keys)
	var page ListPage
	if len(keys) > limit {
		keys = keys[:limit]
		page.Next = keys[limit-1]
	}
	page.Keys = keys
	return page, nil
}

func check(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return ValidKey(key)
}

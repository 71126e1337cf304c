// Package faultstore wraps a storage.Store so tests can stop one caller's
// operations at chosen points (before a write, after it but before its
// caller hears of it) and inject errors there, to replay races between
// processes deterministically.
package faultstore

import (
	"context"
	"sync"

	"github.com/meatspace-exchange/mess/storage"
)

// Op names a Store method.
type Op string

// The operations a Hook can match.
const (
	Get    Op = "get"
	Put    Op = "put"
	Create Op = "create"
	Update Op = "update"
	Delete Op = "delete"
	List   Op = "list"
)

// A Hook runs at one point of matching calls. Before hooks run before the
// call reaches the store; a non-nil error is returned instead of making
// it. After hooks run once the store answered, with its error; what they
// return replaces it. A hook may block to park its caller.
type Hook struct {
	Match  func(op Op, key string) bool
	Before func(ctx context.Context, op Op, key string) error
	After  func(ctx context.Context, op Op, key string, err error) error
	// Once removes the hook after it ran.
	Once bool
}

// Store is a storage.Store with hooks.
type Store struct {
	storage.Store
	mu    sync.Mutex
	hooks []*Hook
}

// New wraps s.
func New(s storage.Store) *Store { return &Store{Store: s} }

// Add installs h and returns a function that removes it.
func (s *Store) Add(h *Hook) (remove func()) {
	s.mu.Lock()
	s.hooks = append(s.hooks, h)
	s.mu.Unlock()
	return func() { s.drop(h) }
}

func (s *Store) drop(h *Hook) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, x := range s.hooks {
		if x == h {
			s.hooks = append(s.hooks[:i:i], s.hooks[i+1:]...)
			return
		}
	}
}

func (s *Store) matching(op Op, key string) []*Hook {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*Hook
	for _, h := range s.hooks {
		if h.Match == nil || h.Match(op, key) {
			out = append(out, h)
		}
	}
	for _, h := range out {
		if h.Once {
			for i, x := range s.hooks {
				if x == h {
					s.hooks = append(s.hooks[:i:i], s.hooks[i+1:]...)
					break
				}
			}
		}
	}
	return out
}

func (s *Store) do(ctx context.Context, op Op, key string, call func() error) error {
	hooks := s.matching(op, key)
	for _, h := range hooks {
		if h.Before != nil {
			if err := h.Before(ctx, op, key); err != nil {
				return err
			}
		}
	}
	err := call()
	for _, h := range hooks {
		if h.After != nil {
			err = h.After(ctx, op, key, err)
		}
	}
	return err
}

// Get implements storage.Store.
func (s *Store) Get(ctx context.Context, key string) (obj storage.Object, err error) {
	err = s.do(ctx, Get, key, func() (e error) { obj, e = s.Store.Get(ctx, key); return e })
	return obj, err
}

// Put implements storage.Store.
func (s *Store) Put(ctx context.Context, key string, data []byte) (v string, err error) {
	err = s.do(ctx, Put, key, func() (e error) { v, e = s.Store.Put(ctx, key, data); return e })
	return v, err
}

// Create implements storage.Store.
func (s *Store) Create(ctx context.Context, key string, data []byte) (v string, err error) {
	err = s.do(ctx, Create, key, func() (e error) { v, e = s.Store.Create(ctx, key, data); return e })
	return v, err
}

// Update implements storage.Store.
func (s *Store) Update(ctx context.Context, key string, data []byte, version string) (v string, err error) {
	err = s.do(ctx, Update, key, func() (e error) { v, e = s.Store.Update(ctx, key, data, version); return e })
	return v, err
}

// Delete implements storage.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	return s.do(ctx, Delete, key, func() error { return s.Store.Delete(ctx, key) })
}

// List implements storage.Store; hooks see the prefix as the key.
func (s *Store) List(ctx context.Context, prefix string, opts storage.ListOptions) (p storage.ListPage, err error) {
	err = s.do(ctx, List, prefix, func() (e error) { p, e = s.Store.List(ctx, prefix, opts); return e })
	return p, err
}

// Gate parks callers until Open is called; Reached is closed when the
// first caller arrives.
type Gate struct {
	Reached chan struct{}
	open    chan struct{}
	once    sync.Once
}

// NewGate returns a closed gate.
func NewGate() *Gate { return &Gate{Reached: make(chan struct{}), open: make(chan struct{})} }

// Wait parks until Open or ctx ends.
func (g *Gate) Wait(ctx context.Context) error {
	g.once.Do(func() { close(g.Reached) })
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Open lets every parked and later caller through.
func (g *Gate) Open() { close(g.open) }

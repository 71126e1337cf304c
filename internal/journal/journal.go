// Package journal is a durable append-only log of JSON lines kept in a
// storage.Store with group commit: every record appended while a write is in
// flight goes into the next object, so many concurrent writers share one
// durable write. Objects are named {partition}/{ULID}.jsonl; ULIDs come from
// a monotonic source, so key order within a partition is append order.
//
// Mess events, mail bus inboxes and lease grants all use it.
package journal

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/meatspace-exchange/mess/storage"
)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("journal: closed")

// Config configures a Journal.
type Config struct {
	// Store receives the objects. Required.
	Store storage.Store
	// MaxBatchBytes caps one object's size. Zero means 4 MiB.
	MaxBatchBytes int
	// Now is the clock used for object names. Zero means time.Now.
	Now func() time.Time
}

type pending struct {
	partition string
	data      []byte // one or more complete lines
	done      chan error
}

// Journal appends lines durably. It is safe for concurrent use.
type Journal struct {
	cfg     Config
	mu      sync.Mutex
	queue   []*pending
	wake    chan struct{}
	closed  bool
	stop    chan struct{}
	wg      sync.WaitGroup
	entropy *ulid.MonotonicEntropy
	idMu    sync.Mutex
}

// New starts a journal.
func New(cfg Config) (*Journal, error) {
	if cfg.Store == nil {
		return nil, errors.New("journal: Config.Store is required")
	}
	if cfg.MaxBatchBytes <= 0 {
		cfg.MaxBatchBytes = 4 << 20
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	j := &Journal{
		cfg:     cfg,
		wake:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		entropy: ulid.Monotonic(rand.Reader, 0),
	}
	j.wg.Add(1)
	go j.run()
	return j, nil
}

// NewID returns a new ULID from the journal's monotonic source.
func (j *Journal) NewID(t time.Time) ulid.ULID {
	j.idMu.Lock()
	defer j.idMu.Unlock()
	id, err := ulid.New(ulid.Timestamp(t), j.entropy)
	if err != nil {
		// The monotonic source overflows only after 2^80 ids in one
		// millisecond; fall back to a fresh random id.
		id = ulid.MustNew(ulid.Timestamp(t), rand.Reader)
	}
	return id
}

// Append writes lines (each a complete JSON value without a trailing
// newline) to partition and returns once they are durable. Lines of one call
// land in one object, in order.
func (j *Journal) Append(ctx context.Context, partition string, lines ...[]byte) error {
	p, err := j.enqueue(partition, lines)
	if err != nil {
		return err
	}
	// Once queued the write goes ahead even if ctx ends: the caller is told
	// it was cancelled, but the record may still become durable.
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// AppendAsync queues lines like Append but does not wait: the returned
// channel receives exactly one value (nil once the lines are durable). Lines
// queued by successive calls for one partition land in key order, so a
// caller that queues under its own lock gets a journal in its lock order.
func (j *Journal) AppendAsync(partition string, lines ...[]byte) (<-chan error, error) {
	p, err := j.enqueue(partition, lines)
	if err != nil {
		return nil, err
	}
	return p.done, nil
}

func (j *Journal) enqueue(partition string, lines [][]byte) (*pending, error) {
	if err := storage.ValidKey(partition); err != nil {
		return nil, err
	}
	n := 0
	for _, l := range lines {
		if bytes.IndexByte(l, '\n') >= 0 {
			return nil, errors.New("journal: line contains a newline")
		}
		n += len(l) + 1
	}
	buf := make([]byte, 0, n)
	for _, l := range lines {
		buf = append(buf, l...)
		buf = append(buf, '\n')
	}
	p := &pending{partition: partition, data: buf, done: make(chan error, 1)}
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil, ErrClosed
	}
	j.queue = append(j.queue, p)
	j.mu.Unlock()
	select {
	case j.wake <- struct{}{}:
	default:
	}
	return p, nil
}

// run is the single flusher: it takes everything queued, writes it (one
// object per partition, in parallel), and repeats. Appends that arrive while
// a write is in flight form the next batch, which is the group commit.
func (j *Journal) run() {
	defer j.wg.Done()
	for {
		select {
		case <-j.wake:
		case <-j.stop:
			j.flushQueued() // drain what was queued before Close
			return
		}
		j.flushQueued()
	}
}

func (j *Journal) flushQueued() {
	for {
		// Writers released by the flush that just finished are about to
		// append again; let them, so they join this batch instead of
		// forming a batch of one each.
		runtime.Gosched()
		j.mu.Lock()
		q := j.queue
		j.queue = nil
		j.mu.Unlock()
		if len(q) == 0 {
			return
		}
		var wg sync.WaitGroup
		for _, b := range j.group(q) {
			wg.Go(func() { j.write(b) })
		}
		wg.Wait()
	}
}

type batch struct {
	key   string
	data  []byte
	items []*pending
}

// group splits the queue into objects by partition and size, naming each
// object now so names follow the order in which batches were formed.
func (j *Journal) group(q []*pending) []*batch {
	var out []*batch
	open := map[string]*batch{}
	now := j.cfg.Now()
	for _, p := range q {
		b := open[p.partition]
		if b == nil || len(b.data)+len(p.data) > j.cfg.MaxBatchBytes && len(b.items) > 0 {
			b = &batch{key: p.partition + "/" + j.NewID(now).String() + ".jsonl"}
			open[p.partition] = b
			out = append(out, b)
		}
		b.data = append(b.data, p.data...)
		b.items = append(b.items, p)
	}
	return out
}

func (j *Journal) write(b *batch) {
	_, err := j.cfg.Store.Create(context.Background(), b.key, b.data)
	if err != nil {
		err = fmt.Errorf("journal: write %s: %w", b.key, err)
	}
	for _, p := range b.items {
		p.done <- err
	}
}

// Close stops accepting appends, writes those already queued and waits for
// them. It is idempotent.
func (j *Journal) Close(ctx context.Context) error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return nil
	}
	j.closed = true
	j.mu.Unlock()
	close(j.stop)
	done := make(chan struct{})
	go func() { j.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ReplayConfig controls Replay.
type ReplayConfig struct {
	// Prefix selects the objects to read, e.g. "events/".
	Prefix string
	// After, when set, skips objects whose key sorts at or before it.
	After string
	// Parallel is how many objects are fetched and decoded at once. Zero
	// means 8.
	Parallel int
	// Decode turns one object into a value. It runs concurrently on
	// different objects. Required.
	Decode func(key string, data []byte) (any, error)
	// Apply receives decoded objects one at a time in key order. Required.
	Apply func(key string, v any) error
}

// Replay reads every object under cfg.Prefix in key order, decoding in
// parallel and applying in order.
func Replay(ctx context.Context, store storage.Store, cfg ReplayConfig) error {
	if cfg.Parallel <= 0 {
		cfg.Parallel = 8
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		key string
		v   any
		err error
	}
	// Each listed key gets a slot; workers fill slots; the applier drains
	// them in order. The channel of slots bounds read-ahead.
	slots := make(chan chan result, cfg.Parallel*4)
	keys := make(chan struct {
		key string
		out chan result
	}, cfg.Parallel)
	var listErr error
	go func() {
		defer close(slots)
		defer close(keys)
		opts := storage.ListOptions{After: cfg.After}
		for {
			page, err := store.List(ctx, cfg.Prefix, opts)
			if err != nil {
				listErr = err
				return
			}
			for _, k := range page.Keys {
				out := make(chan result, 1)
				select {
				case slots <- out:
				case <-ctx.Done():
					return
				}
				select {
				case keys <- struct {
					key string
					out chan result
				}{k, out}:
				case <-ctx.Done():
					return
				}
			}
			if page.Next == "" {
				return
			}
			opts.After = page.Next
		}
	}()
	var wg sync.WaitGroup
	for range cfg.Parallel {
		wg.Go(func() {
			for k := range keys {
				obj, err := store.Get(ctx, k.key)
				if err != nil {
					k.out <- result{key: k.key, err: err}
					continue
				}
				v, err := cfg.Decode(k.key, obj.Data)
				k.out <- result{key: k.key, v: v, err: err}
			}
		})
	}
	defer wg.Wait()
	for out := range slots {
		var r result
		select {
		case r = <-out:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.err != nil {
			return fmt.Errorf("journal: replay %s: %w", r.key, r.err)
		}
		if err := cfg.Apply(r.key, r.v); err != nil {
			return fmt.Errorf("journal: replay %s: %w", r.key, err)
		}
	}
	if listErr != nil {
		return fmt.Errorf("journal: replay: %w", listErr)
	}
	return ctx.Err()
}

// Lines splits an object into its complete lines. A last line without its
// newline is a torn write and is returned separately.
func Lines(data []byte) (lines [][]byte, torn []byte) {
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return lines, data
		}
		if i > 0 {
			lines = append(lines, data[:i])
		}
		data = data[i+1:]
	}
	return lines, nil
}

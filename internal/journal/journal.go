// Package journal is a durable append-only log of JSON lines kept in a
// storage.Store with group commit: every record appended while a write is in
// flight goes into the next write, so many concurrent writers share one
// durable write.
//
// Records of a partition go to objects named {partition}/{ULID}.jsonl; ULIDs
// come from a monotonic source, so key order within a partition is append
// order. By default every batch is a new object, written whole or not at
// all. With Config.SegmentBytes set and a store that can append in place
// (storage.Appender, as the filesystem can), a partition instead grows one
// object per process up to that size, and a batch costs one append and one
// fdatasync; a crash during a write can then leave part of that
// unacknowledged batch, so records must stand on their own.
//
// Mess events, mail bus inboxes, lease grants and the notification outbox
// all use it.
package journal

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/meatspace-exchange/mess/storage"
)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("journal: closed")

// ErrLanded refuses a write to a fenced log because an earlier batch of
// that log, reported as failed since its reply was lost, turned out to have
// landed (see Config.OnLanded). Nothing of the refused write was stored;
// trying again, from a state that includes the landed batch, is safe. It
// wraps storage.ErrUnavailable, so services answer it with 503.
var ErrLanded = fmt.Errorf("journal: an earlier write reported as failed landed after all; try again: %w", storage.ErrUnavailable)

// Config configures a Journal.
type Config struct {
	// Store receives the objects. Required.
	Store storage.Store
	// MaxBatchBytes caps one write. Zero means 4 MiB.
	MaxBatchBytes int
	// SegmentBytes, when positive and the store is a storage.Appender,
	// turns on appending in place: a partition's object grows until it
	// reaches this size. Zero means one object per batch.
	SegmentBytes int
	// Now is the clock used for object names. Zero means time.Now.
	Now func() time.Time
	// Fence, when set, makes every log a sequence of numbered slots that
	// a newer owner can fence (see Open), writes Fence.Epoch on every
	// line, and acknowledges a write only while Fence.Valid. Lines must
	// then be JSON objects. It turns off appending in place. Set it
	// wherever another process can reach the store.
	Fence storage.Fence
	// Dated puts a log's objects in day folders: {log}/{YYYY}/{MM}/{DD}/,
	// the day (UTC) from Now when the batch is written, but never a day
	// before one the log already has (see Observe), so key order stays
	// write order when the clock steps back.
	Dated bool
	// OnLanded, with Fence set, is called with a batch (the object's
	// lines, each carrying its epoch) whose Append was answered with an
	// error because the store's reply was lost, once the journal learns at
	// the log's next write that it landed after all. That write is refused
	// with ErrLanded, so a service that keeps state in memory applies the
	// batch here before it decides anything more from that state. It runs
	// on the journal's writer and must not append to this journal.
	OnLanded func(log string, data []byte)
}

// SegmentBytes is a good Config.SegmentBytes for a journal that appends in
// place: large enough that creating objects costs nothing, small enough that
// replay still decodes many objects in parallel.
const SegmentBytes = 8 << 20

// Open segments unused for idleAfter are closed, and at most maxOpen stay
// open, so a journal with many partitions (one per exchange and day) does
// not hold a file per partition forever.
const (
	idleAfter = time.Minute
	maxOpen   = 256
)

type pending struct {
	partition string
	data      []byte // one or more complete lines; nil for a seal
	lines     int
	seal      bool
	boundary  string     // a seal's result, set before done is sent
	done      chan error // nil when notify is set
	notify    Notifier
}

// finish reports the outcome of p's write.
func (p *pending) finish(err error) {
	if p.notify != nil {
		p.notify.Durable(err)
		return
	}
	p.done <- err
}

// Notifier is told the outcome of a line queued with AppendLine.
type Notifier interface {
	// Durable reports that the line is durable (err nil) or that its
	// write failed. It is called once, on the journal's flusher
	// goroutine, which it must not hold up: every append waits for it.
	Durable(err error)
}

// segment is a partition's object that is still growing.
type segment struct {
	w    storage.AppendWriter
	size int
	used time.Time
}

// Journal appends lines durably. It is safe for concurrent use.
type Journal struct {
	cfg     Config
	app     storage.Appender // nil: one object per batch
	mu      sync.Mutex
	queue   []*pending
	wake    chan struct{}
	closed  bool
	stop    chan struct{}
	flushed chan struct{} // closed when the flusher has exited
	wg      sync.WaitGroup
	entropy *ulid.MonotonicEntropy
	idMu    sync.Mutex
	lastMs  uint64              // timestamp of the last ID, under idMu
	segs    map[string]*segment // owned by the flusher goroutine

	epoch  uint64 // Fence.Epoch
	logsMu sync.Mutex
	logs   map[string]*logState  // fenced logs
	days   map[string]string     // dated unfenced logs: the latest day folder, under logsMu
	lost   atomic.Pointer[error] // the fence that stopped this journal
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
		flushed: make(chan struct{}),
		entropy: ulid.Monotonic(rand.Reader, 0),
		segs:    map[string]*segment{},
		logs:    map[string]*logState{},
		days:    map[string]string{},
	}
	if cfg.Fence != nil {
		j.epoch = cfg.Fence.Epoch()
	} else if a, ok := cfg.Store.(storage.Appender); ok && cfg.SegmentBytes > 0 {
		j.app = a
	}
	j.wg.Add(1)
	go j.run()
	return j, nil
}

// NewID returns a new ULID from the journal's monotonic source. IDs never
// go backwards, even if the clock does: object names must sort in append
// order.
func (j *Journal) NewID(t time.Time) ulid.ULID {
	j.idMu.Lock()
	defer j.idMu.Unlock()
	ms := max(ulid.Timestamp(t), j.lastMs)
	id, err := ulid.New(ms, j.entropy)
	if err != nil {
		// The monotonic source overflows only after 2^80 ids in one
		// millisecond; move on to the next one.
		ms++
		id = ulid.MustNew(ms, j.entropy)
	}
	j.lastMs = ms
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

// Seal ends the partition's growing object and returns a boundary key:
// every object of the partition that sorts before it is complete (no line
// will be added to it) and holds every line queued before the call; every
// object written later sorts after it. A compaction seals, then lists, and
// may delete the listed objects before the boundary once they are folded in.
// After Close, Seal waits for Close's writes: nothing is written again.
func (j *Journal) Seal(ctx context.Context, partition string) (string, error) {
	return j.QueueSeal(partition)(ctx)
}

// QueueSeal queues a seal as Seal does and returns at once: the lines
// queued before the call are in objects before its boundary, and those
// queued after it in objects after. wait returns the boundary once the
// seal is done. A caller that queues its lines and the seal under its own
// lock thereby splits the journal exactly where its state was copied: a
// compaction then knows every object before the boundary is folded in
// without reading any.
func (j *Journal) QueueSeal(partition string) (wait func(context.Context) (string, error)) {
	if err := storage.ValidKey(partition); err != nil {
		return func(context.Context) (string, error) { return "", err }
	}
	p := &pending{partition: partition, seal: true, done: make(chan error, 1)}
	if err := j.push(p); err != nil {
		return func(ctx context.Context) (string, error) {
			select {
			case <-j.flushed:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			return j.boundary(partition)
		}
	}
	return func(ctx context.Context) (string, error) {
		select {
		case err := <-p.done:
			return p.boundary, err
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

func (j *Journal) boundary(partition string) (string, error) {
	if j.cfg.Fence != nil {
		return j.boundarySlot(partition)
	}
	now := j.cfg.Now()
	if j.cfg.Dated {
		return partition + "/" + j.dayOf(partition, now) + "/" + j.NewID(now).String(), nil
	}
	return partition + "/" + j.NewID(now).String(), nil
}

// dayOf is the day folder of an unfenced dated log's object (or boundary)
// named now: today, or the log's latest day if that is later. It becomes
// the log's latest day.
func (j *Journal) dayOf(log string, now time.Time) string {
	day := now.UTC().Format(dayLayout)
	j.logsMu.Lock()
	defer j.logsMu.Unlock()
	day = max(day, j.days[log])
	j.days[log] = day
	return day
}

// Observe tells the journal that key belongs to log, as a replay or a
// snapshot's boundary shows: in a dated log, objects written from now on
// go to key's day folder or a later one, so they sort after key. Keys
// that are not in a day folder of log are ignored.
func (j *Journal) Observe(log, key string) {
	if !j.cfg.Dated {
		return
	}
	rest, ok := strings.CutPrefix(key, log+"/")
	if !ok || len(rest) < len(dayLayout)+1 || rest[len(dayLayout)] != '/' {
		return
	}
	if _, err := time.Parse(dayLayout, rest[:len(dayLayout)]); err != nil {
		return
	}
	j.logsMu.Lock()
	defer j.logsMu.Unlock()
	j.days[log] = max(j.days[log], rest[:len(dayLayout)])
}

// AppendLine queues line, one complete JSON value followed by its newline,
// and has n told once it is durable: AppendAsync without a channel per
// call, and without a copy of line, which the journal takes over (the
// caller must not change it afterwards). Lines queued by successive calls
// for one partition land in key order, and their notifiers are told in
// that order.
func (j *Journal) AppendLine(partition string, line []byte, n Notifier) error {
	if err := storage.ValidKey(partition); err != nil {
		return err
	}
	body, ok := bytes.CutSuffix(line, []byte{'\n'})
	if !ok {
		return errors.New("journal: line does not end in a newline")
	}
	if bytes.IndexByte(body, '\n') >= 0 || bytes.IndexByte(body, 0) >= 0 {
		return errors.New("journal: line contains a newline or NUL")
	}
	if j.cfg.Fence != nil {
		var err error
		if line, err = withEpoch(j.epoch, [][]byte{body}); err != nil {
			return err
		}
	} else if IsControl(body) {
		return errors.New("journal: a line may not start with the _journal member")
	}
	return j.push(&pending{partition: partition, data: line, lines: 1, notify: n})
}

func (j *Journal) enqueue(partition string, lines [][]byte) (*pending, error) {
	if err := storage.ValidKey(partition); err != nil {
		return nil, err
	}
	n := 0
	for _, l := range lines {
		if bytes.IndexByte(l, '\n') >= 0 || bytes.IndexByte(l, 0) >= 0 {
			return nil, errors.New("journal: line contains a newline or NUL")
		}
		n += len(l) + 1
	}
	var buf []byte
	if j.cfg.Fence != nil {
		var err error
		if buf, err = withEpoch(j.epoch, lines); err != nil {
			return nil, err
		}
	} else {
		buf = make([]byte, 0, n)
		for _, l := range lines {
			if IsControl(l) {
				return nil, errors.New("journal: a line may not start with the _journal member")
			}
			buf = append(buf, l...)
			buf = append(buf, '\n')
		}
	}
	p := &pending{partition: partition, data: buf, lines: len(lines), done: make(chan error, 1)}
	return p, j.push(p)
}

func (j *Journal) push(p *pending) error {
	j.mu.Lock()
	if j.closed {
		j.mu.Unlock()
		return ErrClosed
	}
	j.queue = append(j.queue, p)
	j.mu.Unlock()
	select {
	case j.wake <- struct{}{}:
	default:
	}
	return nil
}

// run is the single flusher: it takes everything queued, writes it (one
// write per partition, partitions in parallel), and repeats. Appends that
// arrive while a write is in flight form the next batch, which is the group
// commit.
func (j *Journal) run() {
	defer j.wg.Done()
	defer close(j.flushed)
	tick := time.NewTicker(idleAfter / 4)
	defer tick.Stop()
	for {
		select {
		case <-j.wake:
			j.flushQueued()
		case <-tick.C:
			j.closeIdle(time.Now())
		case <-j.stop:
			j.flushQueued() // drain what was queued before Close
			for p, sg := range j.segs {
				sg.w.Close()
				delete(j.segs, p)
			}
			return
		}
	}
}

func (j *Journal) flushQueued() {
	last := 0 // size of the previous batch
	for {
		j.gather(last)
		j.mu.Lock()
		q := j.queue
		j.queue = nil
		j.mu.Unlock()
		if len(q) == 0 {
			return
		}
		last = len(q)
		var parts []*part
		byName := map[string]*part{}
		for _, p := range q {
			pt := byName[p.partition]
			if pt == nil {
				pt = &part{name: p.partition, seg: j.segs[p.partition]}
				byName[p.partition] = pt
				parts = append(parts, pt)
			}
			pt.items = append(pt.items, p)
		}
		var wg sync.WaitGroup
		for _, pt := range parts {
			wg.Go(func() { j.flushPart(pt) })
		}
		wg.Wait()
		for _, pt := range parts {
			if pt.seg != nil {
				j.segs[pt.name] = pt.seg
			} else {
				delete(j.segs, pt.name)
			}
		}
		if len(j.segs) > maxOpen {
			j.closeIdle(time.Now())
		}
	}
}

// gather gives writers released by the flush that just finished the chance
// to append again, so they join one batch instead of splitting into two
// that each pay for a sync: it yields while the queue is still growing and
// smaller than the previous batch. It never sleeps, so a lone writer is not
// delayed. After a batch of one there is no group to wait for, and a yield
// would only put the flusher behind every runnable goroutine (a busy
// server's thousand socket writers).
func (j *Journal) gather(last int) {
	if last <= 1 {
		return
	}
	prev := -1
	for range 64 {
		runtime.Gosched()
		j.mu.Lock()
		n := len(j.queue)
		j.mu.Unlock()
		if n >= last || n == prev {
			return
		}
		prev = n
	}
}

// part is one partition's share of a flush. Only the goroutine flushing it
// touches it.
type part struct {
	name  string
	seg   *segment
	items []*pending
}

// flushPart writes the partition's queued lines in order, in writes of at
// most MaxBatchBytes, and carries out seals where they were queued.
func (j *Journal) flushPart(pt *part) {
	var items []*pending
	size := 0
	flush := func() {
		if len(items) > 0 {
			data, pooled := j.batch(items, size)
			start := time.Now()
			err := j.write(pt, data)
			if pooled != nil {
				*pooled = data[:0]
				batchBufs.Put(pooled)
			}
			lines := 0
			for _, p := range items {
				lines += p.lines
			}
			// Counted before anyone is told, so a caller sees its write.
			record(pt.name, len(items), lines, time.Since(start), err)
			for _, p := range items {
				p.finish(err)
			}
		}
		items, size = nil, 0
	}
	for _, p := range pt.items {
		if p.seal {
			flush()
			if pt.seg != nil {
				pt.seg.w.Close()
				pt.seg = nil
			}
			var err error
			p.boundary, err = j.boundary(pt.name)
			p.finish(err)
			continue
		}
		if len(items) > 0 && size+len(p.data) > j.cfg.MaxBatchBytes {
			flush()
		}
		items = append(items, p)
		size += len(p.data)
	}
	flush()
}

// batchBufs holds the buffers batches are gathered in for an Appender,
// which does not keep what it is given.
var batchBufs = sync.Pool{New: func() any { return new([]byte) }}

// batch returns the data of items, size bytes, in one slice: the common
// batch of one as it is, several gathered in one copy. A buffer from
// batchBufs comes back as pooled, to be returned once written.
func (j *Journal) batch(items []*pending, size int) (data []byte, pooled *[]byte) {
	if len(items) == 1 {
		return items[0].data, nil
	}
	if j.app != nil {
		pooled = batchBufs.Get().(*[]byte)
		data = (*pooled)[:0]
		if cap(data) < size {
			data = make([]byte, 0, size)
		}
	} else {
		// A store's Create may keep what it is given.
		data = make([]byte, 0, size)
	}
	for _, p := range items {
		data = append(data, p.data...)
	}
	return data, pooled
}

func (j *Journal) write(pt *part, data []byte) error {
	if j.cfg.Fence != nil {
		return j.writeSlot(pt.name, data)
	}
	newKey := func() string {
		now := j.cfg.Now()
		dir := pt.name
		if j.cfg.Dated {
			dir += "/" + j.dayOf(pt.name, now)
		}
		return dir + "/" + j.NewID(now).String() + ".jsonl"
	}
	if j.app == nil {
		key := newKey()
		if _, err := j.cfg.Store.Create(context.Background(), key, data); err != nil {
			return fmt.Errorf("journal: write %s: %w", key, err)
		}
		return nil
	}
	if pt.seg != nil && pt.seg.size > 0 && pt.seg.size+len(data) > j.cfg.SegmentBytes {
		pt.seg.w.Close()
		pt.seg = nil
	}
	if pt.seg == nil {
		key := newKey()
		w, err := j.app.CreateAppend(context.Background(), key)
		if err != nil {
			return fmt.Errorf("journal: write %s: %w", key, err)
		}
		pt.seg = &segment{w: w}
	}
	if err := pt.seg.w.Append(data); err != nil {
		// The object may end in part of this batch: never append after it.
		pt.seg.w.Close()
		pt.seg = nil
		return fmt.Errorf("journal: write %s: %w", pt.name, err)
	}
	pt.seg.size += len(data)
	pt.seg.used = time.Now()
	return nil
}

// closeIdle closes segments nobody wrote to lately, and the least recently
// used ones beyond maxOpen. Runs on the flusher goroutine.
func (j *Journal) closeIdle(now time.Time) {
	for p, sg := range j.segs {
		if now.Sub(sg.used) >= idleAfter {
			sg.w.Close()
			delete(j.segs, p)
		}
	}
	for len(j.segs) > maxOpen {
		var oldest string
		var at time.Time
		for p, sg := range j.segs {
			if oldest == "" || sg.used.Before(at) {
				oldest, at = p, sg.used
			}
		}
		j.segs[oldest].w.Close()
		delete(j.segs, oldest)
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
		key     string
		v       any
		err     error
		control bool // a fence or tick: nothing to apply
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
		for k, err := range storage.KeysAfter(ctx, store, cfg.Prefix, cfg.After) {
			if err != nil {
				listErr = err
				return
			}
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
				if IsControl(obj.Data) {
					k.out <- result{key: k.key, control: true}
					continue
				}
				v, err := cfg.Decode(k.key, obj.Data)
				k.out <- result{key: k.key, v: v, err: err}
			}
		})
	}
	defer func() { cancel(); wg.Wait() }() // workers blocked on a full read-ahead end too
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
		if r.control {
			continue
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
// newline is a torn write and is returned separately. The object ends at
// its first NUL byte: beyond it is space an appendable store reserved, or
// writes that were never acknowledged (see storage.AppendWriter).
func Lines(data []byte) (lines [][]byte, torn []byte) {
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
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

package mess

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/meatspace-exchange/mess/storage"
)

// fakeClock is a clock the tests move, forwards and backwards.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// projection is an exchange's state as load builds it, in a form
// reflect.DeepEqual compares (unexported fields included).
type projection struct {
	Threads       map[string]threadState
	Order         []string // refs, least recently updated first
	Useq, Version uint64
	Ring          []Event
	RingBytes     int
	Idem          map[string]idemState
	AttachBytes   map[string]int64
	Written       bool
}

type threadState struct {
	Thread      Thread
	Ready       bool
	Useq        uint64
	ConfirmedBy string
	Files       map[string]attachmentRef
}

type idemState struct {
	Ref, Hash string
	At        time.Time
}

func projections(s *Service) map[string]projection {
	out := map[string]projection{}
	for _, ex := range s.allExchanges() {
		ex.mu.RLock()
		p := projection{
			Threads: map[string]threadState{}, Useq: ex.useq, Version: ex.version,
			Ring: slices.Clone(ex.ring), RingBytes: ex.ringBytes, Idem: map[string]idemState{},
			AttachBytes: maps(ex.attachBytes), Written: ex.log.written,
		}
		for ref, t := range ex.threads {
			p.Threads[ref] = threadState{t.Thread, t.ready, t.useq, t.confirmedBy, t.files}
		}
		for _, e := range ex.order {
			if e.t.useq == e.useq {
				p.Order = append(p.Order, e.t.Ref)
			}
		}
		for k, e := range ex.idem {
			p.Idem[k] = idemState{e.ref, e.hash, e.at}
		}
		ex.mu.RUnlock()
		out[ex.id] = p
	}
	return out
}

func maps(m map[string]int64) map[string]int64 {
	out := make(map[string]int64, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// diffProjections reports the first difference between two states, or "".
func diffProjections(a, b map[string]projection) string {
	if reflect.DeepEqual(a, b) {
		return ""
	}
	for id := range a {
		if _, ok := b[id]; !ok {
			return fmt.Sprintf("exchange %s only in the first", id)
		}
	}
	for id, pb := range b {
		pa, ok := a[id]
		if !ok {
			return fmt.Sprintf("exchange %s only in the second", id)
		}
		for ref, tb := range pb.Threads {
			if ta := pa.Threads[ref]; !reflect.DeepEqual(ta, tb) {
				return fmt.Sprintf("exchange %s thread %s:\n%+v\n%+v", id, ref, ta, tb)
			}
		}
		va, vb := reflect.ValueOf(pa), reflect.ValueOf(pb)
		for i := range va.NumField() {
			if !reflect.DeepEqual(va.Field(i).Interface(), vb.Field(i).Interface()) {
				return fmt.Sprintf("exchange %s %s:\n%+v\n%+v", id, va.Type().Field(i).Name, va.Field(i).Interface(), vb.Field(i).Interface())
			}
		}
	}
	return "differ"
}

// fullReplay is the state New builds from the whole log, snapshots unread.
func fullReplay(t *testing.T, cfg Config) map[string]projection {
	t.Helper()
	cfg.SnapshotEvery = -1
	s, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	return projections(s)
}

// history drives a service through random changes of every kind the log
// records, restarting it now and then.
type history struct {
	t       *testing.T
	rng     *rand.Rand
	clock   *fakeClock
	cfg     Config
	s       *Service
	members map[string][]string // executors by exchange
	mu      sync.Mutex
	ok, bad int  // changes accepted and refused, under mu
	vary    bool // a new SnapshotEvery at each restart
	// What the restarts saw.
	restarts, fromSnapshot, tails, loadSnapshots int
}

var (
	historyExchanges = []string{"home", "work", "club"}
	historyStatuses  = []string{"claimed", "in_progress", "waiting", "held", "needs_input", "needs_confirmation",
		"partial", "completed", "failed", "declined", "cancelled", "superseded", "delegated", "pending", "in-progress"}
	historyContexts = []string{"", `["the red one"]`, `[ "spaced" , {"note": "<b>&</b>"} ]`,
		`["data:text/plain;base64,aGVsbG8="]`, `[{"name":"plan.txt","data":"aGk="}, "and text"]`, `null`}
	historyMess = []string{`[{"text":"on my way"}]`, `[ {"text" : "spaced <&>"} ]`,
		`[{"image":"data:image/png;base64,iVBORw0KGgo="},{"text":"photo"}]`,
		`[{"attachment":{"name":"receipt.pdf","data":"JVBERi0="}}]`, `{"text":"an object"}`}
)

func newHistory(t *testing.T, seed uint64, store storage.Store, snapshotEvery int) *history {
	h := &history{
		t:     t,
		rng:   rand.New(rand.NewPCG(seed, seed^0x5eed)),
		clock: &fakeClock{t: time.Date(2031, 3, 9, 22, 0, 0, 0, time.UTC)},
		cfg: Config{
			Store: store, OpenRegistration: true,
			// Time for these tests is the fake clock's: nothing runs on
			// real timers while they compare states.
			ExpiryInterval: time.Hour, SnapshotInterval: time.Hour, SnapshotEvery: snapshotEvery,
			IdempotencyTTL: 1000 * time.Hour, EventBuffer: 40, EventBufferBytes: 4 << 10,
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		},
		members: map[string][]string{},
	}
	h.cfg.Now = h.clock.Now
	h.open()
	return h
}

func (h *history) open() {
	s, err := New(context.Background(), h.cfg)
	if err != nil {
		h.t.Fatal(err)
	}
	h.s = s
}

func (h *history) pick(list []string) string { return list[h.rng.IntN(len(list))] }

func (h *history) note(err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		h.ok++
	} else {
		h.bad++
	}
}

// refs returns the threads of an exchange.
func (h *history) refs(exchange string) []string {
	res, err := h.s.List(context.Background(), exchange, ListOptions{Limit: 1000})
	if err != nil {
		return nil
	}
	refs := make([]string, len(res.Threads))
	for i, th := range res.Threads {
		refs[i] = th.Ref
	}
	slices.Sort(refs)
	return refs
}

func (h *history) request(rng *rand.Rand) Request {
	r := Request{Intent: fmt.Sprintf("task %d", rng.IntN(1000)), Priority: Priority([]string{"", "urgent", "background", "normal"}[rng.IntN(4)])}
	if c := historyContexts[rng.IntN(len(historyContexts))]; c != "" {
		r.Context = json.RawMessage(c)
	}
	if rng.IntN(4) == 0 {
		r.Requires = json.RawMessage(`["photo"]`)
	}
	if rng.IntN(3) == 0 {
		zone := []*time.Location{time.UTC, time.FixedZone("", 2*3600), time.FixedZone("", -(3*3600 + 1800))}[rng.IntN(3)]
		nb := h.clock.Now().Add(time.Duration(rng.IntN(7200)) * time.Second).Add(time.Duration(rng.IntN(1000)) * time.Microsecond).In(zone)
		r.NeededBy = &nb
	}
	r.ConfirmBefore = rng.IntN(5) == 0
	if rng.IntN(4) == 0 {
		r.Compensation = json.RawMessage(`{"amount": 5}`)
	}
	return r
}

// change makes one random change with rng, as actor; it may be refused.
func (h *history) change(rng *rand.Rand, exchange string) {
	ctx := context.Background()
	members := h.members[exchange]
	if len(members) == 0 {
		return
	}
	actor := members[rng.IntN(len(members))]
	refs := h.refs(exchange)
	switch n := rng.IntN(100); {
	case n < 25 || len(refs) == 0:
		key := ""
		if rng.IntN(5) == 0 {
			key = fmt.Sprintf("key-%d", rng.IntN(8))
		}
		_, err := h.s.CreateRequest(ctx, exchange, actor, h.request(rng), key)
		h.note(err)
	case n < 70:
		u := Update{Status: historyStatuses[rng.IntN(len(historyStatuses))]}
		if rng.IntN(3) == 0 {
			u.Message = "because"
		}
		if rng.IntN(4) == 0 {
			u.Mess = json.RawMessage(historyMess[rng.IntN(len(historyMess))])
		}
		_, err := h.s.Update(ctx, exchange, actor, refs[rng.IntN(len(refs))], u)
		h.note(err)
	case n < 85:
		_, err := h.s.Update(ctx, exchange, actor, refs[rng.IntN(len(refs))], Update{Mess: json.RawMessage(historyMess[rng.IntN(len(historyMess))])})
		h.note(err)
	case n < 90:
		h.note(h.s.SetExternalID(ctx, exchange, refs[rng.IntN(len(refs))], fmt.Sprintf("EXT-%d", rng.IntN(100))))
	case n < 95:
		name := fmt.Sprintf("%s the %d", actor, rng.IntN(10))
		h.note(h.s.UpdateExecutor(ctx, exchange, actor, actor, ProfileUpdate{DisplayName: &name, Capabilities: json.RawMessage(`["photo"]`)}))
	default:
		// What the expiry sweep does.
		ex := h.s.exchange(exchange, false)
		_, err := h.s.transition(ctx, ex, systemActor, refs[rng.IntN(len(refs))], Update{Status: "expired", Message: "needed_by passed"})
		h.note(err)
	}
}

func (h *history) register(exchange string) {
	id := fmt.Sprintf("m%d", len(h.members[exchange]))
	_, err := h.s.Register(context.Background(), exchange, Registration{ExecutorID: id})
	if err != nil {
		h.t.Fatal(err)
	}
	h.members[exchange] = append(h.members[exchange], id)
}

// burst makes changes from several goroutines while snapshots of every
// exchange are written, so seals land between appends.
func (h *history) burst() {
	var wg sync.WaitGroup
	seed := h.rng.Uint64()
	for g := range 4 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			for range 15 {
				h.change(rng, historyExchanges[rng.IntN(len(historyExchanges))])
			}
		})
	}
	for range 3 {
		for _, x := range historyExchanges {
			h.snapshot(x)
		}
	}
	wg.Wait()
}

// snapshot writes a snapshot of the exchange and checks that it is,
// byte for byte, the one a fold of all events before its boundary gives:
// folding a snapshot's tail into the previous one loses nothing.
func (h *history) snapshot(id string) {
	ex := h.s.exchange(id, false)
	if ex == nil {
		return
	}
	ctx := context.Background()
	if err := h.s.snapshot(ctx, ex); err != nil {
		h.t.Fatal(err)
	}
	ex.log.snapMu.Lock()
	key, b := ex.log.snapKey, ex.log.boundary
	ex.log.snapMu.Unlock()
	if key == "" {
		return
	}
	obj, err := h.cfg.Store.Get(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return // two newer ones came meanwhile
	} else if err != nil {
		h.t.Fatal(err)
	}
	p := newExchange(id)
	if _, err := h.s.replayInto(ctx, p, "", b, nil); err != nil {
		h.t.Fatal(err)
	}
	if want := encodeSnapshot(p, b); !bytes.Equal(obj.Data, want) {
		q := newExchange(id)
		_, err := h.s.decodeSnapshot(obj.Data, q)
		wrap := func(e *exchange) map[string]projection {
			return projections(&Service{exchanges: map[string]*exchange{e.id: e}})
		}
		h.t.Fatalf("snapshot %s differs from a fold of the events before its boundary (%v): %s", key, err, diffProjections(wrap(q), wrap(p)))
	}
}

// restart closes the service and checks that what New builds from the
// snapshots and the events after them is exactly what it builds from the
// whole log; then it goes on with the restarted service. A crash is a
// Close that gives up at once: no snapshot is finished or written then.
func (h *history) restart(crash bool) {
	h.t.Helper()
	ctx := context.Background()
	if crash {
		c, cancel := context.WithCancel(ctx)
		cancel()
		ctx = c
	}
	if err := h.s.Close(ctx); err != nil && !crash {
		h.t.Fatal(err)
	}
	if h.vary {
		h.cfg.SnapshotEvery = []int{1 << 30, 2, 10, 60}[h.rng.IntN(4)]
	}
	h.open()
	h.restarts++
	for _, ex := range h.s.allExchanges() {
		l := &ex.log
		l.snapMu.Lock()
		key, loaded := l.snapKey, l.loaded
		l.snapMu.Unlock()
		if key != "" {
			h.fromSnapshot++
			if l.pending.Load() > 0 {
				h.tails++
			}
		}
		// A snapshot encoded at load, its boundary the last object read,
		// is a fold of everything up to it too.
		if loaded != nil {
			h.loadSnapshots++
			p := newExchange(ex.id)
			if _, err := h.s.replayInto(context.Background(), p, "", loaded.boundary+"\x00", nil); err != nil {
				h.t.Fatal(err)
			}
			if !bytes.Equal(loaded.data, encodeSnapshot(p, loaded.boundary)) {
				h.t.Fatalf("the snapshot encoded at load differs from a fold of the events up to %s", loaded.boundary)
			}
		}
	}
	want := fullReplay(h.t, h.cfg)
	if d := diffProjections(projections(h.s), want); d != "" {
		h.t.Fatalf("after restart %d, snapshot and tail differ from a full replay: %s", h.restarts, d)
	}
}

func (h *history) run(steps int) {
	for _, x := range historyExchanges {
		h.register(x)
		h.register(x)
	}
	for range steps {
		x := h.pick(historyExchanges)
		switch n := h.rng.IntN(100); {
		case n < 78:
			h.change(h.rng, x)
		case n < 84:
			h.snapshot(x)
		case n < 87:
			h.clock.add(time.Duration(h.rng.IntN(5000)) * time.Millisecond)
		case n < 89:
			h.clock.add(time.Duration(1+h.rng.IntN(8)) * time.Hour) // over midnight now and then
		case n < 90:
			h.clock.add(-time.Duration(1+h.rng.IntN(30)) * time.Hour) // a clock stepped back
		case n < 92:
			h.register(x)
		case n < 93:
			h.burst()
		default:
			if h.rng.IntN(3) == 0 {
				h.restart(h.rng.IntN(2) == 0)
			} else {
				h.change(h.rng, x)
			}
		}
	}
	h.restart(false)
	h.s.Close(context.Background())
}

// Property: for random histories of every kind of event, with snapshots
// taken at random moments (and concurrently with appends), clock jumps
// over midnight and back, and restarts, the state New builds from the
// newest snapshots and the events after them equals the state it builds
// from the whole log.
func TestSnapshot_EqualsFullReplay(t *testing.T) {
	for _, tt := range []struct {
		seed          uint64
		steps         int
		snapshotEvery int // besides the random snapshots
		fs            bool
		vary          bool // a new SnapshotEvery at each restart
	}{
		{seed: 1, steps: 300, snapshotEvery: 1 << 30},
		{seed: 2, steps: 300, snapshotEvery: 1 << 30, fs: true},
		{seed: 3, steps: 400, snapshotEvery: 5},
		{seed: 4, steps: 400, snapshotEvery: 20, fs: true},
		{seed: 5, steps: 250, snapshotEvery: 1},
		{seed: 6, steps: 500, snapshotEvery: 1 << 30},
		{seed: 7, steps: 300, snapshotEvery: 10},
		{seed: 8, steps: 300, snapshotEvery: 3, fs: true},
		{seed: 9, steps: 500, snapshotEvery: 1 << 30, vary: true},
		{seed: 10, steps: 500, snapshotEvery: 10, vary: true, fs: true},
	} {
		t.Run(fmt.Sprint(tt.seed), func(t *testing.T) {
			t.Parallel()
			var store storage.Store = storage.NewMemory()
			if tt.fs {
				fs, err := storage.NewFS(t.TempDir())
				if err != nil {
					t.Fatal(err)
				}
				defer fs.Close()
				store = fs
			}
			h := newHistory(t, tt.seed, store, tt.snapshotEvery)
			h.vary = tt.vary
			h.run(tt.steps)
			t.Logf("%d changes accepted, %d refused; %d restarts, %d exchanges from a snapshot, %d with a tail, %d snapshots encoded at load",
				h.ok, h.bad, h.restarts, h.fromSnapshot, h.tails, h.loadSnapshots)
			// The test is only worth something if the histories are rich
			// and the restarts really used snapshots, and tails when
			// nothing writes a snapshot at Close.
			if h.ok < tt.steps/3 || h.fromSnapshot == 0 || (h.tails == 0 && tt.snapshotEvery == 1<<30) {
				t.Fatalf("history too thin: %d changes accepted, %d exchanges from a snapshot, %d with a tail", h.ok, h.fromSnapshot, h.tails)
			}
		})
	}
}

// newestSnapshots returns the keys of the exchange's snapshots, oldest
// first.
func snapshotKeys(t *testing.T, store storage.Store, exchange string) []string {
	t.Helper()
	var keys []string
	for k, err := range storage.Keys(context.Background(), store, snapshotDir+"exchange="+exchange+"/") {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

func eventKeys(t *testing.T, store storage.Store, exchange string) []string {
	t.Helper()
	var keys []string
	for k, err := range storage.Keys(context.Background(), store, eventsPrefix(exchange)) {
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
	}
	return keys
}

// reseal rewrites a snapshot's body through edit and puts a valid
// checksum back, as a writer of another format would.
func reseal(data []byte, edit func([]byte) []byte) []byte {
	body := edit(bytes.Clone(data[:len(data)-4]))
	return binary.LittleEndian.AppendUint32(body, crc32.Checksum(body, snapshotCRC))
}

// Crashes and damage: whatever happened to the newest snapshot or to the
// events after it, start-up builds the state a full replay builds, from
// the newest snapshot it can read.
func TestSnapshot_Damage(t *testing.T) {
	for _, tt := range []struct {
		name string
		// damage changes the store after two snapshots of "home" (older,
		// newer) and more events; it returns the snapshot start-up should
		// use ("" for none).
		damage func(t *testing.T, store storage.Store, h *history, older, newer string) string
	}{
		{"intact", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			return newer
		}},
		{"events after it torn", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			// A batch the crash cut short, after everything else: good
			// lines, a malformed one, a line without its end.
			keys := eventKeys(t, store, "home")
			last := keys[len(keys)-1]
			h.clock.add(time.Second)
			key := last[:strings.LastIndexByte(last, '/')+1] + ulid.MustNew(ulid.Timestamp(h.clock.Now()), crand.Reader).String() + ".jsonl"
			obj, err := store.Get(context.Background(), last)
			if err != nil {
				t.Fatal(err)
			}
			lines, _ := splitLines(obj.Data)
			data := append(append([]byte(nil), lines[0]...), "\n{\"event_id\": 12\n"...)
			data = append(data, lines[len(lines)-1][:len(lines[len(lines)-1])/2]...)
			if _, err := store.Create(context.Background(), key, data); err != nil {
				t.Fatal(err)
			}
			return newer
		}},
		{"corrupt", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			obj, _ := store.Get(context.Background(), newer)
			obj.Data[len(obj.Data)/2] ^= 0x40
			store.Put(context.Background(), newer, obj.Data)
			return older
		}},
		{"torn", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			obj, _ := store.Get(context.Background(), newer)
			store.Put(context.Background(), newer, obj.Data[:len(obj.Data)*2/3])
			return older
		}},
		{"empty", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			store.Put(context.Background(), newer, nil)
			return older
		}},
		{"newer format", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			obj, _ := store.Get(context.Background(), newer)
			store.Put(context.Background(), newer, reseal(obj.Data, func(b []byte) []byte {
				b[len(snapshotMagic)] = snapshotFormat + 1
				return b
			}))
			return older
		}},
		{"another exchange's", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			work := snapshotKeys(t, store, "work")
			obj, _ := store.Get(context.Background(), work[len(work)-1])
			store.Put(context.Background(), newer, obj.Data)
			return older
		}},
		{"under another boundary's name", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			obj, _ := store.Get(context.Background(), older)
			store.Put(context.Background(), newer, obj.Data)
			return older
		}},
		{"trailing bytes", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			obj, _ := store.Get(context.Background(), newer)
			store.Put(context.Background(), newer, reseal(obj.Data, func(b []byte) []byte { return append(b, 0) }))
			return older
		}},
		{"both unreadable", func(t *testing.T, store storage.Store, h *history, older, newer string) string {
			store.Put(context.Background(), older, []byte("messsnap"))
			store.Put(context.Background(), newer, []byte("{}"))
			return ""
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			store := storage.NewMemory()
			h := newHistory(t, 42, store, 1<<30)
			for _, x := range historyExchanges {
				h.register(x)
				h.register(x)
			}
			for round := range 3 {
				for range 60 {
					h.change(h.rng, h.pick(historyExchanges))
				}
				if round < 2 {
					for _, x := range historyExchanges {
						h.snapshot(x)
					}
				}
			}
			if err := h.s.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			keys := snapshotKeys(t, store, "home")
			if len(keys) != 2 {
				t.Fatalf("snapshots of home: %q", keys)
			}
			events := len(eventKeys(t, store, "home"))
			want := tt.damage(t, store, h, keys[0], keys[1])
			h.open()
			defer h.s.Close(context.Background())
			if got := h.s.exchange("home", false).log.snapKey; got != want {
				t.Errorf("loaded from snapshot %q, want %q", got, want)
			}
			if d := diffProjections(projections(h.s), fullReplay(t, h.cfg)); d != "" {
				t.Fatalf("state differs from a full replay: %s", d)
			}
			// Start-up never deletes or rewrites events.
			if n := len(eventKeys(t, store, "home")); n < events {
				t.Fatalf("%d event objects, had %d", n, events)
			}
		})
	}
}

func splitLines(data []byte) ([][]byte, []byte) {
	var lines [][]byte
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return lines, data
		}
		lines = append(lines, data[:i])
		data = data[i+1:]
	}
	return lines, nil
}

// Only the newest snapshot and the one it was folded from are kept; event
// objects are never deleted.
func TestSnapshot_KeepsTwo(t *testing.T) {
	store := storage.NewMemory()
	h := newHistory(t, 9, store, 1<<30)
	h.register("home")
	defer func() { h.s.Close(context.Background()) }()
	var all []string
	events := 0
	for range 5 {
		for range 20 {
			h.change(h.rng, "home")
		}
		h.snapshot("home")
		keys := snapshotKeys(t, store, "home")
		all = append(all, keys[len(keys)-1])
		if want := all[max(0, len(all)-2):]; !slices.Equal(keys, want) {
			t.Fatalf("snapshots %q, want %q", keys, want)
		}
		n := len(eventKeys(t, store, "home"))
		if n < events {
			t.Fatalf("event objects went from %d to %d", events, n)
		}
		events = n
	}
	// Nothing new: no snapshot.
	h.snapshot("home")
	if keys := snapshotKeys(t, store, "home"); keys[len(keys)-1] != all[len(all)-1] {
		t.Fatalf("a snapshot without new events: %q", keys)
	}
}

// A clock stepped back across a restart, by less than a day and by more:
// new events still sort after the snapshot's boundary (the journal names
// them after every name it found, in the newest partition), so they are
// not lost behind it.
func TestSnapshot_ClockSteppedBack(t *testing.T) {
	for _, back := range []time.Duration{time.Minute, 50 * time.Hour} {
		t.Run(back.String(), func(t *testing.T) {
			store := storage.NewMemory()
			h := newHistory(t, 11, store, 1<<30)
			h.register("home")
			for range 30 {
				h.change(h.rng, "home")
			}
			h.snapshot("home")
			h.s.Close(context.Background())
			h.clock.add(-back)
			h.open()
			res, err := h.s.CreateRequest(context.Background(), "home", "m0", Request{Intent: "after the step"}, "")
			if err != nil {
				t.Fatal(err)
			}
			h.restart(false)
			defer h.s.Close(context.Background())
			if _, err := h.s.Get(context.Background(), "home", res.Ref); err != nil {
				t.Fatalf("the request made after the clock stepped back is lost: %v", err)
			}
			keys := eventKeys(t, store, "home")
			if k, b := keys[len(keys)-1], h.s.exchange("home", false).log.boundary; k <= b {
				t.Fatalf("newest event object %s sorts before the boundary %s", k, b)
			}
		})
	}
}

// Lines carry fields the journal adds (an epoch) and the journal may hold
// records of its own (fences): replay reads the first and skips the
// second without counting them as damage.
func TestReplay_JournalFields(t *testing.T) {
	store := storage.NewMemory()
	lines := `{"event_id":"01J0000000000000000000001","ts":"2031-03-09T22:00:00.000Z","exchange_id":"home","thread_ref":"2031-03-09-ABCD","event_type":"thread_created","actor_id":"a","seq":1,"payload":{"intent":"x","requestor_id":"a"},"epoch":3}
{"event_type":"_fence","epoch":4}
{"event_id":"01J0000000000000000000002","ts":"2031-03-09T22:00:01.000Z","exchange_id":"home","thread_ref":"2031-03-09-ABCD","event_type":"status_changed","actor_id":"b","seq":2,"payload":{"old_status":"pending","new_status":"claimed","executor_id":"b"},"epoch":4}
`
	if _, err := store.Create(context.Background(), "events/exchange=home/2031/03/09/01J00000000000000000000000.jsonl", []byte(lines)); err != nil {
		t.Fatal(err)
	}
	s, err := New(context.Background(), Config{Store: store})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close(context.Background())
	p := newExchange("home")
	st, err := s.replayInto(context.Background(), p, "", "", nil)
	if err != nil || st.lines != 2 || st.malformed != 0 || st.torn != 0 {
		t.Fatalf("replay: %+v, %v", st, err)
	}
	th, err := s.Get(context.Background(), "home", "2031-03-09-ABCD")
	if err != nil || th.Status != StatusClaimed {
		t.Fatalf("thread %+v, %v", th, err)
	}
}

// A snapshot encodes every field of the projection and reads back equal,
// for states that have each field set and unset.
func TestSnapshot_RoundTrip(t *testing.T) {
	store := storage.NewMemory()
	h := newHistory(t, 5, store, 1<<30)
	defer func() { h.s.Close(context.Background()) }()
	for _, x := range historyExchanges {
		h.register(x)
		h.register(x)
	}
	for range 200 {
		h.change(h.rng, h.pick(historyExchanges))
	}
	for _, ex := range h.s.allExchanges() {
		p := newExchange(ex.id)
		if _, err := h.s.replayInto(context.Background(), p, "", "", nil); err != nil {
			t.Fatal(err)
		}
		data := encodeSnapshot(p, "events/exchange="+ex.id+"/2031/03/09/X")
		q := newExchange(ex.id)
		b, err := h.s.decodeSnapshot(data, q)
		if err != nil || b != "events/exchange="+ex.id+"/2031/03/09/X" {
			t.Fatalf("decode: %q, %v", b, err)
		}
		// Same bytes again: nothing was lost on the way.
		if again := encodeSnapshot(q, b); !bytes.Equal(again, data) {
			t.Fatal("a decoded snapshot encodes differently")
		}
		wrap := func(e *exchange) map[string]projection {
			return projections(&Service{exchanges: map[string]*exchange{e.id: e}})
		}
		if d := diffProjections(wrap(q), wrap(p)); d != "" {
			t.Fatalf("round trip: %s", d)
		}
		// Every prefix of it is refused, never a panic.
		for n := 0; n < len(data); n += 1 + n/16 {
			if _, err := h.s.decodeSnapshot(data[:n], newExchange(ex.id)); !errors.Is(err, errSnapshot) {
				t.Fatalf("prefix of %d bytes: %v", n, err)
			}
		}
	}
}

// failingGets fails reads of one key.
type failingGets struct {
	storage.Store
	key string
}

func (f failingGets) Get(ctx context.Context, key string) (storage.Object, error) {
	if key == f.key {
		return storage.Object{}, errors.New("disk on fire")
	}
	return f.Store.Get(ctx, key)
}

// Folding up to a boundary with many objects after it, and a read that
// fails with many objects after it, both end: neither leaves the replay
// waiting on its own read-ahead.
func TestReplayInto_Stops(t *testing.T) {
	store := storage.NewMemory()
	var keys []string
	for i := range 300 {
		key := fmt.Sprintf("events/exchange=home/2031/03/09/01J%023d.jsonl", i)
		line := fmt.Sprintf(`{"event_id":"e%d","ts":"2031-03-09T22:00:00.000Z","exchange_id":"home","thread_ref":null,"event_type":"executor_updated","actor_id":"a","seq":0,"payload":{}}`+"\n", i)
		if _, err := store.Create(context.Background(), key, []byte(line)); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, key)
	}
	s := &Service{store: store, cfg: Config{EventBuffer: 10, EventBufferBytes: 1 << 20, Now: time.Now}}
	p := newExchange("home")
	st, err := s.replayInto(context.Background(), p, keys[9], keys[50], nil)
	if err != nil || st.lines != 40 || p.version != 40 || st.last != keys[49] {
		t.Fatalf("replay up to a boundary: %+v, version %d, %v", st, p.version, err)
	}
	s.store = failingGets{store, keys[20]}
	if _, err := s.replayInto(context.Background(), newExchange("home"), "", "", nil); err == nil || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("replay over a failing read: %v", err)
	}
}

// A tail that repeats events already folded (a batch written twice)
// leaves the threads it names where they were in the update order; the
// next snapshot, which decodes those threads, puts them back in place.
func TestSnapshot_FoldsRepeatedEvents(t *testing.T) {
	store := storage.NewMemory()
	h := newHistory(t, 13, store, 1<<30)
	defer func() { h.s.Close(context.Background()) }()
	h.register("home")
	h.register("home")
	for range 80 {
		h.change(h.rng, "home")
	}
	h.snapshot("home")
	// Copy the first object that creates a thread again, after the
	// boundary.
	keys := eventKeys(t, store, "home")
	var first storage.Object
	for _, k := range keys {
		obj, err := store.Get(context.Background(), k)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(obj.Data, []byte(EventThreadCreated)) {
			first = obj
			break
		}
	}
	newest := keys[len(keys)-1]
	h.clock.add(time.Second)
	key := newest[:strings.LastIndexByte(newest, '/')+1] + ulid.MustNew(ulid.Timestamp(h.clock.Now()), crand.Reader).String() + ".jsonl"
	if _, err := store.Create(context.Background(), key, first.Data); err != nil {
		t.Fatal(err)
	}
	h.clock.add(time.Second)
	h.change(h.rng, "home")
	ex := h.s.exchange("home", false)
	ex.log.pending.Add(1) // the copy is an event the service did not count
	h.snapshot("home")
	h.restart(false)
}

// After a crash with a long tail, load encodes the projection it built
// as a snapshot whose boundary is the last object it read, and the
// snapshot goroutine writes it: the next start reads it and nothing else.
func TestSnapshot_WrittenAtLoad(t *testing.T) {
	store := storage.NewMemory()
	h := newHistory(t, 17, store, 1<<30)
	h.register("home")
	h.register("home")
	for range 100 {
		h.change(h.rng, "home")
	}
	h.restart(true) // no snapshot at all yet
	if keys := snapshotKeys(t, store, "home"); len(keys) != 0 {
		t.Fatalf("snapshots %q", keys)
	}
	h.cfg.SnapshotEvery = 10
	h.restart(true) // checks the encoded snapshot against a fold
	if h.loadSnapshots != 1 {
		t.Fatalf("%d snapshots encoded at load, want 1", h.loadSnapshots)
	}
	keys := eventKeys(t, store, "home")
	want := snapshotKey(keys[len(keys)-1])
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Equal(snapshotKeys(t, store, "home"), []string{want}) {
		if time.Now().After(deadline) {
			t.Fatalf("snapshots %q, want %q", snapshotKeys(t, store, "home"), want)
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.restart(true)
	ex := h.s.exchange("home", false)
	if ex.log.snapKey != want || ex.log.pending.Load() != 0 {
		t.Fatalf("started from %q with a tail of %d", ex.log.snapKey, ex.log.pending.Load())
	}
	for range 40 {
		h.change(h.rng, "home")
	}
	h.restart(false)
	h.s.Close(context.Background())
}

package journal

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meatspace-exchange/mess/storage"
)

// Fenced logs.
//
// With Config.Fence set, a log is a sequence of contiguous numbered slots,
// each one object written with Create: {log}/s{slot:020d}.jsonl, or, for a
// dated journal, {log}/{YYYY}/{MM}/{DD}/s{slot:020d}.jsonl. The "s" sorts
// after the ULID names of an unfenced journal's objects, so a log moved
// from a directory to a bucket (messd migrate) replays its old objects
// first. One batch is in
// flight per log at a time. Before its first write to a log a journal
// writes a fence at the log's next free slot, carrying its epoch, and
// fences are never deleted. A writer that was replaced (paused past the
// takeover, say) then meets the fence with its next Create: the key is
// taken, the write fails, and nothing more is acknowledged. Names made
// from time or random ids could not do this: a stale writer's Create of a
// fresh name succeeds.
//
// Dated logs keep the day folders readers expect, yet a slot must have a
// name every writer derives alike, or the fence could sit at one name and
// the stale write at another. So the day of slot n+1 is the day of slot n
// or the next day, or a later day that slot n announced: a tick is a
// control object written when a log was idle for longer, announcing the
// day of the next slot. A fence is written under every name slot n+1 may
// have (at most three). Slot 0 of a dated log is its genesis, under the
// log's own folder, and announces the first day. Keys in day folders
// therefore sort in slot order.
//
// Control objects (fences, ticks) hold one line starting with
// {"_journal": and Replay never hands them to Decode. Every data line
// carries "epoch" (the writer's), and along the slots epochs never
// decrease: Audit checks that.

// controlPrefix starts every control object.
const controlPrefix = `{"_journal":`

// control is the one line of a control object.
type control struct {
	Kind  string `json:"_journal"` // "fence" or "tick"
	Epoch uint64 `json:"epoch"`
	// Next is the day (YYYY/MM/DD) the next slot may take beyond the
	// usual two.
	Next string `json:"next,omitempty"`
	// EventType lets readers of event logs (DuckDB) skip control lines
	// with the filter they already use.
	EventType string `json:"event_type"`
}

// IsControl reports whether an object is a journal control object (a
// fence or a tick) rather than data.
func IsControl(data []byte) bool { return bytes.HasPrefix(data, []byte(controlPrefix)) }

// slotPos is where a log stands: its last slot and how the next one may
// be named.
type slotPos struct {
	opened bool
	slot   int64  // last slot; -1 before the first
	key    string // its key (the greatest, for a slot under several names)
	day    string // its day folder, "" for undated logs and the genesis
	next   string // the day it announced, if any
}

const dayLayout = "2006/01/02"

func slotKey(log string, slot int64, day string) string {
	if day == "" {
		return fmt.Sprintf("%s/s%020d.jsonl", log, slot)
	}
	return fmt.Sprintf("%s/%s/s%020d.jsonl", log, day, slot)
}

// parseSlotKey reads a key of log. ok is false for keys that are not
// slots (the objects of an unfenced journal, say).
func parseSlotKey(log, key string) (slot int64, day string, ok bool) {
	rest, found := strings.CutPrefix(key, log+"/")
	if !found {
		return 0, "", false
	}
	name, found := strings.CutSuffix(rest, ".jsonl")
	if !found {
		return 0, "", false
	}
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		day, name = name[:i], name[i+1:]
		if _, err := time.Parse(dayLayout, day); err != nil {
			return 0, "", false
		}
	}
	digits, found := strings.CutPrefix(name, "s")
	if !found || len(digits) != 20 {
		return 0, "", false
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 {
		return 0, "", false
	}
	return n, day, true
}

// IsSlot reports whether key is one of a fenced log's slots.
func IsSlot(log, key string) bool {
	_, _, ok := parseSlotKey(log, key)
	return ok
}

func addDay(day string, n int) string {
	t, err := time.Parse(dayLayout, day)
	if err != nil {
		return ""
	}
	return t.AddDate(0, 0, n).Format(dayLayout)
}

// names lists the keys slot pos.slot+1 may have.
func (j *Journal) names(log string, pos slotPos) []string {
	s := pos.slot + 1
	if !j.cfg.Dated {
		return []string{slotKey(log, s, "")}
	}
	if s == 0 {
		return []string{slotKey(log, 0, "")}
	}
	var days []string
	if pos.day != "" {
		days = append(days, pos.day, addDay(pos.day, 1))
	}
	if pos.next > pos.day && !containsStr(days, pos.next) {
		days = append(days, pos.next)
	}
	out := make([]string, len(days))
	for i, d := range days {
		out[i] = slotKey(log, s, d)
	}
	return out
}

func containsStr(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// today is the day folder for a write now.
func (j *Journal) today() string { return j.cfg.Now().UTC().Format(dayLayout) }

// controlObject encodes a fence or tick. In a dated log it announces
// today, so the next slot may be named for it however long the log idled.
func (j *Journal) controlObject(kind string) []byte {
	c := control{Kind: kind, Epoch: j.epoch, EventType: "_journal_" + kind}
	if j.cfg.Dated {
		c.Next = j.today()
	}
	b, _ := json.Marshal(c)
	return append(b, '\n')
}

// posOf describes the object at key (slot, day), reading it to find an
// announced day.
func (j *Journal) posOf(ctx context.Context, log, key string, data []byte) (slotPos, error) {
	slot, day, ok := parseSlotKey(log, key)
	if !ok {
		return slotPos{}, fmt.Errorf("journal: %s is not a slot of %s", key, log)
	}
	pos := slotPos{opened: true, slot: slot, key: key, day: day}
	if data == nil && j.cfg.Dated {
		obj, err := j.cfg.Store.Get(ctx, key)
		if err != nil {
			return slotPos{}, fmt.Errorf("journal: read %s: %w", key, err)
		}
		data = obj.Data
	}
	if IsControl(data) {
		var c control
		if err := json.Unmarshal(firstLine(data), &c); err != nil {
			return slotPos{}, fmt.Errorf("journal: read %s: %w", key, err)
		}
		pos.next = c.Next
	}
	return pos, nil
}

func firstLine(data []byte) []byte {
	if i := bytes.IndexByte(data, '\n'); i >= 0 {
		return data[:i]
	}
	return data
}

// epochOf returns the epoch of an object's first line.
func epochOf(data []byte) (uint64, bool) {
	var v struct {
		Epoch *uint64 `json:"epoch"`
	}
	if err := json.Unmarshal(firstLine(data), &v); err != nil || v.Epoch == nil {
		return 0, false
	}
	return *v.Epoch, true
}

// Open prepares a log for writing: it finds the log's last slot, listing
// only keys after after (a key known to be in the log, such as a
// snapshot's boundary from Seal, or "" to list it all), and writes this
// journal's fence at the next slot. A service opens a log before it
// replays it, so that the replay sees every write a replaced owner made.
// Appending to a log that was not opened opens it. Without Config.Fence
// Open does nothing.
func (j *Journal) Open(ctx context.Context, log, after string) error {
	if j.cfg.Fence == nil {
		return nil
	}
	if err := storage.ValidKey(log); err != nil {
		return err
	}
	ls := j.logState(log)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.pos.opened {
		return nil
	}
	pos, err := j.fence(ctx, log, after)
	if err != nil {
		return err
	}
	ls.pos = pos
	return nil
}

// logState is one fenced log's position. Its mutex is held across the
// writes that move it: by Open, and by the flusher writing the log.
type logState struct {
	mu  sync.Mutex
	pos slotPos
	// uncertain: the last write, to lostKey, failed without saying
	// whether it landed.
	uncertain bool
	lostKey   string
}

func (j *Journal) logState(log string) *logState {
	j.logsMu.Lock()
	defer j.logsMu.Unlock()
	ls := j.logs[log]
	if ls == nil {
		ls = &logState{}
		j.logs[log] = ls
	}
	return ls
}

// fence finds the end of log and writes a fence after it.
func (j *Journal) fence(ctx context.Context, log, after string) (slotPos, error) {
	if err := j.fenced(); err != nil {
		return slotPos{}, err
	}
	pos := slotPos{slot: -1}
	last := ""
	if _, _, ok := parseSlotKey(log, after); ok {
		last = after
	}
	lastSlot := int64(-1)
	if last != "" {
		lastSlot, _, _ = parseSlotKey(log, last)
	}
	for k, err := range storage.KeysAfter(ctx, j.cfg.Store, log+"/", after) {
		if err != nil {
			return slotPos{}, fmt.Errorf("journal: open %s: %w", log, err)
		}
		// The genesis of a dated log lists after its day folders.
		if s, _, ok := parseSlotKey(log, k); ok && (s > lastSlot || (s == lastSlot && k > last)) {
			last, lastSlot = k, s
		}
	}
	if last != "" {
		p, err := j.posOf(ctx, log, last, nil)
		if err != nil {
			return slotPos{}, err
		}
		pos = p
	}
	for {
		if err := ctx.Err(); err != nil {
			return slotPos{}, err
		}
		obj := j.controlObject("fence")
		var taken []byte
		var takenKey string
		wrote := ""
		for _, key := range j.names(log, pos) {
			_, err := j.cfg.Store.Create(ctx, key, obj)
			if err == nil {
				wrote = max(wrote, key)
				continue
			}
			if !errors.Is(err, storage.ErrExists) {
				return slotPos{}, fmt.Errorf("journal: fence %s: %w", key, err)
			}
			cur, err := j.cfg.Store.Get(ctx, key)
			if err != nil {
				return slotPos{}, fmt.Errorf("journal: fence %s: %w", key, err)
			}
			if bytes.Equal(cur.Data, obj) { // our own write, its reply lost
				wrote = max(wrote, key)
				continue
			}
			if e, ok := epochOf(cur.Data); ok && e > j.epoch {
				return slotPos{}, j.lose(fmt.Errorf("journal: %s holds epoch %d, newer than ours (%d): %w", key, e, j.epoch, storage.ErrFenced))
			}
			// An older writer got here first: its object belongs to the
			// log, so the fence moves past it.
			if takenKey == "" || key > takenKey {
				taken, takenKey = cur.Data, key
			}
		}
		if takenKey == "" {
			return j.posOf(ctx, log, wrote, obj)
		}
		p, err := j.posOf(ctx, log, takenKey, taken)
		if err != nil {
			return slotPos{}, err
		}
		pos = p
	}
}

// fenced returns the error that stopped the journal, if any.
func (j *Journal) fenced() error {
	if err := j.lost.Load(); err != nil {
		return *err
	}
	return nil
}

// lose records that a newer owner fenced this journal, tells the Fence,
// and returns err.
func (j *Journal) lose(err error) error {
	if j.lost.CompareAndSwap(nil, &err) {
		j.cfg.Fence.Fenced(err)
	}
	return err
}

// withEpoch inserts "epoch" as the first member of each line, which must
// be a JSON object.
func withEpoch(epoch uint64, lines [][]byte) ([]byte, error) {
	field := `"epoch":` + strconv.FormatUint(epoch, 10)
	n := 0
	for _, l := range lines {
		n += len(l) + len(field) + 2
	}
	buf := make([]byte, 0, n)
	for _, l := range lines {
		if len(l) < 2 || l[0] != '{' {
			return nil, errors.New("journal: a fenced journal's lines must be JSON objects")
		}
		if bytes.HasPrefix(l, []byte(controlPrefix)) {
			return nil, errors.New("journal: a line may not start with the _journal member")
		}
		buf = append(buf, '{')
		buf = append(buf, field...)
		if rest := bytes.TrimLeft(l[1:], " \t\r"); len(rest) > 0 && rest[0] != '}' {
			buf = append(buf, ',')
		}
		buf = append(buf, l[1:]...)
		buf = append(buf, '\n')
	}
	return buf, nil
}

// writeSlot writes one batch at the log's next slot. Runs on the flusher,
// the only writer of the log in this process.
func (j *Journal) writeSlot(log string, data []byte) error {
	ctx := context.Background()
	if err := j.fenced(); err != nil {
		return err
	}
	if err := j.cfg.Fence.Valid(); err != nil {
		return err
	}
	ls := j.logState(log)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if !ls.pos.opened {
		p, err := j.fence(ctx, log, "")
		if err != nil {
			return err
		}
		ls.pos = p
	}
	if j.cfg.Dated {
		base := ls.pos.day
		if base == "" {
			base = ls.pos.next
		}
		if t := j.today(); t > addDay(base, 1) && ls.pos.next != t {
			// Idle for days: announce today with a tick, so this batch
			// lands in today's folder.
			if err := j.createSlot(ctx, log, ls, j.controlObject("tick")); err != nil {
				return err
			}
		}
	}
	if err := j.createSlot(ctx, log, ls, data); err != nil {
		return err
	}
	// Written, but acknowledged only while this process is surely still
	// the owner: after a pause it may not be, and the write then stands
	// like one made just before a crash.
	return j.cfg.Fence.Valid()
}

// boundarySlot is Seal's boundary for a fenced log: the key of its last
// slot, which sorts after every key before it and before every key after.
func (j *Journal) boundarySlot(log string) (string, error) {
	if err := j.Open(context.Background(), log, ""); err != nil {
		return "", err
	}
	ls := j.logState(log)
	ls.mu.Lock()
	defer ls.mu.Unlock()
	return ls.pos.key, nil
}

// dayKey picks the name of the next slot: today's folder when allowed,
// else the nearest allowed one (never an earlier day than the last slot).
func (j *Journal) dayKey(log string, pos slotPos) string {
	names := j.names(log, pos)
	if !j.cfg.Dated || len(names) == 1 {
		return names[0]
	}
	t := j.today()
	for _, d := range []string{pos.next, addDay(pos.day, 1)} {
		if d > pos.day && t >= d && (pos.day != "" || d == pos.next) {
			return slotKey(log, pos.slot+1, d)
		}
	}
	return names[0]
}

// createSlot writes data as the log's next slot and moves ls past it. A
// key already taken means a newer owner fenced the log, unless it holds
// these very bytes (a retried write whose first reply was lost) or a batch
// of ours whose write failed without saying whether it landed.
//
// That batch is settled by the next write, which goes to the very key it
// went to: either it takes the key, and the lost batch can never land, or
// it finds the lost batch there. Then that batch stands in the log, like a
// write made just before a crash, Config.OnLanded hears of it, and this
// write is refused with ErrLanded: it was made from a state that lacked
// the lost batch, and acknowledging it could contradict what the log now
// says (a claim granted twice).
func (j *Journal) createSlot(ctx context.Context, log string, ls *logState, data []byte) error {
	for {
		key := j.dayKey(log, ls.pos)
		if ls.uncertain {
			key = ls.lostKey
		}
		_, err := j.cfg.Store.Create(ctx, key, data)
		if err != nil && !errors.Is(err, storage.ErrExists) {
			ls.uncertain, ls.lostKey = true, key
			return fmt.Errorf("journal: write %s: %w", key, err)
		}
		if err != nil {
			cur, gerr := j.cfg.Store.Get(ctx, key)
			if gerr != nil {
				ls.uncertain, ls.lostKey = true, key
				return fmt.Errorf("journal: write %s: %w", key, gerr)
			}
			if !bytes.Equal(cur.Data, data) {
				if e, ok := epochOf(cur.Data); !ok || e != j.epoch || !ls.uncertain {
					return j.lose(fmt.Errorf("journal: %s was taken by another writer: %w", key, storage.ErrFenced))
				}
				p, err := j.posOf(ctx, log, key, cur.Data)
				if err != nil {
					return err
				}
				ls.pos, ls.uncertain, ls.lostKey = p, false, ""
				if IsControl(cur.Data) {
					continue // a tick: nothing anyone was told about
				}
				if j.cfg.OnLanded != nil {
					j.cfg.OnLanded(log, cur.Data)
				}
				return fmt.Errorf("journal: write %s: %w", key, ErrLanded)
			}
		}
		p, err := j.posOf(ctx, log, key, data)
		if err != nil {
			return err
		}
		ls.pos, ls.uncertain, ls.lostKey = p, false, ""
		return nil
	}
}

// AuditReport describes a fenced log.
type AuditReport struct {
	// Slots counts slot numbers present; Objects counts objects (a fence
	// may be written under several names of one slot).
	Slots, Objects int
	// Fences maps each epoch to the number of fences it wrote.
	Fences map[uint64]int
	// Lines counts data lines.
	Lines int
}

// Audit reads a fenced log whole and checks what fencing promises: slots
// are contiguous from the first one present (with gaps allowed, a
// compacted log may miss data slots, never fences), keys in day folders
// sort in slot order, at most one data object per slot, every line carries an epoch,
// epochs never decrease along the slots, and every epoch's first object
// is its fence.
func Audit(ctx context.Context, store storage.Store, log string, gaps bool) (AuditReport, error) {
	rep := AuditReport{Fences: map[uint64]int{}}
	var prevSlot int64 = -1
	var before, inSlot uint64 // the highest epoch of earlier slots, of this one
	seen := map[uint64]bool{}
	dataAt := map[int64]bool{}
	type slotKeyed struct {
		slot int64
		key  string
	}
	var all []slotKeyed
	var prevDated int64 = -1
	for key, err := range storage.Keys(ctx, store, log+"/") {
		if err != nil {
			return rep, err
		}
		slot, day, ok := parseSlotKey(log, key)
		if !ok {
			continue // a snapshot, an unfenced journal's object, ...
		}
		if day != "" {
			if slot < prevDated {
				return rep, fmt.Errorf("journal: audit %s: slot %d sorts after slot %d", key, slot, prevDated)
			}
			prevDated = slot
		}
		all = append(all, slotKeyed{slot, key})
	}
	slices.SortStableFunc(all, func(a, b slotKeyed) int { return cmp.Compare(a.slot, b.slot) })
	for _, sk := range all {
		slot, key := sk.slot, sk.key
		obj, err := store.Get(ctx, key)
		if err != nil {
			return rep, err
		}
		rep.Objects++
		switch {
		case slot < prevSlot:
			return rep, fmt.Errorf("journal: audit %s: slot %d after slot %d", key, slot, prevSlot)
		case slot > prevSlot+1 && prevSlot >= 0 && !gaps:
			return rep, fmt.Errorf("journal: audit %s: slots %d to %d missing", key, prevSlot+1, slot-1)
		case slot != prevSlot:
			rep.Slots++
			before = max(before, inSlot)
		}
		prevSlot = slot
		lines, torn := Lines(obj.Data)
		if torn != nil {
			return rep, fmt.Errorf("journal: audit %s: torn line", key)
		}
		ctl := IsControl(obj.Data)
		if !ctl {
			if dataAt[slot] {
				return rep, fmt.Errorf("journal: audit %s: a second data object in slot %d", key, slot)
			}
			dataAt[slot] = true
		}
		for _, l := range lines {
			e, ok := epochOf(l)
			if !ok {
				return rep, fmt.Errorf("journal: audit %s: a line without an epoch", key)
			}
			if e < before {
				return rep, fmt.Errorf("journal: audit %s: epoch %d after epoch %d", key, e, before)
			}
			if !seen[e] {
				if !ctl || !strings.Contains(string(l), `"_journal":"fence"`) {
					return rep, fmt.Errorf("journal: audit %s: epoch %d writes before its fence", key, e)
				}
				seen[e] = true
			}
			inSlot = max(inSlot, e)
			if ctl {
				var c control
				if err := json.Unmarshal(l, &c); err == nil && c.Kind == "fence" {
					rep.Fences[e]++
				}
			} else {
				rep.Lines++
			}
		}
	}
	return rep, nil
}

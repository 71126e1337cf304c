package mailbus

import "sync/atomic"

// msgTable numbers an exchange's stored messages, so that inbox entries can
// refer to a message by number instead of by pointer. A bus retaining
// millions of entries otherwise has the garbage collector scan every one
// on every cycle: tens of milliseconds of marking that lands in the
// delivery latency of whatever is running.
//
// Messages are held in chunks; a chunk counts the inbox entries that refer
// to its messages and is freed once it is full and that count is zero.
// Lookups take no lock: the chunk directory is replaced, never changed.
type msgTable struct {
	dir  atomic.Pointer[msgDir]
	next uint64 // number of the next message; guarded by exchange.mu
}

type msgDir struct {
	base   uint64      // chunk index of chunks[0]
	chunks []*msgChunk // nil where freed
}

type msgChunk struct {
	msgs [chunkSize]*stored
	refs atomic.Int64 // inbox entries referring to msgs
}

const (
	chunkBits = 10
	chunkSize = 1 << chunkBits
)

// add stores st and returns its number. Caller holds exchange.mu.
func (t *msgTable) add(st *stored) uint64 {
	n := t.next
	t.next++
	ci := n >> chunkBits
	d := t.dir.Load()
	if d == nil {
		d = &msgDir{base: ci}
	}
	if ci == d.base+uint64(len(d.chunks)) {
		// trim keeps the newest chunk until it is full, so a new one
		// always goes right after the last.
		chunks := make([]*msgChunk, len(d.chunks), len(d.chunks)+1)
		copy(chunks, d.chunks)
		d = &msgDir{base: d.base, chunks: append(chunks, new(msgChunk))}
		t.dir.Store(d)
	}
	// Readers find the slot through an inbox entry added after this, under
	// the agent's lock, which orders the two.
	d.chunks[ci-d.base].msgs[n&(chunkSize-1)] = st
	return n
}

// span returns the numbers the table has room for, lo to hi-1: every
// message an inbox entry refers to is among them. Caller holds
// exchange.mu.
func (t *msgTable) span() (lo, hi uint64) {
	d := t.dir.Load()
	if d == nil {
		return t.next, t.next
	}
	return d.base << chunkBits, t.next
}

func (t *msgTable) chunk(n uint64) *msgChunk {
	d := t.dir.Load()
	return d.chunks[n>>chunkBits-d.base]
}

// get returns message n, which an inbox entry refers to.
func (t *msgTable) get(n uint64) *stored { return t.chunk(n).msgs[n&(chunkSize-1)] }

// ref counts k more inbox entries referring to message n, unref one
// fewer.
func (t *msgTable) ref(n uint64, k int) { t.chunk(n).refs.Add(int64(k)) }
func (t *msgTable) unref(n uint64)      { t.chunk(n).refs.Add(-1) }

// trim frees the full chunks no entry refers to. Caller holds exchange.mu,
// so no entry is added meanwhile. Once the exchange is loaded, entries are
// only added for the newest message, so a full chunk without references
// never gets one again.
func (t *msgTable) trim() {
	d := t.dir.Load()
	if d == nil {
		return
	}
	var chunks []*msgChunk
	for i, c := range d.chunks {
		full := (d.base+uint64(i)+1)<<chunkBits <= t.next
		if c == nil || !full || c.refs.Load() != 0 {
			continue
		}
		if chunks == nil {
			chunks = append([]*msgChunk(nil), d.chunks...)
		}
		chunks[i] = nil
	}
	if chunks == nil {
		return
	}
	base := d.base
	for len(chunks) > 0 && chunks[0] == nil {
		chunks = chunks[1:]
		base++
	}
	t.dir.Store(&msgDir{base: base, chunks: chunks})
}

package journal

import (
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Stats are the process-wide totals of one log over every Journal, for
// monitoring.
// Counters only grow. They are kept per batch with atomic adds, so the
// append path pays for them once per durable write, not per record.
type Stats struct {
	// Log is the first path segment of the partitions counted: "events"
	// for exchange events, "leases", "mailbus", "notify".
	Log string
	// Records counts lines made durable.
	Records uint64
	// Writes counts durable writes (objects created or appends synced).
	Writes uint64
	// Failures counts writes that failed.
	Failures uint64
	// BatchSize counts writes by the number of Append calls they carried.
	BatchSize Histogram
	// WriteSeconds counts writes by how long they took.
	WriteSeconds Histogram
}

// Histogram is a cumulative histogram in the shape Prometheus exposes:
// Counts[i] is the number of observations <= Bounds[i].
type Histogram struct {
	Bounds []float64
	Counts []uint64
	Count  uint64
	Sum    float64
}

// BatchSizeBounds and WriteSecondsBounds are the upper bounds of the
// histograms in Stats.
var (
	BatchSizeBounds    = []float64{1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024}
	WriteSecondsBounds = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5}
)

// histogram is lock-free: one bucket add and a sum per observation. The
// count is the buckets' total, so a snapshot is always consistent with
// itself; its sum may be a moment apart, which a scrape tolerates.
type histogram struct {
	bounds  []float64
	buckets []atomic.Uint64 // non-cumulative; the last is +Inf
	sumNano atomic.Uint64   // sum scaled by 1e9, so integers add atomically
}

func newHistogram(bounds []float64) *histogram {
	return &histogram{bounds: bounds, buckets: make([]atomic.Uint64, len(bounds)+1)}
}

func (h *histogram) observe(v float64) {
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.buckets[i].Add(1)
	h.sumNano.Add(uint64(v * 1e9))
}

func (h *histogram) snapshot() Histogram {
	out := Histogram{Bounds: h.bounds, Counts: make([]uint64, len(h.bounds))}
	var c uint64
	for i := range h.bounds {
		c += h.buckets[i].Load()
		out.Counts[i] = c
	}
	out.Count = c + h.buckets[len(h.bounds)].Load()
	out.Sum = float64(h.sumNano.Load()) / 1e9
	return out
}

type logStats struct {
	records, writes, failures atomic.Uint64
	batch, latency            *histogram
}

// logs holds a *logStats per log: the first path segment of a partition
// ("events", "leases", "mailbus", "notify"), so series stay few.
var logs sync.Map

func statsFor(partition string) *logStats {
	name, _, _ := strings.Cut(partition, "/")
	if v, ok := logs.Load(name); ok {
		return v.(*logStats)
	}
	v, _ := logs.LoadOrStore(name, &logStats{batch: newHistogram(BatchSizeBounds), latency: newHistogram(WriteSecondsBounds)})
	return v.(*logStats)
}

// record accounts for one durable write to partition of items appends
// holding lines records.
func record(partition string, items, lines int, took time.Duration, err error) {
	st := statsFor(partition)
	if err != nil {
		st.failures.Add(1)
		return
	}
	st.records.Add(uint64(lines))
	st.writes.Add(1)
	st.batch.observe(float64(items))
	st.latency.observe(took.Seconds())
}

// Totals returns the counters of every Journal in the process, one Stats
// per log, in no particular order.
func Totals() []Stats {
	var out []Stats
	logs.Range(func(k, v any) bool {
		st := v.(*logStats)
		out = append(out, Stats{
			Log:          k.(string),
			Records:      st.records.Load(),
			Writes:       st.writes.Load(),
			Failures:     st.failures.Load(),
			BatchSize:    st.batch.snapshot(),
			WriteSeconds: st.latency.snapshot(),
		})
		return true
	})
	return out
}

// Package hist is a fixed-bucket histogram made of atomics, cheap enough
// for the per-message path (no locks, no allocation) and read by the
// metrics exporter at scrape time.
package hist

import (
	"math"
	"sync/atomic"
)

// Histogram counts observations into buckets with fixed upper bounds.
type Histogram struct {
	bounds []float64       // upper bounds, ascending; +Inf is implied
	counts []atomic.Uint64 // len(bounds)+1, the last for +Inf
	sum    atomic.Uint64   // float64 bits
}

// New returns a histogram with the given ascending upper bounds.
func New(bounds ...float64) *Histogram {
	return &Histogram{bounds: bounds, counts: make([]atomic.Uint64, len(bounds)+1)}
}

// Exponential returns n bounds start, start*factor, ...
func Exponential(start, factor float64, n int) []float64 {
	b := make([]float64, n)
	for i := range b {
		b[i] = start
		start *= factor
	}
	return b
}

// Observe records v. Any goroutine may call it.
func (h *Histogram) Observe(v float64) {
	i := 0
	for i < len(h.bounds) && v > h.bounds[i] {
		i++
	}
	h.counts[i].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, math.Float64bits(math.Float64frombits(old)+v)) {
			return
		}
	}
}

// Snapshot is a histogram's state at one moment.
type Snapshot struct {
	Bounds     []float64
	Cumulative []uint64 // per bound, observations <= it
	Count      uint64
	Sum        float64
}

// Snapshot reads the counters. Concurrent observations may be half seen;
// the exporter accepts that, as Prometheus clients do.
func (h *Histogram) Snapshot() Snapshot {
	s := Snapshot{Bounds: h.bounds, Cumulative: make([]uint64, len(h.bounds))}
	var run uint64
	for i := range h.bounds {
		run += h.counts[i].Load()
		s.Cumulative[i] = run
	}
	s.Count = run + h.counts[len(h.bounds)].Load()
	s.Sum = math.Float64frombits(h.sum.Load())
	return s
}

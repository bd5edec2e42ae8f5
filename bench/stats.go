package bench

import (
	"math"
	"slices"
	"time"
)

// Percentiles summarises a latency sample.
type Percentiles struct {
	N    int
	Mean time.Duration
	P50  time.Duration
	P90  time.Duration
	P99  time.Duration
	Max  time.Duration
}

// Summarize sorts sample in place and returns its percentiles by the
// nearest-rank method: the p-th percentile is the smallest value with at
// least p% of the sample at or below it, so it is always a measured value
// and P100 is the maximum.
func Summarize(sample []time.Duration) Percentiles {
	if len(sample) == 0 {
		return Percentiles{}
	}
	slices.Sort(sample)
	var sum float64
	for _, d := range sample {
		sum += float64(d)
	}
	return Percentiles{
		N:    len(sample),
		Mean: time.Duration(sum / float64(len(sample))),
		P50:  Rank(sample, 50),
		P90:  Rank(sample, 90),
		P99:  Rank(sample, 99),
		Max:  sample[len(sample)-1],
	}
}

// Rank is the nearest-rank p-th percentile (0 < p <= 100) of a sorted,
// non-empty sample: the value at 1-based rank ceil(p/100 * n).
func Rank(sorted []time.Duration, p float64) time.Duration {
	n := len(sorted)
	r := int(math.Ceil(p / 100 * float64(n)))
	// p/100*n can land a hair above an integer in floating point
	// (e.g. 0.29*100): prefer the exact integer rank.
	if exact := p * float64(n) / 100; math.Abs(exact-math.Round(exact)) < 1e-9 {
		r = int(math.Round(exact))
	}
	r = min(max(r, 1), n)
	return sorted[r-1]
}

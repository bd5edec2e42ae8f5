package policy

import (
	"fmt"
	"math"
	"math/bits"
	"sync"
)

// The token buckets are kept as a generic cell rate algorithm (GCRA): per
// client and kind, one "theoretical arrival time" (tat) in nanoseconds.
// With interval T = 1/rate and burst B, a take at time now succeeds when
// max(tat, now) + T - now <= B*T, and then sets tat to max(tat, now) + T.
// This is exactly a bucket of B tokens refilled by one every T, but it is
// one integer per bucket, refills without a timer, and is exact in integer
// nanoseconds: after B takes the next one succeeds precisely T later.

type bucketParams struct {
	interval int64 // T in ns; 0 = unlimited
	window   int64 // B*T in ns
}

func (b *bucketParams) limited() bool { return b.interval > 0 }

// maxWindow keeps tat arithmetic far from int64 overflow (about 73 years).
const maxWindow = 1 << 61

func newBucketParams(rateField, burstField string, rate float64, burst int) (bucketParams, error) {
	switch {
	case math.IsNaN(rate) || math.IsInf(rate, 0) || rate < 0:
		return bucketParams{}, fmt.Errorf("policy: %s: %v is not a finite number >= 0", rateField, rate)
	case burst < 0:
		return bucketParams{}, fmt.Errorf("policy: %s: %d is negative", burstField, burst)
	case rate == 0 && burst != 0:
		return bucketParams{}, fmt.Errorf("policy: %s: %d is set but %s is 0 (unlimited)", burstField, burst, rateField)
	case rate == 0:
		return bucketParams{}, nil
	}
	if burst == 0 {
		burst = int(max(1, math.Ceil(min(rate, maxWindow))))
	}
	interval := int64(max(1, math.Round(min(1e9/rate, maxWindow))))
	if float64(burst)*float64(interval) > maxWindow {
		return bucketParams{}, fmt.Errorf("policy: %s/%s: a burst of %d at %v per second takes longer than 70 years to refill", burstField, rateField, burst, rate)
	}
	return bucketParams{interval: interval, window: int64(burst) * interval}, nil
}

const (
	bucketConn = iota
	bucketMsg
	numBuckets
)

// noTAT marks a bucket that has never been used: full.
const noTAT = math.MinInt64

type entry struct {
	key        u128
	tat        [numBuckets]int64
	prev, next int32 // LRU list, -1 at the ends
}

// shard is one part of the limiter table with its own lock. Entries live
// in a slice that grows to capacity and is then reused, the least recently
// used entry first; index maps a client to its slot.
type shard struct {
	mu         sync.Mutex
	index      map[u128]int32
	entries    []entry
	head, tail int32 // most and least recently used, -1 when empty
	capacity   int
	_          [64]byte // keep neighbouring shards' locks off one cache line
}

type limiter struct {
	shards []shard
	mask   uint64
	seed   uint64
}

// maxShards is plenty for a handful of event loops; each shard costs a map
// and a mutex.
const maxShards = 64

func newLimiter(maxTracked int, seed uint64) *limiter {
	n := 1 << (bits.Len(uint(min(maxTracked, maxShards))) - 1) // power of two <= both
	l := &limiter{shards: make([]shard, n), mask: uint64(n - 1), seed: seed}
	for i := range l.shards {
		s := &l.shards[i]
		// The capacities add up to exactly maxTracked.
		s.capacity = maxTracked / n
		if i < maxTracked%n {
			s.capacity++
		}
		s.index = make(map[u128]int32)
		s.head, s.tail = -1, -1
	}
	return l
}

func (l *limiter) shardOf(k u128) *shard {
	// A keyed mix so that nobody can aim a flood of addresses at one
	// shard (murmur3's 64-bit finalizer).
	x := k.hi*0x9e3779b97f4a7c15 ^ k.lo ^ l.seed
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return &l.shards[x&l.mask]
}

func (l *limiter) take(k u128, kind int, bp *bucketParams, now int64) bool {
	s := l.shardOf(k)
	s.mu.Lock()
	e := s.lookup(k)
	tat := e.tat[kind]
	if tat < now {
		tat = now
	}
	ok := tat-now <= bp.window-bp.interval // i.e. tat+T-now <= B*T, without overflow
	if ok {
		e.tat[kind] = tat + bp.interval
	}
	s.mu.Unlock()
	return ok
}

func (l *limiter) len() int {
	n := 0
	for i := range l.shards {
		s := &l.shards[i]
		s.mu.Lock()
		n += len(s.index)
		s.mu.Unlock()
	}
	return n
}

// lookup returns k's entry, making it the most recently used, or a fresh
// one (full buckets) in a new or reclaimed slot. s.mu is held.
func (s *shard) lookup(k u128) *entry {
	if i, ok := s.index[k]; ok {
		s.toFront(i)
		return &s.entries[i]
	}
	var i int32
	if len(s.entries) < s.capacity {
		i = int32(len(s.entries))
		s.entries = append(s.entries, entry{})
	} else {
		// Forget the least recently used client. Its buckets are the
		// most likely to be full again, when forgetting loses nothing.
		i = s.tail
		s.unlink(i)
		delete(s.index, s.entries[i].key)
	}
	s.entries[i] = entry{key: k, tat: [numBuckets]int64{noTAT, noTAT}}
	s.index[k] = i
	s.pushFront(i)
	return &s.entries[i]
}

func (s *shard) unlink(i int32) {
	e := &s.entries[i]
	if e.prev >= 0 {
		s.entries[e.prev].next = e.next
	} else {
		s.head = e.next
	}
	if e.next >= 0 {
		s.entries[e.next].prev = e.prev
	} else {
		s.tail = e.prev
	}
	e.prev, e.next = -1, -1
}

func (s *shard) pushFront(i int32) {
	e := &s.entries[i]
	e.prev, e.next = -1, s.head
	if s.head >= 0 {
		s.entries[s.head].prev = i
	}
	s.head = i
	if s.tail < 0 {
		s.tail = i
	}
}

func (s *shard) toFront(i int32) {
	if s.head == i {
		return
	}
	s.unlink(i)
	s.pushFront(i)
}

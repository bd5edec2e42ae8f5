package bench

import (
	"math/rand/v2"
	"testing"
	"time"
)

func msd(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestSummarizeNearestRank(t *testing.T) {
	// 1..100 ms, shuffled: the p-th percentile is exactly p ms.
	sample := make([]time.Duration, 100)
	for i := range sample {
		sample[i] = msd(i + 1)
	}
	rand.Shuffle(len(sample), func(i, j int) { sample[i], sample[j] = sample[j], sample[i] })
	got := Summarize(sample)
	want := Percentiles{N: 100, Mean: 50500 * time.Microsecond, P50: msd(50), P90: msd(90), P99: msd(99), Max: msd(100)}
	if got != want {
		t.Fatalf("Summarize(1..100 ms) = %+v, want %+v", got, want)
	}
}

func TestRankSmallSamples(t *testing.T) {
	tests := []struct {
		sample []time.Duration
		p      float64
		want   time.Duration
	}{
		{[]time.Duration{msd(7)}, 50, msd(7)},
		{[]time.Duration{msd(7)}, 99, msd(7)},
		{[]time.Duration{msd(1), msd(2), msd(3), msd(4)}, 50, msd(2)},  // rank ceil(2) = 2
		{[]time.Duration{msd(1), msd(2), msd(3), msd(4)}, 51, msd(3)},  // rank ceil(2.04) = 3
		{[]time.Duration{msd(1), msd(2), msd(3), msd(4)}, 100, msd(4)}, // the maximum
		{[]time.Duration{msd(1), msd(2), msd(3), msd(4)}, 1, msd(1)},   // rank ceil(0.04) = 1
		// 10 values: p99 is rank ceil(9.9) = 10, the maximum, not an
		// interpolation below it.
		{[]time.Duration{msd(1), msd(2), msd(3), msd(4), msd(5), msd(6), msd(7), msd(8), msd(9), msd(10)}, 99, msd(10)},
		{[]time.Duration{msd(1), msd(2), msd(3), msd(4), msd(5), msd(6), msd(7), msd(8), msd(9), msd(10)}, 90, msd(9)},
	}
	for _, tt := range tests {
		if got := Rank(tt.sample, tt.p); got != tt.want {
			t.Errorf("Rank(%v, %v) = %v, want %v", tt.sample, tt.p, got, tt.want)
		}
	}
}

// 0.29*100 is 29.000000000000004 in floating point; the rank must still
// be 29, not 30.
func TestRankExactIntegerRank(t *testing.T) {
	sample := make([]time.Duration, 100)
	for i := range sample {
		sample[i] = msd(i + 1)
	}
	for p := 1; p <= 100; p++ {
		if got := Rank(sample, float64(p)); got != msd(p) {
			t.Errorf("Rank(1..100, %d) = %v, want %v", p, got, msd(p))
		}
	}
}

func TestSummarizeEmpty(t *testing.T) {
	if got := Summarize(nil); got != (Percentiles{}) {
		t.Errorf("Summarize(nil) = %+v, want zero", got)
	}
}

func TestRoundTrips(t *testing.T) {
	tests := []struct {
		cfg  LoadConfig
		want float64
	}{
		// connect, greeting, EHLO, MAIL, RCPT, DATA, body, QUIT
		{LoadConfig{}, 8},
		{LoadConfig{Recipients: 3}, 10},
		// connect, greeting, EHLO, MAIL+RCPT+DATA, body+QUIT
		{LoadConfig{Pipelining: true}, 5},
		{LoadConfig{Pipelining: true, Recipients: 3}, 5},
		// connect, greeting, EHLO, MAIL+RCPT+BDAT+QUIT
		{LoadConfig{Pipelining: true, Chunking: true}, 4},
		// connect, greeting, EHLO, group, then 10 bodies (each with the next group or QUIT): 14 for 10
		{LoadConfig{Pipelining: true, PerConn: 10}, 1.4},
		// connect, greeting, EHLO, 10 × (MAIL, RCPT, DATA, body), QUIT: 44 for 10
		{LoadConfig{PerConn: 10}, 4.4},
	}
	for _, tt := range tests {
		if got := RoundTrips(tt.cfg); got != tt.want {
			t.Errorf("RoundTrips(%+v) = %v, want %v", tt.cfg, got, tt.want)
		}
	}
}

func TestVerdict(t *testing.T) {
	tests := []struct {
		ok, tempfail, lost int64
		counted            int
		pass               bool
	}{
		{100, 0, 0, 100, true},
		{100, 0, 0, 99, false},  // an accepted message is missing
		{100, 0, 0, 101, false}, // nothing explains the extra one
		{100, 2, 1, 103, true},  // 4xx and lost ones may have landed
		{100, 2, 1, 104, false},
		{100, 5, 0, 99, false}, // tempfails never excuse a missing 2xx
	}
	for _, tt := range tests {
		pass, note := Verdict(tt.ok, tt.tempfail, tt.lost, tt.counted)
		if pass != tt.pass {
			t.Errorf("Verdict(ok=%d, 4xx=%d, lost=%d, counted=%d) = %v (%s), want %v", tt.ok, tt.tempfail, tt.lost, tt.counted, pass, note, tt.pass)
		}
	}
}

func TestFifoKeepsOrderAcrossGrowth(t *testing.T) {
	var q fifo[int]
	next, want := 0, 0
	// Interleave pushes and pops so that the ring wraps before it grows.
	for round := 0; round < 50; round++ {
		for i := 0; i < 7+round; i++ {
			q.push(next)
			next++
		}
		for i := 0; i < 5; i++ {
			if got := q.pop(); got != want {
				t.Fatalf("pop = %d, want %d", got, want)
			}
			want++
		}
	}
	for q.len() > 0 {
		if got := q.pop(); got != want {
			t.Fatalf("pop = %d, want %d", got, want)
		}
		want++
	}
	if want != next {
		t.Fatalf("popped %d values, pushed %d", want, next)
	}
}

func TestComponentShares(t *testing.T) {
	top := `Showing nodes accounting for 1.14s, 79.17% of 1.44s total
      flat  flat%   sum%        cum   cum%
     0.63s 43.75% 43.75%      0.63s 43.75%  internal/runtime/syscall/linux.Syscall6
     0.09s  6.25% 50.00%      0.09s  6.25%  runtime.memmove
     0.03s  2.08% 52.08%      0.03s  2.08%  runtime.futex
     0.02s  1.39% 53.47%      0.48s 33.33%  github.com/rabbitmq/amqp091-go.(*Channel).sendOpen
     0.01s  0.69% 54.17%      0.34s 23.61%  github.com/lsmtp/lsmtp/engine.(*session).onTraffic
     0.01s  0.69% 54.86%      0.34s 23.61%  github.com/lsmtp/lsmtp/engine.(*session).rcpt
`
	got := map[string]float64{}
	for _, s := range componentShares(top) {
		got[s.name] = s.pct
	}
	want := map[string]float64{
		"system calls (TCP send/receive, epoll, accept, close: kernel time)": 43.75,
		"copying (memmove)": 6.25,
		"Go runtime: scheduler, channels, locks, timers": 2.08,
		"amqp091-go (framing, confirms)":                 1.39,
		"lsmtp engine (sessions)":                        1.38,
	}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if d := got[k] - v; d > 1e-9 || d < -1e-9 {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

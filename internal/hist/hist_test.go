package hist

import "testing"

func TestBuckets(t *testing.T) {
	h := New(1, 10, 100)
	for _, v := range []float64{0.5, 1, 5, 10, 50, 1000} {
		h.Observe(v)
	}
	s := h.Snapshot()
	want := []uint64{2, 4, 5}
	for i, w := range want {
		if s.Cumulative[i] != w {
			t.Fatalf("cumulative %v, want %v", s.Cumulative, want)
		}
	}
	if s.Count != 6 || s.Sum != 1066.5 {
		t.Fatalf("count %d sum %v", s.Count, s.Sum)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	h := New(Exponential(1024, 4, 10)...)
	if n := testing.AllocsPerRun(100, func() { h.Observe(5000) }); n != 0 {
		t.Fatalf("Observe allocates %v times", n)
	}
}

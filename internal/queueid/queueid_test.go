package queueid

import (
	"sort"
	"testing"
	"time"
)

func TestIDsSortByTimeThenCreation(t *testing.T) {
	g := NewGenerator()
	base := time.UnixMilli(1_800_000_000_000)
	var ids []string
	for i := 0; i < 1000; i++ {
		ids = append(ids, g.New(base.Add(time.Duration(i/10)*time.Millisecond)))
	}
	if !sort.StringsAreSorted(ids) {
		t.Fatalf("IDs made in order do not sort in order")
	}
	seen := map[string]bool{}
	for _, id := range ids {
		if len(id) != Len {
			t.Fatalf("len(%q) = %d, want %d", id, len(id), Len)
		}
		if seen[id] {
			t.Fatalf("duplicate ID %q", id)
		}
		seen[id] = true
	}
}

func TestTimeRoundTrip(t *testing.T) {
	g := NewGenerator()
	now := time.UnixMilli(1_795_000_123_456)
	got, ok := Time(g.New(now))
	if !ok || !got.Equal(now) {
		t.Fatalf("Time = %v, %v; want %v", got, ok, now)
	}
	if _, ok := Time("not-an-id"); ok {
		t.Fatal("Time accepted a malformed ID")
	}
}

func TestGeneratorsDiffer(t *testing.T) {
	now := time.Now()
	a, b := NewGenerator().New(now), NewGenerator().New(now)
	if a == b {
		t.Fatalf("two generators made the same ID %q in the same millisecond", a)
	}
	if a[:10] != b[:10] {
		t.Fatalf("the time prefix differs for the same millisecond: %q %q", a, b)
	}
}

func TestAppendDoesNotAllocate(t *testing.T) {
	g := NewGenerator()
	buf := make([]byte, 0, Len)
	now := time.Now()
	if n := testing.AllocsPerRun(100, func() { buf = g.Append(buf[:0], now) }); n != 0 {
		t.Fatalf("Append allocates %v times", n)
	}
}

package spool

import (
	"sync"
	"testing"
)

// BenchmarkOpen is the start-up scan of a spool of 128 MiB of 2 KB
// messages (in the page cache): reading, checking and indexing every
// record. bench/spoolcmp has the 1 GB comparison with bbolt.
func BenchmarkOpen(b *testing.B) {
	dir := b.TempDir()
	s, _, err := Open(Config{Dir: dir, MaxBytes: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	m := testMessage("Q0000000000000001", body(0, 2048))
	const n = 128 << 20 / 2048
	var wg sync.WaitGroup
	wg.Add(n)
	for i := 0; i < n; i++ {
		s.Append(m, func(Loc, error) { wg.Done() })
	}
	wg.Wait()
	s.Close()
	b.SetBytes(128 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s, entries, err := Open(Config{Dir: dir, MaxBytes: 1 << 40})
		if err != nil || len(entries) != n {
			b.Fatalf("%d entries, %v", len(entries), err)
		}
		s.Close()
	}
}

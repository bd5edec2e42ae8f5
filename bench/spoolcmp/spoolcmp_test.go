// Package spoolcmp compares the spool's storage (internal/spool, an
// append-only segment log with CRC-32C records and group-committed
// fdatasync) with bbolt (go.etcd.io/bbolt, a copy-on-write B+tree in one
// mmapped file) for what the spool does: durable appends of messages
// from many sessions at once, each waiting for its own fsync, and the
// scan at start. It is its own module so that bbolt is not a dependency
// of lsmtp.
//
//	cd bench/spoolcmp && go test -run - -bench . -benchtime 2000x
//	SPOOLCMP_RECOVER=1 go test -run TestRecover1GB -v
package spoolcmp

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/valyala/bytebufferpool"
	bolt "go.etcd.io/bbolt"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/spool"
)

// writers is how many sessions wait for their message's fsync at once.
const writers = 64

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func message(i, size int) *sink.Message {
	m := &sink.Message{
		QueueID: fmt.Sprintf("Q%015d", i), Sender: []byte("sender@example.org"),
		Recipients: [][]byte{[]byte("rcpt@example.com")}, ClientIP: "192.0.2.1", ClientPort: 40000,
		Helo: []byte("client.example.org"), Received: time.Now(), Data: bytebufferpool.Get(),
	}
	m.Data.B = append(m.Data.B[:0], make([]byte, size)...)
	for j := range m.Data.B {
		m.Data.B[j] = 'a' + byte(j%26)
	}
	return m
}

// value is what bbolt stores for m: the same fields the log's record
// holds, with a CRC-32C of its own, since bbolt checks its pages'
// structure, not the values in them.
func value(dst []byte, m *sink.Message) []byte {
	dst = dst[:0]
	dst = binary.LittleEndian.AppendUint32(dst, 0) // crc, below
	dst = binary.LittleEndian.AppendUint64(dst, uint64(m.Received.UnixNano()))
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(m.QueueID)))
	dst = append(dst, m.QueueID...)
	for _, f := range [][]byte{m.Sender, m.Recipients[0], []byte(m.ClientIP), m.Helo} {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(f)))
		dst = append(dst, f...)
	}
	dst = append(dst, m.Data.B...)
	binary.LittleEndian.PutUint32(dst, crc32.Checksum(dst[4:], castagnoli))
	return dst
}

// Neither store deletes here: a delete in the same bbolt transaction
// would spare it writing the value at all.

// run has writers goroutines write n messages in all through put, each
// waiting for its message to be durable, and reports msgs/s.
func run(b *testing.B, n, size int, put func(m *sink.Message) error) {
	msgs := make([]*sink.Message, writers)
	for i := range msgs {
		msgs[i] = message(i, size)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := put(msgs[w]); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(n)/time.Since(start).Seconds(), "msgs/s")
}

func BenchmarkFsynced(b *testing.B) {
	for _, size := range []int{2 << 10, 1 << 20} {
		name := fmt.Sprintf("%dKB", size>>10)
		b.Run("log/"+name, func(b *testing.B) {
			s, _, err := spool.Open(spool.Config{Dir: b.TempDir(), MaxBytes: 1 << 40})
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			run(b, b.N, size, func(m *sink.Message) error {
				done := make(chan error, 1)
				s.Append(m, func(_ spool.Loc, err error) { done <- err })
				return <-done
			})
			st := s.Stats()
			b.ReportMetric(float64(st.Fsyncs)/float64(st.Appended), "fsyncs/msg")
		})
		b.Run("bbolt/"+name, func(b *testing.B) {
			db, err := bolt.Open(filepath.Join(b.TempDir(), "spool.db"), 0o600, nil)
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			// Batch is bbolt's group commit: concurrent calls share one
			// transaction, hence one fsync, within MaxBatchDelay (10 ms).
			var seq atomic.Uint64
			run(b, b.N, size, func(m *sink.Message) error {
				k := binary.BigEndian.AppendUint64(nil, seq.Add(1))
				v := value(nil, m)
				return db.Batch(func(tx *bolt.Tx) error {
					bk, err := tx.CreateBucketIfNotExists([]byte("msgs"))
					if err != nil {
						return err
					}
					return bk.Put(k, v)
				})
			})
		})
	}
}

// TestRecover1GB fills a 1 GB spool of 2 KB messages in each store and
// times opening it and finding every message (what lsmtp does at start):
// the log reads and checks every record, bbolt opens its file and walks
// its keys, checking each value's CRC for the same guarantee.
func TestRecover1GB(t *testing.T) {
	if os.Getenv("SPOOLCMP_RECOVER") == "" {
		t.Skip("set SPOOLCMP_RECOVER=1: writes 2 GB")
	}
	const size, total = 2 << 10, 1 << 30
	n := total / size
	m := message(0, size)

	logDir := t.TempDir()
	s, _, err := spool.Open(spool.Config{Dir: logDir, MaxBytes: 1 << 40})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(n)
	for i := 0; i < n; i++ {
		s.Append(m, func(_ spool.Loc, err error) {
			if err != nil {
				t.Error(err)
			}
			wg.Done()
		})
	}
	wg.Wait()
	s.Close()

	boltPath := filepath.Join(t.TempDir(), "spool.db")
	db, err := bolt.Open(boltPath, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	v := value(nil, m)
	for i := 0; i < n; {
		err := db.Update(func(tx *bolt.Tx) error {
			bk, err := tx.CreateBucketIfNotExists([]byte("msgs"))
			if err != nil {
				return err
			}
			for j := 0; j < 10000 && i < n; j, i = j+1, i+1 {
				if err := bk.Put(binary.BigEndian.AppendUint64(nil, uint64(i)), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	for _, cold := range []bool{false, true} {
		label := "warm"
		if cold {
			label = "cold"
		}
		if cold && os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0) != nil {
			t.Log("cannot drop the page cache: no cold numbers")
			continue
		}
		start := time.Now()
		s, entries, err := spool.Open(spool.Config{Dir: logDir, MaxBytes: 1 << 40})
		if err != nil {
			t.Fatal(err)
		}
		logTook := time.Since(start)
		s.Close()
		if len(entries) != n {
			t.Fatalf("log: %d entries, want %d", len(entries), n)
		}

		if cold {
			os.WriteFile("/proc/sys/vm/drop_caches", []byte("1"), 0)
		}
		start = time.Now()
		db, err := bolt.Open(boltPath, 0o600, nil)
		if err != nil {
			t.Fatal(err)
		}
		found := 0
		err = db.View(func(tx *bolt.Tx) error {
			return tx.Bucket([]byte("msgs")).ForEach(func(k, v []byte) error {
				if crc32.Checksum(v[4:], castagnoli) != binary.LittleEndian.Uint32(v) {
					return fmt.Errorf("bbolt: value %x damaged", k)
				}
				found++
				return nil
			})
		})
		boltTook := time.Since(start)
		db.Close()
		if err != nil || found != n {
			t.Fatalf("bbolt: %d found, %v", found, err)
		}
		fi, _ := os.Stat(boltPath)
		t.Logf("%s, %d records of 2 KB: log %s, bbolt %s (file %d MB)", label, n, logTook.Round(time.Millisecond),
			boltTook.Round(time.Millisecond), fi.Size()>>20)
	}
}

package spool

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/valyala/bytebufferpool"

	"github.com/lsmtp/lsmtp/internal/sink"
)

func testMessage(id string, body []byte) *sink.Message {
	m := &sink.Message{
		QueueID:    id,
		Sender:     []byte("alice@example.org"),
		Recipients: [][]byte{[]byte("bob@example.com"), []byte("carol@example.net")},
		ClientIP:   "192.0.2.7",
		ClientPort: 50123,
		Helo:       []byte("client.example.org"),
		Size:       int64(len(body)),
		Body:       sink.Body8BitMIME,
		SMTPUTF8:   true,
		Received:   time.Unix(1700000000, 123456789),
		Data:       bytebufferpool.Get(),
	}
	m.Data.Write(body)
	return m
}

func open(t *testing.T, dir string, maxBytes int64) (*Spool, []Entry) {
	t.Helper()
	s, entries, err := Open(Config{Dir: dir, MaxBytes: maxBytes, SegmentSize: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	return s, entries
}

// appendSync appends m and waits for its fsync.
func appendSync(t *testing.T, s *Spool, m *sink.Message) (Loc, error) {
	t.Helper()
	ch := make(chan struct {
		l Loc
		e error
	}, 1)
	s.Append(m, func(l Loc, err error) {
		ch <- struct {
			l Loc
			e error
		}{l, err}
	})
	r := <-ch
	return r.l, r.e
}

func body(i, n int) []byte {
	b := bytes.Repeat([]byte("x"), n)
	copy(b, fmt.Sprintf("message %06d\r\n", i))
	return b
}

func TestRoundTripAndRestart(t *testing.T) {
	dir := t.TempDir()
	s, entries := open(t, dir, 1<<30)
	if len(entries) != 0 {
		t.Fatalf("new spool has %d entries", len(entries))
	}
	var locs []Loc
	for i := 0; i < 50; i++ {
		l, err := appendSync(t, s, testMessage(fmt.Sprintf("Q%03d", i), body(i, 3000)))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, l)
	}
	m, err := s.Read(locs[7])
	if err != nil {
		t.Fatal(err)
	}
	want := testMessage("Q007", body(7, 3000))
	if m.QueueID != want.QueueID || string(m.Sender) != string(want.Sender) || len(m.Recipients) != 2 ||
		string(m.Recipients[1]) != "carol@example.net" || m.ClientIP != want.ClientIP || m.ClientPort != want.ClientPort ||
		string(m.Helo) != string(want.Helo) || m.Size != want.Size || m.Body != want.Body || !m.SMTPUTF8 ||
		!m.Received.Equal(want.Received) || !bytes.Equal(m.Data.B, want.Data.B) {
		t.Fatalf("read back %+v, want %+v", m, want)
	}
	for _, l := range locs[:20] {
		s.Ack(l)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, entries = open(t, dir, 1<<30)
	defer s.Close()
	if len(entries) != 30 {
		t.Fatalf("after restart %d entries, want 30", len(entries))
	}
	for i, e := range entries {
		if e.QueueID != fmt.Sprintf("Q%03d", i+20) {
			t.Fatalf("entry %d is %s: not in arrival order", i, e.QueueID)
		}
	}
	if st := s.Stats(); st.Records != 30 || st.Corrupt != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// Acknowledging everything removes the segments, the active one too.
func TestDrainedSpoolGivesSpaceBack(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, 1<<30)
	defer s.Close()
	var locs []Loc
	for i := 0; i < 800; i++ { // > 1 MiB: several segments
		l, err := appendSync(t, s, testMessage(fmt.Sprintf("Q%03d", i), body(i, 4000)))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, l)
	}
	if locs[len(locs)-1].Seg < 3 {
		t.Fatalf("last record in segment %d, want several segments", locs[len(locs)-1].Seg)
	}
	for _, l := range locs {
		s.Ack(l)
	}
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().DiskBytes != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("disk bytes %d after every record acked", s.Stats().DiskBytes)
		}
		time.Sleep(10 * time.Millisecond)
	}
	segs, _ := filepath.Glob(filepath.Join(dir, "*.seg"))
	if len(segs) != 0 {
		t.Fatalf("segments left: %v", segs)
	}
	if _, err := appendSync(t, s, testMessage("after", body(0, 100))); err != nil {
		t.Fatal(err)
	}
}

func TestFull(t *testing.T) {
	s, _ := open(t, t.TempDir(), 10000)
	defer s.Close()
	if _, err := appendSync(t, s, testMessage("a", body(0, 6000))); err != nil {
		t.Fatal(err)
	}
	if _, err := appendSync(t, s, testMessage("b", body(1, 6000))); !errors.Is(err, ErrFull) {
		t.Fatalf("second append: %v, want ErrFull", err)
	}
}

// damage writes 10 records, closes the spool, changes its segment with
// hurt, and reopens it.
func damage(t *testing.T, hurt func(seg []byte, locs []Loc) []byte) (*Spool, []Entry, string) {
	t.Helper()
	dir := t.TempDir()
	s, _ := open(t, dir, 1<<30)
	var locs []Loc
	for i := 0; i < 10; i++ {
		l, err := appendSync(t, s, testMessage(fmt.Sprintf("Q%03d", i), body(i, 2000)))
		if err != nil {
			t.Fatal(err)
		}
		locs = append(locs, l)
	}
	s.Close()
	name := segName(dir, locs[0].Seg)
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, hurt(b, locs), 0o600); err != nil {
		t.Fatal(err)
	}
	s, entries := open(t, dir, 1<<30)
	t.Cleanup(func() { s.Close() })
	return s, entries, dir
}

func ids(entries []Entry) string {
	var b bytes.Buffer
	for _, e := range entries {
		b.WriteString(e.QueueID[1:])
		b.WriteByte(' ')
	}
	return b.String()
}

func TestTornLastRecord(t *testing.T) {
	s, entries, dir := damage(t, func(b []byte, locs []Loc) []byte {
		last := locs[9]
		return b[:last.Off+last.Len/2] // the crash came in the middle of the last write
	})
	// The last record was never fsynced whole, so never acknowledged
	// with 250: the nine before it are all there.
	if got := ids(entries); got != "000 001 002 003 004 005 006 007 008 " {
		t.Fatalf("entries %s", got)
	}
	if c := s.Stats().Corrupt; c != 1 {
		t.Fatalf("corrupt %d, want 1", c)
	}
	q, _ := filepath.Glob(filepath.Join(dir, "quarantine", "*.bad"))
	if len(q) != 1 {
		t.Fatalf("quarantine holds %v", q)
	}
}

func TestFlippedBit(t *testing.T) {
	var hit Loc
	s, entries, dir := damage(t, func(b []byte, locs []Loc) []byte {
		hit = locs[4]
		b[hit.Off+hit.Len-100] ^= 0x10 // in the body
		return b
	})
	if got := ids(entries); got != "000 001 002 003 005 006 007 008 009 " {
		t.Fatalf("entries %s: the damaged record blocks or hides others", got)
	}
	if c := s.Stats().Corrupt; c != 1 {
		t.Fatalf("corrupt %d, want 1", c)
	}
	names, _ := filepath.Glob(filepath.Join(dir, "quarantine", fmt.Sprintf("%08d-*-%010d.bad", hit.Seg, hit.Off)))
	if len(names) != 1 {
		t.Fatalf("quarantine holds %q, want one file for the record", names)
	}
	bad, err := os.ReadFile(names[0])
	if err != nil || len(bad) != int(hit.Len) {
		t.Fatalf("quarantined %d octets (%v), want the record's %d", len(bad), err, hit.Len)
	}
	// Another start does not count it again.
	s.Close()
	s2, entries2 := open(t, dir, 1<<30)
	defer s2.Close()
	if len(entries2) != 9 || s2.Stats().Corrupt != 0 {
		t.Fatalf("second start: %d entries, corrupt %d", len(entries2), s2.Stats().Corrupt)
	}
}

// A flipped bit in a length field: the record's extent is unknown, and
// the next one is found by its magic.
func TestFlippedLength(t *testing.T) {
	s, entries, _ := damage(t, func(b []byte, locs []Loc) []byte {
		b[locs[2].Off+5] ^= 0x40
		return b
	})
	if got := ids(entries); got != "000 001 003 004 005 006 007 008 009 " {
		t.Fatalf("entries %s", got)
	}
	if c := s.Stats().Corrupt; c != 1 {
		t.Fatalf("corrupt %d, want 1", c)
	}
}

func TestLocked(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, 1<<30)
	defer s.Close()
	if _, _, err := Open(Config{Dir: dir, MaxBytes: 1 << 30}); err == nil {
		t.Fatal("a second Open of the same directory succeeded")
	}
}

// Concurrent appends share fsyncs.
func TestGroupCommit(t *testing.T) {
	s, _ := open(t, t.TempDir(), 1<<30)
	defer s.Close()
	var wg sync.WaitGroup
	for g := 0; g < 100; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10; i++ {
				if _, err := appendSync(t, s, testMessage("Q", body(i, 2000))); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	st := s.Stats()
	if st.Appended != 1000 || st.Fsyncs*5 > st.Appended {
		t.Fatalf("%d records in %d fsyncs: want at least 5 records a fsync", st.Appended, st.Fsyncs)
	}
	t.Logf("%d records, %d fsyncs", st.Appended, st.Fsyncs)
}

package spool

import (
	"bytes"
	"syscall"
	"testing"
)

// A group write that fails part way (ENOSPC; EFBIG under RLIMIT_FSIZE
// here) is cut back to the last record boundary. The next group must be
// written at that boundary, where its Loc says it is, not where the
// failed write stopped: else it lands past a hole, Read finds zeros, and
// a record answered 250 is quarantined and acknowledged away.
func TestWriteAfterFailedWriteLandsAtItsLoc(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, 1<<30)
	defer s.Close()
	l1, err := appendSync(t, s, testMessage("Q1", body(1, 3000)))
	if err != nil {
		t.Fatal(err)
	}
	var old syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_FSIZE, &old); err != nil {
		t.Fatal(err)
	}
	// Room for part of the second record only.
	lim := syscall.Rlimit{Cur: uint64(l1.Off+l1.Len) + 1000, Max: old.Max}
	if err := syscall.Setrlimit(syscall.RLIMIT_FSIZE, &lim); err != nil {
		t.Skipf("cannot lower RLIMIT_FSIZE: %v", err)
	}
	_, err2 := appendSync(t, s, testMessage("Q2", body(2, 3000)))
	syscall.Setrlimit(syscall.RLIMIT_FSIZE, &old)
	if err2 == nil {
		t.Fatal("append past RLIMIT_FSIZE succeeded")
	}
	l3, err := appendSync(t, s, testMessage("Q3", body(3, 3000)))
	if err != nil {
		t.Fatal(err)
	}
	if l3.Seg == l1.Seg && l3.Off != l1.Off+l1.Len {
		t.Errorf("Q3 at %+v, want right after Q1 %+v", l3, l1)
	}
	m, err := s.Read(l3)
	if err != nil {
		t.Fatalf("Read of fsynced record Q3: %v (stats %+v)", err, s.Stats())
	}
	defer m.ReleaseData()
	if m.QueueID != "Q3" || !bytes.Equal(m.Data.B, body(3, 3000)) {
		t.Errorf("Read(l3) = %s, %d octets; want Q3's", m.QueueID, m.Data.Len())
	}
	if c := s.Stats().Corrupt; c != 0 {
		t.Errorf("%d damaged regions after a failed write", c)
	}
}

package spool

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The record carries every field of sink.Message the sinks publish
// (smtp-tls-version, smtp-tls-cipher, smtp-auth-user included): a
// message replayed from the spool has the envelope it had live.
func TestRecordKeepsTLSAndAuth(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, 1<<30)
	m := testMessage("TLS1", []byte("Return-Path: <a@b>\r\nbody"))
	m.TLSVersion, m.TLSCipher, m.AuthUser = "TLS 1.3", "TLS_AES_128_GCM_SHA256", []byte("alice")
	m.TraceLen = len("Return-Path: <a@b>\r\n")
	l, err := appendSync(t, s, m)
	if err != nil {
		t.Fatal(err)
	}
	if int(l.Len) != recordSize(m) {
		t.Errorf("record is %d octets, recordSize says %d", l.Len, recordSize(m))
	}
	s.Close()
	s, entries := open(t, dir, 1<<30)
	defer s.Close()
	if len(entries) != 1 {
		t.Fatalf("%d entries", len(entries))
	}
	got, err := s.Read(entries[0].Loc)
	if err != nil {
		t.Fatal(err)
	}
	defer got.ReleaseData()
	if got.TLSVersion != m.TLSVersion || got.TLSCipher != m.TLSCipher || string(got.AuthUser) != "alice" {
		t.Errorf("read back TLS %q %q, auth %q", got.TLSVersion, got.TLSCipher, got.AuthUser)
	}
	if got.TraceLen != m.TraceLen {
		t.Errorf("read back TraceLen %d, want %d: per-domain copies could not rewrite their trace fields", got.TraceLen, m.TraceLen)
	}
}

// After a damaged record, resync must not take a record-shaped string
// inside a message body for a record: a sender could otherwise choose
// the envelope (sender, recipients) of a message lsmtp publishes.
func TestResyncSkipsRecordInBody(t *testing.T) {
	dir := t.TempDir()
	s, _ := open(t, dir, 1<<30)
	forged := testMessage("FORGED", []byte("Subject: injected\r\n\r\nhi\r\n"))
	forged.Recipients = [][]byte{[]byte("anyone@internal.example")}
	// Built for where it will sit in the segment, but without the
	// segment's nonce, which the sender cannot know.
	prefix := []byte("Subject: hello\r\n\r\n")
	outer := testMessage("REAL", nil)
	at := uint32(segHeaderSize + recordSize(outer) + len(prefix))
	inner := appendRecord(nil, forged, time.Now(), 0, at)
	outer.Data.Write(append(prefix, inner...))
	l, err := appendSync(t, s, outer)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	flipCRC(t, dir, l)
	s, entries := open(t, dir, 1<<30)
	defer s.Close()
	if len(entries) != 0 {
		t.Errorf("entries %s after the only record was damaged, want none", ids(entries))
	}
	if c := s.Stats().Corrupt; c != 1 {
		t.Errorf("corrupt %d, want 1", c)
	}
}

// Segment numbers start again at 1 once the spool drained. A damaged
// record in the new segment 1 at the offset of an old quarantined one
// must still be copied aside and counted, not taken for the old copy.
func TestQuarantineAfterSegmentNumberReused(t *testing.T) {
	dir := t.TempDir()
	for _, id := range []string{"OLD", "NEW"} {
		s, _ := open(t, dir, 1<<30)
		l, err := appendSync(t, s, testMessage(id, []byte(id+" body")))
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		if l.Seg != 1 {
			t.Fatalf("%s in segment %d, want 1", id, l.Seg)
		}
		flipCRC(t, dir, l)
		s, _ = open(t, dir, 1<<30) // quarantines it, removes segment 1
		if c := s.Stats().Corrupt; c != 1 {
			t.Errorf("%s: corrupt %d, want 1", id, c)
		}
		s.Close()
	}
	names, _ := filepath.Glob(filepath.Join(dir, "quarantine", "*.bad"))
	var found bool
	for _, n := range names {
		b, _ := os.ReadFile(n)
		found = found || bytes.Contains(b, []byte("NEW body"))
	}
	if len(names) != 2 || !found {
		t.Errorf("quarantine holds %d files (NEW among them: %v), want OLD's and NEW's", len(names), found)
	}
}

// A segment of the first format is refused with an error that names it,
// not read as damage and removed with the records in it.
func TestOldFormatRefused(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(segName(dir, 1), []byte("LSP1\x05\x00\x00\x00\x00\x00\x00\x00hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err := Open(Config{Dir: dir, MaxBytes: 1 << 30})
	if err == nil || !strings.Contains(err.Error(), "00000001.seg") {
		t.Fatalf("Open = %v, want an error naming the old segment", err)
	}
	if _, err := os.Stat(segName(dir, 1)); err != nil {
		t.Errorf("old segment gone: %v", err)
	}
}

func flipCRC(t *testing.T, dir string, l Loc) {
	t.Helper()
	f, err := os.OpenFile(segName(dir, l.Seg), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [1]byte
	f.ReadAt(b[:], int64(l.Off)+8)
	b[0] ^= 1
	f.WriteAt(b[:], int64(l.Off)+8)
}

// The segment header is disk space, not record octets: Bytes counts the
// records alone, and a drained spool is back at zero everywhere.
func TestSegmentHeaderAccounting(t *testing.T) {
	s, _ := open(t, t.TempDir(), 1<<30)
	defer s.Close()
	l, err := appendSync(t, s, testMessage("Q1", []byte("body")))
	if err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.Bytes != int64(l.Len) || st.DiskBytes != int64(l.Len)+segHeaderSize {
		t.Errorf("bytes %d, disk %d; want %d and %d", st.Bytes, st.DiskBytes, l.Len, l.Len+segHeaderSize)
	}
	s.Ack(l)
	deadline := time.Now().Add(5 * time.Second)
	for s.Stats().DiskBytes != 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if st, r := s.Stats(), s.reserved.Load(); st.Bytes != 0 || st.DiskBytes != 0 || r != 0 {
		t.Errorf("drained: bytes %d, disk %d, reserved %d", st.Bytes, st.DiskBytes, r)
	}
}

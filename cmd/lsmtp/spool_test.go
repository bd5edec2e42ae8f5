package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/valyala/bytebufferpool"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/spool"
)

// spoolWith writes messages with the given queue IDs to a new spool and
// closes it.
func spoolWith(t *testing.T, ids ...string) string {
	t.Helper()
	dir := t.TempDir()
	s, _, err := spool.Open(spool.Config{Dir: dir, MaxBytes: 1 << 30})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		m := &sink.Message{QueueID: id, Sender: []byte("a@example.org"), Recipients: [][]byte{[]byte("b@example.com")},
			ClientIP: "192.0.2.1", ClientPort: 1, Helo: []byte("h"), Received: time.Now(), Data: bytebufferpool.Get()}
		m.Data.WriteString("Subject: " + id + "\r\n\r\nbody\r\n")
		done := make(chan error, 1)
		s.Append(m, func(_ spool.Loc, err error) { done <- err })
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

func TestSpoolCommands(t *testing.T) {
	dir := spoolWith(t, "Q1", "Q2")
	var out, errb bytes.Buffer
	if code := mainExit([]string{"spool", "ls", "--spool-dir", dir}, noEnv, &out, &errb); code != exitOK {
		t.Fatalf("spool ls: %d %s", code, errb.String())
	}
	if s := out.String(); !strings.Contains(s, "Q1 ") || !strings.Contains(s, "Q2 ") || !strings.Contains(s, "2 messages, 42 octets") {
		t.Fatalf("spool ls:\n%s", s)
	}

	out.Reset()
	if code := mainExit([]string{"--spool-dir", dir, "spool", "show", "Q2"}, noEnv, &out, &errb); code != exitOK {
		t.Fatalf("spool show: %d %s", code, errb.String())
	}
	if s := out.String(); !strings.Contains(s, `"queue_id": "Q2"`) || !strings.HasSuffix(s, "\n\nSubject: Q2\r\n\r\nbody\r\n") {
		t.Fatalf("spool show:\n%q", s)
	}
	if code := mainExit([]string{"spool", "show", "Q9", "--spool-dir", dir}, noEnv, &out, &errb); code != exitProblems {
		t.Fatalf("spool show of a missing ID: %d, want %d", code, exitProblems)
	}

	to := filepath.Join(t.TempDir(), "out")
	out.Reset()
	if code := mainExit([]string{"spool", "export", to, "--spool-dir", dir}, noEnv, &out, &errb); code != exitOK {
		t.Fatalf("spool export: %d %s", code, errb.String())
	}
	eml, err := os.ReadFile(filepath.Join(to, "Q1.eml"))
	if err != nil || string(eml) != "Subject: Q1\r\n\r\nbody\r\n" {
		t.Fatalf("Q1.eml: %q %v", eml, err)
	}
	if _, err := os.Stat(filepath.Join(to, "Q2.json")); err != nil {
		t.Fatal(err)
	}

	errb.Reset()
	if code := mainExit([]string{"spool", "ls"}, noEnv, &out, &errb); code != exitUsage || !strings.Contains(errb.String(), "--spool-dir") {
		t.Fatalf("spool ls without a spool: %d %q", code, errb.String())
	}
	if code := mainExit([]string{"spool", "rm", "--spool-dir", dir}, noEnv, &out, &errb); code != exitUsage {
		t.Fatalf("spool rm: %d, want %d", code, exitUsage)
	}
}

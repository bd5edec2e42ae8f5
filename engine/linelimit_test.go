package engine

import (
	"fmt"
	"strings"
	"testing"

	"github.com/lsmtp/lsmtp/codec"
)

// TestLongLineInSmallReads: at the largest MaxLineLength, a command line
// of exactly the limit that arrives in 16-octet reads (the codec resumes
// its scan where the last read ended, the partial line staying in the
// connection's buffer) is one command, and one octet more is one
// 500 5.5.6; either way the next command is answered in step.
func TestLongLineInSmallReads(t *testing.T) {
	fits := "NOOP " + strings.Repeat("a", codec.MaxLineLimit-len("NOOP \r\n"))
	for _, tc := range []struct {
		name, line, want string
	}{
		{"at the limit", fits, "250 2.0.0 OK\r\n"},
		{"one octet over", fits + "a", "500 5.5.6 Line too long\r\n"},
	} {
		h := newMemHarness(t, Config{MaxLineLength: codec.MaxLineLimit}, false)
		input := tc.line + "\r\nNOOP\r\n"
		for rest := []byte(input); len(rest) > 0; {
			n := min(16, len(rest))
			h.send(rest[:n])
			rest = rest[n:]
		}
		want := "220 mx.test ESMTP\r\n" + tc.want + "250 2.0.0 OK\r\n"
		if got := string(h.transcript); got != want {
			t.Errorf("%s: replies %q, want %q", tc.name, got, want)
		}
	}
}

// BenchmarkLongLineSmallReads: a session given NOOP lines of the largest
// MaxLineLength in 64-octet reads. The cost per octet must not grow with
// the line: compare the sizes' MB/s.
func BenchmarkLongLineSmallReads(b *testing.B) {
	for _, size := range []int{4 << 10, codec.MaxLineLimit} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			line := []byte("NOOP " + strings.Repeat("a", size-len("NOOP \r\n")) + "\r\n")
			h := newMemHarness(b, Config{MaxLineLength: codec.MaxLineLimit}, true)
			b.ReportAllocs()
			b.SetBytes(int64(len(line)))
			for b.Loop() {
				for rest := line; len(rest) > 0; {
					n := min(64, len(rest))
					h.send(rest[:n])
					rest = rest[n:]
				}
			}
			if h.closed {
				b.Fatal("session closed")
			}
		})
	}
}

package rabbittest

import (
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
)

// LogWriter writes each write it is given into the test's log, as a line,
// while the test runs: for the progress of a harness or the stderr of a
// child process. What comes after the test ended is dropped, since a late
// line from a goroutine must not panic.
func LogWriter(t testing.TB) io.Writer {
	w := testLog{t: t, done: &atomic.Bool{}}
	t.Cleanup(func() { w.done.Store(true) })
	return w
}

// Logger logs at level and above into the test's log (through a
// LogWriter), for the broker and the engine a test starts.
func Logger(t testing.TB, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(LogWriter(t), &slog.HandlerOptions{Level: level}))
}

type testLog struct {
	t    testing.TB
	done *atomic.Bool
}

func (w testLog) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

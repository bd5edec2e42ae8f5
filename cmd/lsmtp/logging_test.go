package main

import (
	"bytes"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func TestRateLimitedHandler(t *testing.T) {
	var buf bytes.Buffer
	now := time.Unix(1000, 0)
	h := newRateLimited(slog.NewTextHandler(&buf, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}), 5*time.Second, func() time.Time { return now })
	log := slog.New(h)
	child := log.With("component", "broker") // shares the limits

	for i := range 100 {
		log.Warn("publish failed", "n", i)
		child.Warn("publish failed", "n", i)
		log.Info("message", "n", i) // info is never limited
	}
	log.Error("other trouble")
	now = now.Add(5 * time.Second)
	log.Warn("publish failed", "n", "after")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	var warns, infos []string
	for _, l := range lines {
		switch {
		case strings.Contains(l, "level=INFO"):
			infos = append(infos, l)
		case strings.Contains(l, `msg="publish failed"`):
			warns = append(warns, l)
		}
	}
	if len(infos) != 100 {
		t.Errorf("%d info lines, want all 100", len(infos))
	}
	want := []string{
		`level=WARN msg="publish failed" n=0`,
		`level=WARN msg="publish failed" n=after suppressed=199`,
	}
	if fmt.Sprint(warns) != fmt.Sprint(want) {
		t.Errorf("warnings:\n%s\nwant:\n%s", strings.Join(warns, "\n"), strings.Join(want, "\n"))
	}
	if !strings.Contains(buf.String(), `level=ERROR msg="other trouble"`) {
		t.Error("a different message was held back by another's limit")
	}
}

func TestRateLimitedHandlerIsBounded(t *testing.T) {
	now := time.Unix(1000, 0)
	h := newRateLimited(slog.DiscardHandler, time.Minute, func() time.Time { return now })
	log := slog.New(h)
	for i := range 10 * maxLimitKeys {
		log.Warn(fmt.Sprintf("gnet: connection %d failed", i))
	}
	if n := len(h.state.seen); n > maxLimitKeys {
		t.Errorf("%d messages remembered, want at most %d", n, maxLimitKeys)
	}
}

package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"
)

// newLogger builds the process logger: text or JSON lines on w, the level
// in a LevelVar that a reload may change, and floods of the same warning
// or error thinned out by rateLimited.
func newLogger(o *options, w io.Writer) (*slog.Logger, *slog.LevelVar, error) {
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(o.logLevel)); err != nil {
		return nil, nil, fmt.Errorf("--log-level %q: %w", o.logLevel, err)
	}
	ho := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch o.logFormat {
	case "text":
		h = slog.NewTextHandler(w, ho)
	case "json":
		h = slog.NewJSONHandler(w, ho)
	default:
		return nil, nil, fmt.Errorf("--log-format %q: want text or json", o.logFormat)
	}
	return slog.New(newRateLimited(h, logEvery, time.Now)), level, nil
}

// logEvery is the least time between two warnings or errors with the
// same message.
const logEvery = 5 * time.Second

// maxLimitKeys bounds the messages rateLimited remembers: messages built
// with fmt (gnet's logger) could otherwise grow the map without end.
const maxLimitKeys = 512

// rateLimited passes at most one warning or error per message text per
// interval and counts the rest; the count rides on the next line with that
// text that passes, as attribute "suppressed". Lines below Warn (the
// per-transaction info line, debug) pass untouched: they are not floods of
// one failure, and their volume is chosen with the level.
type rateLimited struct {
	next  slog.Handler
	state *limitState // shared by the handlers WithAttrs/WithGroup derive
}

type limitState struct {
	mu    sync.Mutex
	every time.Duration
	now   func() time.Time
	seen  map[limitKey]*limitEntry
}

type limitKey struct {
	level slog.Level
	msg   string
}

type limitEntry struct {
	next       time.Time // lines before it are suppressed
	suppressed int
}

func newRateLimited(next slog.Handler, every time.Duration, now func() time.Time) *rateLimited {
	return &rateLimited{next: next, state: &limitState{every: every, now: now, seen: map[limitKey]*limitEntry{}}}
}

func (h *rateLimited) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

func (h *rateLimited) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn {
		return h.next.Handle(ctx, r)
	}
	suppressed, pass := h.state.admit(limitKey{r.Level, r.Message})
	if !pass {
		return nil
	}
	if suppressed > 0 {
		r = r.Clone()
		r.AddAttrs(slog.Int("suppressed", suppressed))
	}
	return h.next.Handle(ctx, r)
}

// admit decides whether a line passes and, if so, how many of its kind
// were suppressed since the last that did.
func (s *limitState) admit(k limitKey) (suppressed int, pass bool) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.seen[k]
	if e == nil {
		if len(s.seen) >= maxLimitKeys {
			clear(s.seen) // forget the counts rather than grow
		}
		e = &limitEntry{}
		s.seen[k] = e
	}
	if now.Before(e.next) {
		e.suppressed++
		return 0, false
	}
	suppressed, e.suppressed = e.suppressed, 0
	e.next = now.Add(s.every)
	return suppressed, true
}

func (h *rateLimited) WithAttrs(as []slog.Attr) slog.Handler {
	return &rateLimited{next: h.next.WithAttrs(as), state: h.state}
}

func (h *rateLimited) WithGroup(name string) slog.Handler {
	return &rateLimited{next: h.next.WithGroup(name), state: h.state}
}

package engine

import (
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// boundedSink is a recording sink whose size bound (sink.SizeLimiter)
// the test moves, as a broker's max_payload moves at a reconnect.
type boundedSink struct {
	smtptest.Recorder
	bound atomic.Int64
}

func (s *boundedSink) MaxMessageSize() int64 { return s.bound.Load() }

var _ sink.SizeLimiter = (*boundedSink)(nil)

// ehloSize sends EHLO and returns the SIZE line it advertises.
func ehloSize(c *client) string {
	c.t.Helper()
	c.send("EHLO c\r\n")
	for _, l := range c.reply() {
		if strings.HasPrefix(l[4:], "SIZE") {
			return l[4:]
		}
	}
	c.t.Fatal("EHLO advertises no SIZE")
	return ""
}

// A bound that falls after EHLO: a message within the SIZE the client was
// offered is our limit, not one it could know of, so it gets 452 4.3.1
// (RFC 1870 §6), at MAIL SIZE=, after DATA and after BDAT; one over the
// offered SIZE gets 552 5.3.4. The next EHLO offers the new bound, and
// from then on 552 is the answer above it. Nothing reaches the sink.
func TestSizeBoundFallenSinceEHLO(t *testing.T) {
	rs := &boundedSink{}
	rs.bound.Store(1000)
	_, addr := startServer(t, Config{Sink: rs, MaxMessageSize: 10000})
	c := dial(t, addr)
	if got := ehloSize(c); got != "SIZE 1000" {
		t.Fatalf("EHLO: %q, want SIZE 1000", got)
	}
	rs.bound.Store(100)
	runDialog(t, c, []step{
		{"MAIL FROM:<a@b.test> SIZE=500", "452 4.3.1"},
		{"MAIL FROM:<a@b.test> SIZE=1001", "552 5.3.4"},
		{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "},
	})
	c.send(strings.Repeat("x", 498) + "\r\n.\r\n")
	c.expect("452 4.3.1")
	runDialog(t, c, []step{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	c.send(strings.Repeat("x", 1098) + "\r\n.\r\n")
	c.expect("552 5.3.4")
	runDialog(t, c, []step{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}})
	c.send("BDAT 300\r\n" + strings.Repeat("y", 300))
	c.expect("452 4.3.1")
	c.send("BDAT 0 LAST\r\n")
	c.expect("452 4.3.1")
	runDialog(t, c, []step{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}})
	c.send("BDAT 1200 LAST\r\n" + strings.Repeat("y", 1200))
	c.expect("552 5.3.4")

	if got := ehloSize(c); got != "SIZE 100" {
		t.Fatalf("second EHLO: %q, want SIZE 100", got)
	}
	runDialog(t, c, []step{{"MAIL FROM:<a@b.test> SIZE=500", "552 5.3.4"}, {"MAIL FROM:<a@b.test> SIZE=100", "250 "}})
	if n := len(rs.Messages()); n != 0 {
		t.Fatalf("sink got %d messages", n)
	}
}

// After HELO no SIZE was offered: over the bound is 552, as before.
func TestSizeBoundAfterHELO(t *testing.T) {
	rs := &boundedSink{}
	rs.bound.Store(100)
	_, addr := startServer(t, Config{Sink: rs, MaxMessageSize: 10000})
	c := dial(t, addr)
	ehloSize(c)
	runDialog(t, c, []step{{"HELO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	c.send(strings.Repeat("x", 498) + "\r\n.\r\n")
	c.expect("552 5.3.4")
}

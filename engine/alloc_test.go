package engine

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// Allocation budgets of a session, measured through the memConn harness:
// what the event loop itself costs, without gnet and sockets. Once a
// session is warm, commands that do not start a message and the octets of
// a body cost nothing; a message costs its queue ID.

const (
	allocEHLO     = "EHLO client.test\r\n"
	allocEnvelope = "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n"
)

// allocBody is n octets of a plausible message body in 78-octet lines.
func allocBody(n int) []byte {
	var b bytes.Buffer
	b.WriteString("From: a@b.test\r\nTo: c@d.test\r\nSubject: allocation test\r\n\r\n")
	line := strings.Repeat("abcdefghijklmnopqrstuvwxyz", 3)[:76] + "\r\n"
	for b.Len()+len(line) <= n {
		b.WriteString(line)
	}
	b.WriteString(strings.Repeat("z", n-b.Len()))
	return b.Bytes()
}

// pass feeds b and runs one OnTraffic callback.
func (h *memHarness) pass(b []byte) {
	h.conn.feed(b)
	h.traffic()
}

func TestSessionAllocsPipelinedCommands(t *testing.T) {
	h := newMemHarness(t, Config{Sink: &sink.Null{}}, false)
	h.pass([]byte(allocEHLO))
	batch := []byte("NOOP\r\nRSET\r\n" + allocEnvelope + "RSET\r\n")
	want := "250 2.0.0 OK\r\n250 2.0.0 OK\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.0.0 OK\r\n"
	start := len(h.transcript)
	h.pass(batch)
	if got := string(h.transcript[start:]); got != want {
		t.Fatalf("replies to the batch:\n%q\nwant\n%q", got, want)
	}
	h.discard = true
	for i := 0; i < 10; i++ {
		h.pass(batch)
	}
	written := h.written
	if n := testing.AllocsPerRun(200, func() { h.pass(batch) }); n != 0 && !raceEnabled {
		t.Errorf("a pipelined batch without a message: %v allocations per pass, want 0", n)
	}
	if got, want := h.written-written, 201*len(want); got != want || h.closed {
		t.Errorf("%d octets of replies over the measured passes, want %d (closed: %v)", got, want, h.closed)
	}
}

func TestSessionAllocsDataStreaming(t *testing.T) {
	const runs = 200
	chunk := allocBody(4096)[:4096-2]
	chunk = append(chunk, "\r\n"...)
	total := (runs + 1) * len(chunk) // AllocsPerRun runs once more to warm up

	h := newMemHarness(t, Config{Sink: &sink.Null{}}, true)
	h.pass([]byte(allocEHLO))
	// A first message as big as the measured one: the pooled buffer the
	// next one gets has grown already, as it has on a busy server.
	h.pass([]byte(allocEnvelope + "DATA\r\n"))
	for i := 0; i < runs+2; i++ {
		h.pass(chunk)
	}
	h.pass([]byte(".\r\n"))
	h.pass([]byte(allocEnvelope + "DATA\r\n"))
	if h.sess.state != stData {
		t.Fatalf("session state %d after DATA, want stData", h.sess.state)
	}
	if b := h.sess.msg.Data; cap(b.B)-len(b.B) < total {
		// The pool handed out another buffer (sync.Pool is per P): grow
		// it here, since growing the buffer is the pool's amortized cost,
		// not the per-chunk cost measured below.
		b.B = slices.Grow(b.B, total)
		t.Logf("the pool gave a buffer of %d octets; grown to %d", len(b.B), cap(b.B))
	}
	written := h.written
	if n := testing.AllocsPerRun(runs, func() { h.pass(chunk) }); n != 0 && !raceEnabled {
		t.Errorf("a chunk of a DATA body: %v allocations per pass, want 0", n)
	}
	if h.written != written || h.sess.state != stData {
		t.Fatalf("the body chunks were answered or ended DATA")
	}
	h.discard = false
	h.pass([]byte(".\r\n"))
	if !strings.HasPrefix(string(h.transcript), "250 2.0.0 OK queued as ") {
		t.Fatalf("end of the message answered %q", h.transcript)
	}
}

// TestSessionAllocsPerMessage reports what one whole transaction costs,
// EHLO to the 250 after the final dot, in one read (a pipelining client)
// with a sink that completes at once. The queue ID is a string: one
// allocation; nothing else in the session allocates.
func TestSessionAllocsPerMessage(t *testing.T) {
	body := allocBody(2048)
	txn := []byte(allocEHLO + allocEnvelope + "DATA\r\n" + string(body) + "\r\n.\r\n")
	for _, name := range []string{"one read", "read per command"} {
		h := newMemHarness(t, Config{Sink: &sink.Null{}}, true)
		send := func() { h.pass(txn) }
		if name == "read per command" {
			parts := [][]byte{[]byte(allocEHLO), []byte("MAIL FROM:<a@b.test>\r\n"), []byte("RCPT TO:<c@d.test>\r\n"),
				[]byte("DATA\r\n"), append(slices.Clone(body), "\r\n.\r\n"...)}
			send = func() {
				for _, p := range parts {
					h.pass(p)
				}
			}
		}
		for i := 0; i < 20; i++ {
			send()
		}
		n := testing.AllocsPerRun(200, send)
		t.Logf("%s: %v allocations per message (2 KB body)", name, n)
		if n > 1 && !raceEnabled {
			t.Errorf("%s: %v allocations per message, want at most 1 (the queue ID)", name, n)
		}
		if got, want := h.srv.stats.MessagesBy(OutcomeAccepted), int64(20+201); got != want || h.closed {
			t.Errorf("%s: %d messages accepted, want %d (closed: %v)", name, got, want, h.closed)
		}
	}
}

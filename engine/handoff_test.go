package engine

import (
	"strings"
	"sync"
	"testing"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

const handoffTxn = "EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nbody\r\n.\r\n"

// TestHandoffInsideSubmit: a sink that completes inside Submit is answered
// in the same pass, without waking the loop.
func TestHandoffInsideSubmit(t *testing.T) {
	h := newMemHarness(t, Config{Sink: &sink.Null{}}, false)
	h.pass([]byte(handoffTxn))
	if !strings.Contains(string(h.transcript), "\r\n250 2.0.0 OK queued as ") {
		t.Fatalf("no 250 in the pass that submitted: %q", h.transcript)
	}
	if n := h.conn.wakes.Load(); n != 0 {
		t.Fatalf("%d wakes for a completion inside Submit, want 0", n)
	}
	if got := h.sess.handoff.Load(); got != idle {
		t.Fatalf("hand-off %d after the verdict was written, want idle", got)
	}
}

// TestHandoffLater: a sink that completes after Submit wakes the loop
// once, and the wake writes the 250.
func TestHandoffLater(t *testing.T) {
	rec := &smtptest.Recorder{Deferred: true}
	h := newMemHarness(t, Config{Sink: rec}, false)
	h.pass([]byte(handoffTxn))
	if strings.Contains(string(h.transcript), "250 2.0.0 OK queued as") {
		t.Fatalf("answered before the sink did: %q", h.transcript)
	}
	rec.CompletePending()
	if n := h.conn.wakes.Load(); n != 1 {
		t.Fatalf("%d wakes for one completion, want 1", n)
	}
	h.deliverWakes()
	if !strings.HasSuffix(string(h.transcript), "250 2.0.0 OK queued as "+rec.Messages()[0].QueueID+"\r\n") {
		t.Fatalf("the wake did not write the 250: %q", h.transcript)
	}
}

// TestHandoffCloseRacesComplete: the connection closes on the loop while
// the sink completes on its own goroutine. Whichever comes first, the
// message's in-flight octets are given back exactly once: never leaked,
// never twice (which would drive the counter below zero). Run with -race.
func TestHandoffCloseRacesComplete(t *testing.T) {
	for i := range 300 {
		rec := &smtptest.Recorder{Deferred: true}
		h := newMemHarness(t, Config{Sink: rec}, false)
		h.pass([]byte(handoffTxn))
		if rec.Pending() != 1 || h.srv.stats.InFlightBytes.Load() == 0 {
			t.Fatalf("run %d: %d messages with the sink, %d octets held", i, rec.Pending(), h.srv.stats.InFlightBytes.Load())
		}
		var wg sync.WaitGroup
		wg.Go(rec.CompletePending)
		h.close()
		wg.Wait()
		if n := h.srv.stats.InFlightBytes.Load(); n != 0 {
			t.Fatalf("run %d: %d in-flight octets after close and completion, want 0", i, n)
		}
	}
}

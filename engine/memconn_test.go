package engine

import (
	"io"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/panjf2000/gnet/v2"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// memConn is a connection without a socket: the session reads from in and
// writes to out, as it would from gnet's inbound and outbound buffers. The
// harness appends client bytes to in and takes the replies from out. It
// follows gnet's semantics where the session could tell the difference
// (Peek(n <= 0) returns everything, Discard(n <= 0) discards everything).
type memConn struct {
	in    []byte // unconsumed input is in[r:]
	r     int
	out   []byte // written by the session, not yet taken by the harness
	wakes atomic.Int32
}

var _ conn = (*memConn)(nil)

func (c *memConn) Peek(n int) ([]byte, error) {
	buf := c.in[c.r:]
	if n > len(buf) {
		return nil, io.ErrShortBuffer
	}
	if n <= 0 {
		return buf, nil
	}
	return buf[:n], nil
}

func (c *memConn) Discard(n int) (int, error) {
	left := len(c.in) - c.r
	if n <= 0 || n >= left {
		// Everything read: start over at the front, keeping the array,
		// so that a long run does not grow the buffer.
		c.in, c.r = c.in[:0], 0
		return left, nil
	}
	c.r += n
	return n, nil
}

func (c *memConn) InboundBuffered() int { return len(c.in) - c.r }

func (c *memConn) Write(b []byte) (int, error) {
	c.out = append(c.out, b...)
	return len(b), nil
}

// OutboundBuffered is what the client has not read yet: the harness takes
// out after every callback, so this is the size of the write in progress.
func (c *memConn) OutboundBuffered() int { return len(c.out) }

// Wake records a wake; the harness delivers it by calling onTraffic again,
// as gnet would on the session's loop.
func (c *memConn) Wake(gnet.AsyncCallback) error {
	c.wakes.Add(1)
	return nil
}

// feed appends client bytes. Consumed input is dropped first, so that the
// buffer stays as small as what the session has not read.
func (c *memConn) feed(b []byte) {
	if c.r > 0 {
		n := copy(c.in, c.in[c.r:])
		c.in, c.r = c.in[:n], 0
	}
	c.in = append(c.in, b...)
}

// memHarness drives one session on the calling goroutine: it plays the
// event loop (onTraffic for input and for wakes, closed on close) and
// collects everything the session wrote.
type memHarness struct {
	tb   testing.TB
	srv  *Server
	conn *memConn
	sess *session
	now  time.Time

	// transcript is every byte the session wrote, greeting included,
	// unless discard is set (allocation tests and benchmarks), when only
	// written counts them.
	transcript []byte
	discard    bool
	written    int
	closed     bool
	callbacks  int // onTraffic calls
}

// memNow is the fixed clock of harness sessions: the same instant for
// every call, so that no timeout ever fires and two runs of one input
// are comparable byte for byte (the Received: header carries the date).
var memNow = time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC)

// memRemote is the client address of harness sessions (RFC 5737).
var memRemote = netip.MustParseAddrPort("192.0.2.7:40000")

// newMemHarness builds a server (which does not listen) and one session
// on a memConn, opened as OnOpen opens it (counted, PROXY header awaited
// from a trusted address, client policy, greeting). Zero fields of cfg
// take the same values as startServer's, with a Recorder as the sink.
func newMemHarness(tb testing.TB, cfg Config, discard bool) *memHarness {
	tb.Helper()
	if cfg.Listen == nil {
		cfg.Listen = []string{"127.0.0.1:0"}
	}
	if cfg.Hostname == "" {
		cfg.Hostname = "mx.test"
	}
	if cfg.Sink == nil {
		cfg.Sink = &smtptest.Recorder{}
	}
	srv, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	h := &memHarness{tb: tb, srv: srv, conn: &memConn{}, now: memNow, discard: discard}
	viaProxy := trusted(srv.settings().TrustedProxies, memRemote.Addr())
	if _, ok := srv.admit(memRemote.Addr(), !viaProxy); !ok {
		tb.Fatalf("the harness connection was refused")
	}
	h.sess = newSession(srv, h.conn, memRemote)
	h.sess.countedIP = !viaProxy
	switch {
	case trusted(srv.settings().TrustedProxies, memRemote.Addr()):
		h.sess.state = stProxy
		h.sess.setDeadline(h.now)
	default:
		reply, ok := h.sess.admitClient(h.now)
		if !ok {
			h.take(reply)
			h.close()
			break
		}
		h.take(h.sess.open(h.now))
	}
	return h
}

func (h *memHarness) take(b []byte) {
	h.written += len(b)
	if !h.discard {
		h.transcript = append(h.transcript, b...)
	}
}

// traffic is one OnTraffic callback.
func (h *memHarness) traffic() {
	if h.closed {
		return
	}
	h.callbacks++
	action := h.sess.onTraffic(h.conn, h.now)
	h.take(h.conn.out)
	h.conn.out = h.conn.out[:0]
	if action == gnet.Close {
		h.close()
	}
}

// close is OnClose: the connection is gone, whoever closed it.
func (h *memHarness) close() {
	if h.closed {
		return
	}
	h.closed = true
	h.conn.in, h.conn.r = h.conn.in[:0], 0
	h.srv.release(h.sess.remote.Addr(), h.sess.countedIP)
	h.sess.closed()
}

// deliverWakes runs one onTraffic per smtptest.Recorded wake, as gnet runs one
// task per Conn.Wake.
func (h *memHarness) deliverWakes() {
	for n := h.conn.wakes.Swap(0); n > 0; n-- {
		h.traffic()
	}
}

// send is one step of the client: what the sink was holding completes
// (a broker answers "later", i.e. before the next packet), the loop runs
// the wakes, then b arrives and the loop runs OnTraffic.
func (h *memHarness) send(b []byte) {
	h.complete()
	if h.closed {
		return
	}
	h.conn.feed(b)
	h.traffic()
}

// complete lets a Deferred Recorder answer what it holds and delivers the wakes.
func (h *memHarness) complete() {
	if ss, ok := h.srv.settings().Sink.(*smtptest.Recorder); ok {
		ss.CompletePending()
	}
	h.deliverWakes()
}

// settle completes and wakes until the session has nothing left to do
// with the input it has, bounded by count: each round either finishes a
// message or nothing is pending.
func (h *memHarness) settle() {
	for i := 0; i < 1<<20; i++ {
		ss, _ := h.srv.settings().Sink.(*smtptest.Recorder)
		if (ss == nil || ss.Pending() == 0) && h.conn.wakes.Load() == 0 {
			return
		}
		h.complete()
	}
	h.tb.Fatalf("session did not settle")
}

// TestMemConnHarness checks the harness itself against a dialog whose
// bytes are known, both sink modes: it must be a faithful loop.
func TestMemConnHarness(t *testing.T) {
	for _, deferred := range []bool{false, true} {
		ss := &smtptest.Recorder{Deferred: deferred}
		h := newMemHarness(t, Config{Sink: ss}, false)
		h.send([]byte("EHLO client.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"))
		h.send([]byte("Subject: x\r\n\r\n..dot\r\n.\r\nNOOP\r\n"))
		if deferred && ss.Pending() != 1 {
			t.Fatalf("deferred: %d messages pending, want 1", ss.Pending())
		}
		h.send([]byte("QUIT\r\n"))
		h.settle()
		if !h.closed {
			t.Fatalf("deferred=%v: session open after QUIT", deferred)
		}
		msgs := ss.Messages()
		if len(msgs) != 1 {
			t.Fatalf("deferred=%v: sink got %d messages", deferred, len(msgs))
		}
		m := msgs[0]
		want := "220 mx.test ESMTP\r\n" +
			string(h.srv.settings().replies.ehlo) +
			"250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n" +
			"250 2.0.0 OK queued as " + m.QueueID + "\r\n" +
			"250 2.0.0 OK\r\n" +
			"221 2.0.0 mx.test Bye\r\n"
		if got := string(h.transcript); got != want {
			t.Fatalf("deferred=%v: transcript\n%q\nwant\n%q", deferred, got, want)
		}
		wantData := "Received: from client.test ([192.0.2.7])\r\n\tby mx.test (lsmtp) with ESMTP id " + m.QueueID +
			"\r\n\tfor <c@d.test>;\r\n\tSat, 14 Mar 2026 15:09:26 +0000\r\nSubject: x\r\n\r\n.dot\r\n"
		if m.Data != wantData {
			t.Fatalf("deferred=%v: data\n%q\nwant\n%q", deferred, m.Data, wantData)
		}
		if n := h.srv.stats.InFlightBytes.Load(); n != 0 {
			t.Fatalf("deferred=%v: %d in-flight bytes after the session ended", deferred, n)
		}
	}
}

// TestOverlongLineAcrossReads: a command line over MaxLineLength that
// arrives in several reads (TCP segments) gets exactly one 500 5.5.6 at
// its end, like one that arrives whole, and the session stays in step
// with the client (RFC 2920 §3.1: one reply per command, in order).
func TestOverlongLineAcrossReads(t *testing.T) {
	input := "NOOP " + strings.Repeat("b", 2000) + "\r\nNOOP\r\n"
	want := "220 mx.test ESMTP\r\n500 5.5.6 Line too long\r\n250 2.0.0 OK\r\n"
	for _, size := range []int{len(input), 700, 512, 100, 1} {
		h := newMemHarness(t, Config{}, false)
		for rest := []byte(input); len(rest) > 0; {
			n := min(size, len(rest))
			h.send(rest[:n])
			rest = rest[n:]
		}
		if got := string(h.transcript); got != want {
			t.Errorf("line in reads of %d octets: replies\n%q\nwant\n%q", size, got, want)
		}
	}
}

package engine

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
)

// tlsConn is the connection of a session that left its event loop for
// TLS. One goroutine (run) owns the session from the hand-off on: it
// reads, runs the session's passes and writes, as the loop did. Wake may
// be called from any goroutine.
type tlsConn struct {
	sess *session
	raw  net.Conn
	tc   *tls.Conn // run's

	// in holds decrypted input the session has not consumed: in[r:w].
	// run's.
	in   []byte
	r, w int
	// small is the initial buffer, kept for the life of the session;
	// body is in while it is one of bodyBufs; full: the last read
	// filled in. run's.
	small []byte
	body  *[tlsBodyBuffer]byte
	full  bool

	// readArmed and writeArmed are the deadlines last given to the
	// connection (Unix ns; 0: unknown, set again), run's. The
	// session's deadline moves with every command, and moving the
	// poller's timer at every read and write costs as much as a small
	// command's pass (setDeadlineImpl, a timer modification each), so
	// they move only when they must (rearm).
	readArmed, writeArmed int64

	// woken asks run for a pass without new input (the sink's verdict,
	// the ticker, Shutdown). ready is set once the handshake is done:
	// before it a wake must not cut the handshake's read short.
	woken atomic.Bool
	ready atomic.Bool
}

// tlsInitialBuffer is the input buffer a TLS session starts with; it
// grows only for a line or a pipelined burst that does not fit, and for
// a message body that comes faster than it holds (tlsBodyBuffer).
const tlsInitialBuffer = 4 << 10

// tlsBodyBuffer is the input buffer of a session reading a message body
// that filled the initial one: room for a whole TLS record (RFC 8446
// §5.1: at most 2^14 octets of plaintext), so that one Read takes a
// record and one pass handles it, not four of 4 KiB, each with its
// read, its deadline and its pass. It comes from bodyBufs and goes back
// once the body is read.
const tlsBodyBuffer = 16 << 10

var bodyBufs = sync.Pool{New: func() any { return new([tlsBodyBuffer]byte) }}

// HandshakeFailure says why a TLS handshake did not complete.
type HandshakeFailure uint8

const (
	HandshakeTimeout HandshakeFailure = iota // Config.HandshakeTimeout passed
	HandshakeBusy                            // Config.MaxHandshakes were running; no slot came free in time
	HandshakeVersion                         // the client offered no version we speak (below TLSMinVersion)
	HandshakeEOF                             // the client went away
	HandshakeBad                             // anything else: not TLS, a bad record, no common cipher
	HandshakePerIP                           // Config.MaxHandshakesPerIP of the client's were running; none came free in time
	numHandshakeFailures
)

var handshakeFailureNames = [numHandshakeFailures]string{"timeout", "busy", "version", "eof", "bad", "per_ip"}

func (f HandshakeFailure) String() string { return handshakeFailureNames[f] }

// HandshakeFailures for the exporter.
func HandshakeFailures() []HandshakeFailure {
	r := make([]HandshakeFailure, numHandshakeFailures)
	for i := range r {
		r[i] = HandshakeFailure(i)
	}
	return r
}

// handshakeWait is how long a handshake waits for its slots (its
// client's, then the server's) when MaxHandshakesPerIP or MaxHandshakes
// are running, before the connection is closed.
const handshakeWait = time.Second

// handOff runs in OnClose, on the loop, for a session whose STARTTLS 220
// was written (or that came in on a TLS listener). It takes the
// connection away from gnet: a duplicate of the descriptor goes to Go's
// poller and gnet closes its own. Input gnet still holds is dropped
// unread: what a client pipelines behind STARTTLS was sent in the clear
// and must never run after the handshake (CVE-2011-0411). It returns
// false when the hand-off cannot be done; the session then ends as any
// other.
func (s *Server) handOff(sess *session, c gnet.Conn, closeErr error) bool {
	st := &s.stats.TLS
	if closeErr != nil || c.OutboundBuffered() > 0 {
		// The 220 is not all out: a client that does not read.
		st.HandshakeFailed[HandshakeEOF].Add(1)
		return false
	}
	var early []byte
	if n := c.InboundBuffered(); n > 0 && sess.sec.kind == kindTLS {
		// Implicit TLS behind a PROXY header: what followed the header
		// is the ClientHello.
		b, _ := c.Peek(n)
		early = append([]byte(nil), b...)
	} else if n > 0 {
		st.DiscardedBytes.Add(int64(n))
	}
	fd, err := c.Dup()
	if err != nil {
		sess.cfg.Logger.Warn("TLS hand-off: dup", "err", err)
		return false
	}
	f := os.NewFile(uintptr(fd), "")
	raw, err := net.FileConn(f) // another duplicate, in Go's poller
	_ = f.Close()
	if err != nil {
		sess.cfg.Logger.Warn("TLS hand-off: FileConn", "err", err)
		return false
	}
	if early != nil {
		raw = &prefixConn{Conn: raw, early: early}
	}
	t := &tlsConn{sess: sess, raw: raw}
	sess.io = t
	sess.tls.Store(t) // from here on, Wake reaches the goroutine
	go t.run()
	return true
}

// run is the session's goroutine: the handshake, then passes until the
// session closes. It releases what OnOpen counted when it ends.
func (t *tlsConn) run() {
	s := t.sess
	srv := s.srv
	defer func() {
		_ = t.raw.Close()
		srv.endSession(s)
		if t.body != nil {
			bodyBufs.Put(t.body)
		}
	}()
	if !t.handshake() {
		return
	}
	st := &srv.stats.TLS
	st.Sessions.Add(1)
	defer st.Sessions.Add(-1)
	defer func() {
		if s.sec.authUser != nil {
			st.AuthSessions.Add(-1)
		}
	}()
	for {
		if s.onTraffic(t, time.Now()) == gnet.Close {
			_ = t.tc.CloseWrite() // close_notify, best effort
			return
		}
		if !t.read() {
			return
		}
	}
}

// handshake runs the TLS handshake under its own timeout, the client's
// bound on handshakes at once and the server's. The client's slot is
// taken first, so that a client waiting for one holds none of the
// server's: one address cannot take them all.
func (t *tlsConn) handshake() bool {
	s := t.sess
	srv := s.srv
	cfg := srv.settings()
	st := &srv.stats.TLS
	var timer *time.Timer // one wait for both slots, made only if one is not free
	wait := func() <-chan time.Time {
		if timer == nil {
			timer = time.NewTimer(handshakeWait)
		}
		return timer.C
	}
	key := srv.clientKey(s.remote.Addr())
	slot, ok := srv.tls.perIP.take(key, wait)
	if !ok {
		st.HandshakeFailed[HandshakePerIP].Add(1)
		return false
	}
	defer srv.tls.perIP.give(key, slot)
	select {
	case srv.tls.handshakes <- struct{}{}:
	default:
		select {
		case srv.tls.handshakes <- struct{}{}:
		case <-wait():
			st.HandshakeFailed[HandshakeBusy].Add(1)
			return false
		}
	}
	if timer != nil {
		timer.Stop()
	}
	start := time.Now()
	_ = t.raw.SetDeadline(start.Add(cfg.HandshakeTimeout))
	t.tc = tls.Server(t.raw, srv.tls.conf.Load())
	err := t.tc.HandshakeContext(context.Background())
	<-srv.tls.handshakes
	if err != nil {
		why := handshakeFailure(err)
		st.HandshakeFailed[why].Add(1)
		if log := cfg.Logger; log.Enabled(context.Background(), slog.LevelDebug) {
			log.LogAttrs(context.Background(), slog.LevelDebug, "TLS handshake failed",
				slog.String("client", s.ipText), slog.String("reason", why.String()), slog.String("err", err.Error()))
		}
		return false
	}
	_ = t.raw.SetDeadline(time.Time{})
	cs := t.tc.ConnectionState()
	st.countHandshake(cs.Version)
	t.small = make([]byte, tlsInitialBuffer)
	t.in = t.small
	s.established(&cs, time.Now())
	t.ready.Store(true)
	return true
}

// handshakeFailure classifies a handshake error for the counters.
func handshakeFailure(err error) HandshakeFailure {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return HandshakeTimeout
	case errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed), errors.Is(err, io.ErrUnexpectedEOF):
		return HandshakeEOF
	case strings.Contains(err.Error(), "unsupported versions"), strings.Contains(err.Error(), "protocol version"):
		return HandshakeVersion
	}
	return HandshakeBad
}

// read waits for input or a wake. It returns false when the connection
// is done: the client left, or an input burst the session cannot take.
func (t *tlsConn) read() bool {
	s := t.sess
	for {
		if t.woken.Swap(false) {
			t.readArmed = 0 // the wake moved the deadline to now
			return true
		}
		if t.full && t.body == nil && s.inBody() && len(t.in) < tlsBodyBuffer {
			t.useBody()
		}
		if t.w == len(t.in) && !t.grow() {
			return false
		}
		if want := s.deadline.Load(); rearm(t.readArmed, want, time.Now().UnixNano()) {
			var d time.Time
			if want != 0 {
				d = time.Unix(0, want)
			}
			_ = t.tc.SetReadDeadline(d)
			t.readArmed = want
			if t.woken.Load() {
				continue // a wake between the Swap and the deadline above
			}
		}
		n, err := t.tc.Read(t.in[t.w:])
		t.w += n
		t.full = t.w == len(t.in)
		switch {
		case n > 0:
			return true
		case err == nil:
		case isTimeout(err):
			// A wake (which moved the deadline to now), the session's
			// deadline, or an armed one a little early: a pass decides
			// which, and the next read arms again.
			t.readArmed = 0
			return true
		default:
			return false // EOF, a reset, a bad record
		}
	}
}

// rearmSlack is how much earlier than the session's deadline an armed
// read deadline may stay: it fires, a pass finds nothing due, and the
// next read arms the right one.
const rearmSlack = int64(time.Second)

// rearm says whether the read deadline armed (Unix ns, 0 unknown) must
// be moved for the session's deadline want (0: none): when nothing is
// armed or it passed, when want is earlier, or later by rearmSlack or
// more. For want 0 an armed deadline stays until it fires.
func rearm(armed, want, now int64) bool {
	switch {
	case armed == 0 || armed <= now:
		return true
	case want == 0:
		return false
	}
	return want < armed || want-armed >= rearmSlack
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// grow makes room at the end of in: by moving the unread bytes to the
// front, else by doubling, up to what a session may leave unread (a line
// plus the pipeline backlog). Past that the session is not consuming:
// false.
func (t *tlsConn) grow() bool {
	if t.r > 0 {
		t.w = copy(t.in, t.in[t.r:t.w])
		t.r = 0
		return true
	}
	cfg := t.sess.cfg
	limit := cfg.MaxPipelineBacklog + max(cfg.MaxLineLength, authLineMax) + 1
	if len(t.in) >= limit {
		return false
	}
	n := min(2*len(t.in), limit)
	in := make([]byte, n)
	copy(in, t.in[:t.w])
	t.in = in
	if t.body != nil {
		bodyBufs.Put(t.body)
		t.body = nil
	}
	return true
}

// useBody moves the unread input into one of bodyBufs and reads into it
// from here on.
func (t *tlsConn) useBody() {
	b := bodyBufs.Get().(*[tlsBodyBuffer]byte)
	t.w = copy(b[:], t.in[t.r:t.w])
	t.r = 0
	t.in, t.body = b[:], b
}

// inBody: the session is reading a DATA or BDAT body.
func (s *session) inBody() bool { return s.state == stData || s.state == stBDAT }

// Peek, Discard, InboundBuffered, Write and OutboundBuffered make a
// tlsConn the session's conn; run calls them, from the session's passes.
func (t *tlsConn) Peek(n int) ([]byte, error) {
	if n < 0 || n > t.w-t.r {
		n = t.w - t.r
	}
	return t.in[t.r : t.r+n], nil
}

// Discard drops what a pass consumed. Once all is read, a buffer that
// grew for a long line or a burst goes back to the initial size: it is
// not kept for the life of the connection (flush does the same for
// out); the body buffer goes back once the body is read.
func (t *tlsConn) Discard(n int) (int, error) {
	n = min(n, t.w-t.r)
	t.r += n
	if t.r == t.w {
		t.r, t.w = 0, 0
		switch {
		case t.body != nil && !t.sess.inBody():
			bodyBufs.Put(t.body)
			t.body = nil
			t.in = t.small
		case t.body == nil && len(t.in) > tlsInitialBuffer:
			t.in = t.small
		}
	}
	return n, nil
}

func (t *tlsConn) InboundBuffered() int { return t.w - t.r }

// held is the input a session charges for (session.charge): its unread
// octets, or all of its buffer beyond the initial size when that is
// more, so that a grown buffer counts against Config.MaxSessionBuffers
// like unread input in gnet's.
func (t *tlsConn) held() int { return max(t.w-t.r, len(t.in)-tlsInitialBuffer) }

// Write sends at once; a client that stops reading makes it fail after
// the idle timeout (less at most rearmSlack, or half of it when it is
// shorter: the deadline moves only when less is left) rather than hold
// the goroutine for ever. A write that times out leaves crypto/tls's
// state broken, so the deadline must never be near for a client that
// reads.
func (t *tlsConn) Write(b []byte) (int, error) {
	idle := int64(t.sess.cfg.IdleTimeout)
	if now := time.Now(); t.writeArmed-now.UnixNano() < idle-min(rearmSlack, idle/2) {
		t.writeArmed = now.UnixNano() + idle
		_ = t.tc.SetWriteDeadline(time.Unix(0, t.writeArmed))
	}
	return t.tc.Write(b)
}

// OutboundBuffered is 0: Write returns once the octets are with the
// kernel.
func (t *tlsConn) OutboundBuffered() int { return 0 }

// Wake asks run for a pass; any goroutine may call it. It cuts a read
// short by moving its deadline to now. Before the handshake is done only
// a forced shutdown does that.
func (t *tlsConn) Wake(gnet.AsyncCallback) error {
	t.woken.Store(true)
	switch {
	case t.ready.Load():
		return t.tc.SetReadDeadline(time.Now())
	case t.sess.srv.force.Load():
		return t.raw.SetDeadline(time.Now())
	}
	return nil
}

// wake asks whoever owns the session for a pass: its event loop, or its
// TLS goroutine after a hand-off. Any goroutine may call it.
func (s *session) wake() {
	if t := s.tls.Load(); t != nil {
		_ = t.Wake(nil)
		return
	}
	_ = s.conn.Wake(nil)
}

// prefixConn reads early first: octets gnet had read before the hand-off.
type prefixConn struct {
	net.Conn
	early []byte // the TLS goroutine's
}

func (p *prefixConn) Read(b []byte) (int, error) {
	if len(p.early) > 0 {
		n := copy(b, p.early)
		p.early = p.early[n:]
		return n, nil
	}
	return p.Conn.Read(b)
}

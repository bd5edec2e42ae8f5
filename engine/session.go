package engine

import (
	"context"
	"log/slog"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/panjf2000/gnet/v2"
	"github.com/valyala/bytebufferpool"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/proxyproto"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// state is what the session is reading; onTraffic has one method for each.
type state uint8

const (
	stProxy    state = iota // waiting for a trusted load balancer's PROXY header
	stGreeting              // greeting held back (Config.GreetDelay)
	stCommand               // command lines
	stData                  // a DATA body, until CRLF.CRLF
	stBDAT                  // the octets of a BDAT chunk
	stWaiting               // message handed to the sink; input waits (RFC 2920 §3.1: replies in order)
	stAuth                  // an AUTH exchange: base64 responses to 334 challenges (auth.go)
)

var sessionIDs atomic.Uint64

// outputHighMark is how many octets of unsent replies a session may have
// before it stops taking commands. A client that pipelines (RFC 2920) but
// reads its replies never comes near it: a pipelined group is a few
// commands, and gnet writes their replies to the socket at once.
const outputHighMark = 64 << 10

// Session buffers against Config.MaxSessionBuffers. A session holds
// buffers between passes: input it has not taken (pipelined behind a
// command that waits, or while paused), replies gnet has not sent, and
// the array of out. At the end of every pass it charges what it holds to
// Stats.SessionBuffers. gnet (v2.9.7) gives an inbound ring back to its
// pool whenever a pass takes all the input, and frees its outbound
// buffer as it drains, so what is counted is what stays; a ring never
// shrinks while it holds a byte, which the per-session bounds keep small.
const (
	// bufferShare is what a session may always hold: past the budget it
	// neither waits nor is closed below it, so that a budget used up by
	// clients that do not read leaves the others served. An honest
	// client holds nothing between passes, or a partial line.
	bufferShare = 16 << 10
	// outKeep is the largest array of out kept from one pass to the next;
	// a larger one (a flood of pipelined commands) is dropped after its
	// write rather than held for the life of the connection.
	outKeep = 4 << 10
)

// conn is what a session needs of its connection: the part of gnet.Conn
// it uses, so that tests and the session fuzzer can drive a session
// without sockets. All but Wake are called on the event loop only.
type conn interface {
	Peek(n int) ([]byte, error)
	Discard(n int) (int, error)
	Write(b []byte) (int, error)
	InboundBuffered() int
	OutboundBuffered() int
	Wake(callback gnet.AsyncCallback) error // any goroutine
}

// span locates bytes in session.env.
type span struct{ start, end int }

// handoff is where the message a session submitted stands: one word that
// the loop and the sink's completion both change, each move one atomic
// step on it.
//
//	idle → submitting      loop, just before Sink.Submit
//	submitting → answered  Complete inside Submit: no wake, the loop looks next
//	submitting → withSink  loop, once Submit returned (CompareAndSwap: fails if answered)
//	withSink → answered    Complete on another goroutine: it wakes the loop
//	answered → idle        loop, in finishMessage
//	withSink → abandoned   loop, in closed (CompareAndSwap: fails if answered)
//	abandoned → answered   Complete, which then releases the in-flight bytes
//
// withSink is left by exactly one of Complete and closed. If Complete
// leaves it, the loop releases the message's in-flight bytes (in
// finishMessage, or in closed if the connection went first); if closed
// does, Complete releases them. So they are released once.
type handoff = uint32

const (
	idle       handoff = iota // no message with the sink
	submitting                // the loop is inside Sink.Submit: a completion there needs no wake
	withSink                  // the sink has the message; the loop waits for Complete's wake
	answered                  // Complete ran; sinkErr is the verdict
	abandoned                 // the connection closed while the sink had the message
)

// session is one SMTP connection. It belongs to its event loop ("loop"
// below): the loop is the only goroutine that touches a field, except
// where the field says otherwise.
type session struct {
	// Set in newSession, never written again; read from any goroutine.
	srv  *Server
	conn conn // Wake from any goroutine (the sink, the ticker, Shutdown) while tls is nil
	id   uint64

	// tls is set once, on the loop, when the session leaves it for TLS
	// (tlsconn.go); from then on wake reaches the session's goroutine.
	tls atomic.Pointer[tlsConn]
	// io is the connection the owner reads and writes: conn, then the
	// tlsConn. The owner's (the loop, then the TLS goroutine).
	io  conn
	sec secState // TLS and AUTH state (tls.go); the owner's

	cfg    *settings // loop; refreshed at the start of every pass (Server.Reload)
	remote netip.AddrPort
	ipText string // remote IP as text, made once per connection
	// countedIP: remote counts against MaxConnsPerIP (false for a load
	// balancer's connection until its PROXY header names the client, or
	// the balancer itself for LOCAL and UNKNOWN).
	countedIP bool

	state      state
	greetAt    time.Time
	commands   int  // commands seen, for the first-command checks
	spoke      bool // the client sent command bytes (a TLS record can only be first)
	errors     int  // protocol errors, see Config.MaxErrors
	closeAfter bool // close once out is written
	out        []byte

	lines codec.CommandReader
	data  codec.DataReader
	cmd   codec.Command

	// Greeting state (RFC 5321 §4.1.1.1). helo is the argument when it
	// is a domain or address literal (heloOK), else its sanitised form
	// (appendHeloComment).
	helo   []byte
	heloOK bool
	ehlo   bool

	// XCLIENT (xclient.go). xclientOK: the TCP peer may send it; xhelo:
	// helo came from XCLIENT HELO= and the relay's own HELO/EHLO after it
	// does not replace it; xbuf: decoded attribute values.
	xclientOK bool
	xhelo     bool
	xbuf      []byte

	// sizeOffered is the SIZE this session's last EHLO advertised, 0
	// before one (or after HELO): a message over the bound in force but
	// within it is refused with a 4xx (sizeRefusal).
	sizeOffered int64

	// Transaction state, cleared by resetTransaction.
	hasMail   bool
	params    codec.MailParams
	env       []byte // sender then recipients, back to back
	sender    span
	rcpts     []span
	domains   []span       // the distinct recipient domains, when the sink's Limits count them
	bdat      bool         // a BDAT transaction has started (RFC 3030 §2: no DATA then)
	txFailed  *codec.Reply // a BDAT chunk failed; later chunks are read, discarded and answered with this
	txOutcome Outcome      // counted when the failed BDAT transaction ends
	chunkLeft int64
	chunkLast bool
	chunkErr  *codec.Reply // reply to the chunk being read when it is discarded
	bodySize  int64        // BDAT octets so far
	txStart   time.Time    // MAIL accepted, for the transaction log
	noMemory  bool         // the in-flight budget ran out while reading this body
	// msg: the loop's, except from Submit until Complete, when the sink
	// reads it (and returns msg.Data to the pool) from its own goroutines.
	msg sink.Message
	// held is the octets counted in Stats.InFlightBytes for this message:
	// the loop's, except once handoff is abandoned, when Complete releases
	// them.
	held int64

	// handoff (the values above) is shared by the loop and Complete.
	handoff atomic.Uint32
	// sinkErr is the sink's verdict: written by Complete before it moves
	// handoff to answered, read by the loop only after it saw answered,
	// so the atomic orders the two.
	sinkErr error
	// paused is set while the session takes no more commands because its
	// replies are not being read (outputHighMark); the ticker wakes it to
	// look again, since gnet says nothing when its output drains. Written
	// by the loop, read by the ticker.
	paused atomic.Bool
	// deadline (Unix ns) is when the ticker should wake us; 0 for never.
	// Written by the loop, read by the ticker.
	deadline atomic.Int64
	// buffered is the octets this session counts in
	// Stats.SessionBuffers (see charge). Written by the loop, read by the
	// ticker, which wakes a session holding more than bufferShare so that
	// its count follows what gnet sent meanwhile.
	buffered atomic.Int64
	// resume: readCommand stopped at outputHighMark because of replies
	// of this pass, not unread ones; onTraffic writes them and goes on.
	resume bool
	// lingering: the session is done (closeAfter) but its last replies
	// still wait in gnet's outbound buffer; it closes once they drained.
	lingering bool
}

func newSession(srv *Server, c conn, remote netip.AddrPort) *session {
	s := &session{
		srv:    srv,
		cfg:    srv.settings(),
		conn:   c,
		io:     c,
		id:     sessionIDs.Add(1),
		remote: remote,
		ipText: remote.Addr().Unmap().String(),
	}
	s.xclientOK = xclientAllowed(s.cfg, remote.Addr())
	s.lines.MaxLine = s.cfg.MaxLineLength
	return s
}

// admitClient applies the client policy once the client's address is
// known; when it refuses, it returns the reply to send before closing.
func (s *session) admitClient(now time.Time) ([]byte, bool) {
	pol := s.cfg.Policy
	if pol == nil {
		return nil, true
	}
	ip := s.remote.Addr()
	switch {
	case !pol.ClientAllowed(ip):
		s.srv.stats.Refused[RefusedDenied].Add(1)
		return s.cfg.replies.denied, false
	case !pol.TakeConnection(ip, now):
		s.srv.stats.Refused[RefusedRate].Add(1)
		return s.cfg.replies.rate, false
	}
	return nil, true
}

// open returns what OnOpen writes: the greeting, unless it is held back.
func (s *session) open(now time.Time) []byte {
	if s.sec.kind == kindTLS && s.tls.Load() == nil {
		return s.implicitTLS() // RFC 8314 §3.3: the handshake comes first
	}
	if d := s.cfg.GreetDelay; d > 0 {
		s.state = stGreeting
		s.greetAt = now.Add(d)
		s.deadline.Store(s.greetAt.UnixNano())
		return nil
	}
	s.state = stCommand
	s.setDeadline(now)
	return s.cfg.replies.greeting
}

// closed runs in OnClose. A message still being read is dropped: a
// client that disconnects mid-DATA has not sent a message (RFC 5321
// §4.1.1.4: only the final dot completes it). A message the sink holds
// stays the sink's until it completes.
func (s *session) closed() {
	s.deadline.Store(0)
	if n := s.buffered.Swap(0); n != 0 {
		s.srv.stats.SessionBuffers.Add(-n)
	}
	if s.handoff.CompareAndSwap(withSink, abandoned) {
		return // the sink still has the message; Complete releases
	}
	s.msg.ReleaseData()
	s.releaseHeld()
}

// hold counts n more octets of message body against the in-flight budget
// (Config.MaxInFlightBytes). It returns false, counting nothing, when the
// budget would be exceeded.
func (s *session) hold(n int64) bool {
	st, budget := s.srv.stats, s.cfg.MaxInFlightBytes
	if n < 0 || n > budget {
		return false
	}
	if total := st.InFlightBytes.Add(n); budget > 0 && total > budget {
		st.InFlightBytes.Add(-n)
		return false
	}
	s.held += n
	return true
}

// releaseHeld gives this session's octets back to the budget.
func (s *session) releaseHeld() {
	if s.held != 0 {
		s.srv.stats.InFlightBytes.Add(-s.held)
		s.held = 0
	}
}

// onTraffic runs on the loop for new input, a wake by the ticker, or a
// wake by the sink's completion. Each turn hands the unread input to the
// method of the session's state, which consumes what it can and says
// whether the pass goes on; a command whose reply must wait for the sink
// ends it. The replies of the whole pass go out with one write (RFC 2920
// §3.2).
func (s *session) onTraffic(c conn, now time.Time) gnet.Action {
	s.cfg = s.srv.settings()
	s.lines.MaxLine = s.cfg.MaxLineLength // Reload may have changed it
	if s.lingering {
		return s.linger(c, now)
	}
	buf, _ := c.Peek(-1)
	in := buf
	for {
		var n int
		var more bool
		switch s.state {
		case stProxy:
			n, more = s.readProxyHeader(in, now)
		case stGreeting:
			more = s.awaitGreeting(in, now)
		case stCommand:
			n, more = s.readCommand(in, now)
		case stData:
			n, more = s.readData(in, now)
		case stBDAT:
			n, more = s.readChunk(in, now)
		case stWaiting:
			more = s.awaitSink(in, now)
		case stAuth:
			n, more = s.readAuth(in, now)
		}
		in = in[n:]
		if s.closeAfter {
			break
		}
		if !more {
			// A pass that stopped at outputHighMark with replies of its
			// own writes them, and goes on if the socket took them: a
			// client that reads keeps up with a flood of pipelined
			// commands without its input piling up in gnet's buffer.
			if !s.resume {
				break
			}
			s.resume = false
			if !s.write(c) {
				return gnet.Close // gnet closed the connection
			}
			if c.OutboundBuffered() > outputHighMark/2 {
				break // unread after all: paused, the ticker looks again
			}
		}
	}
	if used := len(buf) - len(in); used > 0 {
		_, _ = c.Discard(used)
		s.srv.stats.BytesRecv.Add(int64(used))
	}
	expired := false
	if d := s.deadline.Load(); d != 0 && now.UnixNano() >= d && !s.closeAfter {
		// RFC 5321 §4.5.3.2: we may close a session that went quiet. What
		// the client sent in this pass moved the deadline past now.
		s.closeWith(s.cfg.replies.timeout)
		expired = true
	}
	if s.flush(c) == gnet.Close {
		return gnet.Close
	}
	if s.closeAfter {
		// gnet's close writes what the socket takes at once and drops the
		// rest: a client still reading the replies to its pipelined
		// commands would lose their tail, the 221 to QUIT (RFC 5321
		// §4.1.1.10) or our 421 (§3.8) with it. So wait until they are
		// sent, unless the client has not read for a whole timeout. Not
		// for STARTTLS: its hand-off wants the 220 out at once (handOff),
		// and what arrived while we waited could not be told from the
		// ClientHello.
		if expired || s.sec.startTLS || c.OutboundBuffered() == 0 || c.InboundBuffered() > s.cfg.MaxPipelineBacklog {
			s.deadline.Store(0)
			return gnet.Close
		}
		s.lingering = true
		s.paused.Store(true) // the ticker wakes us to look at the buffer
		s.deadline.Store(now.Add(s.cfg.IdleTimeout).UnixNano())
		_ = c.Wake(nil) // and one look right after gnet's next writes
	}
	if !s.charge(c) {
		// It grew past its share with the budget spent: what it holds is
		// what a client that does not read piles up, and pausing it no
		// longer stops the growth (gnet reads its input regardless).
		s.srv.stats.BufferCloses.Add(1)
		_, _ = c.Write(s.cfg.replies.buffers)
		s.deadline.Store(0)
		return gnet.Close
	}
	return gnet.None
}

// charge counts what the session holds after a pass in
// Stats.SessionBuffers: its unread input (on TLS its grown input buffer,
// tlsConn.held), its unsent replies and the array of out, by the
// difference from its last charge, so that a pass costs at most one
// atomic step, none for a session whose buffers did not change. It
// fails, counting nothing, when the session would grow past bufferShare
// and the total past Config.MaxSessionBuffers.
func (s *session) charge(c conn) bool {
	in := c.InboundBuffered()
	if t, ok := c.(*tlsConn); ok {
		in = t.held() // its Write is synchronous: OutboundBuffered is 0
	}
	held := int64(in + c.OutboundBuffered() + cap(s.out))
	prev := s.buffered.Load()
	delta := held - prev
	if delta == 0 {
		return true
	}
	total := &s.srv.stats.SessionBuffers
	for {
		cur := total.Load()
		if delta > 0 && held > bufferShare && cur+delta > s.cfg.MaxSessionBuffers {
			return false
		}
		if total.CompareAndSwap(cur, cur+delta) {
			s.buffered.Store(held)
			return true
		}
	}
}

// starved: the session holds more than its share while the budget has
// no room for another pass of replies (outputHighMark), so it takes no
// commands until it drains or others give buffers back. The budget is
// read only by sessions over their share.
func (s *session) starved() bool {
	return s.buffered.Load() > bufferShare &&
		s.srv.stats.SessionBuffers.Load() > s.cfg.MaxSessionBuffers-outputHighMark
}

// readProxyHeader consumes a trusted load balancer's PROXY header
// (HAProxy PROXY protocol v1 or v2) and takes the client's address from
// it, then greets. A malformed header closes the connection: the spec
// forbids guessing. The load balancer gets no reply of ours before its
// header is in, so a drain or a timeout closes silently too.
func (s *session) readProxyHeader(in []byte, now time.Time) (int, bool) {
	n, hdr, err := proxyproto.Parse(in)
	switch {
	case err != nil:
		s.srv.stats.Refused[RefusedProxy].Add(1)
		s.cfg.Logger.Debug("bad PROXY header", "proxy", s.ipText, "err", err)
		s.closeAfter = true
		return 0, false
	case n == 0:
		if d := s.deadline.Load(); s.srv.draining.Load() || (d != 0 && now.UnixNano() >= d) {
			s.closeAfter = true
		}
		return 0, false
	}
	// LOCAL (v2) and UNKNOWN (v1) name no client: the balancer's own
	// health check, or a source it could not tell. Such a session may
	// still send mail, so it counts against the balancer's address.
	client := s.remote
	if !hdr.Local && hdr.Source.IsValid() {
		client = netip.AddrPortFrom(hdr.Source.Addr().Unmap(), hdr.Source.Port())
	}
	if !s.srv.bindIP(client.Addr()) {
		s.srv.stats.Refused[RefusedPerIP].Add(1)
		s.closeWith(refusal(s.sec.kind, s.cfg.replies.tooMany))
		return n, false
	}
	s.countedIP = true
	s.remote = client
	s.ipText = client.Addr().Unmap().String()
	if reply, ok := s.admitClient(now); !ok {
		s.closeWith(refusal(s.sec.kind, reply))
		return n, false
	}
	s.out = append(s.out, s.open(now)...)
	return n, true
}

// awaitGreeting holds the 220 back until greetAt (Config.GreetDelay).
func (s *session) awaitGreeting(in []byte, now time.Time) bool {
	switch {
	case s.srv.force.Load():
		s.closeWith(s.cfg.replies.shutdown)
	case len(in) > 0:
		s.closeWith(s.cfg.replies.talkedFirst)
	case !now.Before(s.greetAt):
		s.out = append(s.out, s.cfg.replies.greeting...)
		s.state = stCommand
		s.setDeadline(now)
		return true
	}
	return false
}

// readCommand frames one command line and answers it. A whole line
// restarts the idle timeout; a partial one does not, so that a byte a
// second does not keep a session alive.
func (s *session) readCommand(in []byte, now time.Time) (int, bool) {
	srv := s.srv
	switch {
	case srv.force.Load(), srv.draining.Load() && !s.hasMail:
		s.closeWith(s.cfg.replies.shutdown)
		return 0, false
	case !s.spoke && len(in) > 0 && in[0] == 0x16:
		// A TLS ClientHello (record type 22) on a port that does not
		// speak TLS: no line ending will come, so do not wait for one.
		s.closeWith(s.cfg.replies.tls)
		return 0, false
	case s.io.OutboundBuffered()+len(s.out) > outputHighMark, s.starved():
		// The client does not read its replies as fast as it pipelines
		// commands, or it holds more than its share of a spent budget:
		// take no more until they drain. Its input waits in gnet's
		// buffer, bounded here.
		s.paused.Store(true)
		switch {
		case len(in) > s.cfg.MaxPipelineBacklog:
			s.closeWith(s.cfg.replies.backlog)
		case len(s.out) > 0 && s.io.OutboundBuffered() <= outputHighMark/2 && !s.starved():
			// Replies of this pass filled the mark, not unread ones.
			s.resume = true
		}
		return 0, false
	}
	if s.paused.Load() {
		s.paused.Store(false) // the client read its replies
	}
	line, n, err := s.lines.Next(in)
	if n == 0 {
		return 0, false // a partial line: wait for the rest
	}
	s.spoke = true
	switch {
	case err != nil:
		s.fail(asReply(err))
	case line == nil:
		return n, true // the middle of an overlong line, dropped; answered at its end
	default:
		s.command(line, now)
	}
	s.setDeadline(now)
	return n, true
}

// readData feeds a DATA body to the DataReader, which ends it at CRLF.CRLF
// only (RFC 5321 §4.1.1.4).
func (s *session) readData(in []byte, now time.Time) (int, bool) {
	if s.srv.force.Load() {
		s.closeWith(s.cfg.replies.shutdown)
		return 0, false
	}
	if len(in) == 0 {
		return 0, false
	}
	before := 0
	if s.msg.Data != nil {
		before = len(s.msg.Data.B)
	}
	n, done := s.data.Feed(s.msg.Data, in)
	if s.msg.Data != nil && !s.hold(int64(len(s.msg.Data.B)-before)) {
		// Out of budget: keep reading to the final dot, keep nothing,
		// answer 451 4.3.1 there.
		s.noMemory = true
		s.msg.ReleaseData()
		s.releaseHeld()
	}
	if done {
		s.endData(now)
	}
	s.setDeadline(now)
	return n, true
}

// readChunk copies the octets of a BDAT chunk by count (RFC 3030 §2).
func (s *session) readChunk(in []byte, now time.Time) (int, bool) {
	if s.srv.force.Load() {
		s.closeWith(s.cfg.replies.shutdown)
		return 0, false
	}
	if len(in) == 0 {
		return 0, false
	}
	n := int(min(int64(len(in)), s.chunkLeft))
	if s.chunkErr == nil {
		_, _ = s.msg.Data.Write(in[:n]) // held at BDAT
	}
	s.chunkLeft -= int64(n)
	if s.chunkLeft == 0 {
		s.endChunk(now)
	}
	s.setDeadline(now)
	return n, true
}

// awaitSink answers the sink's verdict once it is in. Until then input
// stays unread in gnet's buffer, so that replies keep their order (RFC
// 2920 §3.1), up to MaxPipelineBacklog.
func (s *session) awaitSink(in []byte, now time.Time) bool {
	if s.handoff.Load() == answered {
		s.finishMessage(now)
		return true
	}
	switch {
	case s.srv.force.Load():
		s.closeWith(s.cfg.replies.shutdown)
	case len(in) > s.cfg.MaxPipelineBacklog:
		s.closeWith(s.cfg.replies.backlog)
	}
	return false
}

// write hands the replies gathered so far to gnet; false when the
// connection failed, which gnet closed (OnClose ran).
func (s *session) write(c conn) bool {
	if len(s.out) == 0 {
		return true
	}
	_, err := c.Write(s.out)
	s.out = s.out[:0]
	return err == nil
}

// flush writes every reply gathered in this pass at once (RFC 2920
// §3.2), unless the pass stopped at outputHighMark and wrote some
// already.
func (s *session) flush(c conn) gnet.Action {
	if !s.write(c) {
		return gnet.Close
	}
	if cap(s.out) > outKeep {
		s.out = nil
	}
	// A client that does not read its replies must not make us buffer
	// them without end. readCommand stops at outputHighMark; this is the
	// backstop for replies that come without a command. The 421 goes
	// after them, for a client that reads after all (gnet sends what the
	// socket takes as it closes).
	if c.OutboundBuffered() > 2*outputHighMark {
		_, _ = c.Write(s.cfg.replies.buffers)
		s.deadline.Store(0)
		return gnet.Close
	}
	return gnet.None
}

// linger runs the passes of a session that is done but whose last
// replies gnet has not sent yet. What the client sends now is never
// read; the session closes once the replies are out, at its deadline,
// on a forced shutdown, or when that input passes MaxPipelineBacklog
// (a client that writes without reading).
func (s *session) linger(c conn, now time.Time) gnet.Action {
	if c.OutboundBuffered() == 0 || now.UnixNano() >= s.deadline.Load() || s.srv.force.Load() ||
		c.InboundBuffered() > s.cfg.MaxPipelineBacklog {
		s.deadline.Store(0)
		return gnet.Close
	}
	if !s.charge(c) {
		s.srv.stats.BufferCloses.Add(1)
		s.deadline.Store(0)
		return gnet.Close
	}
	return gnet.None
}

// setDeadline arms the timeout that fits the current state.
func (s *session) setDeadline(now time.Time) {
	switch s.state {
	case stData, stBDAT:
		s.deadline.Store(now.Add(s.cfg.DataTimeout).UnixNano())
	case stWaiting:
		s.deadline.Store(0) // the sink has its own timeout
	default:
		s.deadline.Store(now.Add(s.cfg.IdleTimeout).UnixNano())
	}
}

// reply appends a reply.
func (s *session) reply(r *codec.Reply) { s.out = r.AppendTo(s.out) }

// closeWith appends a reply that ends the session.
func (s *session) closeWith(reply []byte) {
	s.out = append(s.out, reply...)
	s.closeAfter = true
}

// fail answers a client error and counts it; too many and we hang up.
func (s *session) fail(r *codec.Reply) {
	s.reply(r)
	if r.Code >= 500 {
		s.countError(r)
	}
}

// countError counts an error of the client's toward MaxErrors.
func (s *session) countError(r *codec.Reply) {
	s.errors++
	if log := s.cfg.Logger; log.Enabled(context.Background(), slog.LevelDebug) {
		// Protocol detail, for debugging a client; never at info: a
		// broken or hostile client must not be able to flood the log.
		log.LogAttrs(context.Background(), slog.LevelDebug, "protocol error",
			slog.String("client", s.ipText), slog.Int("code", r.Code),
			slog.String("enhanced", r.Enhanced), slog.String("text", r.Text), slog.Int("errors", s.errors))
	}
	if s.errors >= s.cfg.MaxErrors {
		s.closeWith(s.cfg.replies.tooManyErrs)
	}
}

// resetTransaction forgets the sender, recipients and body (RFC 5321
// §4.1.1.5). The message struct is reused: the sink is done with it.
func (s *session) resetTransaction() {
	s.hasMail = false
	s.params = codec.MailParams{}
	s.env = s.env[:0]
	s.rcpts = s.rcpts[:0]
	s.domains = s.domains[:0]
	s.bdat = false
	s.txFailed = nil
	s.chunkErr = nil
	s.bodySize = 0
	s.noMemory = false
	s.msg.ReleaseData()
	s.releaseHeld()
	s.msg = sink.Message{Recipients: s.msg.Recipients[:0]}
}

// beginMessage starts the body of a transaction: a queue ID, a pooled
// buffer, and our trace header on top (RFC 5321 §4.4), under the
// envelope's trace fields when the sink asks for them: MAIL and RCPT are
// over (RCPT after BDAT is refused), so the envelope is complete, and
// writing it here costs no copy of the body.
func (s *session) beginMessage(now time.Time) {
	s.msg.QueueID = s.srv.ids.New(now)
	s.msg.Data = bytebufferpool.Get()
	b := s.msg.Data.B[:0]
	if s.cfg.limits.TraceFields {
		b = s.appendTrace(b)
		s.msg.TraceLen = len(b)
	}
	s.msg.Data.B = s.appendReceived(b, now)
	s.noMemory = !s.hold(int64(len(s.msg.Data.B)))
	if s.noMemory {
		s.msg.ReleaseData()
	}
}

// submit hands the finished message to the sink and waits for Complete.
func (s *session) submit(now time.Time) {
	m := &s.msg
	m.Sender = s.env[s.sender.start:s.sender.end]
	m.Recipients = m.Recipients[:0]
	for _, r := range s.rcpts {
		m.Recipients = append(m.Recipients, s.env[r.start:r.end])
	}
	m.ClientIP = s.ipText
	m.ClientPort = int(s.remote.Port())
	m.Helo = s.helo
	m.Size = s.params.Size
	m.Body = sink.BodyType(s.params.Body)
	m.SMTPUTF8 = s.params.SMTPUTF8
	m.Received = now
	s.fillSecurity(m)
	m.Done = s

	s.state = stWaiting
	s.deadline.Store(0)
	s.sinkErr = nil
	s.handoff.Store(submitting)
	s.cfg.Sink.Submit(m)
	// Fails if the sink answered inside Submit: awaitSink, next in this
	// pass, finds the verdict.
	s.handoff.CompareAndSwap(submitting, withSink)
}

// Complete implements sink.Completion; any goroutine may call it, inside
// Submit or later.
func (s *session) Complete(_ *sink.Message, err error) {
	s.sinkErr = err
	switch s.handoff.Swap(answered) {
	case withSink:
		s.wake() // the loop (or the TLS goroutine) waits in awaitSink
	case abandoned:
		// The connection closed while the sink had the message: nobody
		// reads the verdict, but the budget gets its bytes back. The loop
		// is done with the session, so held is ours now.
		s.releaseHeld()
	}
	// submitting: the loop looks as soon as Submit returns.
}

// finishMessage answers the sink's verdict: 250 only for a stored message,
// and never a 5xx for trouble on our side (sink.Reply).
func (s *session) finishMessage(now time.Time) {
	err := s.sinkErr
	s.sinkErr = nil
	s.handoff.Store(idle)
	s.state = stCommand
	if err == nil {
		s.out = sink.AppendQueued(s.out, s.msg.QueueID)
		s.endTransaction(OutcomeAccepted, now)
	} else {
		r := sink.Reply(err)
		s.reply(r)
		if r.Code == 421 {
			s.closeAfter = true // RFC 5321 §3.8: 421 closes the channel
		}
		s.endTransaction(sinkOutcome(err), now)
	}
	s.setDeadline(now)
}

// sinkOutcome classifies a sink's error for the counters.
func sinkOutcome(err error) Outcome {
	switch err {
	case sink.ErrBusy:
		return OutcomeSinkBusy
	case sink.ErrShuttingDown:
		return OutcomeShutdown
	}
	return OutcomeSinkFailed
}

// endTransaction counts and logs a message whose body arrived, then
// forgets the transaction.
func (s *session) endTransaction(o Outcome, now time.Time) {
	st := s.srv.stats
	st.Messages[o].Add(1)
	if o == OutcomeAccepted {
		st.MessageSize.Observe(float64(s.msgSize()))
	}
	if log := s.cfg.Logger; log.Enabled(context.Background(), slog.LevelInfo) {
		log.LogAttrs(context.Background(), slog.LevelInfo, "message",
			slog.String("queue_id", s.msg.QueueID),
			slog.String("client", s.ipText),
			slog.String("sender", string(s.env[s.sender.start:s.sender.end])),
			slog.Int("recipients", len(s.rcpts)),
			slog.Int64("size", s.msgSize()),
			slog.String("result", o.String()),
			slog.Duration("duration", now.Sub(s.txStart)),
		)
	}
	s.resetTransaction()
}

// msgSize is the body's size as received: DATA's unstuffed octets or the
// sum of BDAT chunks.
func (s *session) msgSize() int64 {
	if s.bdat {
		return s.bodySize
	}
	return s.data.Size()
}

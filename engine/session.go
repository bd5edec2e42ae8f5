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

// state is what the session is reading.
type state uint8

const (
	stProxy    state = iota // waiting for a trusted load balancer's PROXY header
	stGreeting              // greeting held back (Config.GreetDelay)
	stCommand               // command lines
	stData                  // a DATA body, until CRLF.CRLF
	stBDAT                  // the octets of a BDAT chunk
	stWaiting               // message handed to the sink; input waits (RFC 2920 §3.1: replies in order)
)

var sessionIDs atomic.Uint64

// outputHighMark is how many octets of unsent replies a session may have
// before it stops taking commands. A client that pipelines (RFC 2920) but
// reads its replies never comes near it.
const outputHighMark = 256 << 10

// conn is what a session needs of its connection: the part of gnet.Conn
// it uses, so that tests and the session fuzzer can drive a session
// without sockets. All but Wake are called on the event loop only.
type conn interface {
	Peek(n int) ([]byte, error)
	Discard(n int) (int, error)
	InboundBuffered() int
	Write(b []byte) (int, error)
	OutboundBuffered() int
	Wake(callback gnet.AsyncCallback) error // any goroutine
}

// span locates bytes in session.env.
type span struct{ start, end int }

// session is one SMTP connection. It is owned by its event loop; the only
// fields other goroutines touch are completed, sinkErr and deadline.
type session struct {
	srv    *Server
	cfg    *settings // refreshed at the start of every pass (Server.Reload)
	conn   conn
	id     uint64
	remote netip.AddrPort
	ipText string // remote IP as text, made once per connection
	// countedIP: remote counts against MaxConnsPerIP (false for a load
	// balancer's connection until its PROXY header names the client).
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

	// Greeting state (RFC 5321 §4.1.1.1).
	helo []byte
	ehlo bool

	// Transaction state, cleared by resetTransaction.
	hasMail   bool
	params    codec.MailParams
	env       []byte // sender then recipients, back to back
	sender    span
	rcpts     []span
	bdat      bool         // a BDAT transaction has started (RFC 3030 §2: no DATA then)
	txFailed  *codec.Reply // a BDAT chunk failed; later chunks are read, discarded and answered with this
	txOutcome Outcome      // counted when the failed BDAT transaction ends
	chunkLeft int64
	chunkLast bool
	chunkErr  *codec.Reply // reply to the chunk being read when it is discarded
	bodySize  int64        // BDAT octets so far
	msg       sink.Message
	txStart   time.Time // MAIL accepted, for the transaction log
	held      int64     // octets counted in Stats.InFlightBytes for this message
	noMemory  bool      // the in-flight budget ran out while reading this body

	// Handed back by the sink, from any goroutine. The sink writes sinkErr,
	// then sets completed; the loop reads sinkErr only after it saw
	// completed, so the atomic orders the two.
	completed atomic.Bool
	sinkErr   error
	// inSubmit is set by the loop around Sink.Submit: a sink completing
	// synchronously need not wake the loop, which looks right after.
	inSubmit atomic.Bool
	// handback settles who releases the in-flight bytes of a message the
	// sink holds when the connection closes first: 0 while the sink has
	// it, 1 once the session closed (Complete releases), 2 once Complete
	// ran (the loop releases).
	handback atomic.Int32
	// paused is set while the session takes no more commands because its
	// replies are not being read (outputHighMark); the ticker wakes it to
	// look again, since gnet says nothing when its output drains.
	paused atomic.Bool
	// deadline (Unix ns) is when the ticker should wake us; 0 for never.
	// Written by the loop, read by the ticker goroutine.
	deadline atomic.Int64
}

func newSession(srv *Server, c conn, remote netip.AddrPort) *session {
	s := &session{
		srv:    srv,
		cfg:    srv.settings(),
		conn:   c,
		id:     sessionIDs.Add(1),
		remote: remote,
		ipText: remote.Addr().Unmap().String(),
	}
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

// readProxyHeader consumes a trusted load balancer's PROXY header
// (HAProxy PROXY protocol v1 or v2) and takes the client's address from
// it, then greets. A malformed header closes the connection: the spec
// forbids guessing.
func (s *session) readProxyHeader(c conn, now time.Time) gnet.Action {
	buf, _ := c.Peek(-1)
	n, hdr, err := proxyproto.Parse(buf)
	if err != nil {
		s.srv.stats.Refused[RefusedProxy].Add(1)
		s.cfg.Logger.Debug("bad PROXY header", "proxy", s.ipText, "err", err)
		s.closeAfter = true
		return s.flush(c)
	}
	if n == 0 {
		if d := s.deadline.Load(); s.srv.draining.Load() || (d != 0 && now.UnixNano() >= d) {
			s.closeAfter = true
		}
		return s.flush(c)
	}
	_, _ = c.Discard(n)
	if !hdr.Local && hdr.Source.IsValid() {
		client := netip.AddrPortFrom(hdr.Source.Addr().Unmap(), hdr.Source.Port())
		if !s.srv.bindIP(client.Addr()) {
			s.srv.stats.Refused[RefusedPerIP].Add(1)
			s.out = append(s.out, s.cfg.replies.tooMany...)
			s.closeAfter = true
			return s.flush(c)
		}
		s.countedIP = true
		s.remote = client
		s.ipText = client.Addr().String()
	}
	if reply, ok := s.admitClient(now); !ok {
		s.out = append(s.out, reply...)
		s.closeAfter = true
		return s.flush(c)
	}
	s.out = append(s.out, s.open(now)...)
	return s.flush(c)
}

// open returns what OnOpen writes: the greeting, unless it is held back.
func (s *session) open(now time.Time) []byte {
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
	if s.state == stWaiting && s.handback.CompareAndSwap(0, 1) {
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
// wake by the sink's completion. It answers every complete command in the
// input with one write (RFC 2920 §3.2), stopping at a command whose reply
// must wait for the sink.
func (s *session) onTraffic(c conn, now time.Time) gnet.Action {
	srv := s.srv
	s.cfg = srv.settings()
	s.lines.MaxLine = s.cfg.MaxLineLength // Reload may have changed it
	if s.state == stWaiting {
		if !s.completed.Load() {
			switch {
			case srv.force.Load():
				s.out = append(s.out, s.cfg.replies.shutdown...)
				s.closeAfter = true
			case c.InboundBuffered() > s.cfg.MaxPipelineBacklog:
				s.out = codec.AppendReply(s.out, 421, "4.7.0", s.cfg.Hostname+" Too much pipelined input, closing")
				s.closeAfter = true
			}
			return s.flush(c)
		}
		s.finishMessage(now)
	}
	if s.state == stProxy {
		if a := s.readProxyHeader(c, now); a != gnet.None || s.state == stProxy {
			return a
		}
	}
	if srv.force.Load() {
		s.out = append(s.out, s.cfg.replies.shutdown...)
		s.closeAfter = true
		return s.flush(c)
	}
	if s.state == stGreeting {
		if c.InboundBuffered() > 0 {
			// RFC 5321 §3.1: the client waits for our 220. One that talks
			// first is not a mailer waiting its turn.
			s.out = codec.AppendReply(s.out, 554, "5.5.0", s.cfg.Hostname+" Protocol violation: talked before the greeting")
			s.closeAfter = true
			return s.flush(c)
		}
		if now.Before(s.greetAt) {
			return gnet.None
		}
		s.out = append(s.out, s.cfg.replies.greeting...)
		s.state = stCommand
		s.setDeadline(now)
	}

	buf, _ := c.Peek(-1)
	used := 0
	progressed := false // a whole line, or body octets: what restarts the timeout
	s.paused.Store(false)
loop:
	for !s.closeAfter {
		switch s.state {
		case stCommand:
			if srv.draining.Load() && !s.hasMail {
				s.out = append(s.out, s.cfg.replies.shutdown...)
				s.closeAfter = true
				break loop
			}
			if !s.spoke && used < len(buf) && buf[used] == 0x16 {
				// A TLS ClientHello (record type 22) on a port that does
				// not speak TLS: no line ending will come, so do not wait
				// for one.
				s.out = codec.AppendReply(s.out, 421, "4.7.0", s.cfg.Hostname+" TLS is not spoken here, closing")
				s.closeAfter = true
				break loop
			}
			if c.OutboundBuffered()+len(s.out) > outputHighMark {
				// The client does not read its replies as fast as it
				// pipelines commands: take no more until they drain. Its
				// input waits in gnet's buffer, bounded below.
				s.paused.Store(true)
				break loop
			}
			line, n, err := s.lines.Next(buf[used:])
			if n == 0 {
				break loop
			}
			used += n
			s.spoke = true
			if line != nil || err != nil {
				progressed = true
			}
			if err != nil {
				s.fail(asReply(err))
				continue
			}
			if line == nil {
				continue // the middle of an overlong line, dropped; answered at its end
			}
			s.command(line, now)
		case stData:
			if used == len(buf) {
				break loop
			}
			before := 0
			if s.msg.Data != nil {
				before = len(s.msg.Data.B)
			}
			n, done := s.data.Feed(s.msg.Data, buf[used:])
			used += n
			progressed = true
			if s.msg.Data != nil && !s.hold(int64(len(s.msg.Data.B)-before)) {
				// Out of budget: keep reading to the final dot, keep
				// nothing, answer 451 4.3.1 there.
				s.noMemory = true
				s.msg.ReleaseData()
				s.releaseHeld()
			}
			if done {
				s.endData(now)
			}
		case stBDAT:
			if used == len(buf) {
				break loop
			}
			n := min(int64(len(buf)-used), s.chunkLeft)
			if s.chunkErr == nil {
				_, _ = s.msg.Data.Write(buf[used : used+int(n)]) // held at BDAT
			}
			used += int(n)
			s.chunkLeft -= n
			progressed = true
			if s.chunkLeft == 0 {
				s.endChunk(now)
			}
		case stWaiting:
			if !s.completed.Load() {
				break loop
			}
			s.finishMessage(now)
		default:
			break loop
		}
	}
	if used > 0 {
		_, _ = c.Discard(used)
		srv.stats.BytesRecv.Add(int64(used))
	}
	if s.paused.Load() && c.InboundBuffered() > s.cfg.MaxPipelineBacklog {
		s.out = codec.AppendReply(s.out, 421, "4.7.0", s.cfg.Hostname+" Too much pipelined input, closing")
		s.closeAfter = true
	}
	if progressed && s.state != stWaiting {
		s.setDeadline(now)
	} else if d := s.deadline.Load(); d != 0 && now.UnixNano() >= d && !s.closeAfter {
		// RFC 5321 §4.5.3.2: we may close a session that went quiet.
		s.out = append(s.out, s.cfg.replies.timeout...)
		s.closeAfter = true
	}
	return s.flush(c)
}

// flush writes every reply gathered in this pass at once.
func (s *session) flush(c conn) gnet.Action {
	if len(s.out) > 0 {
		_, err := c.Write(s.out)
		s.out = s.out[:0]
		if err != nil {
			return gnet.Close
		}
		// A client that does not read its replies must not make us
		// buffer them without end.
		if c.OutboundBuffered() > s.cfg.MaxPipelineBacklog {
			return gnet.Close
		}
	}
	if s.closeAfter {
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

// fail answers a client error and counts it; too many and we hang up.
func (s *session) fail(r *codec.Reply) {
	s.reply(r)
	if r.Code < 500 {
		return
	}
	s.errors++
	if log := s.cfg.Logger; log.Enabled(context.Background(), slog.LevelDebug) {
		// Protocol detail, for debugging a client; never at info: a
		// broken or hostile client must not be able to flood the log.
		log.LogAttrs(context.Background(), slog.LevelDebug, "protocol error",
			slog.String("client", s.ipText), slog.Int("code", r.Code),
			slog.String("enhanced", r.Enhanced), slog.String("text", r.Text), slog.Int("errors", s.errors))
	}
	if s.errors >= s.cfg.MaxErrors {
		s.out = codec.AppendReply(s.out, 421, "4.7.0", s.cfg.Hostname+" Too many errors, closing")
		s.closeAfter = true
	}
}

// resetTransaction forgets the sender, recipients and body (RFC 5321
// §4.1.1.5). The message struct is reused: the sink is done with it.
func (s *session) resetTransaction() {
	s.hasMail = false
	s.params = codec.MailParams{}
	s.env = s.env[:0]
	s.rcpts = s.rcpts[:0]
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
// buffer, and our trace header on top (RFC 5321 §4.4).
func (s *session) beginMessage(now time.Time) {
	s.msg.QueueID = s.srv.ids.New(now)
	s.msg.Data = bytebufferpool.Get()
	s.msg.Data.B = s.appendReceived(s.msg.Data.B[:0], now)
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
	m.Done = s

	s.state = stWaiting
	s.deadline.Store(0)
	s.sinkErr = nil
	s.completed.Store(false)
	s.handback.Store(0)
	s.inSubmit.Store(true)
	s.cfg.Sink.Submit(m)
	s.inSubmit.Store(false)
}

// Complete implements sink.Completion; any goroutine may call it.
func (s *session) Complete(_ *sink.Message, err error) {
	s.sinkErr = err
	s.completed.Store(true)
	if !s.handback.CompareAndSwap(0, 2) {
		// The connection closed while the sink had the message: nobody
		// will read the verdict, but the budget must get its bytes back.
		s.releaseHeld()
		return
	}
	if !s.inSubmit.Load() {
		_ = s.conn.Wake(nil)
	}
}

// finishMessage answers the sink's verdict: 250 only for a stored message,
// and never a 5xx for trouble on our side (RFC 5321 §4.2.5).
func (s *session) finishMessage(now time.Time) {
	err := s.sinkErr
	s.sinkErr = nil
	s.completed.Store(false)
	s.state = stCommand
	if err == nil {
		s.out = append(s.out, "250 2.0.0 OK queued as "...)
		s.out = append(s.out, s.msg.QueueID...)
		s.out = append(s.out, "\r\n"...)
		s.endTransaction(OutcomeAccepted, now)
	} else {
		s.out = appendSinkError(s.out, err)
		if se, ok := err.(*sink.Error); ok && se.Code == 421 {
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

// appendSinkError turns a sink's error into a reply. A sink may choose its
// reply with *sink.Error, but only a temporary one: a 5xx here would make
// the client bounce mail that we failed to store.
func appendSinkError(dst []byte, err error) []byte {
	if se, ok := err.(*sink.Error); ok && se.Code >= 400 && se.Code < 500 {
		return codec.AppendReply(dst, se.Code, se.Enhanced, se.Text)
	}
	return codec.AppendReply(dst, sink.ErrUnavailable.Code, sink.ErrUnavailable.Enhanced, sink.ErrUnavailable.Text)
}

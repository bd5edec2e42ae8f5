package bench

import (
	"bytes"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
)

// script is the bytes a session sends, built once per run and shared.
type script struct {
	ehlo, mail, data, quit, dot []byte
	rcpts                       [][]byte
	body                        []byte // message, dot-stuffed, ending in CRLF.CRLF
	bdat                        []byte // "BDAT n LAST" and the raw message
	pipelining, chunking        bool
	perConn                     int
	replyTimeout                time.Duration
}

// Message builds a test message of about size octets: a few headers and
// lines of 76 letters. No line starts with a dot, so DATA needs no
// stuffing.
func Message(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: <bench@lsmtp.test>\r\nTo: <rcpt1@lsmtp.test>\r\nSubject: lsmtp benchmark\r\n" +
		"Message-ID: <bench@lsmtp.test>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n")
	line := bytes.Repeat([]byte("abcdefghijklmnopqrstuvwxyz"), 3)[:76]
	for b.Len()+len(line)+2 <= size {
		b.Write(line)
		b.WriteString("\r\n")
	}
	if rest := size - b.Len() - 2; rest > 0 {
		b.Write(line[:rest])
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

func newScript(cfg *LoadConfig) *script {
	msg := Message(cfg.Size)
	s := &script{
		ehlo:         []byte("EHLO bench.lsmtp.test\r\n"),
		mail:         []byte("MAIL FROM:<bench@lsmtp.test>\r\n"),
		data:         []byte("DATA\r\n"),
		quit:         []byte("QUIT\r\n"),
		dot:          []byte(".\r\n"),
		body:         append(append([]byte{}, msg...), ".\r\n"...),
		bdat:         append([]byte(fmt.Sprintf("BDAT %d LAST\r\n", len(msg))), msg...),
		pipelining:   cfg.Pipelining,
		chunking:     cfg.Chunking,
		perConn:      max(cfg.PerConn, 1),
		replyTimeout: cfg.ReplyTimeout,
	}
	for i := 1; i <= max(cfg.Recipients, 1); i++ {
		s.rcpts = append(s.rcpts, []byte(fmt.Sprintf("RCPT TO:<rcpt%d@lsmtp.test>\r\n", i)))
	}
	return s
}

// loopStats are one loop's counters; the totals are read for the progress
// line while the loop runs, the rest after it ended.
type loopStats struct {
	ok, tempfail, permfail, errors, lost, conns atomic.Int64

	windowOK  int64
	latencies []time.Duration // of the messages that succeeded in the window
	errKinds  map[string]int64
	noPipe    int64 // sessions that asked for PIPELINING and did not get it
	noChunk   int64 // same for CHUNKING
}

func (st *loopStats) noteErr(kind string) {
	st.errors.Add(1)
	if st.errKinds == nil {
		st.errKinds = map[string]int64{}
	}
	if len(st.errKinds) < 32 || st.errKinds[kind] > 0 {
		st.errKinds[kind]++
	}
}

// window is the measurement interval on the loops' clock.
type window struct{ start, end atomic.Int64 }

func (w *window) contains(t int64) bool { return t >= w.start.Load() && t < w.end.Load() }

// expectation is the reply a session waits for, oldest first.
type expectation uint8

const (
	exGreet expectation = iota
	exEhlo
	exMail
	exRcpt
	exData
	exDot // final reply to the message (after CRLF.CRLF or BDAT LAST)
	exQuit
)

// maxReplyLine bounds a reply line we buffer (RFC 5321 §4.5.3.1.5 says
// 512 octets; servers send longer, but never this long).
const maxReplyLine = 4096

// session is one SMTP client: connect, EHLO, one or more transactions,
// QUIT, and again, until the run stops.
type session struct {
	sc  *script
	st  *loopStats
	win *window

	expect fifo[expectation]
	line   []byte // a reply line still missing its LF

	capPipe, capChunk bool // advertised in the EHLO reply
	pipe, chunk       bool // in use on this connection

	cycleStart int64 // when the connection's Dial began
	msgStart   int64 // when the current message began
	nextStart  int64 // when the next, already pipelined, message began
	nextQueued bool  // the next transaction went out with this message's body
	sent       int   // transactions begun on this connection
	rcptSent   int
	txnCode    int  // first failure reply in the current transaction, 0 if none
	quitSent   bool // QUIT is on its way (its reply is in expect)
	backoff    bool // a 4xx: reconnect after the retry delay
}

func (s *session) Start(c *Conn) {
	s.expect = fifo[expectation]{buf: s.expect.buf}
	s.line = s.line[:0]
	s.capPipe, s.capChunk, s.pipe, s.chunk = false, false, false, false
	s.sent, s.rcptSent, s.txnCode, s.quitSent, s.nextQueued, s.backoff = 0, 0, 0, false, false, false
	s.cycleStart = c.Now()
	s.expect.push(exGreet)
	s.st.conns.Add(1)
	c.Dial()
	c.SetDeadline(s.sc.replyTimeout)
}

func (s *session) Data(c *Conn, b []byte) {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if len(s.line)+len(b) > maxReplyLine {
				s.protocolError(c, "reply line too long")
				return
			}
			s.line = append(s.line, b...)
			return
		}
		line := b[:i+1]
		if len(s.line) > 0 {
			s.line = append(s.line, line...)
			line = s.line
		}
		b = b[i+1:]
		gen := c.gen
		s.replyLine(c, bytes.TrimRight(line, "\r\n"))
		s.line = s.line[:0]
		if c.gen != gen {
			return // the line ended the connection; the rest is moot
		}
	}
}

// replyLine handles one line of a reply (RFC 5321 §4.2: "ddd-text" for
// all but the last line, "ddd text" or "ddd" for the last).
func (s *session) replyLine(c *Conn, line []byte) {
	if len(line) < 3 {
		s.protocolError(c, "short reply line")
		return
	}
	code, err := strconv.Atoi(string(line[:3]))
	if err != nil || code < 200 || code > 599 {
		s.protocolError(c, "bad reply code")
		return
	}
	if s.expect.len() > 0 && *s.expect.peek() == exEhlo && len(line) > 4 {
		kw := line[4:]
		if sp := bytes.IndexByte(kw, ' '); sp >= 0 {
			kw = kw[:sp]
		}
		switch {
		case bytes.EqualFold(kw, []byte("PIPELINING")):
			s.capPipe = true
		case bytes.EqualFold(kw, []byte("CHUNKING")):
			s.capChunk = true
		}
	}
	if len(line) > 3 && line[3] == '-' {
		return
	}
	s.reply(c, code)
}

func (s *session) reply(c *Conn, code int) {
	if s.expect.len() == 0 {
		s.protocolError(c, "unexpected reply "+strconv.Itoa(code))
		return
	}
	c.SetDeadline(s.sc.replyTimeout)
	ok := code/100 == 2
	switch s.expect.pop() {
	case exGreet:
		if !ok {
			s.refused(c, code)
			return
		}
		c.Write(s.sc.ehlo)
		c.Send()
		s.expect.push(exEhlo)

	case exEhlo:
		if !ok {
			s.refused(c, code)
			return
		}
		s.pipe = s.sc.pipelining && s.capPipe
		// BDAT in this client relies on pipelining to send MAIL, RCPT
		// and the chunk in one go.
		s.chunk = s.sc.chunking && s.capChunk && s.pipe
		if s.sc.pipelining && !s.capPipe {
			s.st.noPipe++
		}
		if s.sc.chunking && !s.chunk {
			s.st.noChunk++
		}
		s.startTransaction(c, s.cycleStart)

	case exMail:
		if !ok && s.txnCode == 0 {
			s.txnCode = code
		}
		if s.pipe {
			return // RCPT and DATA are on their way already
		}
		if !ok {
			s.finish(c, code)
			s.next(c)
			return
		}
		c.Write(s.sc.rcpts[0])
		c.Send()
		s.rcptSent = 1
		s.expect.push(exRcpt)

	case exRcpt:
		if !ok && s.txnCode == 0 {
			s.txnCode = code
		}
		if s.pipe {
			return
		}
		if !ok {
			s.finish(c, code)
			s.next(c)
			return
		}
		if s.rcptSent < len(s.sc.rcpts) {
			c.Write(s.sc.rcpts[s.rcptSent])
			c.Send()
			s.rcptSent++
			s.expect.push(exRcpt)
			return
		}
		c.Write(s.sc.data)
		c.Send()
		s.expect.push(exData)

	case exData:
		if code != 354 {
			if s.txnCode == 0 {
				s.txnCode = code
			}
			s.finish(c, s.txnCode)
			s.next(c)
			return
		}
		if s.txnCode != 0 {
			c.Write(s.sc.dot) // a recipient failed: send nothing
		} else {
			c.Write(s.sc.body)
		}
		s.expect.push(exDot)
		if s.pipe {
			// RFC 2920 §3.1: message content may be the first command
			// of a group, so QUIT or the next transaction rides along.
			if s.last(c) {
				c.Write(s.sc.quit)
				s.expect.push(exQuit)
				s.quitSent = true
			} else {
				s.nextStart, s.nextQueued = c.Now(), true
				s.writeTransaction(c)
			}
		}
		c.Send()

	case exDot:
		s.finish(c, code)
		switch {
		case s.quitSent:
		case s.nextQueued:
			s.msgStart, s.nextQueued, s.txnCode = s.nextStart, false, 0
		default:
			s.next(c)
		}

	case exQuit:
		s.endCycle(c)
	}
}

// last reports whether the transaction under way is the connection's last.
func (s *session) last(c *Conn) bool { return s.sent >= s.sc.perConn || s.backoff || c.Stopping() }

// startTransaction sends MAIL (and with pipelining RCPT and DATA or BDAT)
// for a message that began at start.
func (s *session) startTransaction(c *Conn, start int64) {
	s.msgStart, s.txnCode = start, 0
	s.writeTransaction(c)
	if s.chunk && s.last(c) {
		c.Write(s.sc.quit)
		s.expect.push(exQuit)
		s.quitSent = true
	}
	c.Send()
}

// writeTransaction writes (without sending) the commands that begin a
// transaction and counts it: MAIL alone, or with pipelining MAIL, every
// RCPT and DATA, or with chunking MAIL, every RCPT and BDAT LAST with the
// message (RFC 3030 §4.2).
func (s *session) writeTransaction(c *Conn) {
	s.sent++
	s.rcptSent = 0
	c.Write(s.sc.mail)
	s.expect.push(exMail)
	if !s.pipe {
		return
	}
	for _, r := range s.sc.rcpts {
		c.Write(r)
		s.expect.push(exRcpt)
	}
	if s.chunk {
		c.Write(s.sc.bdat)
		s.expect.push(exDot)
		return
	}
	c.Write(s.sc.data)
	s.expect.push(exData)
}

// next begins the next transaction on this connection or says QUIT.
func (s *session) next(c *Conn) {
	if !s.last(c) {
		s.startTransaction(c, c.Now())
		return
	}
	s.quit(c)
}

func (s *session) quit(c *Conn) {
	c.Write(s.sc.quit)
	c.Send()
	s.expect.push(exQuit)
	s.quitSent = true
}

// finish records the outcome of the current message: success only on a
// final 2xx with no earlier failure in the transaction. It returns the
// reply's class (2, 4 or 5).
func (s *session) finish(c *Conn, code int) int {
	if s.txnCode != 0 {
		code = s.txnCode
	}
	switch code / 100 {
	case 2:
		s.st.ok.Add(1)
		if now := c.Now(); s.win.contains(now) {
			s.st.windowOK++
			s.st.latencies = append(s.st.latencies, time.Duration(now-s.msgStart))
		}
	case 4:
		s.st.tempfail.Add(1)
		// "Try again later": like a real client, the session leaves
		// and comes back after a pause instead of hammering a busy
		// server with its next message.
		s.backoff = true
	default:
		s.st.permfail.Add(1)
	}
	s.txnCode = 0
	return code / 100
}

// endCycle closes the connection after QUIT and starts over unless the run
// is ending.
func (s *session) endCycle(c *Conn) {
	if c.Stopping() {
		c.Done()
		return
	}
	if s.backoff {
		c.DialLater()
		return
	}
	c.Close()
	s.Start(c)
}

func (s *session) Closed(c *Conn, err error) {
	if s.expect.len() > 0 && *s.expect.peek() == exQuit {
		s.endCycle(c) // closed after QUIT without (or before) the 221
		return
	}
	for i := 0; i < s.expect.len(); i++ {
		if s.expect.buf[(s.expect.head+i)&(len(s.expect.buf)-1)] == exDot {
			// The message was sent but its outcome is unknown: the
			// broker may hold it.
			s.st.lost.Add(1)
			break
		}
	}
	kind := err.Error()
	if err == ErrServerClosed && s.expect.len() > 0 && *s.expect.peek() == exGreet {
		kind = "server closed before the greeting"
	}
	s.st.noteErr(kind)
	s.retry(c)
}

// refused handles a non-2xx greeting or EHLO reply (e.g. 421 too many
// connections): the connection is given up and retried after a pause.
func (s *session) refused(c *Conn, code int) {
	s.st.noteErr(fmt.Sprintf("greeting or EHLO refused with %d", code))
	s.retry(c)
}

func (s *session) protocolError(c *Conn, what string) {
	s.st.noteErr("protocol: " + what)
	s.retry(c)
}

func (s *session) retry(c *Conn) {
	if c.Stopping() {
		c.Done()
		return
	}
	c.DialLater()
}

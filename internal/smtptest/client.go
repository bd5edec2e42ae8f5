// Package smtptest holds what the tests and harnesses that talk SMTP to
// lsmtp share: a raw client that sends exactly the octets it is given and
// reads whole replies (code, enhanced status code, every line), every
// read and write under a deadline.
package smtptest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// Reply is one complete SMTP reply (RFC 5321 §4.2), possibly multi-line.
type Reply struct {
	Code     int
	Enhanced string   // the last line's RFC 3463 status code, e.g. "2.1.0"; "" when it has none
	Lines    []string // every line as received, without CRLF
}

// Last is the final line, e.g. "451 4.3.0 Temporary failure ...".
func (r Reply) Last() string {
	if len(r.Lines) == 0 {
		return ""
	}
	return r.Lines[len(r.Lines)-1]
}

func (r Reply) String() string { return strings.Join(r.Lines, " / ") }

// Class is the code and enhanced code, e.g. "451 4.3.0": what a reply
// means without its text, which may name the host.
func (r Reply) Class() string {
	if r.Enhanced == "" {
		return strconv.Itoa(r.Code)
	}
	return strconv.Itoa(r.Code) + " " + r.Enhanced
}

// HasExtension reports whether an EHLO reply offers the service extension
// keyword (RFC 5321 §4.1.1.1: one per line after the first).
func (r Reply) HasExtension(keyword string) bool {
	for _, l := range r.Lines[min(1, len(r.Lines)):] {
		if len(l) < 5 {
			continue
		}
		kw, _, _ := strings.Cut(l[4:], " ")
		if strings.EqualFold(kw, keyword) {
			return true
		}
	}
	return false
}

// QueueID returns the queue ID of the final reply to an accepted message.
func (r Reply) QueueID() (string, bool) {
	if r.Code != 250 || len(r.Lines) != 1 {
		return "", false
	}
	return QueueID(r.Lines[0])
}

// QueueID returns the ID of a "250 2.0.0 OK queued as <id>" reply line.
func QueueID(line string) (string, bool) {
	id, ok := strings.CutPrefix(line, sink.QueuedPrefix)
	return id, ok && id != "" && !strings.ContainsAny(id, " \r\n")
}

// ErrNoReply means the server closed the connection before replying.
var ErrNoReply = errors.New("connection closed without a reply")

// maxLine bounds a reply line, CRLF included. RFC 5321 §4.5.3.1.5 allows
// 512 octets; anything near this is a broken server.
const maxLine = 4096

// Conn is a raw SMTP client connection: the caller decides every octet
// sent, so that pipelining, BDAT and dot-stuffing are what a test says
// and nothing else.
type Conn struct {
	// Timeout bounds every read and every write.
	Timeout time.Duration

	nc net.Conn
	r  *bufio.Reader
}

// Dial connects to addr and reads the greeting.
func Dial(addr string, timeout time.Duration) (*Conn, Reply, error) {
	nc, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, Reply{}, err
	}
	c := NewConn(nc, timeout)
	greet, err := c.Read()
	if err != nil {
		nc.Close()
		return nil, Reply{}, fmt.Errorf("greeting: %w", err)
	}
	return c, greet, nil
}

// NewConn is a client on a connection the caller dialled (from a chosen
// source address, with socket options); it reads nothing yet.
func NewConn(nc net.Conn, timeout time.Duration) *Conn {
	return &Conn{Timeout: timeout, nc: nc, r: bufio.NewReaderSize(nc, maxLine)}
}

// NetConn is the underlying connection, for writes a test shapes itself
// (in pieces, half-closed) and for its addresses.
func (c *Conn) NetConn() net.Conn { return c.nc }

// Buffered is how many octets the server sent that no Read consumed yet:
// after a 220 to STARTTLS, anything here came in the clear.
func (c *Conn) Buffered() int { return c.r.Buffered() }

func (c *Conn) Close() error { return c.nc.Close() }

// Write sends p as is.
func (c *Conn) Write(p []byte) error {
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.Timeout))
	_, err := c.nc.Write(p)
	return err
}

// Read reads one complete reply. Every line must end in CRLF (RFC 5321
// §2.3.8), start with the same three-digit code 2yz to 5yz (§4.2), and
// be followed by "-" when more lines come, " " or nothing on the last.
func (c *Conn) Read() (Reply, error) {
	var r Reply
	_ = c.nc.SetReadDeadline(time.Now().Add(c.Timeout))
	for {
		b, err := c.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return r, fmt.Errorf("reply line longer than %d octets: %.40q...", maxLine, b)
		}
		if err != nil {
			if len(r.Lines) == 0 && len(b) == 0 {
				return r, fmt.Errorf("%w: %v", ErrNoReply, err)
			}
			return r, fmt.Errorf("reply cut short after %q: %w", append(r.Lines, string(b)), err)
		}
		line, ok := strings.CutSuffix(string(b), "\r\n")
		if !ok {
			return r, fmt.Errorf("reply line %q does not end in CRLF", b)
		}
		code, more, err := parseLine(line)
		if err != nil {
			return r, err
		}
		if r.Code != 0 && code != r.Code {
			return r, fmt.Errorf("reply code changed within a reply: %q after %q", line, r.Lines)
		}
		r.Code = code
		r.Lines = append(r.Lines, line)
		if !more {
			r.Enhanced = enhancedCode(line)
			return r, nil
		}
	}
}

// parseLine returns a reply line's code and whether more lines follow.
func parseLine(line string) (code int, more bool, err error) {
	if len(line) < 3 || line[0] < '2' || line[0] > '5' || !isDigit(line[1]) || !isDigit(line[2]) ||
		(len(line) > 3 && line[3] != ' ' && line[3] != '-') {
		return 0, false, fmt.Errorf("bad reply line %q", line)
	}
	code = int(line[0]-'0')*100 + int(line[1]-'0')*10 + int(line[2]-'0')
	return code, len(line) > 3 && line[3] == '-', nil
}

// enhancedCode returns the RFC 3463 status code (class.subject.detail,
// each of 1 to 3 digits, RFC 2034 §4) right after a line's reply code,
// or "" when there is none.
func enhancedCode(line string) string {
	if len(line) < 4 {
		return ""
	}
	tok, _, _ := strings.Cut(line[4:], " ")
	parts := strings.Split(tok, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || (tok[0] != '2' && tok[0] != '4' && tok[0] != '5') {
		return ""
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 || strings.IndexFunc(p, func(r rune) bool { return r < '0' || r > '9' }) >= 0 {
			return ""
		}
	}
	return tok
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// Cmd sends one command line and reads its reply.
func (c *Conn) Cmd(line string) (Reply, error) {
	if err := c.Write([]byte(line + "\r\n")); err != nil {
		return Reply{}, err
	}
	return c.Read()
}

// Expect sends a command and checks the reply's code.
func (c *Conn) Expect(line string, code int) (Reply, error) {
	r, err := c.Cmd(line)
	if err != nil {
		return r, fmt.Errorf("%s: %w", line, err)
	}
	if r.Code != code {
		return r, fmt.Errorf("%s: got %q, want %d", line, r.String(), code)
	}
	return r, nil
}

// Pipeline sends cmds in one write (RFC 2920) and reads their replies in
// order. After a 421 it reads no more: the server closes the connection
// (RFC 5321 §3.8).
func (c *Conn) Pipeline(cmds ...string) ([]Reply, error) {
	if err := c.Write([]byte(strings.Join(cmds, "\r\n") + "\r\n")); err != nil {
		return nil, err
	}
	replies := make([]Reply, 0, len(cmds))
	for _, cmd := range cmds {
		r, err := c.Read()
		if err != nil {
			return replies, fmt.Errorf("%s: %w", cmd, err)
		}
		replies = append(replies, r)
		if r.Code == 421 {
			break
		}
	}
	return replies, nil
}

// WriteData sends content as DATA's payload (RFC 5321 §4.5.2): a "."
// doubled at the start of every line, then the terminating CRLF.CRLF.
// content must be empty or end in CRLF. Nothing is copied: a large
// message costs no more memory than it has.
func (c *Conn) WriteData(content []byte) error {
	if len(content) > 0 && !bytes.HasSuffix(content, []byte("\r\n")) {
		return errors.New("DATA content must end in CRLF")
	}
	var bufs net.Buffers
	start := 0
	for i := 0; i < len(content); {
		if content[i] == '.' {
			bufs = append(bufs, content[start:i], dot)
			start = i
		}
		j := bytes.IndexByte(content[i:], '\n')
		if j < 0 {
			break
		}
		i += j + 1
	}
	bufs = append(bufs, content[start:], dotCRLF)
	return c.writeBuffers(bufs)
}

// writeBuffers sends bufs in one writev(2) where the connection can.
func (c *Conn) writeBuffers(bufs net.Buffers) error {
	_ = c.nc.SetWriteDeadline(time.Now().Add(c.Timeout))
	nonEmpty := bufs[:0]
	for _, b := range bufs {
		if len(b) > 0 {
			nonEmpty = append(nonEmpty, b)
		}
	}
	_, err := nonEmpty.WriteTo(c.nc)
	return err
}

var (
	dot     = []byte(".")
	dotCRLF = []byte(".\r\n")
)

// WriteBDAT sends "BDAT <size>" (with LAST on the last chunk) and the
// chunk as is (RFC 3030 §2).
func (c *Conn) WriteBDAT(chunk []byte, last bool) error {
	head := "BDAT " + strconv.Itoa(len(chunk))
	if last {
		head += " LAST"
	}
	return c.writeBuffers(net.Buffers{[]byte(head + "\r\n"), chunk})
}

// WaitClosed checks that the server closes the connection within the
// time given, with nothing more to say.
func (c *Conn) WaitClosed(within time.Duration) error {
	_ = c.nc.SetReadDeadline(time.Now().Add(within))
	line, err := c.r.ReadString('\n')
	var ne net.Error
	switch {
	case err == nil || line != "":
		return fmt.Errorf("connection still open, read %q", line)
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("connection still open after %v", within)
	}
	return nil // EOF, or a reset: closed either way
}

// Outcome is how one transaction ended.
type Outcome struct {
	Final    Reply // the reply that decided it, when Err is nil: to the body, or the first failure before it
	BodySent bool  // the whole body went out: without a reply, its fate is unknown
	Err      error // connection or protocol failure
}

// Transact runs one transaction on a session that has greeted: MAIL, a
// RCPT per recipient and DATA, pipelined (RFC 2920) or one by one, then
// content dot-stuffed. The first failure among the commands decides it
// and no body is sent.
func (c *Conn) Transact(from string, rcpts []string, content []byte, pipelined bool) Outcome {
	cmds := make([]string, 0, len(rcpts)+2)
	cmds = append(cmds, "MAIL FROM:<"+from+">")
	for _, r := range rcpts {
		cmds = append(cmds, "RCPT TO:<"+r+">")
	}
	cmds = append(cmds, "DATA")
	if pipelined {
		replies, err := c.Pipeline(cmds...)
		if err != nil {
			return Outcome{Err: err}
		}
		var failed *Reply
		for i, r := range replies {
			switch {
			case r.Code == 421:
				return Outcome{Final: r}
			case r.Code == 354 && failed != nil:
				// The server is reading a body the client will not send.
				return Outcome{Final: r, Err: fmt.Errorf("354 after %q", failed.String())}
			case r.Code >= 400 && failed == nil:
				failed = &replies[i]
			}
		}
		if failed != nil {
			return Outcome{Final: *failed}
		}
	} else {
		for i, cmd := range cmds {
			r, err := c.Cmd(cmd)
			if err != nil {
				return Outcome{Err: fmt.Errorf("%s: %w", cmd, err)}
			}
			want := 250
			if i == len(cmds)-1 {
				want = 354
			}
			if r.Code != want {
				return Outcome{Final: r}
			}
		}
	}
	if err := c.WriteData(content); err != nil {
		return Outcome{BodySent: true, Err: err}
	}
	r, err := c.Read()
	return Outcome{Final: r, BodySent: true, Err: err}
}

// Send runs one transaction one command at a time and returns the reply
// to the body; a reply other than 250 to MAIL and RCPT or 354 to DATA is
// an error.
func (c *Conn) Send(from string, rcpts []string, content []byte) (Reply, error) {
	o := c.Transact(from, rcpts, content, false)
	if o.Err == nil && !o.BodySent {
		o.Err = fmt.Errorf("refused before the body: %q", o.Final.String())
	}
	return o.Final, o.Err
}

package e2e

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

// reply is one complete SMTP reply (RFC 5321 §4.2), possibly multi-line.
type reply struct {
	Code  int
	Lines []string // every line as received, without CRLF
}

// Last is the final line, e.g. "451 4.3.0 Temporary failure ...".
func (r reply) Last() string {
	if len(r.Lines) == 0 {
		return ""
	}
	return r.Lines[len(r.Lines)-1]
}

func (r reply) String() string { return strings.Join(r.Lines, " / ") }

// queueID returns the ID of a "250 2.0.0 OK queued as <id>" reply.
func (r reply) queueID() (string, bool) {
	id, ok := strings.CutPrefix(r.Last(), sink.QueuedPrefix)
	return id, ok && r.Code == 250 && id != ""
}

// smtpConn is a raw SMTP client: the tests decide every byte sent, so that
// pipelining, BDAT and dot-stuffing are what the test says and nothing
// else. Every read and write has a deadline.
type smtpConn struct {
	c       net.Conn
	r       *bufio.Reader
	timeout time.Duration
}

// errNoReply means the server closed the connection before replying.
var errNoReply = errors.New("connection closed without a reply")

// dialSMTP connects and reads the greeting.
func dialSMTP(addr string, timeout time.Duration) (*smtpConn, reply, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, reply{}, err
	}
	s := &smtpConn{c: c, r: bufio.NewReader(c), timeout: timeout}
	greet, err := s.read()
	if err != nil {
		c.Close()
		return nil, reply{}, fmt.Errorf("greeting: %w", err)
	}
	return s, greet, nil
}

func (s *smtpConn) Close() error { return s.c.Close() }

// localPort is the client's TCP source port, which the server reports in
// smtp-client-port.
func (s *smtpConn) localPort() int { return s.c.LocalAddr().(*net.TCPAddr).Port }

// write sends p as is.
func (s *smtpConn) write(p []byte) error {
	s.c.SetWriteDeadline(time.Now().Add(s.timeout))
	_, err := s.c.Write(p)
	return err
}

// read reads one complete reply.
func (s *smtpConn) read() (reply, error) {
	var r reply
	s.c.SetReadDeadline(time.Now().Add(s.timeout))
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			if len(r.Lines) == 0 && line == "" {
				return r, fmt.Errorf("%w: %v", errNoReply, err)
			}
			return r, fmt.Errorf("reply cut short after %q: %w", line, err)
		}
		line = strings.TrimSuffix(line, "\r\n")
		if len(line) < 3 {
			return r, fmt.Errorf("short reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil {
			return r, fmt.Errorf("bad reply line %q", line)
		}
		if r.Code != 0 && code != r.Code {
			return r, fmt.Errorf("reply code changed within a reply: %q", line)
		}
		r.Code = code
		r.Lines = append(r.Lines, line)
		if len(line) == 3 || line[3] == ' ' {
			return r, nil
		}
	}
}

// cmd sends one command line and reads its reply.
func (s *smtpConn) cmd(line string) (reply, error) {
	if err := s.write([]byte(line + "\r\n")); err != nil {
		return reply{}, err
	}
	return s.read()
}

// expect sends a command and checks the reply's code.
func (s *smtpConn) expect(line string, code int) (reply, error) {
	r, err := s.cmd(line)
	if err != nil {
		return r, fmt.Errorf("%s: %w", line, err)
	}
	if r.Code != code {
		return r, fmt.Errorf("%s: got %q, want %d", line, r.String(), code)
	}
	return r, nil
}

// dotStuff makes the DATA payload for content (RFC 5321 §4.5.2): a "."
// doubled at the start of every line, then the terminating CRLF.CRLF.
// content must be empty or end with CRLF.
func dotStuff(content []byte) []byte {
	if len(content) > 0 && !bytes.HasSuffix(content, []byte("\r\n")) {
		panic("dotStuff: content must end with CRLF")
	}
	out := make([]byte, 0, len(content)+len(content)/64+3)
	atLineStart := true
	for _, c := range content {
		if atLineStart && c == '.' {
			out = append(out, '.')
		}
		out = append(out, c)
		atLineStart = c == '\n'
	}
	return append(out, ".\r\n"...)
}

// sendMessage runs one DATA transaction, without pipelining, on a session
// that has greeted. It returns the reply to the final dot. Replies other
// than 250 to MAIL, RCPT or DATA are returned as errors.
func (s *smtpConn) sendMessage(from string, rcpts []string, content []byte) (reply, error) {
	if _, err := s.expect("MAIL FROM:<"+from+">", 250); err != nil {
		return reply{}, err
	}
	for _, r := range rcpts {
		if _, err := s.expect("RCPT TO:<"+r+">", 250); err != nil {
			return reply{}, err
		}
	}
	if _, err := s.expect("DATA", 354); err != nil {
		return reply{}, err
	}
	if err := s.write(dotStuff(content)); err != nil {
		return reply{}, err
	}
	return s.read()
}

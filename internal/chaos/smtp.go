package chaos

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

// smtpClient is the load generator's SMTP client: plain TCP, every read
// and write under a deadline.
type smtpClient struct {
	conn    net.Conn
	r       *bufio.Reader
	timeout time.Duration
	pipe    bool // the server offered PIPELINING
}

// reply is a complete SMTP reply; text is its last line.
type reply struct {
	code int
	text string
}

func (r reply) String() string { return r.text }

// class is the reply's first line cut after the enhanced status code,
// e.g. "451 4.3.0": the text after it may name the host.
func (r reply) class() string {
	f := strings.Fields(r.text)
	if len(f) >= 2 && strings.Count(f[1], ".") == 2 {
		return f[0] + " " + f[1]
	}
	if len(f) >= 1 {
		return f[0]
	}
	return r.text
}

// queueID returns the ID of a "250 2.0.0 OK queued as <id>" reply.
func (r reply) queueID() (string, bool) {
	id, ok := strings.CutPrefix(r.text, sink.QueuedPrefix)
	return id, ok && r.code == 250 && id != ""
}

var errNoReply = errors.New("connection closed without a reply")

func dialSMTP(addr string, timeout time.Duration) (*smtpClient, reply, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, reply{}, err
	}
	c := &smtpClient{conn: conn, r: bufio.NewReaderSize(conn, 4096), timeout: timeout}
	greet, err := c.read()
	if err != nil {
		conn.Close()
		return nil, reply{}, err
	}
	return c, greet, nil
}

func (c *smtpClient) close() { c.conn.Close() }

func (c *smtpClient) write(p []byte) error {
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	_, err := c.conn.Write(p)
	return err
}

func (c *smtpClient) read() (reply, error) {
	r, _, err := c.readLines()
	return r, err
}

// readLines reads one reply and also returns the text of each line after
// the code (for EHLO's keywords).
func (c *smtpClient) readLines() (reply, []string, error) {
	c.conn.SetReadDeadline(time.Now().Add(c.timeout))
	var r reply
	var texts []string
	for {
		line, err := c.r.ReadString('\n')
		if err != nil {
			if len(texts) == 0 && line == "" {
				return r, texts, fmt.Errorf("%w: %v", errNoReply, err)
			}
			return r, texts, fmt.Errorf("reply cut short: %w", err)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 3 {
			return r, texts, fmt.Errorf("short reply line %q", line)
		}
		code, err := strconv.Atoi(line[:3])
		if err != nil || code < 200 || code > 599 {
			return r, texts, fmt.Errorf("bad reply line %q", line)
		}
		r.code, r.text = code, line
		if len(line) > 4 {
			texts = append(texts, line[4:])
		}
		if len(line) == 3 || line[3] == ' ' {
			return r, texts, nil
		}
	}
}

// ehlo greets and notes whether the server offers PIPELINING (RFC 2920).
func (c *smtpClient) ehlo(name string) (reply, error) {
	if err := c.write([]byte("EHLO " + name + "\r\n")); err != nil {
		return reply{}, err
	}
	r, texts, err := c.readLines()
	if err != nil {
		return r, err
	}
	for _, t := range texts {
		if strings.EqualFold(strings.TrimSpace(t), "PIPELINING") {
			c.pipe = true
		}
	}
	return r, nil
}

func (c *smtpClient) cmd(line string) (reply, error) {
	if err := c.write([]byte(line + "\r\n")); err != nil {
		return reply{}, err
	}
	return c.read()
}

// outcome is how one attempt at a message ended.
type outcome struct {
	final    reply // the reply that decided it, when err is nil
	bodySent bool  // the whole body went out: without a reply, its fate is unknown
	err      error // connection or protocol failure
}

// send runs one transaction: MAIL, RCPT and DATA pipelined when the
// server offered it and pipelining is wanted, one by one otherwise.
func (c *smtpClient) send(from, rcpt string, body []byte, pipelining bool) outcome {
	cmds := []string{"MAIL FROM:<" + from + ">", "RCPT TO:<" + rcpt + ">", "DATA"}
	if pipelining && c.pipe {
		if err := c.write([]byte(strings.Join(cmds, "\r\n") + "\r\n")); err != nil {
			return outcome{err: err}
		}
		var failed *reply
		for range cmds {
			r, err := c.read()
			if err != nil {
				return outcome{err: err}
			}
			if r.code == 421 {
				// RFC 5321 §3.8: the server closes; nothing more comes.
				return outcome{final: r}
			}
			if r.code >= 400 && failed == nil {
				failed = &r
			}
		}
		if failed != nil {
			return outcome{final: *failed}
		}
	} else {
		for i, cmd := range cmds {
			r, err := c.cmd(cmd)
			if err != nil {
				return outcome{err: err}
			}
			want := 250
			if i == len(cmds)-1 {
				want = 354
			}
			if r.code != want {
				return outcome{final: r}
			}
		}
	}
	if err := c.write(body); err != nil {
		return outcome{bodySent: true, err: err}
	}
	r, err := c.read()
	return outcome{final: r, bodySent: true, err: err}
}

// messageBody is the DATA payload of the message with token: a header
// naming the token (found again in the queue), filler lines up to about
// size octets, and the terminating CRLF.CRLF. No line starts with a dot,
// so nothing needs stuffing.
func messageBody(token string, size int) []byte {
	var b bytes.Buffer
	b.Grow(size + 128)
	b.WriteString(tokenHeader + token + "\r\n")
	b.WriteString("Message-ID: <" + token + "@chaos.lsmtp.invalid>\r\nSubject: lsmtp chaos\r\n\r\n")
	const line = "The quick brown fox jumps over the lazy dog 0123456789 ABCDEFGHIJKLMNOPQRSTU\r\n"
	for b.Len()+len(line) <= size {
		b.WriteString(line)
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

// tokenHeader is the first header of every message: it names the
// generator's message, which keeps its token across retries.
const tokenHeader = "X-Chaos-Token: "

// tokenOf finds the token in a message as stored (after lsmtp's
// Received: header).
func tokenOf(body []byte) (string, bool) {
	i := bytes.Index(body, []byte("\r\n"+tokenHeader))
	if i < 0 {
		return "", false
	}
	rest := body[i+2+len(tokenHeader):]
	j := bytes.Index(rest, []byte("\r\n"))
	if j < 0 {
		return "", false
	}
	return string(rest[:j]), true
}

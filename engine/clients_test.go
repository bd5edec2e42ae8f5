package engine

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// Real clients deliver mail, and the sink gets exactly the octets they
// sent: Go's net/smtp, and swaks (https://jetmore.org/john/code/swaks/).

// waitMessages waits until the sink holds n messages: a sink completes
// before the client's last reply is written, but the test reads the
// recording from another goroutine.
func waitMessages(t *testing.T, rs *smtptest.Recorder, n int) []smtptest.Recorded {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		msgs := rs.Messages()
		if len(msgs) >= n || time.Now().After(deadline) {
			if len(msgs) != n {
				t.Fatalf("sink got %d messages, want %d", len(msgs), n)
			}
			return msgs
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// eightBit is every octet from 0x80 to 0xff, in lines, plus UTF-8 text;
// its last line has no CRLF.
func eightBit() string {
	var b strings.Builder
	b.WriteString("Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\nContent-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln, ½ € — ✓\r\n")
	for c := 0x80; c <= 0xff; c++ {
		b.WriteByte(byte(c))
		if c%32 == 31 {
			b.WriteString("\r\n")
		}
	}
	b.WriteString("last line without CRLF")
	return b.String()
}

func TestNetSMTPClient(t *testing.T) {
	rs := &smtptest.Recorder{Async: true}
	_, addr := startServer(t, Config{Sink: rs})

	type sent struct {
		from string
		to   []string
		body string // what the client is given
		want string // what the sink must get after our Received: header
	}
	dotty := "Subject: dots\r\n\r\n.leading dot\r\n..two\r\n.\r\nend\r\n"
	msgs := []sent{
		{"a@b.test", []string{"c@d.test"}, dotty, dotty},
		{"a@b.test", []string{"x@d.test", "y@d.test", "z@e.test"}, "Subject: three\r\n\r\nto three\r\n", "Subject: three\r\n\r\nto three\r\n"},
		{"", []string{"c@d.test"}, eightBit(), eightBit() + "\r\n"}, // net/smtp ends an unterminated last line
		{"lf@b.test", []string{"c@d.test"}, "Subject: bare LF\n\nline\n.dot\n", "Subject: bare LF\r\n\r\nline\r\n.dot\r\n"},
	}

	// Several messages on one connection.
	c, err := smtp.Dial(addr)
	mustf(t, err, "dial")
	defer c.Close()
	mustf(t, c.Hello("client.test"), "EHLO")
	for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "CHUNKING"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("EHLO does not announce %s", ext)
		}
	}
	for i, m := range msgs {
		mustf(t, c.Mail(m.from), "message %d: MAIL", i)
		for _, r := range m.to {
			mustf(t, c.Rcpt(r), "message %d: RCPT %s", i, r)
		}
		w, err := c.Data()
		mustf(t, err, "message %d: DATA", i)
		_, err = io.WriteString(w, m.body)
		mustf(t, err, "message %d: body", i)
		mustf(t, w.Close(), "message %d: final dot", i)
	}
	mustf(t, c.Quit(), "QUIT")

	// And one more with smtp.SendMail, on its own connection.
	last := sent{"s@b.test", []string{"t@d.test"}, "Subject: SendMail\r\n\r\nhello\r\n", "Subject: SendMail\r\n\r\nhello\r\n"}
	mustf(t, smtp.SendMail(addr, nil, last.from, last.to, []byte(last.body)), "SendMail")
	msgs = append(msgs, last)

	got := waitMessages(t, rs, len(msgs))
	for i, m := range msgs {
		g := got[i]
		if g.Content() != m.want {
			t.Errorf("message %d: body\n%q\nwant\n%q", i, g.Content(), m.want)
		}
		if g.Sender != m.from || strings.Join(g.Recipients, ",") != strings.Join(m.to, ",") {
			t.Errorf("message %d: envelope %q -> %q, want %q -> %q", i, g.Sender, g.Recipients, m.from, m.to)
		}
		// net/smtp declares what the server announced (RFC 6152, RFC 6531).
		if g.Body != sink.Body8BitMIME || !g.SMTPUTF8 {
			t.Errorf("message %d: BODY %v, SMTPUTF8 %v", i, g.Body, g.SMTPUTF8)
		}
		if hasFor := strings.Contains(g.Data[:len(g.Data)-len(g.Content())], "\tfor <"); hasFor != (len(m.to) == 1) {
			t.Errorf("message %d to %d recipients: Received: names one: %v", i, len(m.to), hasFor)
		}
	}
	if got[0].Helo != "client.test" || got[4].Helo != "localhost" {
		t.Errorf("HELO names %q, %q", got[0].Helo, got[4].Helo)
	}
}

// swaksPath finds swaks. CI installs it (.ci/run), so there a missing
// swaks is a failure; elsewhere the test is skipped.
func swaksPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("swaks")
	if err == nil {
		return p
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("swaks not found in CI: %v", err)
	}
	t.Skipf("swaks not installed: %v", err)
	return ""
}

// swaks runs swaks against addr with args and returns its transcript.
func swaks(t *testing.T, addr string, args ...string) string {
	t.Helper()
	host, port, err := net.SplitHostPort(addr)
	mustf(t, err, "address %q", addr)
	cmd := exec.Command(swaksPath(t), append([]string{"--server", host, "--port", port, "--timeout", "20"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	mustf(t, cmd.Start(), "start swaks")
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("swaks %q did not finish in 60s; transcript:\n%s", args, tail(out.String()))
	}
	if err != nil {
		t.Fatalf("swaks %q: %v; transcript:\n%s", args, err, tail(out.String()))
	}
	return out.String()
}

func tail(s string) string {
	if len(s) > 4000 {
		return "..." + s[len(s)-4000:]
	}
	return s
}

// sentData rebuilds the DATA content swaks sent from its transcript:
// the " -> " lines between the 354 and the final dot, unstuffed.
func sentData(t *testing.T, transcript string) string {
	t.Helper()
	var b strings.Builder
	in := false
	sc := bufio.NewScanner(strings.NewReader(transcript))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && strings.HasPrefix(line, "<-  354 "), !in && strings.HasPrefix(line, " <-  354 "):
			in = true
		case in && strings.HasPrefix(line, " -> "):
			l := strings.TrimPrefix(line, " -> ")
			if l == "." {
				return b.String()
			}
			b.WriteString(strings.TrimPrefix(l, ".")) // RFC 5321 §4.5.2
			b.WriteString("\r\n")
		case in:
			t.Fatalf("unexpected transcript line inside DATA: %q", line)
		}
	}
	t.Fatalf("no DATA section in the swaks transcript:\n%s", tail(transcript))
	return ""
}

func TestSwaks(t *testing.T) {
	swaksPath(t)
	rs := &smtptest.Recorder{Async: true}
	_, addr := startServer(t, Config{Sink: rs})
	dir := t.TempDir()

	// A message file in wire form, no trailing CRLF: swaks keeps it as is
	// (no tokens, no bare LF, no From_ line), stuffs its dots and ends it
	// with CRLF "." CRLF.
	content := "From: a@b.test\r\nTo: c@d.test\r\nSubject: swaks\r\n\r\n.dot\r\nbody line\r\n" + eightBit()
	file := filepath.Join(dir, "message.eml")
	mustf(t, os.WriteFile(file, []byte(content), 0o600), "write message")
	want := content + "\r\n"

	cases := []struct {
		name string
		args []string
		rcpt []string
	}{
		{"plain", []string{"--helo", "client.test", "--from", "a@b.test", "--to", "c@d.test", "--data", "@" + file}, []string{"c@d.test"}},
		{"pipeline", []string{"--pipeline", "--helo", "client.test", "--from", "a@b.test", "--to", "c@d.test,e@f.test", "--data", "@" + file}, []string{"c@d.test", "e@f.test"}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			transcript := swaks(t, addr, tc.args...)
			// RFC 2920: with PIPELINING, MAIL, RCPT and DATA go out
			// before the first reply.
			pipelined := strings.Index(transcript, " -> DATA") < strings.Index(transcript, "<-  250 2.1.0")
			if pipelined != (tc.name == "pipeline") {
				t.Fatalf("pipelined: %v; transcript:\n%s", pipelined, transcript)
			}
			m := waitMessages(t, rs, i+1)[i]
			if m.Content() != want {
				t.Errorf("body\n%q\nwant\n%q", m.Content(), want)
			}
			if m.Content() != sentData(t, transcript) {
				t.Errorf("body differs from what the transcript shows sent")
			}
			if m.Sender != "a@b.test" || strings.Join(m.Recipients, ",") != strings.Join(tc.rcpt, ",") || m.Helo != "client.test" {
				t.Errorf("envelope %q -> %q, HELO %q", m.Sender, m.Recipients, m.Helo)
			}
		})
	}

	// swaks 20201014 speaks no CHUNKING, so there is no swaks BDAT run;
	// TestBDAT covers BDAT with a hand-written client.
	t.Run("attachment", func(t *testing.T) {
		payload := make([]byte, 1<<20)
		_, _ = rand.Read(payload)
		att := filepath.Join(dir, "payload.bin")
		mustf(t, os.WriteFile(att, payload, 0o600), "write attachment")
		transcript := swaks(t, addr, "--helo", "client.test", "--from", "a@b.test", "--to", "c@d.test",
			"--body", "see attachment", "--attach-type", "application/octet-stream", "--attach", "@"+att)
		m := waitMessages(t, rs, len(cases)+1)[len(cases)]
		if m.Content() != sentData(t, transcript) {
			t.Fatalf("body of %d octets differs from the %d octets the transcript shows sent", len(m.Content()), len(sentData(t, transcript)))
		}
		got := attachment(t, m.Content())
		if !bytes.Equal(got, payload) {
			t.Fatalf("attachment of %d octets differs from the %d octets sent", len(got), len(payload))
		}
	})
}

// attachment returns the decoded application/octet-stream part of a
// multipart message.
func attachment(t *testing.T, msg string) []byte {
	t.Helper()
	m, err := mail.ReadMessage(strings.NewReader(msg))
	mustf(t, err, "parse message")
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	mustf(t, err, "Content-Type")
	if !strings.HasPrefix(mt, "multipart/") {
		t.Fatalf("Content-Type %q, want multipart", mt)
	}
	r := multipart.NewReader(m.Body, params["boundary"])
	for {
		p, err := r.NextRawPart()
		mustf(t, err, "next MIME part")
		if pt, _, _ := mime.ParseMediaType(p.Header.Get("Content-Type")); pt != "application/octet-stream" {
			continue
		}
		if enc := p.Header.Get("Content-Transfer-Encoding"); !strings.EqualFold(enc, "base64") {
			t.Fatalf("attachment encoded %q", enc)
		}
		b, err := io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
		mustf(t, err, "decode attachment")
		return b
	}
}

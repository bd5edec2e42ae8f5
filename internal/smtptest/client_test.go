package smtptest

import (
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// step is what the peer must receive next, octet for octet, and what it
// answers.
type step struct{ recv, send string }

// peer runs script on the server end of a pipe to c and reports the first
// difference; it closes its end when the script is done.
func peer(t *testing.T, script []step) (*Conn, <-chan error) {
	t.Helper()
	cli, srv := net.Pipe()
	t.Cleanup(func() { cli.Close(); srv.Close() })
	done := make(chan error, 1)
	go func() {
		defer srv.Close()
		_ = srv.SetDeadline(time.Now().Add(2 * time.Second))
		for i, st := range script {
			got := make([]byte, len(st.recv))
			if _, err := io.ReadFull(srv, got); err != nil {
				done <- err
				return
			}
			if string(got) != st.recv {
				done <- fmt.Errorf("step %d: got %q, want %q", i, got, st.recv)
				return
			}
			if st.send == "" {
				continue // a pipe's empty write waits for a reader
			}
			if _, err := srv.Write([]byte(st.send)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	return NewConn(cli, 2*time.Second), done
}

func TestRead(t *testing.T) {
	for _, tc := range []struct {
		in       string
		code     int
		enhanced string
		lines    []string
		err      string // substring of the error, "" for none
	}{
		{in: "220 mx.test ESMTP\r\n", code: 220, lines: []string{"220 mx.test ESMTP"}},
		{in: "250-mx.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n", code: 250, lines: []string{"250-mx.test", "250-PIPELINING", "250 CHUNKING"}},
		{in: "451 4.3.0 try later\r\n", code: 451, enhanced: "4.3.0", lines: []string{"451 4.3.0 try later"}},
		{in: "250 2.0.0\r\n", code: 250, enhanced: "2.0.0", lines: []string{"250 2.0.0"}},
		{in: "354\r\n", code: 354, lines: []string{"354"}},
		{in: "250 2.0 not enhanced\r\n", code: 250, lines: []string{"250 2.0 not enhanced"}},
		{in: "250 3.0.0 wrong class\r\n", code: 250, lines: []string{"250 3.0.0 wrong class"}},
		{in: "250 2.0.0000 too long\r\n", code: 250, lines: []string{"250 2.0.0000 too long"}},
		{in: "250 ok\n", err: "does not end in CRLF"},
		{in: "25\r\n", err: "bad reply line"},
		{in: "650 six\r\n", err: "bad reply line"},
		{in: "250x\r\n", err: "bad reply line"},
		{in: "250-a\r\n251 b\r\n", err: "reply code changed"},
		{in: "250-a\r\n", err: "reply cut short"},
		{in: "", err: ErrNoReply.Error()},
		{in: "250 " + strings.Repeat("x", maxLine) + "\r\n", err: "longer than"},
	} {
		c, _ := peer(t, []step{{send: tc.in}})
		r, err := c.Read()
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q: error %v, want %q", tc.in, err, tc.err)
			}
		case err != nil:
			t.Errorf("%q: %v", tc.in, err)
		case r.Code != tc.code || r.Enhanced != tc.enhanced || strings.Join(r.Lines, "|") != strings.Join(tc.lines, "|"):
			t.Errorf("%q: got %d %q %q, want %d %q %q", tc.in, r.Code, r.Enhanced, r.Lines, tc.code, tc.enhanced, tc.lines)
		}
	}
}

func TestReplyHelpers(t *testing.T) {
	ehlo := Reply{Code: 250, Lines: []string{"250-mx.test Hello", "250-SIZE 1000", "250-PIPELINING", "250 CHUNKING"}}
	if !ehlo.HasExtension("pipelining") || !ehlo.HasExtension("SIZE") || !ehlo.HasExtension("CHUNKING") || ehlo.HasExtension("mx.test") || ehlo.HasExtension("STARTTLS") {
		t.Errorf("HasExtension wrong on %q", ehlo.Lines)
	}
	if got := (Reply{Code: 451, Enhanced: "4.3.0", Lines: []string{"451 4.3.0 x"}}).Class(); got != "451 4.3.0" {
		t.Errorf("Class %q", got)
	}
	if got := (Reply{Code: 220, Lines: []string{"220 mx.test ESMTP"}}).Class(); got != "220" {
		t.Errorf("Class %q", got)
	}
	for line, want := range map[string]string{
		"250 2.0.0 OK queued as 4fT2xK9pQzA": "4fT2xK9pQzA",
		"250 2.0.0 OK queued as ":            "",
		"250 2.0.0 OK queued as a b":         "",
		"250 2.0.0 OK":                       "",
		"451 2.0.0 OK queued as x":           "",
	} {
		id, ok := QueueID(line)
		if id != want && ok || ok != (want != "") {
			t.Errorf("QueueID(%q) = %q, %v; want %q", line, id, ok, want)
		}
	}
	if _, ok := (Reply{Code: 250, Lines: []string{"250-x", "250 2.0.0 OK queued as y"}}).QueueID(); ok {
		t.Error("queue ID taken from a multi-line reply")
	}
}

func TestWriteDataStuffsDots(t *testing.T) {
	for content, wire := range map[string]string{
		"":                         ".\r\n",
		"a\r\n":                    "a\r\n.\r\n",
		".\r\n":                    "..\r\n.\r\n",
		".a\r\nb\r\n..c\r\n.\r\n":  "..a\r\nb\r\n...c\r\n..\r\n.\r\n",
		"x.y\r\n\r\n.\r\nz.\r\n":   "x.y\r\n\r\n..\r\nz.\r\n.\r\n",
		"bare\nLF.\n.dot\r\n":      "bare\nLF.\n..dot\r\n.\r\n",
		"Subject: s\r\n\r\nhi\r\n": "Subject: s\r\n\r\nhi\r\n.\r\n",
	} {
		c, done := peer(t, []step{{recv: wire}})
		if err := c.WriteData([]byte(content)); err != nil {
			t.Fatalf("%q: %v", content, err)
		}
		if err := <-done; err != nil {
			t.Errorf("%q: %v", content, err)
		}
	}
	c, _ := peer(t, nil)
	if err := c.WriteData([]byte("no CRLF")); err == nil {
		t.Error("content without a final CRLF was sent")
	}
}

func TestWriteBDAT(t *testing.T) {
	c, done := peer(t, []step{{recv: "BDAT 3\r\n.\r\nBDAT 0 LAST\r\n"}})
	if err := c.WriteBDAT([]byte(".\r\n"), false); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteBDAT(nil, true); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestTransact(t *testing.T) {
	const (
		env   = "MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@f.test>\r\nDATA\r\n"
		body  = "..x\r\n.\r\n"
		oks   = "250 2.1.0 OK\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n354 go\r\n"
		final = "250 2.0.0 OK queued as Q1\r\n"
	)
	rcpts := []string{"c@d.test", "e@f.test"}
	for _, tc := range []struct {
		name      string
		pipelined bool
		script    []step
		final     string // last line of Final
		bodySent  bool
		err       bool
	}{
		{"pipelined", true, []step{{env, oks}, {body, final}}, "250 2.0.0 OK queued as Q1", true, false},
		{"lockstep", false, []step{
			{"MAIL FROM:<a@b.test>\r\n", "250 2.1.0 OK\r\n"}, {"RCPT TO:<c@d.test>\r\n", "250 2.1.5 OK\r\n"},
			{"RCPT TO:<e@f.test>\r\n", "250 2.1.5 OK\r\n"}, {"DATA\r\n", "354 go\r\n"}, {body, final},
		}, "250 2.0.0 OK queued as Q1", true, false},
		{"first failure decides", true, []step{{env, "250 2.1.0 OK\r\n452 4.5.3 no\r\n550 5.1.1 no\r\n554 5.5.1 none\r\n"}}, "452 4.5.3 no", false, false},
		{"421 ends it", true, []step{{env, "421 4.3.2 bye\r\n"}}, "421 4.3.2 bye", false, false},
		{"354 after a failure", true, []step{{env, "451 4.3.0 x\r\n250 2.1.5 OK\r\n250 2.1.5 OK\r\n354 go\r\n"}}, "354 go", false, true},
		{"lockstep refusal", false, []step{{"MAIL FROM:<a@b.test>\r\n", "451 4.3.0 x\r\n"}}, "451 4.3.0 x", false, false},
		{"no reply to the body", true, []step{{env, oks}, {body, ""}}, "", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, done := peer(t, tc.script)
			o := c.Transact("a@b.test", rcpts, []byte(".x\r\n"), tc.pipelined)
			if o.Final.Last() != tc.final || o.BodySent != tc.bodySent || (o.Err != nil) != tc.err {
				t.Fatalf("got %q, body sent %v, err %v; want %q, %v, error %v", o.Final.Last(), o.BodySent, o.Err, tc.final, tc.bodySent, tc.err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestSendErrsBeforeTheBody(t *testing.T) {
	c, _ := peer(t, []step{{"MAIL FROM:<a@b.test>\r\n", "250 2.1.0 OK\r\n"}, {"RCPT TO:<c@d.test>\r\n", "550 5.1.1 no\r\n"}})
	r, err := c.Send("a@b.test", []string{"c@d.test"}, []byte("x\r\n"))
	if err == nil || r.Last() != "550 5.1.1 no" {
		t.Fatalf("got %q, %v; want the 550 and an error", r.Last(), err)
	}
}

func TestWaitClosed(t *testing.T) {
	c, _ := peer(t, nil)
	if err := c.WaitClosed(time.Second); err != nil {
		t.Errorf("closed peer: %v", err)
	}
	c, _ = peer(t, []step{{send: "250 more\r\n"}})
	if err := c.WaitClosed(time.Second); err == nil || !strings.Contains(err.Error(), "still open, read") {
		t.Errorf("peer that spoke: %v", err)
	}
	cli, srv := net.Pipe()
	defer srv.Close()
	if err := NewConn(cli, time.Second).WaitClosed(50 * time.Millisecond); err == nil || !strings.Contains(err.Error(), "still open after") {
		t.Errorf("silent peer: %v", err)
	}
}

package engine

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/sink"
	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// step is one line of a dialog: what the client sends, and the start of
// the reply it must get ("" when the line gets no reply of its own, as
// inside DATA).
type step struct{ send, want string }

func runDialog(t *testing.T, c *client, steps []step) {
	t.Helper()
	for _, s := range steps {
		c.send(s.send + "\r\n")
		if s.want != "" {
			c.expect(s.want)
		}
	}
}

func TestDialogs(t *testing.T) {
	_, addr := startServer(t, Config{MaxMessageSize: 1000, MaxRecipients: 3})
	cases := []struct {
		name  string
		steps []step
	}{
		{"ehlo lists the extensions", []step{{"EHLO client.test", "250 SMTPUTF8"}}},
		{"helo", []step{{"HELO client.test", "250 mx.test"}}},
		{"verbs are case-insensitive", []step{{"ehlo client.test", "250 "}, {"mail from:<a@b.test>", "250 2.1.0"}, {"rcpt to:<c@d.test>", "250 2.1.5"}, {"rset", "250 2.0.0"}, {"noop", "250 2.0.0"}}},
		{"null sender", []step{{"EHLO c", "250 "}, {"MAIL FROM:<>", "250 2.1.0"}}},
		{"mail before helo", []step{{"MAIL FROM:<a@b.test>", "503 5.5.1"}}},
		{"rcpt before mail", []step{{"EHLO c", "250 "}, {"RCPT TO:<a@b.test>", "503 5.5.1"}}},
		{"data before mail", []step{{"EHLO c", "250 "}, {"DATA", "503 5.5.1"}}},
		{"data without recipients", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"DATA", "554 5.5.1"}}},
		{"nested mail", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"MAIL FROM:<a@b.test>", "503 5.5.1"}}},
		{"unknown command", []step{{"FOO bar", "500 5.5.2"}}},
		{"not implemented", []step{{"EXPN list", "502 5.5.1"}, {"STARTTLS", "502 5.5.1"}, {"AUTH PLAIN", "502 5.5.1"}}},
		{"vrfy", []step{{"VRFY someone", "252 2.0.0"}}},
		{"help", []step{{"HELP", "214 2.0.0"}}},
		{"unknown mail parameter", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test> FOO=BAR", "555 5.5.4"}}},
		{"unknown rcpt parameter", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test> NOTIFY=NEVER", "555 5.5.4"}}},
		{"parameters after helo", []step{{"HELO c", "250 "}, {"MAIL FROM:<a@b.test> SIZE=10", "555 5.5.4"}}},
		{"declared size over the limit", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test> SIZE=1001", "552 5.3.4"}}},
		{"declared size at the limit", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test> SIZE=1000", "250 2.1.0"}}},
		{"recipients at and past the limit", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "},
			{"RCPT TO:<1@d.test>", "250 2.1.5"}, {"RCPT TO:<2@d.test>", "250 2.1.5"}, {"RCPT TO:<3@d.test>", "250 2.1.5"},
			{"RCPT TO:<4@d.test>", "452 4.5.3"}}},
		{"postmaster without domain", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<Postmaster>", "250 2.1.5"}}},
		{"null recipient", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<>", "501 5.1.3"}}},
		{"utf8 address needs SMTPUTF8", []step{{"EHLO c", "250 "}, {"MAIL FROM:<jö@b.test>", "553 5.6.7"}}},
		{"utf8 address with SMTPUTF8", []step{{"EHLO c", "250 "}, {"MAIL FROM:<jö@bü.test> SMTPUTF8", "250 2.1.0"}, {"RCPT TO:<ü@d.test>", "250 2.1.5"}}},
		{"rset clears the transaction", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RSET", "250 2.0.0"}, {"RCPT TO:<a@b.test>", "503 5.5.1"}}},
		{"binarymime needs bdat", []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test> BODY=BINARYMIME", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "503 5.5.1"}}},
		{"quit", []step{{"QUIT", "221 2.0.0"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			runDialog(t, dial(t, addr), tc.steps)
		})
	}
}

func TestMessageReachesSinkWithReceivedHeader(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs})
	c := dial(t, addr)
	runDialog(t, c, []step{
		{"EHLO client.test", "250 "},
		{"MAIL FROM:<a@b.test> SIZE=42 BODY=8BITMIME", "250 2.1.0"},
		{"RCPT TO:<c@d.test>", "250 2.1.5"},
		{"DATA", "354 "},
	})
	c.send("Subject: hi\r\n\r\n..leading dot\r\nbody\r\n.\r\n")
	last := c.expect("250 2.0.0 OK queued as ")
	id := strings.TrimPrefix(last, "250 2.0.0 OK queued as ")
	c.do("QUIT", "221 ")

	msgs := rs.Messages()
	if len(msgs) != 1 {
		t.Fatalf("sink got %d messages, want 1", len(msgs))
	}
	m := msgs[0]
	if m.QueueID != id || len(id) != 26 {
		t.Errorf("queue ID %q, reply said %q", m.QueueID, id)
	}
	if got, want := m.Content(), "Subject: hi\r\n\r\n.leading dot\r\nbody\r\n"; got != want {
		t.Errorf("body %q, want %q", got, want)
	}
	if m.Sender != "a@b.test" || len(m.Recipients) != 1 || m.Recipients[0] != "c@d.test" {
		t.Errorf("envelope %q -> %q", m.Sender, m.Recipients)
	}
	if m.Helo != "client.test" || m.ClientIP != "127.0.0.1" || m.Size != 42 || m.Body != sink.Body8BitMIME {
		t.Errorf("envelope details %+v", m)
	}
	wantHdr := "Received: from client.test ([127.0.0.1])\r\n\tby mx.test (lsmtp) with ESMTP id " + id + "\r\n\tfor <c@d.test>;\r\n\t"
	if !strings.HasPrefix(m.Data, wantHdr) {
		t.Errorf("Received header:\n%q\nwant prefix\n%q", m.Data, wantHdr)
	}
}

func TestSMTPUTF8Protocol(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs})
	c := dial(t, addr)
	runDialog(t, c, []step{
		{"EHLO client.test", "250 "},
		{"MAIL FROM:<jö@b.test> SMTPUTF8", "250 "},
		{"RCPT TO:<x@d.test>", "250 "},
		{"RCPT TO:<y@d.test>", "250 "},
		{"DATA", "354 "},
		{"Subject: ü\r\n\r\nbody\r\n.", "250 2.0.0"},
	})
	m := rs.Messages()[0]
	if !m.SMTPUTF8 || !strings.Contains(m.Data, " with UTF8SMTP id ") {
		t.Errorf("SMTPUTF8 not carried: %+v", m)
	}
	if strings.Contains(m.Data, "\tfor <") {
		t.Errorf("Received names a recipient of a two-recipient message: %q", m.Data)
	}
}

func TestPipelinedBatchIsAnsweredInOrder(t *testing.T) {
	rs := &smtptest.Recorder{Async: true, Delay: 20 * time.Millisecond}
	_, addr := startServer(t, Config{Sink: rs})
	c := dial(t, addr)
	c.do("EHLO c", "250 ")
	// Two whole transactions in one write: the second MAIL must wait
	// until the first message's sink answer was written (RFC 2920 §3.1).
	var b strings.Builder
	for i := 0; i < 2; i++ {
		b.WriteString("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
	}
	c.send("MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send("one\r\n.\r\nMAIL FROM:<x@b.test>\r\nRCPT TO:<y@d.test>\r\nDATA\r\n")
	c.expect("250 2.0.0 OK queued as")
	c.expect("250 2.1.0")
	c.expect("250 2.1.5")
	c.expect("354 ")
	c.send("two\r\n.\r\nQUIT\r\n")
	c.expect("250 2.0.0 OK queued as")
	c.expect("221 ")
	msgs := rs.Messages()
	if len(msgs) != 2 || msgs[0].Content() != "one\r\n" || msgs[1].Content() != "two\r\n" || msgs[1].Sender != "x@b.test" {
		t.Fatalf("messages %+v", msgs)
	}
}

func TestSinkErrorsAreTemporary(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"unavailable", sink.ErrUnavailable, "451 4.3.0"},
		{"busy", sink.ErrBusy, "451 4.3.2"},
		{"plain error", errors.New("connection reset"), "451 4.3.0"},
		{"a sink asking for 5xx still gets 4xx", &codec.Reply{Code: 554, Enhanced: "5.0.0", Text: "no"}, "451 4.3.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, addr := startServer(t, Config{Sink: &smtptest.Recorder{Async: true, Verdict: func(int) error { return tc.err }}})
			c := dial(t, addr)
			runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
			c.send("hello\r\n.\r\n")
			c.expect(tc.want)
			// The session goes on: a new transaction is possible.
			c.do("MAIL FROM:<a@b.test>", "250 2.1.0")
		})
	}
}

func TestOversizedBodyIsReadToTheEnd(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, MaxMessageSize: 100})
	c := dial(t, addr)
	runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	// The body hides a command after 100 octets; it must not be run.
	c.send(strings.Repeat("x", 98) + "\r\nRSET\r\nMAIL FROM:<evil@b.test>\r\n" + strings.Repeat("y", 1000) + "\r\n.\r\n")
	c.expect("552 5.3.4")
	c.do("NOOP", "250 2.0.0")
	if n := len(rs.Messages()); n != 0 {
		t.Fatalf("sink got %d messages", n)
	}
}

func TestBodyOfExactlyMaxSizeIsAccepted(t *testing.T) {
	_, addr := startServer(t, Config{MaxMessageSize: 100})
	c := dial(t, addr)
	runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	c.send(strings.Repeat("x", 98) + "\r\n.\r\n")
	c.expect("250 2.0.0")
	runDialog(t, c, []step{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	c.send(strings.Repeat("x", 99) + "\r\n.\r\n")
	c.expect("552 5.3.4")
}

func TestSmugglingDoesNotEndData(t *testing.T) {
	for _, tc := range []struct{ name, end string }{
		{"LF.LF", "\n.\n"},
		{"CR.CR", "\r.\r"},
		{"LF.CRLF", "\n.\r\n"},
		{"CRLF.LF", "\r\n.\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, normalize := range []bool{false, true} {
				rs := &smtptest.Recorder{}
				_, addr := startServer(t, Config{Sink: rs, NormalizeBareEOL: normalize})
				c := dial(t, addr)
				runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
				c.send("Subject: x\r\n\r\nbody" + tc.end + "MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<v@d.test>\r\nDATA\r\nsmuggled\r\n.\r\n")
				if normalize {
					c.expect("250 2.0.0")
					msgs := rs.Messages()
					if len(msgs) != 1 || !strings.Contains(msgs[0].Content(), "smuggled@evil.test") {
						t.Fatalf("normalize: messages %+v", msgs)
					}
				} else {
					c.expect("554 5.6.0")
					if n := len(rs.Messages()); n != 0 {
						t.Fatalf("reject: sink got %d messages", n)
					}
				}
				// Exactly one reply: no smuggled transaction answered.
				c.do("NOOP", "250 2.0.0")
			}
		})
	}
}

func TestBDAT(t *testing.T) {
	rs := &smtptest.Recorder{Async: true}
	_, addr := startServer(t, Config{Sink: rs, MaxMessageSize: 50})
	c := dial(t, addr)
	runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test> BODY=BINARYMIME", "250 "}, {"RCPT TO:<c@d.test>", "250 "}})
	// Pipelined: two chunks, the second LAST, then the next transaction.
	c.send("BDAT 5\r\nhel\r\nBDAT 4 LAST\r\nlo\r\n" + "MAIL FROM:<a@b.test>\r\n")
	c.expect("250 2.0.0 5 octets")
	c.expect("250 2.0.0 OK queued as")
	c.expect("250 2.1.0")
	msgs := rs.Messages()
	if len(msgs) != 1 || msgs[0].Content() != "hel\r\nlo\r\n" {
		t.Fatalf("messages %+v", msgs)
	}
	// BDAT 0 LAST ends a message.
	c.do("RCPT TO:<c@d.test>", "250 ")
	c.send("BDAT 3\r\nabcBDAT 0 LAST\r\n")
	c.expect("250 2.0.0 3 octets")
	c.expect("250 2.0.0 OK queued as")
	// DATA after BDAT is a sequence error.
	runDialog(t, c, []step{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}})
	c.send("BDAT 1\r\nx")
	c.expect("250 2.0.0 1 octets")
	c.do("DATA", "503 5.5.1")
	c.do("RSET", "250 ")
}

func TestBDATAfterRejectedCommandsIsReadAndDiscarded(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs})
	c := dial(t, addr)
	c.do("EHLO c", "250 ")
	// MAIL refused, then a pipelined chunk whose bytes look like commands.
	c.send("MAIL FROM:<bad address>\r\nRCPT TO:<c@d.test>\r\nBDAT 19 LAST\r\nMAIL FROM:<x@y.z>\r\nNOOP\r\n")
	c.expect("501 ")
	c.expect("503 5.5.1")
	c.expect("503 5.5.1")
	c.expect("250 2.0.0") // the NOOP after the chunk
	if n := len(rs.Messages()); n != 0 {
		t.Fatalf("sink got %d messages", n)
	}
}

func TestBDATOverTheLimit(t *testing.T) {
	rs := &smtptest.Recorder{}
	_, addr := startServer(t, Config{Sink: rs, MaxMessageSize: 10})
	c := dial(t, addr)
	runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}})
	c.send("BDAT 8\r\n12345678BDAT 8\r\nNOOP\r\nxxBDAT 2 LAST\r\nzz")
	c.expect("250 2.0.0 8 octets")
	c.expect("552 5.3.4")
	c.expect("552 5.3.4")
	c.do("MAIL FROM:<a@b.test>", "250 2.1.0") // the transaction is over
	if n := len(rs.Messages()); n != 0 {
		t.Fatalf("sink got %d messages", n)
	}
}

func TestLongCommandLineKeepsSessionInStep(t *testing.T) {
	_, addr := startServer(t, Config{})
	c := dial(t, addr)
	// 510 octets + CRLF = 512: the longest allowed line.
	c.do("NOOP "+strings.Repeat("a", 505), "250 2.0.0")
	c.do("NOOP "+strings.Repeat("a", 506), "500 5.5.6")
	c.send("NOOP " + strings.Repeat("b", 5000) + "\r\nNOOP\r\n")
	c.expect("500 5.5.6")
	c.expect("250 2.0.0")
	// The same, arriving in pieces: the server drops the line as it
	// streams and answers once, at its end.
	for i := 0; i < 10; i++ {
		c.send(strings.Repeat("c", 700))
		time.Sleep(5 * time.Millisecond)
	}
	c.send("\r\nNOOP\r\n")
	c.expect("500 5.5.6")
	c.expect("250 2.0.0")
}

func TestTooManyErrorsCloses(t *testing.T) {
	_, addr := startServer(t, Config{MaxErrors: 3})
	c := dial(t, addr)
	c.do("FOO", "500 ")
	c.do("BAR", "500 ")
	c.send("BAZ\r\n")
	c.expect("500 ")
	c.expect("421 4.7.0")
	c.expectClosed()
}

func TestIdleTimeout(t *testing.T) {
	_, addr := startServer(t, Config{IdleTimeout: 200 * time.Millisecond})
	c := dial(t, addr)
	c.do("EHLO c", "250 ")
	start := time.Now()
	c.expect("421 4.4.2")
	c.expectClosed()
	if el := time.Since(start); el < 200*time.Millisecond {
		t.Fatalf("closed after %v, before the timeout", el)
	}
}

func TestSlowCommandDoesNotExtendTimeout(t *testing.T) {
	_, addr := startServer(t, Config{IdleTimeout: 300 * time.Millisecond})
	c := dial(t, addr)
	// A byte every 50 ms never completes a command: the idle timeout runs.
	deadline := time.Now().Add(3 * time.Second)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for time.Now().Before(deadline) {
			if _, err := c.conn.Write([]byte("N")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	c.expect("421 4.4.2")
	c.expectClosed()
	<-done
}

func TestDataTimeout(t *testing.T) {
	_, addr := startServer(t, Config{DataTimeout: 200 * time.Millisecond})
	c := dial(t, addr)
	runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	c.send("partial body\r\n")
	c.expect("421 4.4.2")
	c.expectClosed()
}

func TestGreetDelayDropsEarlyTalkers(t *testing.T) {
	_, addr := startServer(t, Config{GreetDelay: 300 * time.Millisecond})
	early := dialNoGreeting(t, addr)
	early.send("EHLO impatient\r\n")
	early.expect("554 5.5.0")
	early.expectClosed()

	patient := dialNoGreeting(t, addr)
	patient.expect("220 mx.test ESMTP")
	patient.do("EHLO c", "250 ")
}

func TestConnectionLimits(t *testing.T) {
	_, addr := startServer(t, Config{MaxConns: 3, MaxConnsPerIP: 2})
	a := dialFrom(t, "127.0.0.1", addr)
	a.expect("220 ")
	dialFrom(t, "127.0.0.1", addr).expect("220 ")
	// Third from the same address: the per-IP limit.
	refused := dialFrom(t, "127.0.0.1", addr)
	refused.expect("421 4.7.0")
	refused.expectClosed()
	// Another address is under its own limit...
	dialFrom(t, "127.0.0.2", addr).expect("220 ")
	// ...until the global one is reached.
	refused = dialFrom(t, "127.0.0.3", addr)
	refused.expect("421 4.7.0")
	refused.expectClosed()

	a.do("QUIT", "221 ")
	a.expectClosed()
	// The freed slot is reusable once the server saw the close.
	deadline := time.Now().Add(2 * time.Second)
	for {
		line := dialFrom(t, "127.0.0.1", addr).reply()[0]
		if strings.HasPrefix(line, "220 ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not freed: %q", line)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHTTPAndTLSProbesAreClosed(t *testing.T) {
	_, addr := startServer(t, Config{})
	c := dial(t, addr)
	c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.expect("421 4.7.0")
	c.expectClosed()

	c = dial(t, addr)
	c.send("\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
	c.expect("421 4.7.0")
	c.expectClosed()
}

func TestShutdownLetsTransactionFinish(t *testing.T) {
	rs := &smtptest.Recorder{}
	rs.HoldAll()
	srv, addr := startServer(t, Config{Sink: rs})
	busy := dial(t, addr)
	runDialog(t, busy, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	busy.send("body\r\n.\r\n")
	idle := dial(t, addr)
	idle.do("EHLO c", "250 ")

	done := make(chan error, 1)
	go func() {
		ctx, cancel := contextWithTimeout(3 * time.Second)
		defer cancel()
		done <- srv.Shutdown(ctx)
	}()
	idle.expect("421 4.3.2")
	idle.expectClosed()
	rs.ReleaseAll() // the broker confirms
	busy.expect("250 2.0.0 OK queued as")
	busy.expect("421 4.3.2")
	busy.expectClosed()
	if err := <-done; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
}

func TestShutdownDeadlineSends421(t *testing.T) {
	rs := &smtptest.Recorder{}
	rs.HoldAll()
	defer rs.ReleaseAll()
	srv, addr := startServer(t, Config{Sink: rs})
	busy := dial(t, addr)
	runDialog(t, busy, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	busy.send("body\r\n.\r\n")
	ctx, cancel := contextWithTimeout(200 * time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(ctx); err == nil {
		t.Fatalf("Shutdown returned nil with a transaction still held")
	}
	busy.expect("421 4.3.2")
	busy.expectClosed()
}

func TestDisconnectMidDataPublishesNothing(t *testing.T) {
	rs := &smtptest.Recorder{}
	srv, addr := startServer(t, Config{Sink: rs})
	c := dial(t, addr)
	runDialog(t, c, []step{{"EHLO c", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	c.send("half a message\r\n")
	c.conn.Close()
	deadline := time.Now().Add(2 * time.Second)
	for srv.stats.Open.Load() != 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := len(rs.Messages()); n != 0 {
		t.Fatalf("sink got %d messages from a client that left mid-DATA", n)
	}
}

func TestInFlightBudget(t *testing.T) {
	rs := &smtptest.Recorder{}
	rs.HoldAll()
	srv, addr := startServer(t, Config{Sink: rs, MaxInFlightBytes: 10_000, MaxMessageSize: 1 << 20})
	a := dial(t, addr)
	runDialog(t, a, []step{{"EHLO a", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	a.send(strings.Repeat("a", 6000) + "\r\n.\r\n") // held by the sink until released

	b := dial(t, addr)
	runDialog(t, b, []step{{"EHLO b", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	// Over the budget while a's message is held: read to the end, then 451.
	b.send(strings.Repeat("b", 6000) + "\r\nQUIT\r\n.\r\n")
	b.expect("451 4.3.1")
	// BDAT: refused at the chunk that would pass the budget.
	runDialog(t, b, []step{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}})
	b.send("BDAT 6000 LAST\r\n" + strings.Repeat("c", 6000))
	b.expect("451 4.3.1")

	rs.ReleaseAll()
	a.expect("250 2.0.0")
	// With a's bytes released, b fits again.
	runDialog(t, b, []step{{"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	b.send(strings.Repeat("b", 6000) + "\r\n.\r\n")
	b.expect("250 2.0.0")
	if got := srv.Stats().InFlightBytes.Load(); got != 0 {
		t.Fatalf("in-flight bytes %d after every message ended, want 0", got)
	}
	if got := srv.Stats().MessagesBy(OutcomeNoMemory); got != 2 {
		t.Fatalf("no-memory outcomes %d, want 2", got)
	}
}

func TestInFlightBytesReleasedWhenClientLeavesWhileSinkHoldsMessage(t *testing.T) {
	rs := &smtptest.Recorder{}
	rs.HoldAll()
	srv, addr := startServer(t, Config{Sink: rs})
	c := dial(t, addr)
	runDialog(t, c, []step{{"EHLO a", "250 "}, {"MAIL FROM:<a@b.test>", "250 "}, {"RCPT TO:<c@d.test>", "250 "}, {"DATA", "354 "}})
	c.send(strings.Repeat("a", 5000) + "\r\n.\r\n")
	waitFor(t, func() bool { return len(rs.Messages()) == 1 })
	c.conn.Close()
	waitFor(t, func() bool { return srv.Stats().Open.Load() == 0 })
	if srv.Stats().InFlightBytes.Load() == 0 {
		t.Fatalf("bytes released before the sink answered")
	}
	rs.ReleaseAll()
	waitFor(t, func() bool { return srv.Stats().InFlightBytes.Load() == 0 })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Shutdown shuts the listening socket before gnet's Stop, which gnet's
// accept loop may notice first and stop on its own; either way Shutdown
// and Serve must report a clean stop.
func TestShutdownIsCleanEveryTime(t *testing.T) {
	for i := 0; i < 10; i++ {
		srv, err := New(Config{Listen: []string{"127.0.0.1:0"}, Hostname: "mx.test", Sink: &smtptest.Recorder{}, EventLoops: 2})
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve() }()
		addr := srv.Addrs()[0].String()
		c := dial(t, addr)
		c.do("QUIT", "221 ")
		ctx, cancel := contextWithTimeout(5 * time.Second)
		if err := srv.Shutdown(ctx); err != nil {
			t.Fatalf("round %d: Shutdown: %v", i, err)
		}
		cancel()
		if err := <-served; err != nil {
			t.Fatalf("round %d: Serve: %v", i, err)
		}
	}
}

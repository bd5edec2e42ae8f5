package engine

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lsmtp/lsmtp/internal/smtptest"
)

// The cases of TestHostile (hostile_test.go), by family.

// A transaction up to DATA's 354, pipelined (RFC 2920: DATA may end a
// group).
const hostileTxStart = "EHLO {id}\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n"

func hostileTx() hostileStep {
	return hs(hostileTxStart, "250", "250 2.1.0", "250 2.1.5", "354")
}

// hostileEnvelope is EHLO, MAIL and RCPT, without DATA (for BDAT).
func hostileEnvelope() hostileStep {
	return hs("EHLO {id}\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\n", "250", "250 2.1.0", "250 2.1.5")
}

// hostileMail is EHLO and a good MAIL, for RCPT cases.
func hostileMail() hostileStep {
	return hs("EHLO {id}\r\nMAIL FROM:<a@b.test>\r\n", "250", "250 2.1.0")
}

// hostileEHLO prefixes lines with EHLO {id}; the replies get its 250.
func hostileEHLO(lines string, want ...string) hostileStep {
	return hs("EHLO {id}\r\n"+lines, append([]string{"250"}, want...)...)
}

// hostileBody builds a DATA body whose content is exactly size octets,
// in lines of at most 1000 octets (RFC 5321 §4.5.3.1.6) each starting
// with lead. wire is what the client sends: dot-stuffed (§4.5.2) and
// terminated. size%1000 must be 0 or at least len(lead)+2.
func hostileBody(size int, lead string) (wire, content string) {
	var w, c strings.Builder
	for c.Len() < size {
		n := min(1000, size-c.Len())
		line := lead + strings.Repeat("x", n-2-len(lead)) + "\r\n"
		c.WriteString(line)
		if strings.HasPrefix(line, ".") {
			w.WriteByte('.')
		}
		w.WriteString(line)
	}
	w.WriteString(".\r\n")
	return w.String(), c.String()
}

// hostilePayload is n octets of BDAT chunk that start with hidden
// (command lines the server must not run) and are filled with 'z'.
func hostilePayload(n int, hidden string) string {
	return hidden + strings.Repeat("z", n-len(hidden))
}

// hostilePerByte splits s into one-octet writes.
func hostilePerByte(s string) []string {
	parts := make([]string, len(s))
	for i := range s {
		parts[i] = s[i : i+1]
	}
	return parts
}

// hostileOne checks that the attacking connection's one message has
// exactly this body (after our Received: header).
func hostileOne(body string) func(*testing.T, []smtptest.Recorded) {
	return func(t *testing.T, msgs []smtptest.Recorded) {
		t.Helper()
		if got := msgs[0].Content(); got != body {
			t.Fatalf("sink got body %q (%d octets), want %q (%d octets)", trim(got), len(got), trim(body), len(body))
		}
	}
}

// hostileEnvelopeIs checks the sender and recipients the sink got.
func hostileEnvelopeIs(sender string, rcpts ...string) func(*testing.T, []smtptest.Recorded) {
	return func(t *testing.T, msgs []smtptest.Recorded) {
		t.Helper()
		m := msgs[0]
		if m.Sender != sender || strings.Join(m.Recipients, ",") != strings.Join(rcpts, ",") {
			t.Fatalf("envelope %q -> %q, want %q -> %q", m.Sender, m.Recipients, sender, rcpts)
		}
	}
}

func hostileCases(clientHello string) []hostileCase {
	var cases []hostileCase
	add := func(c ...hostileCase) { cases = append(cases, c...) }

	// SMTP smuggling (RFC 5321 §4.1.1.4, §2.3.8): only CRLF.CRLF ends
	// DATA. Each fake end hides a second transaction; whatever the mode,
	// exactly one reply comes (the real end's) and at most one message
	// reaches the sink, holding the smuggled lines as content.
	smuggled := "MAIL FROM:<smuggled@evil.test>\r\nRCPT TO:<v@d.test>\r\nDATA\r\nsmuggled\r\n.\r\n"
	for _, v := range []struct{ name, end, normalized string }{
		{"LF.LF", "\n.\n", "\r\n.\r\n"},
		{"CR.CR", "\r.\r", "\r\n.\r\n"},
		{"LF.CRLF", "\n.\r\n", "\r\n.\r\n"},
		// A "." after CRLF followed by a bare LF or CR is a stuffing dot
		// (§4.5.2), removed; the bare ending is content.
		{"CRLF.LF", "\r\n.\n", "\r\n\r\n"},
		{"CRLF.CR+other", "\r\n.\rX", "\r\n\r\nX"},
	} {
		body := "Subject: x\r\n\r\nbody" + v.end + smuggled
		add(hostileCase{
			name:  "smuggling " + v.name + " with a second MAIL, bare EOL refused",
			steps: []hostileStep{hostileTx(), hs(body, "554 5.6.0")},
		}, hostileCase{
			name:  "smuggling " + v.name + " with a second MAIL, bare EOL normalized",
			prof:  hostileNormalize,
			steps: []hostileStep{hostileTx(), hs(body, "250 2.0.0")},
			msgs:  1,
			check: func(t *testing.T, msgs []smtptest.Recorded) {
				hostileEnvelopeIs("a@b.test", "c@d.test")(t, msgs)
				want := "Subject: x\r\n\r\nbody" + v.normalized + strings.TrimSuffix(smuggled, ".\r\n")
				hostileOne(want)(t, msgs)
			},
		})
	}
	add(hostileCase{
		name: "smuggling LF.LF split across writes at the fake end",
		steps: []hostileStep{hostileTx(), {
			parts: []string{"Subject: x\r\n\r\nbody\n", ".", "\n", smuggled},
			pause: 5 * time.Millisecond,
			want:  []string{"554 5.6.0"},
		}},
	}, hostileCase{
		name: "smuggling CRLF.CR split across writes, normalized",
		prof: hostileNormalize,
		steps: []hostileStep{hostileTx(), {
			parts: []string{"body\r\n", ".", "\r", smuggled},
			pause: 5 * time.Millisecond,
			want:  []string{"250 2.0.0"},
		}},
		msgs:  1,
		check: hostileOne("body\r\n\r\n" + strings.TrimSuffix(smuggled, ".\r\n")),
	}, hostileCase{
		name: "terminator one octet per write",
		steps: []hostileStep{hostileTx(), {
			parts: append([]string{"hello"}, hostilePerByte("\r\n.\r\n")...),
			pause: 5 * time.Millisecond,
			want:  []string{"250 2.0.0"},
		}},
		msgs:  1,
		check: hostileOne("hello\r\n"),
	})

	// NUL and other control octets: never in commands (RFC 5321 §4.1.1:
	// commands are ASCII without controls); passed through in DATA.
	add(hostileCase{
		name:  "NUL inside a verb",
		steps: []hostileStep{hs("NO\x00OP\r\n", "500 5.5.2")},
	}, hostileCase{
		name:  "NUL before the verb",
		steps: []hostileStep{hs("\x00EHLO {id}\r\n", "500 5.5.2")},
	}, hostileCase{
		name:  "NUL alone on a line",
		steps: []hostileStep{hs("\x00\r\n\x00\x00\x00\n", "500 5.5.2", "500 5.5.2")},
	}, hostileCase{
		name:  "NUL in the HELO argument",
		steps: []hostileStep{hs("EHLO a\x00b.test\r\nHELO a\x00\r\n", "500 5.5.2", "500 5.5.2")},
	}, hostileCase{
		name:  "NUL in a MAIL path",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<a\x00@b.test>\r\nMAIL FROM:<a@b.test> SIZE=1\x00\r\n", "500 5.5.2", "500 5.5.2")},
	}, hostileCase{
		name:  "NUL and other controls in DATA pass through",
		steps: []hostileStep{hostileTx(), hs("a\x00b\r\n\x00\r\n\x01\x1b[0m\x7f\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileOne("a\x00b\r\n\x00\r\n\x01\x1b[0m\x7f\r\n"),
	})

	// 8-bit octets: only MAIL and RCPT may carry them, and only as UTF-8
	// in a transaction that declared SMTPUTF8 (RFC 6531 §3.3).
	add(hostileCase{
		name:  "8-bit verb",
		steps: []hostileStep{hs("NÖOP\r\n\xffHLO x\r\n", "500 5.5.2", "500 5.5.2")},
	}, hostileCase{
		name:  "8-bit NOOP and VRFY arguments",
		steps: []hostileStep{hs("NOOP \xff\xfe\r\nVRFY jö\r\n", "500 5.5.2", "500 5.5.2")},
	}, hostileCase{
		name:  "8-bit HELO argument",
		steps: []hostileStep{hs("EHLO héllo.test\r\nHELO \x80\r\nEHLO {id}\r\n", "500 5.5.2", "500 5.5.2", "250")},
	}, hostileCase{
		name:  "UTF-8 MAIL path without SMTPUTF8",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<jö@b.test>\r\nMAIL FROM:<j@bü.test>\r\n", "553 5.6.7", "553 5.6.7")},
	}, hostileCase{
		name:  "UTF-8 RCPT path without SMTPUTF8",
		steps: []hostileStep{hostileMail(), hs("RCPT TO:<ü@d.test>\r\n", "553 5.6.7")},
	}, hostileCase{
		name:  "Latin-1 MAIL path with SMTPUTF8",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<j\xf6@b.test> SMTPUTF8\r\n", "501 5.1.3")},
	}, hostileCase{
		name:  "8-bit MAIL parameters",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<a@b.test> BODY=8BITMIM\xc9\r\nMAIL FROM:<a@b.test> SIZE=1\xff\r\nMAIL FROM:<a@b.test> X\xff=1\r\n", "501 5.5.4", "501 5.5.4", "501 5.5.4")},
	}, hostileCase{
		name:  "8-bit DATA passes through",
		steps: []hostileStep{hostileTx(), hs("Grüße \xff\x80\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileOne("Grüße \xff\x80\r\n"),
	})

	// Command line length (RFC 5321 §4.5.3.1.4: 512 octets with CRLF).
	// An overlong line is dropped as it streams and answered once, at
	// its end, so the session stays in step.
	x100k := strings.Repeat("x", 100_000)
	add(hostileCase{
		name:  "command line of exactly 512 octets",
		steps: []hostileStep{hs("NOOP "+strings.Repeat("a", 505)+"\r\n", "250 2.0.0")},
	}, hostileCase{
		name:  "command line of 513 octets",
		steps: []hostileStep{hs("NOOP "+strings.Repeat("a", 506)+"\r\nNOOP\r\n", "500 5.5.6", "250 2.0.0")},
	}, hostileCase{
		name:  "command line of 512 octets ending in bare LF",
		steps: []hostileStep{hs("NOOP "+strings.Repeat("a", 506)+"\n", "250 2.0.0")},
	}, hostileCase{
		name:  "command line of 513 octets ending in bare LF",
		steps: []hostileStep{hs("NOOP "+strings.Repeat("a", 507)+"\n", "500 5.5.6")},
	}, hostileCase{
		name:  "overlong MAIL line leaves no transaction",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<"+strings.Repeat("a", 600)+"@b.test>\r\nRCPT TO:<c@d.test>\r\n", "500 5.5.6", "503 5.5.1")},
	}, hostileCase{
		name:  "100 KB command line in one write",
		steps: []hostileStep{hs("NOOP "+x100k+"\r\nNOOP\r\n", "500 5.5.6", "250 2.0.0")},
	}, hostileCase{
		name: "100 KB command line in pieces",
		steps: []hostileStep{{
			send: "NOOP " + x100k + "\r\nNOOP\r\n", chunk: 4096, pause: time.Millisecond,
			want: []string{"500 5.5.6", "250 2.0.0"},
		}},
	}, hostileCase{
		name: "100 KB without a line ending, then CRLF",
		steps: []hostileStep{
			{send: x100k, chunk: 8192, pause: time.Millisecond},
			hs("\r\nNOOP\r\n", "500 5.5.6", "250 2.0.0"),
		},
	}, hostileCase{
		name:  "100 KB without a line ending, then half-close",
		steps: []hostileStep{{send: x100k, halfClose: true}},
		// No reply: the line never ended; the client left.
		closed: true,
	}, hostileCase{
		name:   "100 KB without a line ending, then silence",
		prof:   hostileShort,
		serial: true,
		steps:  []hostileStep{{send: x100k, want: []string{"421 4.4.2"}, after: hostileTimeout}},
		closed: true,
	})

	// DATA has no line length limit of its own: only the message size
	// bounds it, and an oversized body is read to its end (no smuggling
	// through a 552 sent early).
	line1M := strings.Repeat("x", 1_000_000) + "\r\n"
	add(hostileCase{
		name:  "1 MB line inside DATA",
		steps: []hostileStep{hostileTx(), hs(line1M+".\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileOne(line1M),
	}, hostileCase{
		name:  "2 MB line inside DATA hiding commands",
		steps: []hostileStep{hostileTx(), hs(strings.Repeat("x", 2_000_000)+"\r\nRSET\r\nMAIL FROM:<evil@b.test>\r\n.\r\n", "552 5.3.4")},
	})

	// The message size limit (RFC 1870), at and one octet past it.
	atLimit, atLimitContent := hostileBody(hostileMaxSize, "")
	overLimit, _ := hostileBody(hostileMaxSize+1, "")
	stuffed, stuffedContent := hostileBody(hostileMaxSize, ".")
	add(hostileCase{
		name:  "message of exactly MaxMessageSize",
		steps: []hostileStep{hostileTx(), hs(atLimit, "250 2.0.0")},
		msgs:  1,
		check: hostileOne(atLimitContent),
	}, hostileCase{
		name:  "message one octet over MaxMessageSize",
		steps: []hostileStep{hostileTx(), hs(overLimit, "552 5.3.4")},
	}, hostileCase{
		name: "dot-stuffed message counted after unstuffing",
		// 1048 more octets on the wire than the limit; not in the content.
		steps: []hostileStep{hostileTx(), hs(stuffed, "250 2.0.0")},
		msgs:  1,
		check: hostileOne(stuffedContent),
	}, hostileCase{
		name:  "SIZE at the limit and one over",
		steps: []hostileStep{hostileEHLO(fmt.Sprintf("MAIL FROM:<a@b.test> SIZE=%d\r\nRSET\r\nMAIL FROM:<a@b.test> SIZE=%d\r\n", hostileMaxSize, hostileMaxSize+1), "250 2.1.0", "250 2.0.0", "552 5.3.4")},
	})

	// Thousands of recipients: 100 accepted (RFC 5321 §4.5.3.1.8), then
	// 452 4.5.3 for each of the rest (§4.5.3.1.10), all pipelined. A 4xx
	// is not a protocol error: 5,000 of them do not close the session.
	var rcpts strings.Builder
	for i := 1; i <= 5100; i++ {
		fmt.Fprintf(&rcpts, "RCPT TO:<r%d@d.test>\r\n", i)
	}
	add(hostileCase{
		name: "5,100 pipelined RCPT",
		steps: []hostileStep{
			hs("EHLO {id}\r\nMAIL FROM:<a@b.test>\r\n"+rcpts.String(),
				append(append([]string{"250", "250 2.1.0"}, hostileRep(100, "250 2.1.5")...), hostileRep(5000, "452 4.5.3")...)...),
			hs("DATA\r\nto a hundred\r\n.\r\n", "354", "250 2.0.0"),
		},
		msgs: 1,
		check: func(t *testing.T, msgs []smtptest.Recorded) {
			r := msgs[0].Recipients
			if len(r) != 100 || r[0] != "r1@d.test" || r[99] != "r100@d.test" {
				t.Fatalf("sink got %d recipients: %q...", len(r), r[:min(3, len(r))])
			}
		},
	})

	// Pipelining floods (RFC 2920).
	add(hostileCase{
		name: "100,000 pipelined NOOPs read concurrently",
		// 600 KB of commands in one stream is no RFC 2920 group: with
		// replies 2.3 times the commands, a client reading as it writes
		// still gets ahead, and gnet reads its input regardless. The
		// default backlog (64 KiB) closes it; this server allows 1 MiB.
		cfg: &Config{MaxMessageSize: hostileMaxSize, MaxPipelineBacklog: 1 << 20},
		run: hostileNoopFlood,
	}, hostileCase{
		name: "100,000 pipelined NOOPs and QUIT, read slowly",
		cfg:  &Config{MaxMessageSize: hostileMaxSize, MaxPipelineBacklog: 1 << 20},
		run:  hostileSlowReader,
	}, hostileCase{
		name: "200,000 pipelined NOOPs never read",
		// Its own server: BytesRecv counts this client only.
		cfg: &Config{MaxMessageSize: hostileMaxSize, IdleTimeout: time.Second},
		run: hostileNeverReads,
	})

	// Talking before the greeting (RFC 5321 §3.1; Config.GreetDelay).
	add(hostileCase{
		name: "talking before the greeting", prof: hostileGreet, noGreeting: true,
		steps:  []hostileStep{hs("EHLO {id}\r\n", "554 5.5.0")},
		closed: true,
	}, hostileCase{
		name: "one octet before the greeting", prof: hostileGreet, noGreeting: true,
		steps:  []hostileStep{hs("\r", "554 5.5.0")},
		closed: true,
	}, hostileCase{
		name: "whole transaction before the greeting", prof: hostileGreet, noGreeting: true,
		steps:  []hostileStep{hs(hostileTxStart+"early\r\n.\r\nQUIT\r\n", "554 5.5.0")},
		closed: true,
	}, hostileCase{
		name:  "waiting for the greeting",
		prof:  hostileGreet,
		steps: []hostileStep{hostileTx(), hs("patient\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
	})

	// BDAT (RFC 3030) with wrong sizes.
	add(hostileCase{
		name:   "BDAT declaring more than is sent, then silence",
		prof:   hostileShort,
		serial: true,
		steps: []hostileStep{hostileEnvelope(),
			{send: "BDAT 1000 LAST\r\n0123456789", want: []string{"421 4.4.2"}, after: hostileTimeout}},
		closed: true,
	}, hostileCase{
		name:  "BDAT with non-numeric sizes",
		steps: []hostileStep{hostileEnvelope(), hs("BDAT abc\r\nBDAT 0x10\r\nBDAT +5\r\nBDAT 5e3 LAST\r\nBDAT 1.5\r\n", hostileRep(5, "501 5.5.4")...)},
	}, hostileCase{
		name:  "BDAT with negative sizes",
		steps: []hostileStep{hostileEnvelope(), hs("BDAT -5\r\nBDAT -0 LAST\r\n", "501 5.5.4", "501 5.5.4")},
	}, hostileCase{
		name:  "BDAT with sizes beyond int64",
		steps: []hostileStep{hostileEnvelope(), hs("BDAT 9223372036854775808\r\nBDAT 99999999999999999999999 LAST\r\n", "501 5.5.4", "501 5.5.4")},
	}, hostileCase{
		name:  "BDAT without a size or with a bad end marker",
		steps: []hostileStep{hostileEnvelope(), hs("BDAT\r\nBDAT 5 LASTX\r\nBDAT 5 LAST LAST\r\nBDAT 5 FIRST\r\nBDAT 5LAST\r\n", hostileRep(5, "501 5.5.4")...)},
	}, hostileCase{
		name:   "BDAT of int64 max, then silence",
		prof:   hostileShort,
		serial: true,
		// Refused for its size, so read and dropped until the client
		// stops; then the DATA timeout ends it.
		steps: []hostileStep{hostileEnvelope(),
			{send: "BDAT 9223372036854775807 LAST\r\n" + strings.Repeat("z", 64<<10), want: []string{"421 4.4.2"}, after: hostileTimeout}},
		closed: true,
	}, hostileCase{
		name:   "BDAT of int64 max after a first chunk",
		cfg:    &Config{MaxMessageSize: hostileMaxSize, IdleTimeout: hostileTimeout, DataTimeout: hostileTimeout},
		serial: true,
		run:    hostileBDATOverflow,
	}, hostileCase{
		name: "BDAT chunk one octet over MaxMessageSize",
		steps: []hostileStep{hostileEnvelope(),
			hs("BDAT 1048577 LAST\r\n"+hostilePayload(hostileMaxSize+1, "\r\nRSET\r\nMAIL FROM:<evil@b.test>\r\n"), "552 5.3.4"),
			hs("MAIL FROM:<a@b.test>\r\n", "250 2.1.0")},
	}, hostileCase{
		name: "BDAT chunk of exactly MaxMessageSize",
		steps: []hostileStep{hostileEnvelope(),
			hs("BDAT 1048576 LAST\r\n"+hostilePayload(hostileMaxSize, "\r\nQUIT\r\n"), "250 2.0.0 OK queued as")},
		msgs:  1,
		check: hostileOne(hostilePayload(hostileMaxSize, "\r\nQUIT\r\n")),
	}, hostileCase{
		name: "BDAT chunks summing past MaxMessageSize",
		steps: []hostileStep{hostileEnvelope(),
			hs("BDAT 1048576\r\n"+hostilePayload(hostileMaxSize, "")+"BDAT 1 LAST\r\nx", "250 2.0.0 1048576 octets", "552 5.3.4")},
	}, hostileCase{
		name:  "BDAT without MAIL hides a command",
		steps: []hostileStep{hostileEHLO("BDAT 22 LAST\r\nMAIL FROM:<e@b.test>\r\n", "503 5.5.1")},
	}, hostileCase{
		name:  "BDAT 0 chunks",
		steps: []hostileStep{hostileEnvelope(), hs("BDAT 0\r\nBDAT 0\r\nBDAT 0 LAST\r\n", "250 2.0.0 0 octets", "250 2.0.0 0 octets", "250 2.0.0 OK queued as")},
		msgs:  1,
		check: hostileOne(""),
	})

	// Half-closed sockets: the client shuts down its sending side.
	add(hostileCase{
		name:   "half-close after QUIT",
		steps:  []hostileStep{{send: "QUIT\r\n", halfClose: true, want: []string{"221 2.0.0"}}},
		closed: true,
	}, hostileCase{
		name: "half-close after a pipelined transaction and QUIT",
		steps: []hostileStep{{send: hostileTxStart + "hi\r\n.\r\nQUIT\r\n", halfClose: true,
			want: []string{"250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"}}},
		closed: true,
		msgs:   1,
	}, hostileCase{
		name:   "half-close after complete commands without QUIT",
		steps:  []hostileStep{{send: "EHLO {id}\r\nNOOP\r\n", halfClose: true, want: []string{"250", "250 2.0.0"}}},
		closed: true,
	}, hostileCase{
		name:   "half-close after a partial command",
		steps:  []hostileStep{{send: "NOO", halfClose: true}},
		closed: true,
	}, hostileCase{
		name:   "half-close mid-DATA",
		steps:  []hostileStep{hostileTx(), {send: "half a body\r\n", halfClose: true}},
		closed: true,
	})

	// Other protocols on the SMTP port: hang up at once.
	add(hostileCase{
		name:   "TLS ClientHello",
		steps:  []hostileStep{hs(clientHello, "421 4.7.0")},
		closed: true,
	}, hostileCase{
		name:   "HTTP GET",
		steps:  []hostileStep{hs("GET / HTTP/1.1\r\nHost: mx.test\r\nUser-Agent: probe\r\n\r\n", "421 4.7.0")},
		closed: true,
	}, hostileCase{
		name:   "HTTP POST",
		steps:  []hostileStep{hs("POST /cgi-bin/x HTTP/1.1\r\nHost: mx.test\r\nContent-Length: 24\r\n\r\nMAIL FROM:<a@b.test>\r\n\r\n", "421 4.7.0")},
		closed: true,
	}, hostileCase{
		name:   "HTTP CONNECT",
		steps:  []hostileStep{hs("CONNECT mx.test:25 HTTP/1.1\r\nHost: mx.test:25\r\n\r\n", "421 4.7.0")},
		closed: true,
	}, hostileCase{
		name:  "HTTP GET after EHLO is only an unknown command",
		steps: []hostileStep{hostileEHLO("GET / HTTP/1.1\r\n", "500 5.5.2")},
	}, hostileCase{
		name:   "PROXY v1 header from an untrusted address",
		steps:  []hostileStep{hs("PROXY TCP4 192.0.2.7 127.0.0.1 5555 25\r\nEHLO {id}\r\n", "421 4.7.0")},
		closed: true,
	}, hostileCase{
		name: "PROXY v2 header from an untrusted address",
		// The v2 signature is built to stop SMTP servers: two empty lines,
		// a NUL line, then QUIT.
		steps:  []hostileStep{hs("\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xc0\x00\x02\x07\x7f\x00\x00\x01\x15\xb3\x00\x19EHLO {id}\r\n", "500 5.5.2", "500 5.5.2", "500 5.5.2", "221 2.0.0")},
		closed: true,
	})

	// Slow clients (RFC 5321 §4.5.3.2 timeouts).
	add(hostileCase{
		name:   "slowloris one octet every 50 ms",
		prof:   hostileShort,
		serial: true,
		// Never completes a command: the idle timeout runs from the last
		// complete command, not from the last octet.
		steps:  []hostileStep{{parts: hostilePerByte("NOOP " + strings.Repeat("x", 55)), pause: 50 * time.Millisecond, want: []string{"421 4.4.2"}, after: hostileTimeout}},
		closed: true,
	}, hostileCase{
		name:   "slowloris after an overlong line",
		prof:   hostileShort,
		serial: true,
		// The same, once the line is past 512 octets and being dropped.
		steps: []hostileStep{{
			parts: append([]string{"NOOP " + strings.Repeat("x", 600)}, hostilePerByte(strings.Repeat("x", 60))...),
			pause: 50 * time.Millisecond, want: []string{"421 4.4.2"}, after: hostileTimeout,
		}},
		closed: true,
	}, hostileCase{
		name:   "slowloris inside DATA",
		prof:   hostileShort,
		serial: true,
		// Current behaviour: the DATA timeout is an inactivity timeout
		// (RFC 5321 §4.5.3.2.5 "DATA block"), so an octet every 50 ms
		// keeps a body alive past 300 ms; MaxMessageSize bounds what it
		// can cost. The message then completes normally.
		steps: []hostileStep{hostileTx(),
			{parts: hostilePerByte("slow body line\r\n"), pause: 50 * time.Millisecond},
			hs(".\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileOne("slow body line\r\n"),
	}, hostileCase{
		name:   "DATA stalled mid-body",
		prof:   hostileShort,
		serial: true,
		steps:  []hostileStep{hostileTx(), {send: "partial\r\n", want: []string{"421 4.4.2"}, after: hostileTimeout}},
		closed: true,
	})

	// Clients that leave in the middle.
	own := func() *Config { return &Config{MaxMessageSize: hostileMaxSize} }
	add(hostileCase{
		name: "disconnect mid-DATA",
		cfg:  own(),
		run:  hostileDisconnectMidData,
	}, hostileCase{
		name: "disconnect mid-BDAT chunk",
		cfg:  own(),
		run:  hostileDisconnectMidBDAT,
	}, hostileCase{
		name: "disconnect while the sink holds the message",
		cfg:  own(),
		run:  hostileDisconnectWhileHeld,
		msgs: 1,
	}, hostileCase{
		name: "pipelined flood while the sink holds the message",
		cfg:  &Config{MaxMessageSize: hostileMaxSize, MaxPipelineBacklog: 64 << 10},
		run:  hostileFloodWhileHeld,
		msgs: 1,
	})

	// RSET, NOOP, HELP, VRFY, DATA, QUIT with long or odd arguments.
	add(hostileCase{
		name:  "RSET, DATA and QUIT with arguments",
		steps: []hostileStep{hostileEnvelope(), hs("RSET all\r\nDATA now\r\nQUIT please\r\nDATA\r\n.\r\n", "501 5.5.4", "501 5.5.4", "501 5.5.4", "354", "250 2.0.0")},
		msgs:  1,
		check: hostileOne(""),
	}, hostileCase{
		name:  "NOOP with a long argument",
		steps: []hostileStep{hs("NOOP "+strings.Repeat("y", 505)+"\r\nNOOP <>\"\\;:@[]\r\n", "250 2.0.0", "250 2.0.0")},
	}, hostileCase{
		name:  "HELP with odd arguments",
		steps: []hostileStep{hs("HELP MAIL\r\nHELP \t<>\"\\\r\nHELP "+strings.Repeat("h", 500)+"\r\n", hostileRep(3, "214 2.0.0")...)},
	}, hostileCase{
		name:  "VRFY with odd arguments",
		steps: []hostileStep{hs("VRFY\r\nVRFY <postmaster>\r\nVRFY \"a b\"@c\r\nVRFY "+strings.Repeat("v", 505)+"\r\n", hostileRep(4, "252 2.0.0")...)},
	}, hostileCase{
		name:  "tabs as separators and trailing blanks",
		steps: []hostileStep{hs("NOOP\tx\r\nRSET\t \r\nEHLO\t{id}\t\r\nMAIL FROM:<a@b.test>  \r\n", "250 2.0.0", "250 2.0.0", "250", "250 2.1.0")},
	}, hostileCase{
		name:  "blank before the verb",
		steps: []hostileStep{hs(" NOOP\r\n\tNOOP\r\n", "500 5.5.2", "500 5.5.2")},
	})

	// MAIL and RCPT paths (RFC 5321 §4.1.2, §4.5.3.1).
	local64 := strings.Repeat("l", 64)
	// A domain making the path exactly 256 octets with its brackets.
	dom189 := strings.Repeat("a", 63) + "." + strings.Repeat("b", 63) + "." + strings.Repeat("c", 61)
	add(hostileCase{
		name:  "MAIL path missing its closing bracket",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<a@b.test\r\nMAIL FROM:<\r\n", "501 5.5.4", "501 5.5.4")},
	}, hostileCase{
		name:  "MAIL path without brackets",
		steps: []hostileStep{hostileEHLO("MAIL FROM:a@b.test\r\nMAIL FROM:\r\nMAIL\r\n", "501 5.5.4", "501 5.5.4", "501 5.5.4")},
	}, hostileCase{
		name:  "MAIL path in nested brackets",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<<a@b.test>>\r\nMAIL FROM:<<>>\r\nMAIL FROM:<a<b@c.test>\r\n", "501 5.5.4", "501 5.5.4", "501 5.1.3")},
	}, hostileCase{
		name:  "junk after the path",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<a@b.test>x\r\nMAIL FROM:<a@b.test>>\r\n", "501 5.5.4", "501 5.5.4")},
	}, hostileCase{
		name: "source routes are accepted and stripped",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<@r1.test,@r2.test:a@b.test>\r\nRCPT TO:<@r3.test:c@d.test>\r\nDATA\r\n", "250 2.1.0", "250 2.1.5", "354"),
			hs("routed\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileEnvelopeIs("a@b.test", "c@d.test"),
	}, hostileCase{
		name:  "broken source routes",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<@r1.test,:a@b.test>\r\nMAIL FROM:<@:a@b.test>\r\nMAIL FROM:<@r1.test:>\r\nMAIL FROM:<@b.test>\r\nMAIL FROM:<@r1.test;@r2.test:a@b.test>\r\n", hostileRep(5, "501 5.1.3")...)},
	}, hostileCase{
		name: "quoted local parts with escapes",
		steps: []hostileStep{hostileEHLO(`MAIL FROM:<"a\"b\\c d"@b.test>`+"\r\n"+`RCPT TO:<"x>y"@d.test>`+"\r\nDATA\r\n", "250 2.1.0", "250 2.1.5", "354"),
			hs("quoted\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileEnvelopeIs(`"a\"b\\c d"@b.test`, `"x>y"@d.test`),
	}, hostileCase{
		name:  "unterminated quoted local part",
		steps: []hostileStep{hostileEHLO(`MAIL FROM:<"a@b.test>`+"\r\n"+`MAIL FROM:<"a\"@b.test>`+"\r\n", "501 5.5.4", "501 5.5.4")},
	}, hostileCase{
		name:  "quoted local part followed by junk",
		steps: []hostileStep{hostileEHLO(`MAIL FROM:<"a"b@b.test>`+"\r\n"+`MAIL FROM:<"a"@"b".test>`+"\r\n", "501 5.1.3", "501 5.1.3")},
	}, hostileCase{
		name: "malformed dot-strings and domains",
		steps: []hostileStep{hostileMail(), hs("RCPT TO:<a..b@d.test>\r\nRCPT TO:<.a@d.test>\r\nRCPT TO:<a.@d.test>\r\nRCPT TO:<a@d.test.>\r\n"+
			"RCPT TO:<a@-d.test>\r\nRCPT TO:<a@d@e.test>\r\nRCPT TO:<a@>\r\nRCPT TO:<a>\r\nRCPT TO:<a@d_e.test>\r\n", hostileRep(9, "501 5.1.3")...)},
	}, hostileCase{
		name: "good address literals",
		steps: []hostileStep{hostileMail(), hs("RCPT TO:<a@[192.0.2.1]>\r\nRCPT TO:<a@[IPv6:2001:db8::1]>\r\nRCPT TO:<a@[IPv6:::ffff:192.0.2.1]>\r\nRCPT TO:<a@[x-tag:abc]>\r\n",
			hostileRep(4, "250 2.1.5")...)},
	}, hostileCase{
		name: "bad address literals",
		steps: []hostileStep{hostileMail(), hs("RCPT TO:<a@[300.0.0.1]>\r\nRCPT TO:<a@[1.2.3]>\r\nRCPT TO:<a@[IPv6:1::2::3]>\r\nRCPT TO:<a@[IPv6:12345::]>\r\n"+
			"RCPT TO:<a@[192.0.2.1>\r\nRCPT TO:<a@[]>\r\nRCPT TO:<a@[IPv6:1:2:3:4:5:6:7:8:9]>\r\nRCPT TO:<a@[tag:]>\r\n", hostileRep(8, "501 5.1.3")...)},
	}, hostileCase{
		name:  "64-octet local part",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<"+local64+"@b.test>\r\n", "250 2.1.0")},
	}, hostileCase{
		name:  "65-octet local part",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<"+local64+"l@b.test>\r\n", "501 5.1.3 Local part too long")},
	}, hostileCase{
		name:  "256-octet path",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<"+local64+"@"+dom189+">\r\n", "250 2.1.0")},
	}, hostileCase{
		name:  "257-octet path",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<"+local64+"@"+dom189+"c>\r\n", "501 5.1.3 Path too long")},
	}, hostileCase{
		name:  "256-octet domain",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<a@"+strings.Repeat("d", 63)+"."+strings.Repeat("e", 63)+"."+strings.Repeat("f", 63)+"."+strings.Repeat("g", 64)+">\r\n", "501 5.1.3 Domain too long")},
	}, hostileCase{
		name:  "null and postmaster recipients",
		steps: []hostileStep{hostileMail(), hs("RCPT TO:<>\r\nRCPT TO:<PostMaster>\r\nRCPT TO:<postmaster@>\r\n", "501 5.1.3", "250 2.1.5", "501 5.1.3")},
	}, hostileCase{
		name:  "MAIL TO and RCPT FROM",
		steps: []hostileStep{hostileEHLO("MAIL TO:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\nRCPT FROM:<c@d.test>\r\n", "501 5.5.4", "250 2.1.0", "501 5.5.4")},
	}, hostileCase{
		name:  "blanks after the colon tolerated",
		steps: []hostileStep{hostileEHLO("MAIL FROM: <a@b.test>\r\nRCPT TO:\t <c@d.test>\r\n", "250 2.1.0", "250 2.1.5")},
	})

	// MAIL and RCPT parameters (RFC 5321 §4.1.1.11, RFC 1870, RFC 6152,
	// RFC 6531): malformed 501 5.5.4, unknown 555 5.5.4.
	mailParams := func(name string, params []string, want ...string) hostileCase {
		var b strings.Builder
		for _, p := range params {
			b.WriteString("MAIL FROM:<a@b.test> " + p + "\r\n")
		}
		return hostileCase{name: name, steps: []hostileStep{hostileEHLO(b.String(), want...)}}
	}
	add(
		mailParams("SIZE=abc", []string{"SIZE=abc", "SIZE=1k"}, "501 5.5.4", "501 5.5.4"),
		mailParams("SIZE=-1", []string{"SIZE=-1", "SIZE=+1"}, "501 5.5.4", "501 5.5.4"),
		mailParams("SIZE without a value", []string{"SIZE", "SIZE="}, "501 5.5.4", "501 5.5.4"),
		mailParams("SIZE of 20 and 21 digits", []string{"SIZE=99999999999999999999", "SIZE=000000000000000000001"}, "501 5.5.4", "501 5.5.4"),
		mailParams("SIZE repeated", []string{"SIZE=10 SIZE=10", "SIZE=10 size=11"}, "501 5.5.4", "501 5.5.4"),
		mailParams("BODY=foo", []string{"BODY=foo", "BODY=", "BODY=8BITMIME BODY=7BIT"}, "501 5.5.4", "501 5.5.4", "501 5.5.4"),
		mailParams("SMTPUTF8=yes", []string{"SMTPUTF8=yes", "SMTPUTF8=", "SMTPUTF8 SMTPUTF8"}, "501 5.5.4", "501 5.5.4", "501 5.5.4"),
		mailParams("unknown MAIL parameters", []string{"FOO=bar", "RET=HDRS", "X-LONG=" + strings.Repeat("q", 300)}, "555 5.5.4", "555 5.5.4", "555 5.5.4"),
		mailParams("malformed parameter keywords", []string{"=x", "-X=1", "A_B=1", "SIZE==1"}, "501 5.5.4", "501 5.5.4", "501 5.5.4", "501 5.5.4"),
		mailParams("parameters in lower case", []string{"size=10 body=8bitmime smtputf8"}, "250 2.1.0"),
		hostileCase{
			name:  "RCPT parameters",
			steps: []hostileStep{hostileMail(), hs("RCPT TO:<c@d.test> NOTIFY=NEVER\r\nRCPT TO:<c@d.test> ORCPT=rfc822;c@d.test\r\nRCPT TO:<c@d.test> =\r\n", "555 5.5.4", "555 5.5.4", "555 5.5.4")},
		},
		hostileCase{
			name:  "parameters after HELO",
			steps: []hostileStep{hs("HELO {id}\r\nMAIL FROM:<a@b.test> SIZE=10\r\nMAIL FROM:<a@b.test> SMTPUTF8\r\n", "250", "555 5.5.4", "555 5.5.4")},
		},
	)

	// Verbs: unknown 500 5.5.2, known but not implemented 502 5.5.1
	// (RFC 5321 §4.2.4); too many errors 421 4.7.0 and close.
	add(hostileCase{
		name:  "unknown verbs",
		steps: []hostileStep{hs("XYZZY\r\nEHL\r\nEHLOO x\r\nMAILFROM:<a@b.test>\r\nN O O P\r\n", hostileRep(5, "500 5.5.2")...)},
	}, hostileCase{
		name: "not implemented verbs",
		steps: []hostileStep{hs("EXPN list\r\nSTARTTLS\r\nAUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=\r\nTURN\r\nETRN d.test\r\nATRN\r\nSEND FROM:<a@b.test>\r\nSOML FROM:<a@b.test>\r\nSAML FROM:<a@b.test>\r\n",
			hostileRep(9, "502 5.5.1")...)},
	}, hostileCase{
		name:   "too many errors in one write",
		steps:  []hostileStep{hs(strings.Repeat("XYZZY\r\n", 15), append(hostileRep(10, "500 5.5.2"), "421 4.7.0")...)},
		closed: true,
	}, hostileCase{
		name: "too many errors spread over a session",
		steps: []hostileStep{
			hs("RSET x\r\nRSET x\r\nRSET x\r\nRSET x\r\nRSET x\r\n", hostileRep(5, "501 5.5.4")...),
			hs("NOOP\r\nEHLO {id}\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@>\r\n", "250 2.0.0", "250", "250 2.1.0", "501 5.1.3"),
			hs("FOO\r\nBAR\r\nBAZ\r\nQUX\r\n", append(hostileRep(4, "500 5.5.2"), "421 4.7.0")...),
		},
		closed: true,
	})

	// Command sequence (RFC 5321 §4.1.4, RFC 3030 §2).
	add(hostileCase{
		name:  "EHLO twice resets the transaction",
		steps: []hostileStep{hostileEnvelope(), hs("EHLO {id}\r\nRCPT TO:<c@d.test>\r\nDATA\r\n", "250", "503 5.5.1", "503 5.5.1")},
	}, hostileCase{
		name:  "HELO after EHLO drops the extensions",
		steps: []hostileStep{hostileEHLO("HELO {id}\r\nMAIL FROM:<a@b.test> SIZE=10\r\n", "250", "555 5.5.4")},
	}, hostileCase{
		name:  "DATA twice",
		steps: []hostileStep{hostileTx(), hs("once\r\n.\r\nDATA\r\n", "250 2.0.0", "503 5.5.1")},
		msgs:  1,
	}, hostileCase{
		name:  "pipelined DATA inside DATA is content",
		steps: []hostileStep{hs(hostileTxStart+"DATA\r\n.\r\n", "250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0")},
		msgs:  1,
		check: hostileOne("DATA\r\n"),
	}, hostileCase{
		name:  "BDAT after DATA",
		steps: []hostileStep{hostileTx(), hs("once\r\n.\r\nBDAT 3 LAST\r\nabc", "250 2.0.0", "503 5.5.1")},
		msgs:  1,
		check: hostileOne("once\r\n"),
	}, hostileCase{
		name:  "BDAT inside DATA is content",
		steps: []hostileStep{hostileTx(), hs("BDAT 3 LAST\r\nabc\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileOne("BDAT 3 LAST\r\nabc\r\n"),
	}, hostileCase{
		name:  "DATA after BDAT",
		steps: []hostileStep{hostileEnvelope(), hs("BDAT 3\r\nabcDATA\r\nBDAT 0 LAST\r\n", "250 2.0.0 3 octets", "503 5.5.1", "250 2.0.0 OK queued as")},
		msgs:  1,
		check: hostileOne("abc"),
	}, hostileCase{
		name:  "RCPT and MAIL after BDAT",
		steps: []hostileStep{hostileEnvelope(), hs("BDAT 1\r\nxRCPT TO:<e@d.test>\r\nMAIL FROM:<f@b.test>\r\nBDAT 1 LAST\r\ny", "250 2.0.0 1 octets", "503 5.5.1", "503 5.5.1", "250 2.0.0 OK queued as")},
		msgs:  1,
		check: func(t *testing.T, msgs []smtptest.Recorded) {
			hostileEnvelopeIs("a@b.test", "c@d.test")(t, msgs)
			hostileOne("xy")(t, msgs)
		},
	}, hostileCase{
		name:  "BODY=BINARYMIME then DATA",
		steps: []hostileStep{hostileEHLO("MAIL FROM:<a@b.test> BODY=BINARYMIME\r\nRCPT TO:<c@d.test>\r\nDATA\r\n", "250 2.1.0", "250 2.1.5", "503 5.5.1")},
	}, hostileCase{
		name:   "commands pipelined after QUIT are ignored",
		steps:  []hostileStep{hs("QUIT\r\nNOOP\r\nEHLO {id}\r\n", "221 2.0.0")},
		closed: true,
	})

	// Line endings: a bare LF ends a command (tolerated), a bare CR does
	// not; in DATA both are refused or normalized (RFC 5321 §2.3.8).
	add(hostileCase{
		name:  "empty lines",
		steps: []hostileStep{hs("\r\n\r\n\r\n", hostileRep(3, "500 5.5.2")...)},
	}, hostileCase{
		name:  "empty lines ending in bare LF",
		steps: []hostileStep{hs("\n\n", "500 5.5.2", "500 5.5.2")},
	}, hostileCase{
		name: "commands ending in bare LF",
		steps: []hostileStep{hs("EHLO {id}\nMAIL FROM:<a@b.test>\nRCPT TO:<c@d.test>\nDATA\n", "250", "250 2.1.0", "250 2.1.5", "354"),
			hs("lf\r\n.\r\n", "250 2.0.0")},
		msgs: 1,
	}, hostileCase{
		name:  "command ending in bare CR",
		steps: []hostileStep{hs("NOOP\rNOOP\r\nNOOP\r\r\n", "500 5.5.2", "500 5.5.2")},
	}, hostileCase{
		name:  "CRLF split between writes",
		steps: []hostileStep{{parts: []string{"NOOP\r", "\nNOOP\r", "\n"}, pause: 5 * time.Millisecond, want: []string{"250 2.0.0", "250 2.0.0"}}},
	}, hostileCase{
		name:  "bare LF inside DATA, refused",
		steps: []hostileStep{hostileTx(), hs("a\nb\r\n.\r\n", "554 5.6.0")},
	}, hostileCase{
		name:  "bare LF inside DATA, normalized",
		prof:  hostileNormalize,
		steps: []hostileStep{hostileTx(), hs("a\nb\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileOne("a\r\nb\r\n"),
	}, hostileCase{
		name:  "bare CR inside DATA, refused",
		steps: []hostileStep{hostileTx(), hs("a\rb\r\n.\r\n", "554 5.6.0")},
	}, hostileCase{
		name:  "bare CR inside DATA, normalized",
		prof:  hostileNormalize,
		steps: []hostileStep{hostileTx(), hs("a\rb\r\n.\r\n", "250 2.0.0")},
		msgs:  1,
		check: hostileOne("a\r\nb\r\n"),
	})

	// Per-client limits over IPv6: one client owns a whole /64.
	add(hostileIPv6Cases()...)
	// What the sink can carry, HELO arguments, refusals of policy.
	add(hostileEnvelopeCases()...)

	// Server-wide bounds: the balancer's own sessions, session buffers.
	add(hostileBudgetCases()...)
	// XCLIENT: who may send it, when, and what its values may hold.
	add(hostileXclientCases()...)
	return cases
}

// hostileNoopFlood pipelines 100,000 NOOPs (and a HELP every 10,000th
// command, as markers of order) in one stream while reading
// concurrently: every reply arrives, in order.
func hostileNoopFlood(t *testing.T, h *hostileServer, id string) {
	const n = 100_000
	c := h.dial(t, true)
	var b strings.Builder
	for i := 1; i <= n; i++ {
		b.WriteString("NOOP\r\n")
		if i%10_000 == 0 {
			b.WriteString("HELP\r\n")
		}
	}
	b.WriteString("QUIT\r\n")
	written := make(chan error, 1)
	go func() { written <- hostileWrite(c.conn, hostileStep{send: b.String()}, id) }()
	for i := 1; i <= n; i++ {
		r, err := c.Read()
		if err != nil || r.String() != "250 2.0.0 OK" {
			t.Fatalf("reply %d: %q, %v", i, r.String(), err)
		}
		if i%10_000 == 0 {
			if r, err := c.Read(); err != nil || !strings.HasPrefix(r.String(), "214 2.0.0 ") {
				t.Fatalf("HELP after NOOP %d: %q, %v", i, r.String(), err)
			}
		}
	}
	if r, err := c.Read(); err != nil || !strings.HasPrefix(r.String(), "221 2.0.0 ") {
		t.Fatalf("QUIT: %q, %v", r.String(), err)
	}
	if err := c.closed(); err != nil {
		t.Fatal(err)
	}
	if err := <-written; err != nil {
		t.Fatalf("write: %v", err)
	}
}

// hostileSlowReader pipelines 100,000 NOOPs and a QUIT (600 KB, under
// this server's MaxPipelineBacklog) and reads the 1.4 MB of replies
// slowly through a small receive buffer, so that replies still wait in
// the server's outbound buffer when it takes the QUIT. It must send all of them and
// the 221 before it closes (RFC 5321 §4.1.1.10), not drop what the
// socket had not taken yet.
func hostileSlowReader(t *testing.T, h *hostileServer, _ string) {
	const n = 100_000
	conn := dialSmallReceiveBuffer(t, h.addr)
	defer conn.Close()
	r := bufio.NewReaderSize(conn, 512)
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != "220 mx.test ESMTP\r\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	if err := hostileWrite(conn, hostileStep{send: strings.Repeat("NOOP\r\n", n) + "QUIT\r\n"}, ""); err != nil {
		t.Fatalf("write: %v", err)
	}
	time.Sleep(50 * time.Millisecond) // the server fills its outbound buffer and pauses
	for i := 1; i <= n; i++ {
		line, err := r.ReadString('\n')
		if err != nil || line != "250 2.0.0 OK\r\n" {
			t.Fatalf("reply %d: %q, %v", i, line, err)
		}
		if i > n-20_000 && i%100 == 0 {
			// 1.4 KB a millisecond: less than the server's
			// outputHighMark drains between two ticks.
			time.Sleep(time.Millisecond)
		}
	}
	if line, err := r.ReadString('\n'); err != nil || !strings.HasPrefix(line, "221 2.0.0 ") {
		t.Fatalf("QUIT: %q, %v", line, err)
	}
	if line, err := r.ReadString('\n'); err != io.EOF {
		t.Fatalf("after 221: %q, %v; want the end", line, err)
	}
}

// dialSmallReceiveBuffer connects with a 16 KiB receive buffer, set
// before connecting, so that the client's kernel takes few replies in
// and the server's own buffers hold the rest.
func dialSmallReceiveBuffer(t *testing.T, addr string) net.Conn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		if err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 16<<10)
		}); err != nil {
			return err
		}
		return serr
	}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	return conn
}

// hostileNeverReads sends 200,000 NOOPs (1.2 MB) and reads nothing. The
// server must not hold 2.8 MB of replies for it: once outputHighMark of
// replies waits unsent it takes no more commands (backpressure), so its
// intake stops well short of the stream; with no progress, the idle
// timeout then closes the connection.
func hostileNeverReads(t *testing.T, h *hostileServer, _ string) {
	const n = 200_000
	conn := dialSmallReceiveBuffer(t, h.addr)
	defer conn.Close()
	r := bufio.NewReader(conn)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != "220 mx.test ESMTP\r\n" {
		t.Fatalf("greeting %q, %v", line, err)
	}
	stream := strings.Repeat("NOOP\r\n", n)
	go func() {
		// Blocks once the server stops reading; ends when it hangs up.
		_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Write([]byte(stream))
	}()
	st := h.srv.Stats()
	hostileWaitFor(t, "server hung up at the idle timeout", func() bool { return st.Open.Load() == 0 })
	if got := st.BytesRecv.Load(); got >= int64(len(stream))/2 {
		t.Fatalf("the server took %d of %d octets of commands from a client that reads no replies", got, len(stream))
	}
	// Now read: the replies it did send, then the timeout, then the end.
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	replies, last := 0, ""
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break
		}
		replies++
		last = line
	}
	// The 421 4.4.2 is queued behind replies the client never read, so
	// the close may well cut it off; the end of the stream is what counts.
	if replies >= n || !(strings.HasPrefix(last, "421 4.4.2") || last == "250 2.0.0 OK\r\n") {
		t.Fatalf("%d replies, the last %q; want fewer than %d, then the end", replies, last, n)
	}
	t.Logf("took %d octets, answered %d commands, then closed", st.BytesRecv.Load(), replies-1)
}

// hostileBDATOverflow: after a first chunk, a chunk size near int64's
// maximum must still be refused (read and dropped), not overflow the
// size check and get buffered. Checked by the in-flight byte count
// while the chunk streams: it must stay within one message.
func hostileBDATOverflow(t *testing.T, h *hostileServer, id string) {
	c := h.dial(t, true)
	c.steps(t, id, []hostileStep{hs("EHLO {id}\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nBDAT 1\r\nx",
		"250", "250 2.1.0", "250 2.1.5", "250 2.0.0 1 octets")}, false)
	stream := "BDAT 9223372036854775807 LAST\r\n" + strings.Repeat("z", 2*hostileMaxSize)
	sentBefore := h.srv.Stats().BytesRecv.Load()
	if err := hostileWrite(c.conn, hostileStep{send: stream}, id); err != nil {
		t.Fatalf("write: %v", err)
	}
	hostileWaitFor(t, "server read the stream", func() bool {
		return h.srv.Stats().BytesRecv.Load() >= sentBefore+int64(len(stream))
	})
	if held := h.srv.Stats().InFlightBytes.Load(); held < 0 || held > hostileMaxSize+4096 {
		t.Errorf("InFlightBytes %d while a refused chunk streams, want 0..%d: the chunk size overflowed the size check", held, hostileMaxSize+4096)
	}
	c.steps(t, id, []hostileStep{{want: []string{"421 4.4.2"}, after: hostileTimeout}}, true)
	if err := c.closed(); err != nil {
		t.Fatal(err)
	}
	hostileWaitFor(t, "budget returned", func() bool { return h.srv.Stats().InFlightBytes.Load() == 0 })
}

// hostileDisconnectMidData leaves with 256 KB of body read: nothing
// reaches the sink and the budget gets its bytes back.
func hostileDisconnectMidData(t *testing.T, h *hostileServer, id string) {
	c := h.dial(t, true)
	c.steps(t, id, []hostileStep{hostileTx()}, false)
	part := strings.Repeat(strings.Repeat("y", 1022)+"\r\n", 256)
	if err := hostileWrite(c.conn, hostileStep{send: part}, id); err != nil {
		t.Fatal(err)
	}
	hostileWaitFor(t, "body held", func() bool { return h.srv.Stats().InFlightBytes.Load() >= int64(len(part)) })
	c.conn.Close()
	hostileWaitFor(t, "close seen", func() bool { return h.srv.Stats().Open.Load() == 0 })
	if n := h.srv.Stats().InFlightBytes.Load(); n != 0 {
		t.Fatalf("InFlightBytes %d after the client left mid-DATA", n)
	}
}

// hostileDisconnectMidBDAT leaves inside a chunk whose size was held at
// BDAT.
func hostileDisconnectMidBDAT(t *testing.T, h *hostileServer, id string) {
	c := h.dial(t, true)
	c.steps(t, id, []hostileStep{hostileEnvelope()}, false)
	if err := hostileWrite(c.conn, hostileStep{send: "BDAT 500000 LAST\r\n" + strings.Repeat("b", 100_000)}, id); err != nil {
		t.Fatal(err)
	}
	hostileWaitFor(t, "chunk held", func() bool { return h.srv.Stats().InFlightBytes.Load() >= 500_000 })
	c.conn.Close()
	hostileWaitFor(t, "close seen", func() bool { return h.srv.Stats().Open.Load() == 0 })
	if n := h.srv.Stats().InFlightBytes.Load(); n != 0 {
		t.Fatalf("InFlightBytes %d after the client left mid-BDAT", n)
	}
}

// hostileDisconnectWhileHeld leaves while the sink has the message: the
// sink completes later, nothing crashes, and only then are the bytes
// released.
func hostileDisconnectWhileHeld(t *testing.T, h *hostileServer, id string) {
	h.sink.Hold(id)
	c := h.dial(t, true)
	c.steps(t, id, []hostileStep{hostileTx()}, false)
	if err := hostileWrite(c.conn, hostileStep{send: strings.Repeat("h", 100_000) + "\r\n.\r\n"}, id); err != nil {
		t.Fatal(err)
	}
	hostileWaitFor(t, "message submitted", func() bool { return len(h.sink.ByHelo(id)) == 1 })
	c.conn.Close()
	hostileWaitFor(t, "close seen", func() bool { return h.srv.Stats().Open.Load() == 0 })
	if n := h.srv.Stats().InFlightBytes.Load(); n < 100_000 {
		t.Fatalf("InFlightBytes %d: released before the sink answered", n)
	}
	h.sink.Release(id)
	hostileWaitFor(t, "budget returned", func() bool { return h.srv.Stats().InFlightBytes.Load() == 0 })
}

// hostileFloodWhileHeld pipelines past MaxPipelineBacklog (64 KiB here)
// while its message waits for the sink: 421 4.7.0 and close, and the
// message still completes.
func hostileFloodWhileHeld(t *testing.T, h *hostileServer, id string) {
	h.sink.Hold(id)
	c := h.dial(t, true)
	c.steps(t, id, []hostileStep{hostileTx()}, false)
	if err := hostileWrite(c.conn, hostileStep{send: "held\r\n.\r\n"}, id); err != nil {
		t.Fatal(err)
	}
	hostileWaitFor(t, "message submitted", func() bool { return len(h.sink.ByHelo(id)) == 1 })
	c.steps(t, id, []hostileStep{hs(strings.Repeat("NOOP\r\n", 80<<10/6), "421 4.7.0")}, true)
	if err := c.closed(); err != nil {
		t.Fatal(err)
	}
	h.sink.Release(id)
	hostileWaitFor(t, "budget returned", func() bool { return h.srv.Stats().InFlightBytes.Load() == 0 })
}

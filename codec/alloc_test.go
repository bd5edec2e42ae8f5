package codec

import (
	"bytes"
	"testing"

	"github.com/valyala/bytebufferpool"
)

// The per-command path must not allocate (a session handles thousands of
// commands per second on an event loop).

func assertNoAllocs(t *testing.T, name string, f func()) {
	t.Helper()
	if n := testing.AllocsPerRun(100, f); n != 0 {
		t.Errorf("%s: %v allocations per run, want 0", name, n)
	}
}

var allocCommandLines = []string{
	"HELO example.com",
	"EHLO example.com",
	"MAIL FROM:<sender@example.com> SIZE=12345 BODY=8BITMIME",
	"MAIL FROM:<>",
	"MAIL FROM:<@a,@b:sender@example.com>",
	"RCPT TO:<rcpt@example.com>",
	"RCPT TO:<postmaster>",
	"DATA",
	"BDAT 4096 LAST",
	"RSET",
	"NOOP",
	"QUIT",
	"VRFY user",
	"HELP",
	"STARTTLS",
	"AUTH PLAIN",
	"XCLIENT ADDR=IPV6:2001:db8::1 HELO=mx.example LOGIN=a+2Bb",
	"XYZZY",
	"HELO a\x00b",
	"MAIL FROM:a",
	"BDAT x",
}

func TestParseCommandAllocs(t *testing.T) {
	var cmd Command
	for _, s := range allocCommandLines {
		line := []byte(s)
		assertNoAllocs(t, s, func() { _ = ParseCommand(line, &cmd) })
	}
}

func TestParseMailParamsAllocs(t *testing.T) {
	var p MailParams
	for _, s := range []string{"SIZE=12345 BODY=8BITMIME SMTPUTF8", "", "FOO=bar", "SIZE=x", "BODY=7BIT BODY=7BIT", "AUTH=a+2Bb@example.org", "AUTH=<>"} {
		params := []byte(s)
		assertNoAllocs(t, s, func() { _ = ParseMailParams(params, &p) })
	}
	assertNoAllocs(t, "ParseRcptParams", func() { _ = ParseRcptParams([]byte("NOTIFY=NEVER")) })
}

func TestValidateMailboxAllocs(t *testing.T) {
	for _, tc := range mailboxTests {
		path := []byte(tc.path)
		utf8 := tc.utf8
		assertNoAllocs(t, tc.path, func() { _ = ValidateMailbox(path, utf8) })
	}
	assertNoAllocs(t, "IsPostmaster", func() { _ = IsPostmaster([]byte("PostMaster")) })
}

func TestCommandReaderAllocs(t *testing.T) {
	stream := []byte("EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n" +
		string(bytes.Repeat([]byte("x"), 600)) + "\r\nQUIT\r\nNOO")
	r := CommandReader{}
	assertNoAllocs(t, "Next", func() {
		r.Reset() // each run is a new stream, not the last one's partial line grown
		buf := stream
		for {
			_, n, _ := r.Next(buf)
			if n == 0 {
				break
			}
			buf = buf[n:]
		}
	})
}

func TestDataReaderAllocs(t *testing.T) {
	body := []byte("Subject: x\r\n\r\n..stuffed\r\nbare\nlf and bare\rcr\r\n" +
		string(bytes.Repeat([]byte("0123456789abcdef"), 256)) + "\r\n.\r\n")
	dst := &bytebufferpool.ByteBuffer{B: make([]byte, 0, 2*len(body))}
	var d DataReader
	for _, normalize := range []bool{false, true} {
		assertNoAllocs(t, "Feed", func() {
			d.Reset(1<<20, normalize)
			dst.Reset()
			// Fed in pieces so partial-terminator states are exercised too.
			for in := body; len(in) > 0; {
				k := min(len(in), 97)
				n, done := d.Feed(dst, in[:k])
				in = in[n:]
				if done {
					break
				}
			}
		})
	}
}

func TestAppendReplyAllocs(t *testing.T) {
	dst := make([]byte, 0, 512)
	assertNoAllocs(t, "AppendReply", func() { dst = AppendReply(dst[:0], 250, "2.1.0", "OK") })
	assertNoAllocs(t, "AppendTo", func() { dst = ErrSyntaxMail.AppendTo(dst[:0]) })
	lines := []string{"mx.example", "PIPELINING", "SIZE 10485760", "8BITMIME", "SMTPUTF8", "CHUNKING"}
	assertNoAllocs(t, "AppendReplyLines", func() { dst = AppendReplyLines(dst[:0], 250, lines...) })
}

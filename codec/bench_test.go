package codec

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/valyala/bytebufferpool"
)

func BenchmarkParseCommand(b *testing.B) {
	for _, bc := range []struct{ name, line string }{
		{"HELO", "HELO client.example.com"},
		{"EHLO", "EHLO client.example.com"},
		{"MAIL", "MAIL FROM:<sender.name@example.com> SIZE=123456 BODY=8BITMIME"},
		{"MAIL_null", "MAIL FROM:<>"},
		{"RCPT", "RCPT TO:<recipient.name@example.org>"},
		{"DATA", "DATA"},
		{"BDAT", "BDAT 65536 LAST"},
		{"RSET", "RSET"},
		{"NOOP", "NOOP"},
		{"QUIT", "QUIT"},
		{"unknown", "XYZZY plugh"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			line := []byte(bc.line)
			var cmd Command
			b.ReportAllocs()
			b.SetBytes(int64(len(line)))
			for b.Loop() {
				_ = ParseCommand(line, &cmd)
			}
		})
	}
}

// BenchmarkMailTransaction is the codec work for the envelope of one
// message: parse MAIL and RCPT, check the addresses and parameters.
func BenchmarkMailTransaction(b *testing.B) {
	mail := []byte("MAIL FROM:<sender.name@example.com> SIZE=123456 BODY=8BITMIME")
	rcpt := []byte("RCPT TO:<recipient.name@example.org>")
	var cmd Command
	var p MailParams
	b.ReportAllocs()
	for b.Loop() {
		_ = ParseCommand(mail, &cmd)
		_ = ValidateMailbox(cmd.Path, false)
		_ = ParseMailParams(cmd.Params, &p)
		_ = ParseCommand(rcpt, &cmd)
		_ = ValidateMailbox(cmd.Path, false)
		_ = ParseRcptParams(cmd.Params)
	}
}

func BenchmarkCommandReader(b *testing.B) {
	stream := []byte("EHLO client.example.com\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
	var r CommandReader
	b.ReportAllocs()
	b.SetBytes(int64(len(stream)))
	for b.Loop() {
		buf := stream
		for {
			_, n, _ := r.Next(buf)
			if n == 0 {
				break
			}
			buf = buf[n:]
		}
	}
}

// benchBody is a plausible message of about size octets: 76-octet lines,
// some starting with a dot (stuffed), ending with the terminator.
func benchBody(size int) []byte {
	var buf bytes.Buffer
	buf.WriteString("From: a@example.com\r\nTo: b@example.org\r\nSubject: benchmark\r\n\r\n")
	line := bytes.Repeat([]byte("abcdefghij"), 8)[:76]
	for i := 0; buf.Len() < size-5; i++ {
		if i%50 == 0 {
			buf.WriteString("..")
		}
		buf.Write(line)
		buf.WriteString("\r\n")
	}
	buf.WriteString(".\r\n")
	return buf.Bytes()
}

func BenchmarkDataReader(b *testing.B) {
	for _, size := range []int{2 << 10, 64 << 10, 1 << 20} {
		body := benchBody(size)
		// gnet hands over what one read returned; 64 KiB at most.
		const chunk = 64 << 10
		for _, normalize := range []bool{false, true} {
			b.Run(fmt.Sprintf("%dKB/normalize=%v", size>>10, normalize), func(b *testing.B) {
				dst := &bytebufferpool.ByteBuffer{B: make([]byte, 0, len(body))}
				var d DataReader
				b.ReportAllocs()
				b.SetBytes(int64(len(body)))
				for b.Loop() {
					d.Reset(int64(len(body)), normalize)
					dst.Reset()
					for in := body; len(in) > 0; {
						n, done := d.Feed(dst, in[:min(len(in), chunk)])
						in = in[n:]
						if done {
							break
						}
					}
				}
			})
		}
	}
}

// BenchmarkCommandReaderPartialLine: a line of size octets that arrives in
// 16-octet reads, Next called after each with everything buffered, as the
// engine does. Each octet is looked at once, so the throughput (MB/s) must
// not fall as the line grows; rescanning the partial line on every read
// made the cost quadratic in its length.
func BenchmarkCommandReaderPartialLine(b *testing.B) {
	const read = 16
	for _, size := range []int{1 << 10, 8 << 10, 64<<10 - 2} {
		b.Run(fmt.Sprintf("%dB", size+2), func(b *testing.B) {
			buf := append(bytes.Repeat([]byte("x"), size), "\r\n"...)
			r := CommandReader{MaxLine: size + 2}
			b.ReportAllocs()
			b.SetBytes(int64(len(buf)))
			for b.Loop() {
				got := 0
				for k := read; ; k += read {
					k = min(k, len(buf))
					line, n, err := r.Next(buf[:k])
					if n > 0 {
						if err != nil || n != len(buf) {
							b.Fatalf("n %d err %v", n, err)
						}
						got = len(line)
						break
					}
				}
				if got != size {
					b.Fatalf("line of %d, want %d", got, size)
				}
			}
		})
	}
}

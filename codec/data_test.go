package codec

import (
	"bytes"
	"strings"
	"testing"

	"github.com/valyala/bytebufferpool"
)

// dataResult is everything observable about one body.
type dataResult struct {
	out      string
	consumed int
	done     bool
	size     int64
	tooBig   bool
	bareEOL  bool
}

// feedData runs a DataReader over chunks as the engine does: each chunk is
// fed until consumed or the body ends.
func feedData(t testing.TB, max int64, normalize bool, chunks [][]byte) dataResult {
	var d DataReader
	d.Reset(max, normalize)
	dst := &bytebufferpool.ByteBuffer{}
	var res dataResult
	for _, c := range chunks {
		n, done := d.Feed(dst, c)
		if n < 0 || n > len(c) {
			t.Fatalf("Feed consumed %d of %d", n, len(c))
		}
		if !done && n != len(c) {
			t.Fatalf("Feed consumed %d of %d without finishing", n, len(c))
		}
		res.consumed += n
		if done {
			res.done = true
			break
		}
	}
	res.out = string(dst.B)
	res.size, res.tooBig, res.bareEOL = d.Size(), d.TooBig(), d.BareEOL()
	return res
}

// refData is a deliberately plain reference for DataReader: one octet at a
// time with lookahead over the whole input, no state kept between calls.
// What it cannot decide at the end of the input (a "." or ".", CR that
// starts a line; whether a final CR is bare) it leaves out, as a streaming
// reader must.
func refData(in []byte, max int64, normalize bool) dataResult {
	var out []byte
	var res dataResult
	lineStart := true
	i := 0
	for i < len(in) {
		c := in[i]
		if lineStart && c == '.' {
			rest := in[i+1:]
			if bytes.HasPrefix(rest, []byte("\r\n")) {
				res.done = true
				i += 3
				break
			}
			if len(rest) == 0 || len(rest) == 1 && rest[0] == '\r' {
				i = len(in) // undecided
				break
			}
			i++ // a stuffing dot
			lineStart = false
			continue
		}
		lineStart = false
		switch c {
		case '\r':
			if i+1 == len(in) {
				out = append(out, '\r')
			} else if in[i+1] == '\n' {
				out = append(out, '\r', '\n')
				i++
				lineStart = true
			} else {
				res.bareEOL = true
				out = append(out, '\r')
				if normalize {
					out = append(out, '\n')
				}
			}
		case '\n':
			res.bareEOL = true
			if normalize {
				out = append(out, '\r')
			}
			out = append(out, '\n')
		default:
			out = append(out, c)
		}
		i++
	}
	res.consumed = i
	res.size = int64(len(out))
	res.tooBig = res.size > max
	if res.tooBig {
		out = out[:max]
	}
	res.out = string(out)
	return res
}

var dataTests = []struct {
	name      string
	in        string
	normalize bool
	max       int64 // 0 means 1<<20
	want      dataResult
}{
	// Termination.
	{name: "empty body", in: ".\r\n",
		want: dataResult{out: "", consumed: 3, done: true}},
	{name: "one line", in: "Hello\r\n.\r\n",
		want: dataResult{out: "Hello\r\n", consumed: 10, done: true, size: 7}},
	{name: "empty first line", in: "\r\n.\r\n",
		want: dataResult{out: "\r\n", consumed: 5, done: true, size: 2}},
	{name: "bytes after the terminator are not consumed", in: "Hi\r\n.\r\nQUIT\r\n",
		want: dataResult{out: "Hi\r\n", consumed: 7, done: true, size: 4}},
	{name: "no terminator yet", in: "Hello\r\n",
		want: dataResult{out: "Hello\r\n", consumed: 7, size: 7}},
	{name: "no terminator, pending dot", in: "Hello\r\n.",
		want: dataResult{out: "Hello\r\n", consumed: 8, size: 7}},
	{name: "no terminator, pending dot CR", in: "Hello\r\n.\r",
		want: dataResult{out: "Hello\r\n", consumed: 9, size: 7}},
	{name: "binary octets pass", in: "a\x00b\xff\r\n.\r\n",
		want: dataResult{out: "a\x00b\xff\r\n", consumed: 9, done: true, size: 6}},

	// Dot-unstuffing (RFC 5321 §4.5.2).
	{name: "stuffed dot", in: "..dot\r\n.\r\n",
		want: dataResult{out: ".dot\r\n", consumed: 10, done: true, size: 6}},
	{name: "stuffed lone dot", in: "..\r\n.\r\n",
		want: dataResult{out: ".\r\n", consumed: 7, done: true, size: 3}},
	{name: "stuffed dots", in: "...\r\n.\r\n",
		want: dataResult{out: "..\r\n", consumed: 8, done: true, size: 4}},
	{name: "stuffed dot on a later line", in: "a\r\n..b\r\n.\r\n",
		want: dataResult{out: "a\r\n.b\r\n", consumed: 11, done: true, size: 7}},
	{name: "dot inside a line kept", in: "a.b.\r\n x.\r\n.\r\n",
		want: dataResult{out: "a.b.\r\n x.\r\n", consumed: 14, done: true, size: 11}},

	// Smuggling: only CRLF "." CRLF ends the body.
	{name: "LF dot LF does not end", in: "a\n.\nb\r\n.\r\n",
		want: dataResult{out: "a\n.\nb\r\n", consumed: 10, done: true, size: 7, bareEOL: true}},
	{name: "LF dot LF does not end, normalized", in: "a\n.\nb\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\n.\r\nb\r\n", consumed: 10, done: true, size: 9, bareEOL: true}},
	{name: "CR dot CR does not end", in: "a\r.\rb\r\n.\r\n",
		want: dataResult{out: "a\r.\rb\r\n", consumed: 10, done: true, size: 7, bareEOL: true}},
	{name: "CR dot CR does not end, normalized", in: "a\r.\rb\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\n.\r\nb\r\n", consumed: 10, done: true, size: 9, bareEOL: true}},
	{name: "LF dot CRLF does not end", in: "a\n.\r\nb\r\n.\r\n",
		want: dataResult{out: "a\n.\r\nb\r\n", consumed: 11, done: true, size: 8, bareEOL: true}},
	{name: "LF dot CRLF does not end, normalized", in: "a\n.\r\nb\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\n.\r\nb\r\n", consumed: 11, done: true, size: 9, bareEOL: true}},
	{name: "CRLF dot LF does not end", in: "a\r\n.\nb\r\n.\r\n",
		want: dataResult{out: "a\r\n\nb\r\n", consumed: 11, done: true, size: 7, bareEOL: true}},
	{name: "CRLF dot LF does not end, normalized", in: "a\r\n.\nb\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\n\r\nb\r\n", consumed: 11, done: true, size: 8, bareEOL: true}},
	{name: "CRLF dot CR non-LF does not end", in: "a\r\n.\rb\r\n.\r\n",
		want: dataResult{out: "a\r\n\rb\r\n", consumed: 11, done: true, size: 7, bareEOL: true}},
	{name: "CRLF dot CR non-LF does not end, normalized", in: "a\r\n.\rb\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\n\r\nb\r\n", consumed: 11, done: true, size: 8, bareEOL: true}},
	{name: "CRLF dot CR CR LF: the CR is bare, then the real end", in: "a\r\n.\r\r\n.\r\n",
		want: dataResult{out: "a\r\n\r\r\n", consumed: 10, done: true, size: 6, bareEOL: true}},
	{name: "bare-LF-only terminator never ends", in: "a\n.\n",
		want: dataResult{out: "a\n.\n", consumed: 4, size: 4, bareEOL: true}},
	{name: "dot LF at body start does not end", in: ".\nX\r\n.\r\n",
		want: dataResult{out: "\nX\r\n", consumed: 8, done: true, size: 4, bareEOL: true}},

	// Bare CR and bare LF (RFC 5321 §2.3.8).
	{name: "bare CR kept", in: "a\rb\r\n.\r\n",
		want: dataResult{out: "a\rb\r\n", consumed: 8, done: true, size: 5, bareEOL: true}},
	{name: "bare CR normalized", in: "a\rb\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\nb\r\n", consumed: 8, done: true, size: 6, bareEOL: true}},
	{name: "bare LF kept", in: "a\nb\r\n.\r\n",
		want: dataResult{out: "a\nb\r\n", consumed: 8, done: true, size: 5, bareEOL: true}},
	{name: "bare LF normalized", in: "a\nb\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\nb\r\n", consumed: 8, done: true, size: 6, bareEOL: true}},
	{name: "CR CR LF", in: "a\r\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\n\r\n", consumed: 7, done: true, size: 5, bareEOL: true}},
	{name: "normalized LF does not start a line", in: "a\n..\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\n..\r\n", consumed: 9, done: true, size: 7, bareEOL: true}},
	{name: "CRLF only is clean", in: "a\r\nb\r\n\r\n.\r\n", normalize: true,
		want: dataResult{out: "a\r\nb\r\n\r\n", consumed: 11, done: true, size: 8}},

	// Size limit: the first max octets are kept, the rest is counted.
	{name: "exactly max", in: "12345678\r\n.\r\n", max: 10,
		want: dataResult{out: "12345678\r\n", consumed: 13, done: true, size: 10}},
	{name: "max plus one", in: "123456789\r\n.\r\n", max: 10,
		want: dataResult{out: "123456789\r", consumed: 14, done: true, size: 11, tooBig: true}},
	{name: "max counts unstuffed octets", in: "..\r\n.\r\n", max: 3,
		want: dataResult{out: ".\r\n", consumed: 7, done: true, size: 3}},
	{name: "max counts normalized octets", in: "a\nb\r\n.\r\n", max: 5, normalize: true,
		want: dataResult{out: "a\r\nb\r", consumed: 8, done: true, size: 6, tooBig: true, bareEOL: true}},
	{name: "far beyond max is read to the end", in: strings.Repeat("x", 5000) + "\r\n.\r\n", max: 10,
		want: dataResult{out: "xxxxxxxxxx", consumed: 5005, done: true, size: 5002, tooBig: true}},
	{name: "max of one", in: "ab\r\n.\r\n", max: 1,
		want: dataResult{out: "a", consumed: 7, done: true, size: 4, tooBig: true}},
}

// Every case must give the same result whichever way it is split, and the
// reference must agree with the table.
func TestDataReader(t *testing.T) {
	for _, tc := range dataTests {
		max := tc.max
		if max == 0 {
			max = 1 << 20
		}
		in := []byte(tc.in)
		if ref := refData(in, max, tc.normalize); ref != tc.want {
			t.Errorf("%s: reference gives %+v, table says %+v", tc.name, ref, tc.want)
		}
		for _, chunks := range splits(in) {
			if got := feedData(t, max, tc.normalize, chunks); got != tc.want {
				t.Errorf("%s, fed as %d chunks (first %d octets): got %+v, want %+v",
					tc.name, len(chunks), len(chunks[0]), got, tc.want)
				break
			}
		}
	}
}

// The terminator split in three pieces at every pair of positions.
func TestDataReaderTerminatorSplitEverywhere(t *testing.T) {
	in := []byte("line\r\n.\r\nNEXT")
	for i := 0; i <= len(in); i++ {
		for j := i; j <= len(in); j++ {
			got := feedData(t, 100, false, [][]byte{in[:i], in[i:j], in[j:]})
			want := dataResult{out: "line\r\n", consumed: 9, done: true, size: 6}
			if got != want {
				t.Fatalf("split at %d,%d: got %+v, want %+v", i, j, got, want)
			}
		}
	}
}

// A dot at the end of one read followed by a stuffed dot at the start of the
// next.
func TestDataReaderDotAtBufferBoundary(t *testing.T) {
	var d DataReader
	d.Reset(100, false)
	dst := &bytebufferpool.ByteBuffer{}
	if n, done := d.Feed(dst, []byte("a\r\n.")); n != 4 || done {
		t.Fatalf("first feed: n=%d done=%v", n, done)
	}
	if n, done := d.Feed(dst, []byte(".b\r\n.")); n != 5 || done {
		t.Fatalf("second feed: n=%d done=%v", n, done)
	}
	if n, done := d.Feed(dst, []byte("\r\nRSET\r\n")); n != 2 || !done {
		t.Fatalf("third feed: n=%d done=%v", n, done)
	}
	if got := string(dst.B); got != "a\r\n.b\r\n" {
		t.Fatalf("got %q", got)
	}
}

func TestDataReaderAfterDone(t *testing.T) {
	var d DataReader
	d.Reset(100, false)
	if _, done := d.Feed(nil, []byte(".\r\n")); !done {
		t.Fatal("not done")
	}
	if n, done := d.Feed(nil, []byte("more")); n != 0 || !done {
		t.Fatalf("after done: n=%d done=%v", n, done)
	}
	d.Reset(100, false)
	if n, done := d.Feed(nil, []byte("x\r\n")); n != 3 || done || d.Size() != 3 {
		t.Fatalf("after Reset: n=%d done=%v size=%d", n, done, d.Size())
	}
}

// With dst nil the body is counted and checked but not kept.
func TestDataReaderDiscard(t *testing.T) {
	var d DataReader
	d.Reset(4, false)
	n, done := d.Feed(nil, []byte("hello\nworld\r\n.\r\n"))
	if n != 16 || !done || d.Size() != 13 || !d.TooBig() || !d.BareEOL() {
		t.Fatalf("n=%d done=%v size=%d tooBig=%v bare=%v", n, done, d.Size(), d.TooBig(), d.BareEOL())
	}
}

// Many bare CRs before a distant LF, and the reverse, must not make Feed
// quadratic: a megabyte of either takes one pass.
func TestDataReaderManyBareEOLs(t *testing.T) {
	for _, c := range []string{"\r", "\n", "x\r", "x\n"} {
		in := []byte(strings.Repeat(c, 1<<20/len(c)) + "\r\n.\r\n")
		got := feedData(t, 1<<30, true, [][]byte{in})
		if !got.done || !got.bareEOL || got.consumed != len(in) {
			t.Errorf("%q: done=%v bare=%v consumed %d of %d", c, got.done, got.bareEOL, got.consumed, len(in))
		}
	}
}

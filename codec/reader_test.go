package codec

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// lineEvent is what the caller of CommandReader.Next acts on: a line or an
// error. Consumption while discarding is not an event.
type lineEvent struct {
	line string
	err  error
}

func (e lineEvent) String() string {
	if e.err != nil {
		return fmt.Sprintf("err(%v)", e.err)
	}
	return fmt.Sprintf("%q", e.line)
}

// readLines feeds chunks to a CommandReader the way the engine does: the
// unconsumed tail of the buffer stays and new input is appended to it. It
// returns the events and the octets never consumed.
func readLines(t testing.TB, maxLine int, chunks [][]byte) ([]lineEvent, string) {
	r := CommandReader{MaxLine: maxLine}
	var buf []byte
	var events []lineEvent
	for _, c := range chunks {
		buf = append(buf, c...)
		for {
			line, n, err := r.Next(buf)
			if n == 0 {
				if line != nil || err != nil {
					t.Fatalf("n == 0 with line %q, err %v", line, err)
				}
				break
			}
			if n > len(buf) {
				t.Fatalf("n = %d beyond buffer of %d", n, len(buf))
			}
			if line != nil && err != nil {
				t.Fatalf("both line %q and err %v", line, err)
			}
			if line != nil || err != nil {
				events = append(events, lineEvent{string(line), err})
			}
			buf = buf[n:]
		}
	}
	return events, string(buf)
}

// splits returns in fed whole, at every split point in two, and byte by byte.
func splits(in []byte) [][][]byte {
	out := [][][]byte{{in}}
	for k := 0; k <= len(in); k++ {
		out = append(out, [][]byte{in[:k], in[k:]})
	}
	bytewise := make([][]byte, len(in))
	for i := range in {
		bytewise[i] = in[i : i+1]
	}
	return append(out, bytewise)
}

func ok(line string) lineEvent { return lineEvent{line: line} }

var tooLong = lineEvent{err: ErrLineTooLong}

var commandReaderTests = []struct {
	name     string
	maxLine  int
	in       string
	want     []lineEvent
	leftover string
}{
	{
		name: "a pipelined session",
		in:   "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n",
		want: []lineEvent{ok("EHLO x"), ok("MAIL FROM:<a@b>"), ok("RCPT TO:<c@d>"), ok("DATA")},
	},
	{
		name: "bare LF tolerated",
		in:   "NOOP\nQUIT\r\n",
		want: []lineEvent{ok("NOOP"), ok("QUIT")},
	},
	{
		name: "empty lines are lines",
		in:   "\r\n\n\r\n",
		want: []lineEvent{ok(""), ok(""), ok("")},
	},
	{
		name: "bare CR is not a line end",
		in:   "NO\rOP\r\n",
		want: []lineEvent{ok("NO\rOP")},
	},
	{
		name: "CR CR LF keeps one CR",
		in:   "NOOP\r\r\n",
		want: []lineEvent{ok("NOOP\r")},
	},
	{
		name:     "incomplete line is left",
		in:       "NOOP\r\nQUI",
		want:     []lineEvent{ok("NOOP")},
		leftover: "QUI",
	},
	{
		name:     "incomplete line with CR is left",
		in:       "QUIT\r",
		leftover: "QUIT\r",
	},

	// Limits with MaxLine 16 (octets including CRLF).
	{
		name:    "MaxLine-1 octets",
		maxLine: 16,
		in:      strings.Repeat("a", 13) + "\r\nNOOP\r\n",
		want:    []lineEvent{ok(strings.Repeat("a", 13)), ok("NOOP")},
	},
	{
		name:    "MaxLine octets",
		maxLine: 16,
		in:      strings.Repeat("a", 14) + "\r\nNOOP\r\n",
		want:    []lineEvent{ok(strings.Repeat("a", 14)), ok("NOOP")},
	},
	{
		name:    "MaxLine+1 octets",
		maxLine: 16,
		in:      strings.Repeat("a", 15) + "\r\nNOOP\r\n",
		want:    []lineEvent{tooLong, ok("NOOP")},
	},
	{
		name:    "MaxLine octets with bare LF",
		maxLine: 16,
		in:      strings.Repeat("a", 15) + "\nNOOP\r\n",
		want:    []lineEvent{ok(strings.Repeat("a", 15)), ok("NOOP")},
	},
	{
		name:    "MaxLine+1 octets with bare LF",
		maxLine: 16,
		in:      strings.Repeat("a", 16) + "\nNOOP\r\n",
		want:    []lineEvent{tooLong, ok("NOOP")},
	},
	{
		name:    "far overlong line answered once",
		maxLine: 16,
		in:      strings.Repeat("x", 1000) + "\r\nNOOP\r\n" + strings.Repeat("y", 17) + "\r\nQUIT\r\n",
		want:    []lineEvent{tooLong, ok("NOOP"), tooLong, ok("QUIT")},
	},
	{
		name:    "overlong line still open at the end",
		maxLine: 16,
		in:      "NOOP\r\n" + strings.Repeat("x", 100),
		want:    []lineEvent{ok("NOOP")},
	},

	// The RFC 5321 default of 512.
	{
		name: "default MaxLine-1",
		in:   strings.Repeat("a", 509) + "\r\n",
		want: []lineEvent{ok(strings.Repeat("a", 509))},
	},
	{
		name: "default MaxLine",
		in:   strings.Repeat("a", 510) + "\r\n",
		want: []lineEvent{ok(strings.Repeat("a", 510))},
	},
	{
		name: "default MaxLine+1",
		in:   strings.Repeat("a", 511) + "\r\nQUIT\r\n",
		want: []lineEvent{tooLong, ok("QUIT")},
	},
}

// Framing must not depend on how TCP cut the stream: every split gives the
// same events.
func TestCommandReader(t *testing.T) {
	for _, tc := range commandReaderTests {
		for _, chunks := range splits([]byte(tc.in)) {
			events, leftover := readLines(t, tc.maxLine, chunks)
			// An overlong tail is consumed (and discarded) as it arrives,
			// so what is left depends on the split: only check it for the
			// cases that expect one.
			if !reflect.DeepEqual(events, tc.want) || tc.leftover != "" && leftover != tc.leftover {
				t.Errorf("%s, fed as %d chunks: got %v leftover %q, want %v leftover %q",
					tc.name, len(chunks), events, leftover, tc.want, tc.leftover)
				break
			}
		}
	}
}

// Next never consumes past the first line, so the engine can switch to the
// DATA reader right after "DATA\r\n".
func TestCommandReaderConsumesOneLine(t *testing.T) {
	var r CommandReader
	buf := []byte("DATA\r\nSubject: x\r\n")
	line, n, err := r.Next(buf)
	if string(line) != "DATA" || n != 6 || err != nil {
		t.Fatalf("got %q, %d, %v", line, n, err)
	}
}

func TestCommandReaderReset(t *testing.T) {
	r := CommandReader{MaxLine: 8}
	if _, n, err := r.Next([]byte("xxxxxxxxxx")); n != 10 || err != nil {
		t.Fatalf("got n=%d err=%v", n, err)
	}
	r.Reset()
	line, n, err := r.Next([]byte("QUIT\r\n"))
	if string(line) != "QUIT" || n != 6 || err != nil {
		t.Fatalf("after Reset: got %q, %d, %v", line, n, err)
	}
}

// MaxLine above MaxLineLimit is MaxLineLimit: a line of MaxLineLimit
// octets is a command, one octet more is too long, and a partial line
// stops being held once it reaches the limit.
func TestCommandReaderMaxLineLimit(t *testing.T) {
	fits := strings.Repeat("a", MaxLineLimit-2)
	for _, tc := range []struct {
		name string
		in   string
		want []lineEvent
	}{
		{"limit", fits + "\r\nNOOP\r\n", []lineEvent{ok(fits), ok("NOOP")}},
		{"limit+1", fits + "a\r\nNOOP\r\n", []lineEvent{tooLong, ok("NOOP")}},
	} {
		for _, chunks := range [][][]byte{{[]byte(tc.in)}, chunked([]byte(tc.in), 1000)} {
			if events, _ := readLines(t, 1<<30, chunks); !reflect.DeepEqual(events, tc.want) {
				t.Errorf("%s in %d chunks: got %v, want %v", tc.name, len(chunks), events, tc.want)
			}
		}
	}
	r := CommandReader{MaxLine: 1 << 30}
	partial := []byte(strings.Repeat("x", MaxLineLimit))
	if line, n, err := r.Next(partial[:MaxLineLimit-1]); line != nil || n != 0 || err != nil {
		t.Fatalf("one octet short of the limit: got %q, %d, %v; want to wait", line, n, err)
	}
	if line, n, err := r.Next(partial); line != nil || n != MaxLineLimit || err != nil {
		t.Fatalf("at the limit without LF: got %q, %d, %v; want all %d octets dropped", line, n, err, MaxLineLimit)
	}
}

func chunked(in []byte, size int) [][]byte {
	var out [][]byte
	for len(in) > size {
		out = append(out, in[:size])
		in = in[size:]
	}
	return append(out, in)
}

// After n == 0 the caller passes the same octets again with more
// appended, and Next goes on where it stopped: the octets it has seen are
// not looked at again. The test shows it by changing them behind its back,
// which a caller must not do.
func TestCommandReaderScansOnce(t *testing.T) {
	var r CommandReader
	buf := []byte("NOOP xx")
	if _, n, _ := r.Next(buf); n != 0 {
		t.Fatalf("partial line: n = %d", n)
	}
	buf = append(buf, " yy\r\nQUIT\r\n"...)
	buf[2] = '\n' // already scanned: not seen
	line, n, err := r.Next(buf)
	if string(line) != "NO\nP xx yy" || n != 12 || err != nil {
		t.Fatalf("got %q, %d, %v; want the line ending at the new LF", line, n, err)
	}
	// A line was returned: the next buffer is scanned from its start.
	line, n, err = r.Next(buf[n:])
	if string(line) != "QUIT" || n != 6 || err != nil {
		t.Fatalf("next line: got %q, %d, %v", line, n, err)
	}

	// Reset, or a buffer shorter than what was scanned, starts over.
	if _, n, _ := r.Next([]byte("NOOP xx")); n != 0 {
		t.Fatalf("partial line: n = %d", n)
	}
	r.Reset()
	if line, n, _ := r.Next([]byte("A\r\nNOOP xx")); string(line) != "A" || n != 3 {
		t.Fatalf("after Reset: got %q, %d", line, n)
	}
	if _, n, _ := r.Next([]byte("NOOP xx")); n != 0 {
		t.Fatalf("partial line: n = %d", n)
	}
	if line, n, _ := r.Next([]byte("B\r\n")); string(line) != "B" || n != 3 {
		t.Fatalf("shorter buffer: got %q, %d", line, n)
	}
}

// A reload may lower MaxLine while a partial line waits; the octets
// scanned already can then lie past the new limit. The line is too long,
// answered once at its LF, and the next command is read.
func TestCommandReaderMaxLineShrinks(t *testing.T) {
	r := CommandReader{MaxLine: 64}
	buf := []byte(strings.Repeat("x", 30))
	if _, n, _ := r.Next(buf); n != 0 {
		t.Fatalf("partial line: n = %d", n)
	}
	r.MaxLine = 16
	buf = append(buf, "\r\nNOOP\r\n"...)
	line, n, err := r.Next(buf)
	if line != nil || n != 32 || err != ErrLineTooLong {
		t.Fatalf("got %q, %d, %v; want ErrLineTooLong consuming 32", line, n, err)
	}
	if line, n, err := r.Next(buf[n:]); string(line) != "NOOP" || n != 6 || err != nil {
		t.Fatalf("next line: got %q, %d, %v", line, n, err)
	}
}

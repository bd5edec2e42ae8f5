package codec

import "bytes"

// DefaultMaxLine is RFC 5321 §4.5.3.1.4's command line limit: 512 octets
// including the CRLF.
const DefaultMaxLine = 512

// MaxLineLimit is the largest CommandReader.MaxLine honoured, 64 KiB. RFC
// 5321 §4.5.3.1.4 lets a server accept longer lines than 512 octets, but
// every octet of a line is held in the connection's input buffer until its
// LF arrives: the limit keeps what one client can make us hold small.
const MaxLineLimit = 64 << 10

// CommandReader frames command lines from a stream buffer that the caller
// keeps (gnet's inbound buffer): the caller passes what it has not consumed
// yet and discards the n octets Next reports. The zero value is ready.
type CommandReader struct {
	// MaxLine is the longest accepted line in octets including its ending;
	// 0 means DefaultMaxLine, and above MaxLineLimit it is MaxLineLimit.
	MaxLine int

	discarding bool // inside an overlong line, waiting for its LF
	// scanned is how many octets at the start of the last buffer held no
	// LF when Next returned n == 0. The caller passes them again, with
	// more appended, so the search goes on from there and each octet of a
	// partial line is looked at once, not once per read.
	scanned int
}

// Reset forgets a partly discarded overlong line and how much of a partial
// line was scanned: the next buffer is taken as new.
func (r *CommandReader) Reset() { r.discarding, r.scanned = false, 0 }

func (r *CommandReader) maxLine() int {
	switch {
	case r.MaxLine <= 0:
		return DefaultMaxLine
	case r.MaxLine > MaxLineLimit:
		return MaxLineLimit
	}
	return r.MaxLine
}

// Next looks at buf, the unconsumed input, and returns the first complete
// line without its ending (CRLF, or a bare LF, tolerated for commands) and
// n, the octets to consume. line is a sub-slice of buf; Next never
// allocates.
//
// Without a complete line it returns n == 0, unless buf already holds
// MaxLine octets: the line cannot fit any more, so Next consumes all of buf
// and goes on consuming on later calls up to the line's LF, where it returns
// ErrLineTooLong once (with line == nil). A complete line longer than
// MaxLine also gives ErrLineTooLong. Either way the caller replies once per
// overlong line and stays in step with the client.
//
// After n == 0 the next call must pass the same octets again at the start
// of buf, with whatever arrived since appended (what a stream buffer that
// was not consumed from holds); Next does not look at them a second time.
// To pass anything else, call Reset first.
//
// So the caller acts on: n == 0: wait for more input; err != nil: reply with
// err; line != nil: a command (an empty line is a non-nil empty slice);
// line == nil and err == nil with n > 0: octets of an overlong line were
// dropped, nothing to answer yet.
func (r *CommandReader) Next(buf []byte) (line []byte, n int, err error) {
	if r.discarding {
		lf := bytes.IndexByte(buf, '\n')
		if lf < 0 {
			return nil, len(buf), nil
		}
		r.discarding = false
		return nil, lf + 1, ErrLineTooLong
	}
	limit := r.maxLine()
	from := r.scanned
	if from > len(buf) {
		from = 0 // not the buffer the last call saw: scan it all
	}
	r.scanned = 0
	// Look for the LF only where an acceptable line can end, so a client
	// sending junk without LFs costs at most MaxLine octets of scanning
	// before we start discarding.
	window := buf[:min(len(buf), limit)]
	lf := -1
	if from < len(window) {
		if i := bytes.IndexByte(window[from:], '\n'); i >= 0 {
			lf = from + i
		}
	}
	if lf < 0 {
		if len(buf) < limit {
			r.scanned = len(buf)
			return nil, 0, nil
		}
		// MaxLine may have shrunk since the last call (a reload), so the
		// octets already scanned can reach past it.
		rest := max(from, limit)
		if i := bytes.IndexByte(buf[rest:], '\n'); i >= 0 {
			return nil, rest + i + 1, ErrLineTooLong
		}
		r.discarding = true
		return nil, len(buf), nil
	}
	line = buf[:lf]
	if lf > 0 && line[lf-1] == '\r' {
		line = line[:lf-1]
	}
	return line, lf + 1, nil
}

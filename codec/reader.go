package codec

import "bytes"

// DefaultMaxLine is RFC 5321 §4.5.3.1.4's command line limit: 512 octets
// including the CRLF.
const DefaultMaxLine = 512

// CommandReader frames command lines from a stream buffer that the caller
// keeps (gnet's inbound buffer): the caller passes what it has not consumed
// yet and discards the n octets Next reports. The zero value is ready.
type CommandReader struct {
	// MaxLine is the longest accepted line in octets including its ending;
	// 0 means DefaultMaxLine.
	MaxLine int

	discarding bool // inside an overlong line, waiting for its LF
}

// Reset forgets a partly discarded overlong line.
func (r *CommandReader) Reset() { r.discarding = false }

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
	max := r.MaxLine
	if max <= 0 {
		max = DefaultMaxLine
	}
	// Look for the LF only where an acceptable line can end, so a client
	// sending junk without LFs costs one scan of at most MaxLine octets per
	// call before we start discarding.
	window := buf
	if len(window) > max {
		window = window[:max]
	}
	lf := bytes.IndexByte(window, '\n')
	if lf < 0 {
		if len(buf) < max {
			return nil, 0, nil
		}
		if lf = bytes.IndexByte(buf[max:], '\n'); lf >= 0 {
			return nil, max + lf + 1, ErrLineTooLong
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

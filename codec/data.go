package codec

import (
	"bytes"

	"github.com/valyala/bytebufferpool"
)

// dataState is where the DataReader stands between two octets.
type dataState uint8

const (
	// stLineStart: right after a CRLF (or the DATA command's CRLF).
	stLineStart dataState = iota
	// stMid: inside a line.
	stMid
	// stCR: a CR was written; whether it is bare depends on the next octet.
	stCR
	// stDot: "." at the start of a line, not written: a stuffing dot or the
	// start of the terminator.
	stDot
	// stDotCR: ".", CR at the start of a line, neither written yet.
	stDotCR
	// stDone: the terminator was consumed.
	stDone
)

// DataReader streams a DATA body (RFC 5321 §4.1.1.4): it removes the
// transparency dots of §4.5.2 and finds the end of the body.
//
// Only CRLF "." CRLF ends the body, and only CRLF starts a line, in both
// modes: "\n.\n", "\r.\r", "\n.\r\n", "\r\n.\n" and "\r\n." CR followed by
// anything but LF are content, never an end (SMTP smuggling). A "." that
// starts a line and is not part of the terminator is removed ("if the first
// character is a period and there are other characters on the line, the
// first character is deleted", §4.5.2) — including when what follows is a
// bare CR or LF.
//
// The zero value is not ready: call Reset before each body.
type DataReader struct {
	max       int64
	size      int64
	normalize bool
	bareEOL   bool
	state     dataState
}

// Reset prepares for a new body, which starts right after the DATA
// command's CRLF. maxSize is the most octets kept (appended to dst); beyond
// it the body is still read and counted. With normalize, a bare CR or bare
// LF is written as CRLF; without, they are written as they came. BareEOL
// reports them in both modes.
func (d *DataReader) Reset(maxSize int64, normalize bool) {
	if maxSize < 0 {
		maxSize = 0
	}
	*d = DataReader{max: maxSize, normalize: normalize, state: stLineStart}
}

// Size is the number of octets of content seen so far, after unstuffing
// (and normalization), including those beyond maxSize.
func (d *DataReader) Size() int64 { return d.size }

// TooBig reports whether the content exceeded maxSize: dst then holds only
// its first maxSize octets and the message must be refused (RFC 5321
// §4.5.3.1.10: 552) once the terminator has been read.
func (d *DataReader) TooBig() bool { return d.size > d.max }

// BareEOL reports whether a CR not followed by LF, or an LF not preceded by
// CR, was seen (RFC 5321 §2.3.8 forbids them).
func (d *DataReader) BareEOL() bool { return d.bareEOL }

// Done reports whether the terminator has been consumed.
func (d *DataReader) Done() bool { return d.state == stDone }

// Feed consumes in, appending the content to dst (nil to discard) as long as
// the total stays within maxSize. It returns the octets of in consumed and
// done once the terminating CRLF "." CRLF was consumed; octets after the
// terminator are not consumed. Before done, all of in is consumed: partial
// terminators are remembered between calls. The content excludes the
// terminator's "." CRLF and ends with the CRLF before it.
//
// Feed scans runs with bytes.IndexByte and allocates nothing itself;
// appending to dst may grow it.
func (d *DataReader) Feed(dst *bytebufferpool.ByteBuffer, in []byte) (n int, done bool) {
	if d.state == stDone {
		return 0, true
	}
	// Positions of the next LF and of the next CR before it, valid while
	// >= i; found once per run so that many bare CRs before a distant LF
	// (or the reverse) cost linear time.
	lfAt, crAt := -1, -1
	i := 0
	for i < len(in) {
		switch d.state {
		case stLineStart:
			if in[i] == '.' {
				d.state = stDot
				i++
				continue
			}
			d.state = stMid

		case stDot:
			if in[i] == '\r' {
				d.state = stDotCR
				i++
				continue
			}
			d.state = stMid // the dot was stuffing: dropped

		case stDotCR:
			if in[i] == '\n' {
				d.state = stDone
				return i + 1, true
			}
			// ".", bare CR: the dot was stuffing, the CR is content.
			d.bareCR(dst)
			d.state = stMid

		case stCR:
			if in[i] == '\n' {
				d.emit(dst, in[i:i+1])
				i++
				d.state = stLineStart
				continue
			}
			if d.normalize {
				d.emit(dst, crlf[1:])
			}
			d.bareEOL = true
			d.state = stMid

		case stMid:
			if lfAt < i {
				if j := bytes.IndexByte(in[i:], '\n'); j >= 0 {
					lfAt = i + j
				} else {
					lfAt = len(in)
				}
			}
			if crAt < i {
				if j := bytes.IndexByte(in[i:lfAt], '\r'); j >= 0 {
					crAt = i + j
				} else {
					crAt = lfAt
				}
			}
			switch {
			case crAt+1 == lfAt && lfAt < len(in): // the common case: a run ending in CRLF
				d.emit(dst, in[i:lfAt+1])
				i = lfAt + 1
				d.state = stLineStart
			case crAt < lfAt: // a CR not directly followed by LF in this input
				d.emit(dst, in[i:crAt+1])
				i = crAt + 1
				d.state = stCR
			case lfAt == len(in): // no CR or LF left
				d.emit(dst, in[i:])
				i = len(in)
			default: // bare LF
				d.emit(dst, in[i:lfAt])
				if d.normalize {
					d.emit(dst, crlf)
				} else {
					d.emit(dst, crlf[1:])
				}
				d.bareEOL = true
				i = lfAt + 1
			}
		}
	}
	return i, false
}

var crlf = []byte("\r\n")

// bareCR writes a CR that turned out not to be followed by LF.
func (d *DataReader) bareCR(dst *bytebufferpool.ByteBuffer) {
	if d.normalize {
		d.emit(dst, crlf)
	} else {
		d.emit(dst, crlf[:1])
	}
	d.bareEOL = true
}

// emit counts b and appends as much of it as fits within max.
func (d *DataReader) emit(dst *bytebufferpool.ByteBuffer, b []byte) {
	if dst != nil && d.size < d.max {
		keep := b
		if room := d.max - d.size; int64(len(keep)) > room {
			keep = keep[:room]
		}
		dst.B = append(dst.B, keep...)
	}
	d.size += int64(len(b))
}

// Package codec is the streaming SMTP codec: command framing and parsing, the
// DATA reader, replies.
//
// Nothing in the per-command path allocates: parsers return sub-slices of
// their input and predefined *Reply values as errors, writers append to a
// caller-owned buffer.
package codec

import "strconv"

// Reply is an SMTP reply (RFC 5321 §4.2) used as an error value. Every
// failure the codec reports is one of the package-level *Reply variables
// below, so that parsing never allocates.
type Reply struct {
	Code     int    // three-digit reply code
	Enhanced string // RFC 3463 enhanced status code, e.g. "5.5.2"; may be empty
	Text     string // human-readable text, no CR or LF
}

// Error returns the reply as it goes on the wire, without CRLF.
func (r *Reply) Error() string {
	b := r.AppendTo(make([]byte, 0, 8+len(r.Enhanced)+len(r.Text)))
	return string(b[:len(b)-2])
}

// AppendTo appends r, CRLF-terminated, to dst.
func (r *Reply) AppendTo(dst []byte) []byte {
	return AppendReply(dst, r.Code, r.Enhanced, r.Text)
}

// Replies for command syntax (RFC 5321 §4.2.2, RFC 3463 §3.6).
var (
	// ErrUnknownCommand: the verb is not an SMTP command.
	ErrUnknownCommand = &Reply{500, "5.5.2", "Command unrecognized"}
	// ErrControlChar: NUL or another control character in a command line;
	// RFC 5321 §2.3.8 and §4.1.1 allow none but HTAB.
	ErrControlChar = &Reply{500, "5.5.2", "Control character in command"}
	// Err8BitCommand: 8-bit octets outside a MAIL or RCPT address or parameter.
	Err8BitCommand = &Reply{500, "5.5.2", "Non-ASCII character in command"}
	// ErrLineTooLong: a command line over CommandReader.MaxLine (RFC 5321 §4.5.3.1.4).
	ErrLineTooLong = &Reply{500, "5.5.6", "Line too long"}

	ErrSyntaxHelo = &Reply{501, "5.5.4", "Syntax: HELO/EHLO domain"}
	ErrSyntaxMail = &Reply{501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]"}
	ErrSyntaxRcpt = &Reply{501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]"}
	ErrSyntaxBDAT = &Reply{501, "5.5.4", "Syntax: BDAT chunk-size [LAST]"}
	// ErrNoArguments: DATA, RSET and QUIT take no arguments (RFC 5321 §4.1.1).
	ErrNoArguments = &Reply{501, "5.5.4", "Syntax: no arguments allowed"}
)

// Replies for addresses (RFC 5321 §4.1.2, §4.5.3.1; RFC 3463 §3.2).
var (
	ErrBadAddress = &Reply{501, "5.1.3", "Bad address syntax"}
	// ErrBadRoute: a source route ("@a,@b:") that is not a list of domains.
	ErrBadRoute = &Reply{501, "5.1.3", "Bad source route syntax"}
	// ErrNullRecipient: "RCPT TO:<>"; the null path is only a reverse-path.
	ErrNullRecipient = &Reply{501, "5.1.3", "Null recipient address not allowed"}
	// ErrLocalPartTooLong: more than 64 octets before the "@" (§4.5.3.1.1).
	ErrLocalPartTooLong = &Reply{501, "5.1.3", "Local part too long"}
	// ErrDomainTooLong: more than 255 octets after the "@" (§4.5.3.1.2).
	ErrDomainTooLong = &Reply{501, "5.1.3", "Domain too long"}
	// ErrPathTooLong: more than 256 octets including the angle brackets
	// (§4.5.3.1.3; §4.5.3.1.10 suggests "501 Path too long").
	ErrPathTooLong = &Reply{501, "5.1.3", "Path too long"}
	// ErrBadUTF8: 8-bit octets that are not valid UTF-8 (RFC 6531 §3.3 only
	// extends the grammar with well-formed UTF8-non-ascii).
	ErrBadUTF8 = &Reply{501, "5.1.3", "Address is not valid UTF-8"}
	// ErrNeedSMTPUTF8: a non-ASCII address in a transaction that did not
	// declare SMTPUTF8. RFC 6531 answers this with 553 and X.6.7 (registered
	// in RFC 5248's registry by RFC 6531): "Non-ASCII addresses not permitted
	// for that sender/recipient".
	ErrNeedSMTPUTF8 = &Reply{553, "5.6.7", "Non-ASCII address requires SMTPUTF8"}
)

// Replies for ESMTP parameters (RFC 5321 §4.1.1.11, RFC 1870, RFC 6152, RFC 6531).
var (
	// ErrUnknownParam: a MAIL parameter keyword lsmtp does not implement;
	// 555 is RFC 5321's reply for unrecognised MAIL/RCPT parameters.
	ErrUnknownParam = &Reply{555, "5.5.4", "Unsupported MAIL parameter"}
	// ErrRcptParam: lsmtp implements no RCPT parameters.
	ErrRcptParam      = &Reply{555, "5.5.4", "Unsupported RCPT parameter"}
	ErrParamSyntax    = &Reply{501, "5.5.4", "Syntax error in parameters"}
	ErrBadSize        = &Reply{501, "5.5.4", "Bad SIZE value"}
	ErrBadBody        = &Reply{501, "5.5.4", "BODY must be 7BIT, 8BITMIME or BINARYMIME"}
	ErrBadSMTPUTF8    = &Reply{501, "5.5.4", "SMTPUTF8 takes no value"}
	ErrDuplicateParam = &Reply{501, "5.5.4", "Duplicate MAIL parameter"}
)

// AppendReply appends "<code> <enhanced> <text>\r\n" to dst; the enhanced
// code is left out when empty. CR, LF and other control characters in text
// are written as "?" so a reply can never be split into two.
func AppendReply(dst []byte, code int, enhanced, text string) []byte {
	dst = strconv.AppendInt(dst, int64(code), 10)
	if enhanced != "" {
		dst = append(dst, ' ')
		dst = appendText(dst, enhanced)
	}
	if text != "" {
		dst = append(dst, ' ')
		dst = appendText(dst, text)
	}
	return append(dst, '\r', '\n')
}

// AppendReplyLines appends a multiline reply (RFC 5321 §4.2.1): every line
// but the last is "<code>-<line>", the last "<code> <line>". No lines give
// "<code>\r\n". EHLO replies carry no enhanced codes (RFC 2034 §3).
func AppendReplyLines(dst []byte, code int, lines ...string) []byte {
	if len(lines) == 0 {
		dst = strconv.AppendInt(dst, int64(code), 10)
		return append(dst, '\r', '\n')
	}
	for i, line := range lines {
		dst = strconv.AppendInt(dst, int64(code), 10)
		if i == len(lines)-1 {
			dst = append(dst, ' ')
		} else {
			dst = append(dst, '-')
		}
		dst = appendText(dst, line)
		dst = append(dst, '\r', '\n')
	}
	return dst
}

// appendText appends s with control characters replaced by '?'.
func appendText(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return appendTextSlow(dst, s)
		}
	}
	return append(dst, s...)
}

func appendTextSlow(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		dst = append(dst, c)
	}
	return dst
}

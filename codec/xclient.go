package codec

import "bytes"

// XCLIENT (Postfix XCLIENT_README) lets a trusted relay or content filter
// name the client it speaks for:
//
//	xclient-command = XCLIENT 1*( SP attribute-name "=" attribute-value )
//	attribute-value = xtext
//
// Attribute names are case-insensitive; values are xtext (RFC 3461 §4).

// XclientAttr is an XCLIENT attribute name.
type XclientAttr uint8

const (
	XclientNAME     XclientAttr = iota + 1 // the client's host name
	XclientADDR                            // its address: IPv4, or "IPV6:" and an IPv6 address
	XclientPORT                            // its TCP port
	XclientPROTO                           // SMTP or ESMTP
	XclientHELO                            // its HELO/EHLO argument
	XclientLOGIN                           // the name it authenticated as
	XclientDESTADDR                        // the address it connected to
	XclientDESTPORT                        // the port it connected to
)

var xclientNames = [...]string{
	XclientNAME: "NAME", XclientADDR: "ADDR", XclientPORT: "PORT", XclientPROTO: "PROTO",
	XclientHELO: "HELO", XclientLOGIN: "LOGIN", XclientDESTADDR: "DESTADDR", XclientDESTPORT: "DESTPORT",
}

// Replies to a malformed XCLIENT (501 5.5.4, as Postfix answers). They
// never echo the attribute: the relay knows what it sent.
var (
	ErrSyntaxXclient    = &Reply{501, "5.5.4", "Syntax: XCLIENT attribute=value [attribute=value ...]"}
	ErrXclientAttrName  = &Reply{501, "5.5.4", "Bad XCLIENT attribute name"}
	ErrXclientAttrValue = &Reply{501, "5.5.4", "Bad XCLIENT attribute value"}
)

// NextXclientAttr splits the first attribute off args (Command.Arg of
// XCLIENT): its name and its value, still xtext-encoded, and the rest of
// args. It returns ok false when args holds no more attributes. It never
// allocates.
func NextXclientAttr(args []byte) (attr XclientAttr, value, rest []byte, ok bool, err error) {
	args = trimLeftSpace(args)
	if len(args) == 0 {
		return 0, nil, nil, false, nil
	}
	end := 0
	for end < len(args) && !isSpace(args[end]) {
		end++
	}
	tok, rest := args[:end], args[end:]
	eq := bytes.IndexByte(tok, '=')
	if eq < 0 {
		return 0, nil, nil, false, ErrXclientAttrName
	}
	name := tok[:eq]
	for a := XclientNAME; a <= XclientDESTPORT; a++ {
		if n := xclientNames[a]; len(name) == len(n) && hasPrefixFold(name, n) {
			return a, tok[eq+1:], rest, true, nil
		}
	}
	return 0, nil, nil, false, ErrXclientAttrName
}

// AppendXtext appends the decoding of the xtext src to dst (RFC 3461 §4:
// xchar is "!" to "~" except "+" and "="; "+" and two hex digits stand for
// any octet). It returns false, and dst unchanged, for text that is not
// xtext. The result is never longer than src.
func AppendXtext(dst, src []byte) ([]byte, bool) {
	start := len(dst)
	for i := 0; i < len(src); i++ {
		c := src[i]
		switch {
		case c == '+':
			if i+2 >= len(src) {
				return dst[:start], false
			}
			hi, ok1 := unhex(src[i+1])
			lo, ok2 := unhex(src[i+2])
			if !ok1 || !ok2 {
				return dst[:start], false
			}
			dst = append(dst, hi<<4|lo)
			i += 2
		case c < '!' || c > '~' || c == '=':
			return dst[:start], false
		default:
			dst = append(dst, c)
		}
	}
	return dst, true
}

// unhex reads one hex digit. RFC 3461 §4 writes them in upper case;
// lower case is taken too, as Postfix does.
func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

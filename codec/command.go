package codec

import (
	"bytes"
	"math"
)

// Verb is an SMTP command verb.
type Verb uint8

const (
	VerbUnknown Verb = iota
	VerbHELO
	VerbEHLO
	VerbMAIL
	VerbRCPT
	VerbDATA
	VerbBDAT
	VerbRSET
	VerbNOOP
	VerbQUIT
	VerbVRFY
	VerbHELP
	// Recognised but not implemented by lsmtp; the engine answers them with
	// 502 5.5.1 rather than 500 (RFC 5321 §4.2.4).
	VerbEXPN
	VerbSTARTTLS
	VerbAUTH
	VerbTURN
	VerbETRN
	VerbATRN
	VerbSEND
	VerbSOML
	VerbSAML
	// XCLIENT (Postfix XCLIENT_README): a trusted relay names the client
	// it speaks for. The engine decides who may send it.
	VerbXCLIENT
)

var verbNames = [...]string{
	VerbUnknown:  "UNKNOWN",
	VerbHELO:     "HELO",
	VerbEHLO:     "EHLO",
	VerbMAIL:     "MAIL",
	VerbRCPT:     "RCPT",
	VerbDATA:     "DATA",
	VerbBDAT:     "BDAT",
	VerbRSET:     "RSET",
	VerbNOOP:     "NOOP",
	VerbQUIT:     "QUIT",
	VerbVRFY:     "VRFY",
	VerbHELP:     "HELP",
	VerbEXPN:     "EXPN",
	VerbSTARTTLS: "STARTTLS",
	VerbAUTH:     "AUTH",
	VerbTURN:     "TURN",
	VerbETRN:     "ETRN",
	VerbATRN:     "ATRN",
	VerbSEND:     "SEND",
	VerbSOML:     "SOML",
	VerbSAML:     "SAML",
	VerbXCLIENT:  "XCLIENT",
}

// String returns the verb in upper case, "UNKNOWN" for VerbUnknown.
func (v Verb) String() string {
	if int(v) < len(verbNames) {
		return verbNames[v]
	}
	return verbNames[VerbUnknown]
}

// Command is one parsed command line. Its slices point into the line given
// to ParseCommand and are valid only as long as that line is.
type Command struct {
	Verb Verb
	// Arg is the text after the verb and its separating space(s), with
	// trailing SP/HTAB trimmed.
	Arg []byte
	// Path is, for MAIL and RCPT, the address between "<" and ">" with an
	// RFC 5321 §4.1.2 source route ("@a,@b:") stripped; empty for "<>".
	Path []byte
	// Params is, for MAIL and RCPT, the ESMTP parameters after ">", leading
	// spaces trimmed; possibly empty.
	Params []byte
	// ChunkSize and Last are the arguments of BDAT (RFC 3030 §2).
	ChunkSize int64
	Last      bool
}

// verbKey packs four upper-cased octets into a uint32 for a switch.
func verbKey(a, b, c, d byte) uint32 {
	return uint32(a)<<24 | uint32(b)<<16 | uint32(c)<<8 | uint32(d)
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - ('a' - 'A')
	}
	return c
}

// Four-letter verbs as verbKey values, for a switch the compiler can turn
// into a binary search.
const (
	keyHELO = uint32('H')<<24 | uint32('E')<<16 | uint32('L')<<8 | uint32('O')
	keyEHLO = uint32('E')<<24 | uint32('H')<<16 | uint32('L')<<8 | uint32('O')
	keyMAIL = uint32('M')<<24 | uint32('A')<<16 | uint32('I')<<8 | uint32('L')
	keyRCPT = uint32('R')<<24 | uint32('C')<<16 | uint32('P')<<8 | uint32('T')
	keyDATA = uint32('D')<<24 | uint32('A')<<16 | uint32('T')<<8 | uint32('A')
	keyBDAT = uint32('B')<<24 | uint32('D')<<16 | uint32('A')<<8 | uint32('T')
	keyRSET = uint32('R')<<24 | uint32('S')<<16 | uint32('E')<<8 | uint32('T')
	keyNOOP = uint32('N')<<24 | uint32('O')<<16 | uint32('O')<<8 | uint32('P')
	keyQUIT = uint32('Q')<<24 | uint32('U')<<16 | uint32('I')<<8 | uint32('T')
	keyVRFY = uint32('V')<<24 | uint32('R')<<16 | uint32('F')<<8 | uint32('Y')
	keyHELP = uint32('H')<<24 | uint32('E')<<16 | uint32('L')<<8 | uint32('P')
	keyEXPN = uint32('E')<<24 | uint32('X')<<16 | uint32('P')<<8 | uint32('N')
	keyAUTH = uint32('A')<<24 | uint32('U')<<16 | uint32('T')<<8 | uint32('H')
	keyTURN = uint32('T')<<24 | uint32('U')<<16 | uint32('R')<<8 | uint32('N')
	keyETRN = uint32('E')<<24 | uint32('T')<<16 | uint32('R')<<8 | uint32('N')
	keyATRN = uint32('A')<<24 | uint32('T')<<16 | uint32('R')<<8 | uint32('N')
	keySEND = uint32('S')<<24 | uint32('E')<<16 | uint32('N')<<8 | uint32('D')
	keySOML = uint32('S')<<24 | uint32('O')<<16 | uint32('M')<<8 | uint32('L')
	keySAML = uint32('S')<<24 | uint32('A')<<16 | uint32('M')<<8 | uint32('L')
)

// lookupVerb maps a verb token to its Verb, case-insensitively.
func lookupVerb(tok []byte) Verb {
	switch len(tok) {
	case 4:
		switch verbKey(upper(tok[0]), upper(tok[1]), upper(tok[2]), upper(tok[3])) {
		case keyHELO:
			return VerbHELO
		case keyEHLO:
			return VerbEHLO
		case keyMAIL:
			return VerbMAIL
		case keyRCPT:
			return VerbRCPT
		case keyDATA:
			return VerbDATA
		case keyBDAT:
			return VerbBDAT
		case keyRSET:
			return VerbRSET
		case keyNOOP:
			return VerbNOOP
		case keyQUIT:
			return VerbQUIT
		case keyVRFY:
			return VerbVRFY
		case keyHELP:
			return VerbHELP
		case keyEXPN:
			return VerbEXPN
		case keyAUTH:
			return VerbAUTH
		case keyTURN:
			return VerbTURN
		case keyETRN:
			return VerbETRN
		case keyATRN:
			return VerbATRN
		case keySEND:
			return VerbSEND
		case keySOML:
			return VerbSOML
		case keySAML:
			return VerbSAML
		}
	case 7:
		if bytes.EqualFold(tok, []byte("XCLIENT")) {
			return VerbXCLIENT
		}
	case 8:
		if bytes.EqualFold(tok, []byte("STARTTLS")) {
			return VerbSTARTTLS
		}
	}
	return VerbUnknown
}

// byteClass: 0 for printable ASCII and HTAB, 1 for control characters,
// 2 for 8-bit octets.
var byteClass = func() (t [256]uint8) {
	for c := 0; c < 256; c++ {
		switch {
		case c == '\t':
		case c < 0x20 || c == 0x7f:
			t[c] = 1
		case c >= 0x80:
			t[c] = 2
		}
	}
	return t
}()

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

func trimLeftSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	return b
}

func trimRightSpace(b []byte) []byte {
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

// hasPrefixFold reports whether b starts with the upper-case ASCII prefix,
// ignoring case.
func hasPrefixFold(b []byte, prefix string) bool {
	if len(b) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		if upper(b[i]) != prefix[i] {
			return false
		}
	}
	return true
}

// ParseCommand parses one command line given without its line ending into
// cmd. Verbs are case-insensitive. It never allocates: cmd's slices point
// into line. Errors are *Reply values (see the Err* variables).
//
// Leniencies, each seen in the wild: SP or HTAB separate the verb from its
// argument and may repeat; "MAIL FROM: <a@b>" (space after the colon) is
// accepted, but the angle brackets are required.
func ParseCommand(line []byte, cmd *Command) error {
	*cmd = Command{}

	// RFC 5321 §2.3.8 and §4.1.1: commands are US-ASCII without control
	// characters. 8-bit octets are only meaningful in MAIL/RCPT addresses and
	// parameters (RFC 6531), checked once the verb is known.
	has8Bit := false
	for _, c := range line {
		switch byteClass[c] {
		case 1:
			return ErrControlChar
		case 2:
			has8Bit = true
		}
	}

	end := 0
	for end < len(line) && !isSpace(line[end]) {
		end++
	}
	cmd.Verb = lookupVerb(line[:end])
	if cmd.Verb == VerbUnknown {
		return ErrUnknownCommand
	}
	if has8Bit && cmd.Verb != VerbMAIL && cmd.Verb != VerbRCPT {
		return Err8BitCommand
	}
	cmd.Arg = trimRightSpace(trimLeftSpace(line[end:]))

	switch cmd.Verb {
	case VerbHELO, VerbEHLO:
		// RFC 5321 §4.1.1.1: "EHLO" SP ( Domain / address-literal ). The
		// argument is kept as given; what a client calls itself is only
		// recorded, never trusted.
		if len(cmd.Arg) == 0 {
			return ErrSyntaxHelo
		}
	case VerbMAIL:
		return parsePathArg(cmd, "FROM:", ErrSyntaxMail)
	case VerbRCPT:
		if err := parsePathArg(cmd, "TO:", ErrSyntaxRcpt); err != nil {
			return err
		}
		if len(cmd.Path) == 0 {
			return ErrNullRecipient
		}
	case VerbDATA, VerbRSET, VerbQUIT:
		if len(cmd.Arg) != 0 {
			return ErrNoArguments
		}
	case VerbBDAT:
		return parseBDAT(cmd)
	case VerbXCLIENT:
		// xclient-command = XCLIENT 1*( SP attribute-name"="attribute-value );
		// the attributes are the engine's to judge (ParseXclientAttr).
		if len(cmd.Arg) == 0 {
			return ErrSyntaxXclient
		}
	}
	return nil
}

// parsePathArg parses "FROM:<path> [params]" or "TO:<path> [params]"
// (RFC 5321 §4.1.1.2, §4.1.1.3) from cmd.Arg.
func parsePathArg(cmd *Command, prefix string, syntaxErr *Reply) error {
	arg := cmd.Arg
	if !hasPrefixFold(arg, prefix) {
		return syntaxErr
	}
	arg = trimLeftSpace(arg[len(prefix):])
	if len(arg) == 0 || arg[0] != '<' {
		return syntaxErr
	}
	// Find the closing ">", skipping over a quoted local part, which may
	// contain ">" (qtextSMTP, RFC 5321 §4.1.2).
	closing := -1
	quoted := false
scan:
	for i := 1; i < len(arg); i++ {
		switch arg[i] {
		case '\\':
			if quoted {
				i++ // quoted-pairSMTP: the next octet is literal
			}
		case '"':
			quoted = !quoted
		case '>':
			if !quoted {
				closing = i
				break scan
			}
		}
	}
	if closing < 0 {
		return syntaxErr
	}
	path := arg[1:closing]
	rest := arg[closing+1:]
	if len(rest) > 0 && !isSpace(rest[0]) {
		return syntaxErr
	}
	if len(path) > 0 && path[0] == '@' {
		var err error
		if path, err = stripSourceRoute(path); err != nil {
			return err
		}
	}
	cmd.Path = path
	cmd.Params = trimLeftSpace(rest)
	return nil
}

// stripSourceRoute removes an A-d-l (RFC 5321 §4.1.2: At-domain *( ","
// At-domain ) ":") from the front of path. §4.1.1.3 and Appendix C: servers
// MUST accept source routes and SHOULD ignore them.
func stripSourceRoute(path []byte) ([]byte, error) {
	colon := bytes.IndexByte(path, ':')
	if colon < 0 {
		return nil, ErrBadRoute
	}
	route := path[:colon]
	for len(route) > 0 {
		if route[0] != '@' {
			return nil, ErrBadRoute
		}
		route = route[1:]
		domain := route
		if comma := bytes.IndexByte(route, ','); comma >= 0 {
			domain = route[:comma]
			route = route[comma+1:]
			if len(route) == 0 {
				return nil, ErrBadRoute // trailing ","
			}
		} else {
			route = nil
		}
		if !validDomain(domain, false) {
			return nil, ErrBadRoute
		}
	}
	path = path[colon+1:]
	if len(path) == 0 {
		return nil, ErrBadAddress // "<@a:>" is not the null path
	}
	return path, nil
}

// parseBDAT parses "BDAT" SP chunk-size [ SP end-marker ] (RFC 3030 §2).
func parseBDAT(cmd *Command) error {
	arg := cmd.Arg
	i := 0
	var n int64
	for i < len(arg) && '0' <= arg[i] && arg[i] <= '9' {
		d := int64(arg[i] - '0')
		if n > (math.MaxInt64-d)/10 {
			return ErrSyntaxBDAT // does not fit an int64
		}
		n = n*10 + d
		i++
	}
	if i == 0 {
		return ErrSyntaxBDAT
	}
	rest := arg[i:]
	if len(rest) > 0 {
		if !isSpace(rest[0]) {
			return ErrSyntaxBDAT
		}
		rest = trimLeftSpace(rest)
		if len(rest) != 4 || !hasPrefixFold(rest, "LAST") {
			return ErrSyntaxBDAT
		}
		cmd.Last = true
	}
	cmd.ChunkSize = n
	return nil
}

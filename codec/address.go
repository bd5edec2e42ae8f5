package codec

import (
	"bytes"
	"unicode/utf8"
)

// Address length limits, RFC 5321 §4.5.3.1.
const (
	maxLocalPart = 64  // §4.5.3.1.1
	maxDomain    = 255 // §4.5.3.1.2
	maxPath      = 256 // §4.5.3.1.3, including "<" and ">"
)

// atext per RFC 5322 §3.2.3, as used by RFC 5321's Atom.
var isAtext = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "!#$%&'*+-/=?^_`{|}~" {
		t[c] = true
	}
	return t
}()

func isLetDig(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func isHex(c byte) bool {
	return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// ValidateMailbox checks a path as found in Command.Path against RFC 5321
// §4.1.2: Local-part "@" ( Domain / address-literal ), where Local-part is a
// Dot-string or a Quoted-string and address-literal is [1.2.3.4],
// [IPv6:...] or a General-address-literal.
//
// An empty path (the null reverse-path "<>") is valid; ParseCommand already
// rejects "RCPT TO:<>". "postmaster" without a domain is not a mailbox: check
// IsPostmaster first for RCPT.
//
// Non-ASCII: when utf8 is true (the transaction declared SMTPUTF8), well-formed
// UTF-8 is allowed in the local part and in domain labels (RFC 6531 §3.3:
// atext, qtextSMTP and sub-domain are extended with UTF8-non-ascii and
// U-labels; U-labels are not checked against IDNA). When utf8 is false any
// 8-bit octet gives ErrNeedSMTPUTF8 (553 5.6.7, RFC 6531); malformed UTF-8
// gives ErrBadUTF8 (501 5.1.3). Length limits give 501 5.1.3 with a text that
// names the limit; any other syntax error gives ErrBadAddress (501 5.1.3).
func ValidateMailbox(path []byte, utf8ok bool) error {
	if len(path) == 0 {
		return nil
	}
	for _, c := range path {
		if c >= 0x80 {
			if !utf8ok {
				return ErrNeedSMTPUTF8
			}
			if !utf8.Valid(path) {
				return ErrBadUTF8
			}
			break
		}
	}

	at := localPartEnd(path, utf8ok)
	if at < 0 || at >= len(path) || path[at] != '@' {
		return ErrBadAddress
	}
	local, domain := path[:at], path[at+1:]
	switch {
	case len(local) > maxLocalPart:
		return ErrLocalPartTooLong
	case len(domain) > maxDomain:
		return ErrDomainTooLong
	case len(path)+len("<>") > maxPath:
		return ErrPathTooLong
	}
	if len(domain) > 0 && domain[0] == '[' {
		if !validAddressLiteral(domain) {
			return ErrBadAddress
		}
		return nil
	}
	if !validDomain(domain, utf8ok) {
		return ErrBadAddress
	}
	return nil
}

// localPartEnd returns the length of the Local-part at the start of path,
// or -1 when path does not start with a valid one.
func localPartEnd(path []byte, utf8ok bool) int {
	if len(path) > 0 && path[0] == '"' {
		// Quoted-string = DQUOTE *QcontentSMTP DQUOTE
		for i := 1; i < len(path); i++ {
			c := path[i]
			switch {
			case c == '"':
				return i + 1
			case c == '\\':
				// quoted-pairSMTP = %d92 %d32-126
				if i+1 >= len(path) || path[i+1] < 32 || path[i+1] > 126 {
					return -1
				}
				i++
			case c >= 32 && c <= 126: // qtextSMTP: %d32-33 / %d35-91 / %d93-126
			case c >= 0x80 && utf8ok: // RFC 6531 §3.3
			default:
				return -1
			}
		}
		return -1
	}
	// Dot-string = Atom *("." Atom)
	atomStart := true
	for i, c := range path {
		switch {
		case c == '.':
			if atomStart {
				return -1 // leading "." or ".."
			}
			atomStart = true
		case isAtext[c] || c >= 0x80 && utf8ok:
			atomStart = false
		default:
			if atomStart {
				return -1 // empty local part or trailing "."
			}
			return i
		}
	}
	return -1 // no "@"
}

// validDomain checks Domain = sub-domain *("." sub-domain), sub-domain =
// Let-dig [Ldh-str] (RFC 5321 §4.1.2). With utf8, non-ASCII octets count as
// letters so U-labels pass (RFC 6531 §3.3).
func validDomain(d []byte, utf8ok bool) bool {
	if len(d) == 0 {
		return false
	}
	labelStart := true
	var prev byte
	for _, c := range d {
		switch {
		case c == '.':
			if labelStart || prev == '-' {
				return false
			}
			labelStart = true
		case c == '-':
			if labelStart {
				return false
			}
		case isLetDig(c) || c >= 0x80 && utf8ok:
			labelStart = false
		default:
			return false
		}
		prev = c
	}
	return !labelStart && prev != '-'
}

// validAddressLiteral checks "[" ( IPv4-address-literal /
// IPv6-address-literal / General-address-literal ) "]" (RFC 5321 §4.1.3).
func validAddressLiteral(lit []byte) bool {
	if len(lit) < 3 || lit[0] != '[' || lit[len(lit)-1] != ']' {
		return false
	}
	inner := lit[1 : len(lit)-1]
	if validIPv4(inner) {
		return true
	}
	colon := bytes.IndexByte(inner, ':')
	if colon < 0 {
		return false
	}
	tag, content := inner[:colon], inner[colon+1:]
	if bytes.EqualFold(tag, []byte("IPv6")) {
		return validIPv6(content)
	}
	// General-address-literal = Standardized-tag ":" 1*dcontent, with
	// Standardized-tag = Ldh-str and dcontent = %d33-90 / %d94-126.
	if len(tag) == 0 || !isLetDig(tag[len(tag)-1]) || len(content) == 0 {
		return false
	}
	for _, c := range tag {
		if !isLetDig(c) && c != '-' {
			return false
		}
	}
	for _, c := range content {
		if c < 33 || c > 126 || c >= 91 && c <= 93 {
			return false
		}
	}
	return true
}

// validIPv4 checks Snum 3("." Snum), Snum = 1*3DIGIT with a value 0-255.
func validIPv4(b []byte) bool {
	for part := 0; part < 4; part++ {
		if part > 0 {
			if len(b) == 0 || b[0] != '.' {
				return false
			}
			b = b[1:]
		}
		n, v := 0, 0
		for n < len(b) && n < 3 && isDigit(b[n]) {
			v = v*10 + int(b[n]-'0')
			n++
		}
		if n == 0 || v > 255 {
			return false
		}
		b = b[n:]
	}
	return len(b) == 0
}

// validIPv6 checks IPv6-addr (RFC 5321 §4.1.3): IPv6-full, IPv6-comp,
// IPv6v4-full or IPv6v4-comp. Without "::" there are exactly 8 groups
// (an IPv4 tail counts as 2); with "::" at most 6 others (§4.1.3: "::"
// stands for at least 2 groups).
func validIPv6(b []byte) bool {
	groups := 0
	compressed := false
	if len(b) >= 2 && b[0] == ':' && b[1] == ':' {
		compressed = true
		b = b[2:]
		if len(b) == 0 {
			return true // "::"
		}
	}
	for {
		// One group: 1*4HEXDIG, or an IPv4 address that ends the literal.
		n := 0
		for n < len(b) && n < 4 && isHex(b[n]) {
			n++
		}
		if n < len(b) && b[n] == '.' {
			if !validIPv4(b) {
				return false
			}
			groups += 2
			break
		}
		if n == 0 {
			return false
		}
		groups++
		b = b[n:]
		if len(b) == 0 {
			break
		}
		if b[0] != ':' {
			return false
		}
		b = b[1:]
		if len(b) > 0 && b[0] == ':' {
			if compressed {
				return false // a second "::"
			}
			compressed = true
			b = b[1:]
			if len(b) == 0 {
				break // trailing "::"
			}
		} else if len(b) == 0 {
			return false // trailing single ":"
		}
	}
	if compressed {
		return groups <= 6
	}
	return groups == 8
}

// IsPostmaster reports whether path is "postmaster" without a domain, in any
// case. RFC 5321 §4.5.1 requires accepting it as a RCPT, and only there.
func IsPostmaster(path []byte) bool {
	return len(path) == len("postmaster") && bytes.EqualFold(path, []byte("postmaster"))
}

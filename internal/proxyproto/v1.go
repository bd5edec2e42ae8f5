package proxyproto

import "net/netip"

// Version 1: one line of US-ASCII text (§2.1).

const v1Prefix = "PROXY "

// v1Families are the words allowed after "PROXY " (§2.1), each with what
// must follow it: a space before the addresses, nothing for UNKNOWN (which
// may end right there or go on with a space).
var v1Families = [...]string{famTCP4: "TCP4 ", famTCP6: "TCP6 ", famUnknown: "UNKNOWN"}

const (
	famTCP4 = iota
	famTCP6
	famUnknown
)

func v1Error(off int, field, reason string) error {
	return &Error{Version: 1, Offset: off, Field: field, Reason: reason}
}

func parseV1(b []byte) (int, Header, error) {
	// §2.1: "If the CRLF sequence is not found in the first 107
	// characters, the receiver should declare the line invalid." Looking
	// at no more than that makes every scan below bounded; running out of
	// this window is an error, not a reason to wait. The scans reject a
	// wrong byte where it stands; the one case where the length alone
	// dooms a line earlier than this is a TCP6 line with long dotted
	// tails (up to 45 characters per address), which is refused here.
	window := b
	if len(window) > MaxV1Length {
		window = window[:MaxV1Length]
	}
	n, hdr, err := scanV1(window)
	if err == errNeedMore && len(window) == MaxV1Length {
		return 0, Header{}, v1Error(MaxV1Length, "line", "no CRLF within the first 107 bytes")
	}
	return n, hdr, err
}

func scanV1(b []byte) (int, Header, error) {
	i, err := expect(b, 0, v1Prefix, 1, "signature", `expected "PROXY "`)
	if err != nil {
		return 0, Header{}, err
	}

	// The family: pick the one word the input can still be.
	fam := -1
	longest := 0 // longest match, for the error offset
	for f, word := range v1Families {
		m := 0
		for m < len(word) && i+m < len(b) && b[i+m] == word[m] {
			m++
		}
		if m == len(word) {
			fam = f
			break
		}
		if i+m == len(b) {
			return 0, Header{}, errNeedMore // still a prefix of this word
		}
		longest = max(longest, m)
	}
	if fam < 0 {
		return 0, Header{}, v1Error(i+longest, "family", `expected "TCP4 ", "TCP6 " or "UNKNOWN"`)
	}
	i += len(v1Families[fam])

	if fam == famUnknown {
		return scanV1Unknown(b, i)
	}

	var src, dst netip.Addr
	if fam == famTCP4 {
		var a [4]byte
		if a, i, err = scanIPv4(b, i, 4, ' ', "source address"); err != nil {
			return 0, Header{}, err
		}
		src = netip.AddrFrom4(a)
		if a, i, err = scanIPv4(b, i, 4, ' ', "destination address"); err != nil {
			return 0, Header{}, err
		}
		dst = netip.AddrFrom4(a)
	} else {
		var a [16]byte
		if a, i, err = scanIPv6(b, i, "source address"); err != nil {
			return 0, Header{}, err
		}
		src = netip.AddrFrom16(a)
		if a, i, err = scanIPv6(b, i, "destination address"); err != nil {
			return 0, Header{}, err
		}
		dst = netip.AddrFrom16(a)
	}
	var sport, dport uint16
	if sport, i, err = scanPort(b, i, ' ', "source port"); err != nil {
		return 0, Header{}, err
	}
	if dport, i, err = scanPort(b, i, '\r', "destination port"); err != nil {
		return 0, Header{}, err
	}
	if i, err = expect(b, i, "\n", 1, "line end", "expected LF after CR"); err != nil {
		return 0, Header{}, err
	}
	return i, Header{
		Version:     1,
		Source:      netip.AddrPortFrom(src, sport),
		Destination: netip.AddrPortFrom(dst, dport),
	}, nil
}

// scanV1Unknown reads what follows "PROXY UNKNOWN": CRLF, or a space and
// anything up to CRLF, which §2.1 says the receiver must ignore. Only the
// line end is checked: a CR must be followed by LF, a bare LF is an error
// (§2.1: "must not tolerate a single CR or LF character to end the line").
func scanV1Unknown(b []byte, i int) (int, Header, error) {
	if i >= len(b) {
		return 0, Header{}, errNeedMore
	}
	switch b[i] {
	case '\r':
	case ' ':
		i++
		for ; ; i++ {
			if i >= len(b) {
				return 0, Header{}, errNeedMore
			}
			c := b[i]
			if c == '\r' {
				break
			}
			if c == '\n' {
				return 0, Header{}, v1Error(i, "line end", "bare LF")
			}
			// The CR must leave room for the LF within MaxV1Length.
			if i >= MaxV1Length-2 {
				return 0, Header{}, v1Error(i, "line", "no CRLF within the first 107 bytes")
			}
		}
	default:
		return 0, Header{}, v1Error(i, "family", `expected " " or CRLF after "UNKNOWN"`)
	}
	// b[i] == '\r'
	i, err := expect(b, i+1, "\n", 1, "line end", "expected LF after CR")
	if err != nil {
		return 0, Header{}, err
	}
	return i, Header{Version: 1, Local: true}, nil
}

// expect matches the literal lit at b[i:], byte by byte so that a partial
// match at the end of b is a "need more".
func expect(b []byte, i int, lit string, version int, field, reason string) (int, error) {
	for k := 0; k < len(lit); k, i = k+1, i+1 {
		if i >= len(b) {
			return 0, errNeedMore
		}
		if b[i] != lit[k] {
			return 0, &Error{Version: version, Offset: i, Field: field, Reason: reason}
		}
	}
	return i, nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func hexVal(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// scanIPv4 reads count dot-separated decimal octets (4 for an address, 3
// for the rest of an IPv6 address's dotted tail) and the terminator term.
// §2.1: "exactly 4 integers in the range [0..255] inclusive written in
// decimal representation separated by exactly one dot ... Heading zeroes
// are not permitted". The octets land in the last count bytes of the
// result.
func scanIPv4(b []byte, i, count int, term byte, field string) (a [4]byte, next int, err error) {
	for oct := 4 - count; oct < 4; oct++ {
		start, v := i, 0
		for ; ; i++ {
			if i >= len(b) {
				return a, 0, errNeedMore
			}
			c := b[i]
			if !isDigit(c) {
				break
			}
			if i > start && b[start] == '0' {
				return a, 0, v1Error(i, field, "leading zero in an IPv4 octet")
			}
			v = v*10 + int(c-'0')
			if v > 255 {
				return a, 0, v1Error(i, field, "IPv4 octet above 255")
			}
		}
		if i == start {
			return a, 0, v1Error(i, field, "expected a decimal digit")
		}
		sep, what := byte('.'), "expected '.' or a digit"
		if oct == 3 {
			sep, what = term, "expected ' ' or a digit after the last octet"
		}
		if b[i] != sep {
			return a, 0, v1Error(i, field, what)
		}
		i++
		a[oct] = byte(v)
	}
	return a, i, nil
}

// scanIPv6 reads an IPv6 address followed by a space (§2.1: "series of sets
// of 4 hexadecimal digits (upper or lower case) delimited by colons ... with
// the acceptance of one double colon sequence ... The total number of
// decoded bits must exactly be 128"). Groups of 1-4 digits and a dotted-quad
// tail are accepted as inet_ntop writes them (see the package comment).
//
// The checks run byte by byte and fire at the first byte after which no
// valid address is possible, so a prefix that passes can always be
// completed.
func scanIPv6(b []byte, i int, field string) (a [16]byte, next int, err error) {
	var groups [8]uint16
	n := 0      // completed groups
	dc := -1    // groups before the "::", -1 if none yet
	digits := 0 // hex digits of the group being read
	val := 0    // its value as hex
	dec := 0    // its value as decimal, if it turns out to be an IPv4 octet
	decOK := true
	colons := 0 // colons just before b[i]: 1 after "x:" or a leading ":", 2 after "::"
	room := 8   // most explicit groups; 7 once a "::" (at least one zero group) is seen
	for ; ; i++ {
		if i >= len(b) {
			return a, 0, errNeedMore
		}
		c := b[i]
		if h, ok := hexVal(c); ok {
			if colons == 1 && n == 0 && dc < 0 {
				return a, 0, v1Error(i, field, "an IPv6 address cannot start with a single ':'")
			}
			if digits == 0 {
				if n+1 > room {
					return a, 0, v1Error(i, field, "too many IPv6 groups")
				}
				dec, decOK = 0, true
			}
			if digits == 4 {
				return a, 0, v1Error(i, field, "more than 4 hex digits in an IPv6 group")
			}
			if !isDigit(c) || (digits > 0 && dec == 0) || digits == 3 {
				decOK = false
			} else if dec = dec*10 + int(h); dec > 255 {
				decOK = false
			}
			val = val<<4 | int(h)
			digits++
			colons = 0
			continue
		}
		switch c {
		case ':':
			switch {
			case digits > 0:
				groups[n] = uint16(val)
				n++
				val, digits, colons = 0, 0, 1
				// Another group or a "::" must follow.
				if n+1 > room {
					return a, 0, v1Error(i, field, "too many IPv6 groups")
				}
			case colons == 0: // only at the start: must be "::"
				colons = 1
			case colons == 1:
				if dc >= 0 {
					return a, 0, v1Error(i, field, `more than one "::"`)
				}
				dc, colons, room = n, 2, 7
			default:
				return a, 0, v1Error(i, field, `":::"`)
			}
		case '.':
			// The group just read is the first octet of an IPv4 tail,
			// which takes the last two groups.
			if digits == 0 || !decOK {
				return a, 0, v1Error(i, field, "expected a decimal IPv4 octet before '.'")
			}
			if (dc < 0 && n != 6) || (dc >= 0 && n+2 > 7) {
				return a, 0, v1Error(i, field, "an IPv4 tail must take exactly the last 32 bits")
			}
			var v4 [4]byte
			if v4, i, err = scanIPv4(b, i+1, 3, ' ', field); err != nil {
				return a, 0, err
			}
			v4[0] = byte(dec)
			groups[n] = uint16(v4[0])<<8 | uint16(v4[1])
			groups[n+1] = uint16(v4[2])<<8 | uint16(v4[3])
			n += 2
			return expandIPv6(groups, n, dc), i, nil
		case ' ':
			if digits > 0 {
				groups[n] = uint16(val)
				n++
			} else if colons != 2 {
				return a, 0, v1Error(i, field, "expected a hex digit")
			}
			if dc < 0 && n != 8 {
				return a, 0, v1Error(i, field, `too few IPv6 groups and no "::"`)
			}
			return expandIPv6(groups, n, dc), i + 1, nil
		default:
			return a, 0, v1Error(i, field, "unexpected character in an IPv6 address")
		}
	}
}

// expandIPv6 puts n groups into 16 bytes, the ones after the "::" (dc
// groups before it, -1 if none) at the end.
func expandIPv6(groups [8]uint16, n, dc int) (a [16]byte) {
	put := func(pos int, g uint16) { a[2*pos], a[2*pos+1] = byte(g>>8), byte(g) }
	if dc < 0 {
		dc = n
	}
	for k := 0; k < dc; k++ {
		put(k, groups[k])
	}
	tail := n - dc
	for k := 0; k < tail; k++ {
		put(8-tail+k, groups[dc+k])
	}
	return a
}

// scanPort reads a decimal port in [0..65535] without leading zeros (§2.1)
// and its terminator.
func scanPort(b []byte, i int, term byte, field string) (port uint16, next int, err error) {
	start, v := i, 0
	for ; ; i++ {
		if i >= len(b) {
			return 0, 0, errNeedMore
		}
		c := b[i]
		if !isDigit(c) {
			break
		}
		if i > start && b[start] == '0' {
			return 0, 0, v1Error(i, field, "leading zero in a port")
		}
		v = v*10 + int(c-'0')
		if v > 65535 {
			return 0, 0, v1Error(i, field, "port above 65535")
		}
	}
	if i == start {
		return 0, 0, v1Error(i, field, "expected a decimal digit")
	}
	if b[i] != term {
		if term == '\r' {
			return 0, 0, v1Error(i, field, "expected CRLF or a digit")
		}
		return 0, 0, v1Error(i, field, "expected ' ' or a digit")
	}
	return uint16(v), i + 1, nil
}

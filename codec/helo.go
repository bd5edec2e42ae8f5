package codec

// ValidHelo reports whether arg, the argument of HELO or EHLO, is what
// RFC 5321 §4.1.1.1 asks for: a Domain of at most 255 octets (§4.5.3.1.2)
// or an address literal. A domain whose last label is all digits is not
// taken for one (RFC 3696 §2: no top-level domain is all-numeric):
// "192.0.2.1" is an IPv4 address without the brackets of a literal. The
// argument is ASCII: ParseCommand refuses 8-bit octets outside MAIL and
// RCPT.
func ValidHelo(arg []byte) bool {
	if len(arg) == 0 || len(arg) > maxDomain {
		return false
	}
	if arg[0] == '[' {
		return validAddressLiteral(arg)
	}
	if !validDomain(arg, false) {
		return false
	}
	for i := len(arg) - 1; i >= 0 && arg[i] != '.'; i-- {
		if !isDigit(arg[i]) {
			return true
		}
	}
	return false
}

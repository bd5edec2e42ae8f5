package codec

import "math"

// BodyType is the BODY= parameter of MAIL, in the same order as
// sink.BodyType.
type BodyType uint8

const (
	Body7Bit       BodyType = iota // BODY=7BIT or none (RFC 6152 §2)
	Body8BitMIME                   // BODY=8BITMIME (RFC 6152)
	BodyBinaryMIME                 // BODY=BINARYMIME (RFC 3030 §3)
)

// MailParams are the MAIL parameters lsmtp understands.
type MailParams struct {
	Size     int64 // SIZE= (RFC 1870), 0 when absent
	HasSize  bool
	Body     BodyType
	SMTPUTF8 bool // SMTPUTF8 (RFC 6531 §3.4)
	// HasAuth: an AUTH= parameter was given (RFC 4954 §5). Its mailbox
	// is the client's claim about who submitted the message first; it is
	// checked for form and otherwise ignored, as §5 allows.
	HasAuth bool
}

// ParseMailParams parses the ESMTP parameters of MAIL (Command.Params) into
// p: SIZE=n (RFC 1870), BODY=7BIT|8BITMIME|BINARYMIME (RFC 6152, RFC 3030)
// SMTPUTF8 (RFC 6531) and AUTH=xtext (RFC 4954 §5). Keywords and BODY values are case-insensitive;
// parameters are separated by SP (HTAB tolerated).
//
// An unknown keyword gives ErrUnknownParam (555 5.5.4, RFC 5321
// §4.1.1.11); a malformed parameter, a bad value or a repeated keyword 501
// 5.5.4. It never allocates.
func ParseMailParams(params []byte, p *MailParams) error {
	*p = MailParams{}
	var seenBody bool
	for {
		params = trimLeftSpace(params)
		if len(params) == 0 {
			return nil
		}
		end := 0
		for end < len(params) && !isSpace(params[end]) {
			end++
		}
		param := params[:end]
		params = params[end:]

		// esmtp-param = esmtp-keyword ["=" esmtp-value] (RFC 5321 §4.1.2)
		eq := len(param)
		for i, c := range param {
			if c == '=' {
				eq = i
				break
			}
		}
		keyword := param[:eq]
		var value []byte
		hasValue := eq < len(param)
		if hasValue {
			value = param[eq+1:]
		}
		if !validKeyword(keyword) {
			return ErrParamSyntax
		}
		switch {
		case len(keyword) == 4 && hasPrefixFold(keyword, "SIZE"):
			if p.HasSize {
				return ErrDuplicateParam
			}
			n, ok := parseSize(value)
			if !ok {
				return ErrBadSize
			}
			p.Size, p.HasSize = n, true
		case len(keyword) == 4 && hasPrefixFold(keyword, "BODY"):
			if seenBody {
				return ErrDuplicateParam
			}
			seenBody = true
			switch {
			case len(value) == 4 && hasPrefixFold(value, "7BIT"):
				p.Body = Body7Bit
			case len(value) == 8 && hasPrefixFold(value, "8BITMIME"):
				p.Body = Body8BitMIME
			case len(value) == 10 && hasPrefixFold(value, "BINARYMIME"):
				p.Body = BodyBinaryMIME
			default:
				return ErrBadBody
			}
		case len(keyword) == 8 && hasPrefixFold(keyword, "SMTPUTF8"):
			if p.SMTPUTF8 {
				return ErrDuplicateParam
			}
			if hasValue {
				return ErrBadSMTPUTF8
			}
			p.SMTPUTF8 = true
		case len(keyword) == 4 && hasPrefixFold(keyword, "AUTH"):
			if p.HasAuth {
				return ErrDuplicateParam
			}
			if !validXtext(value) {
				return ErrParamSyntax
			}
			p.HasAuth = true
		default:
			return ErrUnknownParam
		}
	}
}

// validKeyword checks esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-").
func validKeyword(k []byte) bool {
	if len(k) == 0 || !isLetDig(k[0]) {
		return false
	}
	for _, c := range k[1:] {
		if !isLetDig(c) && c != '-' {
			return false
		}
	}
	return true
}

// parseSize parses size-value = 1*20DIGIT (RFC 1870 §3); values beyond an
// int64 are refused rather than clamped.
func parseSize(v []byte) (int64, bool) {
	if len(v) == 0 || len(v) > 20 {
		return 0, false
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, false
		}
		d := int64(c - '0')
		if n > (math.MaxInt64-d)/10 {
			return 0, false
		}
		n = n*10 + d
	}
	return n, true
}

// ParseRcptParams checks the parameters of RCPT. lsmtp implements none
// (it advertises no extension that adds any), so any parameter gives
// ErrRcptParam (555 5.5.4); none gives nil.
func ParseRcptParams(params []byte) error {
	if len(trimLeftSpace(params)) != 0 {
		return ErrRcptParam
	}
	return nil
}

// validXtext checks an AUTH= value: "<>" or xtext (RFC 3461 §4: "+" and
// two upper-case hex digits, or any printable ASCII but "+" and "=").
func validXtext(v []byte) bool {
	if len(v) == 2 && v[0] == '<' && v[1] == '>' {
		return true
	}
	if len(v) == 0 {
		return false
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c == '+':
			if i+2 >= len(v) || !isUpperHex(v[i+1]) || !isUpperHex(v[i+2]) {
				return false
			}
			i += 2
		case c < '!' || c > '~' || c == '=':
			return false
		}
	}
	return true
}

func isUpperHex(c byte) bool { return isDigit(c) || ('A' <= c && c <= 'F') }

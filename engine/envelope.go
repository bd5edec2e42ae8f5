package engine

import (
	"bytes"
	"unicode"
	"unicode/utf8"

	"github.com/lsmtp/lsmtp/codec"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// The envelope limits of the sink (sink.Limits), enforced at RCPT where
// the client can still be told, so that no envelope reaches the sink
// that it could not encode.

var (
	// A domain longer than the sink can route on can never be delivered
	// here: permanent, with RFC 3463's "bad destination mailbox address
	// syntax", as for a domain over RFC 5321's 255 octets.
	replyDomainTooLong = &codec.Reply{Code: 501, Enhanced: "5.1.3", Text: "Recipient domain too long to route here"}
	// RFC 5321 §4.5.3.1.10: a 452 makes the client send the recipients
	// it was refused in a later transaction, as for MaxRecipients.
	replyTooManyDomains = &codec.Reply{Code: 452, Enhanced: "4.5.3", Text: "Too many recipient domains"}
	replyEnvelopeFull   = &codec.Reply{Code: 452, Enhanced: "4.5.3", Text: "Too many recipients (envelope size)"}
)

// sinkLimits is what the sink can carry, if it says (sink.Limiter); the
// zero Limits, no limit, otherwise.
func sinkLimits(sk sink.Sink) sink.Limits {
	if l, ok := sk.(sink.Limiter); ok {
		return l.Limits()
	}
	return sink.Limits{}
}

// domainOf returns the domain of a forward-path as the sink groups it:
// what follows its last "@" (a quoted local part may hold one). A bare
// "postmaster" (RFC 5321 §4.5.1) has none and yields nil.
func domainOf(path []byte) []byte {
	i := bytes.LastIndexByte(path, '@')
	if i < 0 {
		return nil
	}
	return path[i+1:]
}

// loweredLen is len(strings.ToLower(string(d))) without building it:
// ToLower maps rune by rune, and lower-casing can lengthen a domain (U+023A,
// two octets, becomes U+2C65, three; an invalid octet becomes U+FFFD).
func loweredLen(d []byte) int {
	n := 0
	for len(d) > 0 {
		if d[0] < utf8.RuneSelf {
			n++
			d = d[1:]
			continue
		}
		r, size := utf8.DecodeRune(d)
		n += utf8.RuneLen(unicode.ToLower(r))
		d = d[size:]
	}
	return n
}

// sameDomain reports whether strings.ToLower gives a and b the same
// form, as the sink compares domains; it does not allocate. (Unicode case
// folding, bytes.EqualFold, would merge more: "ſ" and "s" fold alike but
// lower-case apart, and would be two copies in the sink.)
func sameDomain(a, b []byte) bool {
	for len(a) > 0 && len(b) > 0 {
		ra, na := rune(a[0]), 1
		if ra >= utf8.RuneSelf {
			ra, na = utf8.DecodeRune(a)
		}
		rb, nb := rune(b[0]), 1
		if rb >= utf8.RuneSelf {
			rb, nb = utf8.DecodeRune(b)
		}
		if ra != rb && unicode.ToLower(ra) != unicode.ToLower(rb) {
			return false
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) == len(b)
}

// countsDomains: the sink's limits need the distinct recipient domains
// of a transaction (a cap on them, or one stored copy per domain).
func countsDomains(l *sink.Limits) bool { return l.MaxDomains > 0 || l.CopyPerDomain }

// newDomain reports whether d is none of the transaction's recipient
// domains so far. It compares against the distinct ones only: at most
// MaxDomains of them when the sink caps them, else at most MaxRecipients,
// which bounds the work of one RCPT.
func (s *session) newDomain(d []byte) bool {
	for _, sp := range s.domains {
		if sameDomain(s.env[sp.start:sp.end], d) {
			return false
		}
	}
	return true
}

// holdCopies counts the copies of the message beyond the first against
// the in-flight budget, for a sink that stores one per recipient domain:
// the message was held once as it arrived, and until its verdict the sink
// has size × copies octets on their way to the broker. It returns false,
// counting nothing, when they do not fit.
func (s *session) holdCopies() bool {
	copies := len(s.domains)
	if !s.cfg.limits.CopyPerDomain || copies <= 1 || s.msg.Data == nil {
		return true
	}
	return s.hold(int64(copies-1) * int64(len(s.msg.Data.B)))
}

// appendHeloComment appends the sanitised form of a HELO argument that
// is neither a domain nor an address literal (codec.ValidHelo): real
// clients send "localhost_pc" or a bare IPv4 address, and refusing them
// would lose their mail, but the text stands in our Received: header
// only as a comment (RFC 5322 §3.2.2 ctext: printable ASCII but "(",
// ")" and "\"; anything else becomes "?"), and in at most
// maxHeloComment octets, so that it can neither forge header syntax nor
// make the line long.
func appendHeloComment(dst, arg []byte) []byte {
	for _, c := range arg[:min(len(arg), maxHeloComment)] {
		if c <= ' ' || c >= 0x7f || c == '(' || c == ')' || c == '\\' {
			c = '?'
		}
		dst = append(dst, c)
	}
	return dst
}

// maxHeloComment is the most octets of an invalid HELO argument kept.
const maxHeloComment = 64

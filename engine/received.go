package engine

import (
	"time"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// appendTrace appends the envelope as trace fields (sink.AppendTrace's
// form, for a sink whose Limits ask for them): Return-Path, one
// X-Original-To per recipient in RCPT order, X-Lsmtp-Envelope, and
// X-Lsmtp-Auth after AUTH.
func (s *session) appendTrace(dst []byte) []byte {
	dst = sink.AppendReturnPath(dst, s.env[s.sender.start:s.sender.end])
	for _, r := range s.rcpts {
		dst = sink.AppendOriginalTo(dst, s.env[r.start:r.end])
	}
	dst = sink.AppendEnvelope(dst, int(s.remote.Port()), s.params.Size, sink.BodyType(s.params.Body), s.params.SMTPUTF8)
	return sink.AppendAuth(dst, s.sec.authUser)
}

// appendReceived appends our trace header (RFC 5321 §4.4, RFC 5322 §3.6.7):
//
//	Received: from <helo> ([<client IP>])
//		by <hostname> (lsmtp) with <protocol> id <queue ID>
//		for <<recipient>>; <date>
//
// "for" names the recipient only when there is exactly one, so that a
// copy of the message does not disclose the other (Bcc) recipients. A
// HELO argument that is no domain or address literal is not put where
// RFC 5321 §4.4 wants one: the client's address stands there, and the
// argument, sanitised (appendHeloComment), in a comment:
//
//	Received: from [<client IP>] (helo=<sanitised argument>)
//
// Every line stays within RFC 5322 §2.1.1's 998 octets whatever the
// client sent: the HELO domain and the recipient are at most 255 and 256
// octets (codec.ValidHelo, RFC 5321 §4.5.3.1), the comment 64, our
// hostname 255 (Config.Validate).
func (s *session) appendReceived(dst []byte, now time.Time) []byte {
	dst = append(dst, "Received: from "...)
	if s.heloOK {
		dst = appendHeaderSafe(dst, s.helo)
		dst = append(dst, " ("...)
		dst = s.appendAddressLiteral(dst)
		dst = append(dst, ')')
	} else {
		dst = s.appendAddressLiteral(dst)
		dst = append(dst, " (helo="...)
		dst = append(dst, s.helo...) // sanitised in hello
		dst = append(dst, ')')
	}
	dst = append(dst, "\r\n\tby "...)
	dst = append(dst, s.cfg.Hostname...)
	dst = append(dst, " (lsmtp) with "...)
	dst = append(dst, s.protocol()...)
	dst = s.appendTLSComment(dst)
	dst = append(dst, " id "...)
	dst = append(dst, s.msg.QueueID...)
	if len(s.rcpts) == 1 {
		r := s.rcpts[0]
		dst = append(dst, "\r\n\tfor <"...)
		dst = appendHeaderSafe(dst, s.env[r.start:r.end])
		dst = append(dst, '>')
	}
	dst = append(dst, ";\r\n\t"...)
	dst = now.AppendFormat(dst, "Mon, 02 Jan 2006 15:04:05 -0700")
	return append(dst, "\r\n"...)
}

// appendAddressLiteral appends the client's address as an RFC 5321
// §4.1.3 address literal.
func (s *session) appendAddressLiteral(dst []byte) []byte {
	dst = append(dst, '[')
	if addr := s.remote.Addr().Unmap(); addr.Is6() {
		dst = append(dst, "IPv6:"...)
	}
	dst = append(dst, s.ipText...)
	return append(dst, ']')
}

// protocol is the "with" value: RFC 3848 (SMTP, ESMTP, and S for TLS, A
// for AUTH) and RFC 6531 §3.7.3 (UTF8SMTP when the client declared
// SMTPUTF8); the table is in tls.go.
func (s *session) protocol() string {
	base := 0
	switch {
	case s.params.SMTPUTF8:
		base = 2
	case s.ehlo:
		base = 1
	}
	return protocols[base][s.secIndex()]
}

// appendHeaderSafe copies client text into a header, replacing what could
// break the header's structure: control characters (a CR or LF would start
// a new header) and parentheses, which would end our comment early.
func appendHeaderSafe(dst, b []byte) []byte {
	for _, c := range b {
		if c < 0x20 || c == 0x7f || c == '(' || c == ')' {
			c = '?'
		}
		dst = append(dst, c)
	}
	return dst
}

package engine

import (
	"time"
)

// appendReceived appends our trace header (RFC 5321 §4.4, RFC 5322 §3.6.7):
//
//	Received: from <helo> ([<client IP>])
//		by <hostname> (lsmtp) with <protocol> id <queue ID>
//		for <<recipient>>; <date>
//
// "for" names the recipient only when there is exactly one, so that a
// copy of the message does not disclose the other (Bcc) recipients.
func (s *session) appendReceived(dst []byte, now time.Time) []byte {
	dst = append(dst, "Received: from "...)
	dst = appendHeaderSafe(dst, s.helo)
	dst = append(dst, " (["...)
	if addr := s.remote.Addr().Unmap(); addr.Is6() {
		dst = append(dst, "IPv6:"...) // RFC 5321 §4.1.3 address literal
	}
	dst = append(dst, s.ipText...)
	dst = append(dst, "])\r\n\tby "...)
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

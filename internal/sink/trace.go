package sink

import "strconv"

// Trace fields: the envelope written into the message itself, as the mail
// convention has it, so that the body is a complete RFC 5322 message and
// the broker carries the envelope as plain body octets (bench/factors.md:
// an AMQP header table costs RabbitMQ a decode on every publish, body
// octets do not). When a sink's Limits ask for them (TraceFields), the
// engine writes them at the head of Message.Data, above its Received:
// field, in this order:
//
//	Return-Path: <sender>
//	X-Original-To: recipient          (one per recipient, in RCPT order)
//	X-Lsmtp-Envelope: port=…; size=…; body=…; smtputf8=…
//	X-Lsmtp-Auth: user                (only after AUTH, or XCLIENT LOGIN=)
//	Received: from … (the engine's, RFC 5321 §4.4)
//
// Return-Path is RFC 5321 §4.4's field for the reverse-path ("<>" for
// the null sender). X-Original-To is the field Postfix's local(8)
// delivery writes for the envelope recipient as it was received; its
// Delivered-To is not used, since Postfix takes a Delivered-To naming the
// recipient it delivers to as a mail loop. X-Lsmtp-Envelope carries the
// MAIL facts no standard field has: the client's TCP source port (RFC
// 6302), SIZE= (RFC 1870), BODY= (RFC 6152, RFC 3030) and SMTPUTF8 (RFC
// 6531). X-Lsmtp-Auth names the user the client authenticated as (RFC
// 4954). The client's address, HELO, protocol (ESMTPS, ESMTPSA: RFC
// 3848), TLS version and cipher, queue ID and date are in Received:.
//
// Addresses are written as received: SMTP bounds them at 256 octets (RFC
// 5321 §4.5.3.1.3), so every line stays within RFC 5322 §2.1.1's 998; an
// SMTPUTF8 address is UTF-8, which RFC 6532 §3 allows in header fields.
// A long address is not folded: there is no place to fold inside one.
//
// These fields disclose every recipient, Bcc ones included: a consumer
// that stores the message where its recipients read it removes the
// fields before lsmtp's Received: (those above the first Received:
// field), as a final delivery agent removes Bcc.
const (
	FieldReturnPath = "Return-Path"
	FieldOriginalTo = "X-Original-To"
	FieldEnvelope   = "X-Lsmtp-Envelope"
	FieldAuth       = "X-Lsmtp-Auth"
)

// AppendAuth appends "X-Lsmtp-Auth: user" and CRLF for an authenticated
// user, nothing for none. A user name is at most what the auth file or
// XCLIENT (255 octets) allows: the line stays within RFC 5322's 998.
func AppendAuth(dst, user []byte) []byte {
	if len(user) == 0 {
		return dst
	}
	dst = append(dst, FieldAuth+": "...)
	dst = appendAddress(dst, user)
	return append(dst, "\r\n"...)
}

// AppendReturnPath appends "Return-Path: <sender>" and CRLF.
func AppendReturnPath(dst, sender []byte) []byte {
	dst = append(dst, FieldReturnPath+": <"...)
	dst = appendAddress(dst, sender)
	return append(dst, ">\r\n"...)
}

// AppendOriginalTo appends "X-Original-To: rcpt" and CRLF.
func AppendOriginalTo(dst, rcpt []byte) []byte {
	dst = append(dst, FieldOriginalTo+": "...)
	dst = appendAddress(dst, rcpt)
	return append(dst, "\r\n"...)
}

// AppendEnvelope appends the X-Lsmtp-Envelope field and CRLF: the
// client's source port, the declared SIZE= (0 for none), BODY= and
// whether SMTPUTF8 was declared. It folds before "body=" (RFC 5322
// §2.2.3) when the line would pass 78 octets.
func AppendEnvelope(dst []byte, port int, size int64, body BodyType, smtputf8 bool) []byte {
	start := len(dst)
	dst = append(dst, FieldEnvelope+": port="...)
	dst = strconv.AppendInt(dst, int64(port), 10)
	dst = append(dst, "; size="...)
	dst = strconv.AppendInt(dst, size, 10)
	dst = append(dst, ';')
	u := "no"
	if smtputf8 {
		u = "yes"
	}
	if len(dst)-start+len(" body=; smtputf8=")+len(body.String())+len(u) > 78 {
		dst = append(dst, "\r\n\t"...)
	} else {
		dst = append(dst, ' ')
	}
	dst = append(dst, "body="...)
	dst = append(dst, body.String()...)
	dst = append(dst, "; smtputf8="...)
	dst = append(dst, u...)
	return append(dst, "\r\n"...)
}

// AppendTrace appends every trace field of m but Received: for the
// recipients rcpts (all of m's, or one copy's), as the engine writes them.
func AppendTrace(dst []byte, m *Message, rcpts [][]byte) []byte {
	dst = AppendReturnPath(dst, m.Sender)
	for _, r := range rcpts {
		dst = AppendOriginalTo(dst, r)
	}
	dst = AppendEnvelope(dst, m.ClientPort, m.Size, m.Body, m.SMTPUTF8)
	return AppendAuth(dst, m.AuthUser)
}

// appendAddress copies an address, replacing a control character, which
// could end the field early (the engine's validation lets none through),
// with "?".
func appendAddress(dst, a []byte) []byte {
	for _, c := range a {
		if c < 0x20 || c == 0x7f {
			c = '?'
		}
		dst = append(dst, c)
	}
	return dst
}

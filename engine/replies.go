package engine

import (
	"strconv"

	"github.com/lsmtp/lsmtp/codec"
)

// Everything the engine says to a client is a codec.Reply (or, for EHLO,
// its multiline form); the replies of a sink come from sink.Reply. Codes
// per RFC 5321 §4.2 and §4.3.2, enhanced codes per RFC 3463 (RFC 2034 §3:
// none on the greeting, HELO/EHLO, and 354, which has no enhanced class).

// Replies with fixed text.
var (
	replyOK            = &codec.Reply{Code: 250, Enhanced: "2.0.0", Text: "OK"}
	replySenderOK      = &codec.Reply{Code: 250, Enhanced: "2.1.0", Text: "OK"}
	replyRecipientOK   = &codec.Reply{Code: 250, Enhanced: "2.1.5", Text: "OK"}
	replyVRFY          = &codec.Reply{Code: 252, Enhanced: "2.0.0", Text: "Cannot VRFY user, but will accept message and attempt delivery"}
	replyHelp          = &codec.Reply{Code: 214, Enhanced: "2.0.0", Text: "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP"}
	replyStartData     = &codec.Reply{Code: 354, Text: "End data with <CR><LF>.<CR><LF>"}
	replySyntax        = &codec.Reply{Code: 501, Enhanced: "5.5.4", Text: "Syntax error"}
	replyNotImpl       = &codec.Reply{Code: 502, Enhanced: "5.5.1", Text: "Command not implemented"}
	replyNeedHelo      = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "Send HELO or EHLO first"}
	replyNestedMail    = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "Sender already specified"}
	replyNeedMail      = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "Need MAIL before RCPT"}
	replyNeedMailData  = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "Need MAIL and RCPT before DATA"}
	replyNoRecipients  = &codec.Reply{Code: 554, Enhanced: "5.5.1", Text: "No valid recipients"}
	replyDataAfterBDAT = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "DATA not allowed after BDAT"}
	replyRcptAfterBDAT = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "RCPT not allowed after BDAT"}
	replyBinaryMIME    = &codec.Reply{Code: 503, Enhanced: "5.5.1", Text: "BODY=BINARYMIME requires BDAT"}
	replyNoParams      = &codec.Reply{Code: 555, Enhanced: "5.5.4", Text: "Parameters need EHLO"}
	replyNullRcpt      = &codec.Reply{Code: 501, Enhanced: "5.1.3", Text: "Null recipient not allowed"}
	replyTooMany       = &codec.Reply{Code: 452, Enhanced: "4.5.3", Text: "Too many recipients"}
	replyTooBig        = &codec.Reply{Code: 552, Enhanced: "5.3.4", Text: "Message size exceeds fixed maximum message size"}
	// replyTooBigNow: a message within the SIZE this session's EHLO
	// offered, over the broker's bound that fell since (RFC 1870 §6: 452
	// when the server cannot take it now, 552 only past the fixed maximum
	// the client was told).
	replyTooBigNow = &codec.Reply{Code: 452, Enhanced: "4.3.1", Text: "Insufficient system storage for a message this size now, try again later"}
	replyBareEOL   = &codec.Reply{Code: 554, Enhanced: "5.6.0", Text: "Message contains bare CR or LF (RFC 5321 section 2.3.8)"}
	replyMsgRate   = &codec.Reply{Code: 450, Enhanced: "4.7.1", Text: "Message rate limit exceeded, try again later"}
	replyDomain    = &codec.Reply{Code: 550, Enhanced: "5.7.1", Text: "Recipient domain not accepted here"}
	replyNoMemory  = &codec.Reply{Code: 451, Enhanced: "4.3.1", Text: "Insufficient system resources, try again later"}
)

// serverReplies are the replies that carry our hostname, rendered once
// per configuration.
type serverReplies struct {
	greeting, helo, ehlo, quit []byte

	shutdown    []byte // Shutdown: draining, or its deadline passed
	timeout     []byte // the idle or data timeout passed
	tooMany     []byte // MaxConns or MaxConnsPerIP
	denied      []byte // the client policy's deny list
	rate        []byte // the client policy's connection rate
	tooManyErrs []byte // MaxErrors protocol errors
	backlog     []byte // MaxPipelineBacklog input unread behind a reply
	buffers     []byte // past MaxSessionBuffers and still growing
	nonSMTP     []byte // an HTTP request line first
	proxy       []byte // a PROXY header from an address we do not trust
	tls         []byte // a TLS ClientHello on a port that does not speak TLS
	talkedFirst []byte // input before the delayed greeting
}

func makeReplies(cfg Config) serverReplies {
	h := cfg.Hostname
	reply := func(code int, enhanced, text string) []byte {
		return codec.AppendReply(nil, code, enhanced, h+" "+text)
	}
	return serverReplies{
		greeting:    reply(220, "", "ESMTP"),
		helo:        codec.AppendReply(nil, 250, "", h),
		ehlo:        makeEHLO(h, cfg.MaxMessageSize),
		quit:        reply(221, "2.0.0", "Bye"),
		shutdown:    reply(421, "4.3.2", "Service shutting down, try again later"),
		timeout:     reply(421, "4.4.2", "Timeout, closing"),
		tooMany:     reply(421, "4.7.0", "Too many connections, try again later"),
		denied:      reply(554, "5.7.1", "Access denied"),
		rate:        reply(421, "4.7.0", "Connection rate limit exceeded, try again later"),
		tooManyErrs: reply(421, "4.7.0", "Too many errors, closing"),
		backlog:     reply(421, "4.7.0", "Too much pipelined input, closing"),
		buffers:     reply(421, "4.7.0", "Too much unread data buffered, try again later"),
		nonSMTP:     reply(421, "4.7.0", "Not an SMTP client, closing"),
		proxy:       reply(421, "4.7.0", "PROXY header not accepted from this address, closing"),
		tls:         reply(421, "4.7.0", "TLS is not spoken here, closing"),
		// RFC 5321 §3.1: the client waits for our 220. One that talks
		// first is not a mailer waiting its turn.
		talkedFirst: reply(554, "5.5.0", "Protocol violation: talked before the greeting"),
	}
}

// makeEHLO renders the EHLO reply advertising SIZE size (RFC 1870).
func makeEHLO(hostname string, size int64) []byte {
	return codec.AppendReplyLines(nil, 250,
		hostname,
		"PIPELINING",
		"SIZE "+strconv.FormatInt(size, 10),
		"8BITMIME",
		"BINARYMIME",
		"CHUNKING",
		"ENHANCEDSTATUSCODES",
		"SMTPUTF8",
	)
}

// ehloSet is the EHLO replies for one SIZE value, in the three forms
// ehloReply chooses from.
type ehloSet struct {
	size                  int64
	plain, startTLS, auth []byte
}

func newEHLOSet(hostname string, size int64) *ehloSet {
	plain := makeEHLO(hostname, size)
	return &ehloSet{size: size, plain: plain,
		startTLS: addEHLOLine(plain, "STARTTLS"), auth: addEHLOLine(plain, "AUTH PLAIN LOGIN")}
}

// maxSize is the largest message taken now: MaxMessageSize, or the
// sink's bound when that is smaller (sink.SizeLimiter, learned at each
// connect to the broker). EHLO advertises it, MAIL SIZE= and the body are
// held to it. An atomic load in the sink: safe on every command.
func (c *settings) maxSize() int64 {
	n := c.MaxMessageSize
	if c.sizer != nil {
		if b := c.sizer.MaxMessageSize(); b > 0 && b < n {
			n = b
		}
	}
	return n
}

// ehloFor is the EHLO replies advertising size: rendered once per value
// the bound takes (a broker connect that changes it), not per EHLO. Two
// loops that render the same value at once store equal sets.
func (c *settings) ehloFor(size int64) *ehloSet {
	if e := c.ehlo.Load(); e != nil && e.size == size {
		return e
	}
	e := newEHLOSet(c.Hostname, size)
	c.ehlo.Store(e)
	return e
}

// asReply is the reply to a codec error: the codec's own, or a syntax
// error for anything it did not name.
func asReply(err error) *codec.Reply {
	if r, ok := err.(*codec.Reply); ok {
		return r
	}
	return replySyntax
}

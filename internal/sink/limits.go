package sink

// Limits is what a sink can carry in one message beyond what SMTP itself
// bounds. The engine enforces them at RCPT, where the client can still be
// told (RFC 5321 §4.5.3.1.10: a 452 makes it send the other recipients in
// a later transaction), so that no envelope reaches the sink that the sink
// could not encode. A zero field means no limit.
type Limits struct {
	// MaxDomain is the longest recipient domain, in octets after
	// lower-casing, that the sink can route on (a routing key or subject
	// built from it). Longer domains get 501 5.1.3: that address can never
	// be routed, so retrying it is pointless. Lower-casing is
	// strings.ToLower's: it can lengthen a domain (U+023A, two octets,
	// becomes U+2C65, three) and turns each invalid UTF-8 octet into
	// U+FFFD (three octets), so count the lower-cased form, not the input.
	MaxDomain int
	// MaxDomains is the most distinct recipient domains in one message,
	// compared after lower-casing (each may be a copy in the broker).
	// Past it: 452 4.5.3.
	MaxDomains int
	// MaxEnvelope is the most octets of sender and recipients together,
	// each recipient counted with RecipientOverhead more, that the sink
	// can carry with one message. Past it: 452 4.5.3. It assumes the
	// other per-message fields stay within what SMTP bounds (a HELO
	// argument of at most 512 octets, RFC 5321 §4.5.3.1.4); the sink
	// still refuses, 451, a message that does not fit.
	MaxEnvelope       int
	RecipientOverhead int
	// CopyPerDomain says the sink stores one copy of the body per
	// distinct recipient domain; the engine then counts size × copies
	// against the in-flight budget.
	CopyPerDomain bool
	// TraceFields asks the engine to write the envelope into Data as
	// trace fields above its Received: field (trace.go), when the body
	// starts, and to set Message.TraceLen. They count against the
	// in-flight budget with the body; the Message fields stay filled.
	TraceFields bool
}

// Limiter is implemented by sinks that have Limits. The engine asks once
// per configuration (at start and on reload).
type Limiter interface {
	Limits() Limits
}

// SizeLimiter is implemented by sinks whose broker bounds the size of
// one message, a bound it may learn only at run time (NATS's
// max_payload, at every connect). The engine advertises the smaller of
// its own MaxMessageSize and this bound as SIZE (RFC 1870), refuses a
// larger SIZE= at MAIL and a larger body after its end with 552 5.3.4,
// instead of accepting a message the broker can never take and
// answering 451 for days.
type SizeLimiter interface {
	// MaxMessageSize is the most octets of a client's message, counted
	// as the engine's MaxMessageSize counts them (after dot-unstuffing),
	// that the sink can take now, with room for everything added to them
	// at its largest: the engine's Received: field (at most MaxReceived
	// octets), the trace fields of an envelope within Limits.MaxEnvelope,
	// and the sink's own headers. 0 means no bound, or none known yet.
	// It is called on event loops at EHLO, MAIL and the end of every
	// message: an atomic load, no allocation.
	MaxMessageSize() int64
}

// MaxReceived bounds the engine's Received: field, CRLF included: a HELO
// domain of at most 255 octets, an IPv6 literal, a host name of at most
// 255, the protocol with its TLS comment, the queue ID, one recipient of
// at most 256 and the date come to under 1100.
const MaxReceived = 2048

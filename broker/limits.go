package broker

import (
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/lsmtp/lsmtp/internal/queueid"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// What AMQP 0-9-1 can carry. amqp091-go does not check these before it
// writes: a short string it cannot encode closes the whole connection (a
// frame error, 501), and a frame larger than the negotiated frame_max
// makes RabbitMQ close it (frame_too_large). Either would fail every
// message in flight on every worker, so publish checks each message
// against them first and fails only that one.
const (
	// shortstrMax: a short string (exchange, routing key, message-id,
	// table keys) has a one-octet length (AMQP 0-9-1 §4.2.5.3).
	shortstrMax = 255
	// frameOverhead is what a frame adds to its payload: type, channel
	// and size (7 octets) and the frame-end octet (§4.2.3); a payload
	// may be frame_max minus these. RabbitMQ tolerates 8 octets more
	// from publishers (rabbit_reader's FRAME_SIZE_FUDGE) but delivers
	// the frame as it is, and a consumer holding to the limit, as
	// amqp091-go does, then loses its connection on every redelivery.
	frameOverhead = 8
	// contentHeaderFixed is the content header payload before the
	// properties: class-id, weight, body size, property flags (§4.2.6.1).
	contentHeaderFixed = 2 + 2 + 8 + 2
	// frameSize is the frame_max we ask for: RabbitMQ's default, and
	// amqp091-go's when none is configured. Limits are computed from it;
	// a broker that negotiates less gets 451 for the envelopes between
	// the two sizes (and a warning at connect).
	frameSize = 131072
)

// Sizes Limits reserves for the fields of the content header that are
// neither the envelope nor fixed by the configuration.
const (
	// reserveHelo: the HELO/EHLO argument comes from a command line,
	// which RFC 5321 §4.5.3.1.4 bounds at 512 octets with its CRLF.
	reserveHelo = 512
	// reserveShort: the queue ID (message-id, a short string) and the
	// textual client IP are ours and much shorter; a short string's
	// maximum keeps the reservation independent of their format.
	reserveShort = shortstrMax
)

// RecipientOverhead is what the header table adds to each recipient: the
// field type and the long-string length (AMQP 0-9-1 §4.2.5.5).
const RecipientOverhead = 1 + 4

// amqpLimits reports what one AMQP message may carry so that it always
// encodes (sink.Limiter); see internal/sink/limits.go. The engine
// enforces them at RCPT; publish checks them again and answers 451 for a
// message that is still too large, without touching the channel or the
// connection.
func (b *Broker) amqpLimits() sink.Limits {
	var l sink.Limits
	fixed, n := routingKeyParts(b.cfg.RoutingKey)
	if n > 0 {
		// The routing key and the copy's message_id (<queue ID>.<domain>,
		// copyID) are short strings.
		l.MaxDomain = min((shortstrMax-fixed)/n, shortstrMax-queueid.Len-1) // ≥ 1: Validate
		l.MaxDomains = b.cfg.MaxDomains
		l.CopyPerDomain = true
	}
	l.TraceFields = b.cfg.trace()
	if !b.cfg.headers() {
		// No header table: the content header holds the properties
		// alone, ours and short, and the envelope travels in the body,
		// where AMQP bounds nothing; SMTP bounds it (MaxRecipients
		// addresses of at most 256 octets) and the engine counts it in
		// the in-flight budget with the body.
		return l
	}
	// The content header of the largest message with an empty envelope:
	// every other field at its largest. What is left of the frame is the
	// envelope's: the sender's octets plus, per recipient, its octets
	// and RecipientOverhead (the sender's field overhead is in the base).
	m := largestFields()
	var p publishBuilder
	p.init(b)
	p.prepare(&m)
	base, bad := p.baseSize()
	if bad != "" {
		return l // cannot happen: every field is a short string we bound
	}
	l.MaxEnvelope = frameSize - frameOverhead - base - recipientsFieldSize // > 128 KiB: Validate bounds Node
	l.RecipientOverhead = RecipientOverhead
	return l
}

// largestFields is a message with an empty envelope and every other
// field at its largest, for what a transport reserves around the
// client's octets.
func largestFields() sink.Message {
	return sink.Message{
		QueueID:    strings.Repeat("Q", reserveShort),
		ClientIP:   strings.Repeat("f", reserveShort),
		ClientPort: 65535,
		Helo:       make([]byte, reserveHelo),
		Size:       1 << 62,
		Body:       sink.BodyBinaryMIME,
		SMTPUTF8:   true,
		Received:   time.Date(2999, 12, 31, 23, 59, 59, 999e6, time.UTC),
		// The TLS names are crypto/tls's (under 64 octets); the engine
		// refuses AUTH for a user name past 255.
		TLSVersion: strings.Repeat("v", reserveShort),
		TLSCipher:  strings.Repeat("c", reserveShort),
		AuthUser:   make([]byte, reserveShort),
	}
}

// routingKeyParts returns the octets of a routing key template outside
// its {domain} placeholders, and how many placeholders it has.
func routingKeyParts(tmpl string) (fixed, domains int) {
	domains = strings.Count(tmpl, DomainPlaceholder)
	return len(tmpl) - domains*len(DomainPlaceholder), domains
}

// recipientsFieldSize is the smtp-recipients entry of the header table
// without its elements: key (short string), type 'A' and array length.
const recipientsFieldSize = 1 + len(HeaderRecipients) + 1 + 4

// problem says why a message cannot be published: what is too large, how
// large it is and what the limit is. The zero value means none.
type problem struct {
	what        string
	size, limit int
	// elsewhere: another connection may carry it (a larger frame_max).
	elsewhere bool
}

// check reports why the copies (copies of them) of the message last
// prepared cannot be encoded within AMQP's limits on a connection whose
// negotiated frame_max is frameMax (0: unlimited). It runs before the
// first copy is published, so that a message either goes out whole or
// not at all, and it does not allocate.
func (p *publishBuilder) check(copies, frameMax int) problem {
	if copies > p.maxCopies {
		return problem{what: "distinct recipient domains", size: copies, limit: p.maxCopies}
	}
	base, bad := p.baseSize()
	if bad != "" {
		return problem{what: bad, size: 0, limit: shortstrMax}
	}
	limit := frameMax - frameOverhead
	if frameMax <= 0 {
		limit = 1<<32 - 1 // the frame's size field
	}
	if !p.b.templated {
		if n := len(p.b.cfg.RoutingKey); n > shortstrMax {
			return problem{what: "routing key", size: n, limit: shortstrMax}
		}
		if n := base + p.recipientsSize(p.all); n > limit {
			return problem{what: "content header", size: n, limit: limit}
		}
		return problem{}
	}
	for i := 0; i < copies; i++ {
		g := &p.groups[i]
		if n := p.keyFixed + p.keyDomains*len(g.domain); n > shortstrMax {
			return problem{what: "routing key", size: n, limit: shortstrMax}
		}
		if n := len(p.pub.MessageId) + 1 + max(len(g.domain), len(emptyDomainID)); n > shortstrMax {
			return problem{what: "message ID", size: n, limit: shortstrMax}
		}
		if n := base + p.recipientsSize(g.rcpts); n > limit {
			return problem{what: "content header", size: n, limit: limit}
		}
	}
	return problem{}
}

// recipientsSize is what the smtp-recipients entry adds to the content
// header: nothing without the header table.
func (p *publishBuilder) recipientsSize(rcpts []any) int {
	if p.headers == nil {
		return 0
	}
	return recipientsFieldSize + arrayElemsSize(rcpts)
}

// baseSize is the content header payload of the prepared publishing
// without the smtp-recipients entry, and the name of the first field
// amqp091-go could not encode ("" if none).
func (p *publishBuilder) baseSize() (int, string) {
	pub := &p.pub
	n := contentHeaderFixed
	for _, s := range [...]string{pub.ContentType, pub.ContentEncoding, pub.CorrelationId, pub.ReplyTo,
		pub.Expiration, pub.MessageId, pub.Type, pub.UserId, pub.AppId} {
		if len(s) > shortstrMax {
			return 0, "message property"
		}
		if s != "" {
			n += 1 + len(s)
		}
	}
	if pub.DeliveryMode > 0 {
		n++
	}
	if pub.Priority > 0 {
		n++
	}
	if !pub.Timestamp.IsZero() {
		n += 8
	}
	if pub.Headers == nil {
		return n, "" // no table (EnvelopeTrace)
	}
	// The table is present: smtp-recipients is always in it.
	t, ok := tableSize(pub.Headers, HeaderRecipients)
	if !ok {
		return 0, "header table"
	}
	return n + t, ""
}

// tableSize is the encoded size of a field table (§4.2.5.5): its length
// and every entry but skip. ok is false for an entry amqp091-go cannot
// encode (a key longer than a short string, a value of a type fieldSize
// does not know).
func tableSize(t amqp.Table, skip string) (n int, ok bool) {
	n = 4
	for k, v := range t {
		if k == skip {
			continue
		}
		if len(k) > shortstrMax {
			return 0, false
		}
		f, ok := fieldSize(v)
		if !ok {
			return 0, false
		}
		n += 1 + len(k) + f
	}
	return n, true
}

// fieldSize is the encoded size of a field value with its type octet, as
// amqp091-go writes it (write.go, writeField), for the types publish puts
// in the header table; any other is reported as not encodable.
func fieldSize(v any) (int, bool) {
	switch v := v.(type) {
	case bool:
		return 1 + 1, true
	case int: // written as a signed 32-bit integer
		return 1 + 4, true
	case int64:
		return 1 + 8, true
	case string:
		return 1 + 4 + len(v), true
	case []any:
		n := 1 + 4
		for _, e := range v {
			f, ok := fieldSize(e)
			if !ok {
				return 0, false
			}
			n += f
		}
		return n, true
	}
	return 0, false
}

// arrayElemsSize is the encoded size of the elements of a recipients
// array: each one a long string.
func arrayElemsSize(rcpts []any) int {
	n := 0
	for _, r := range rcpts {
		s, _ := r.(string)
		n += RecipientOverhead + len(s)
	}
	return n
}

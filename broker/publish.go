package broker

import (
	"bytes"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/valyala/bytebufferpool"

	"github.com/lsmtp/lsmtp/internal/sink"
)

// Header names of the message contract (see doc.go).
const (
	HeaderSender       = "smtp-sender"
	HeaderRecipients   = "smtp-recipients"
	HeaderClientIP     = "smtp-client-ip"
	HeaderClientPort   = "smtp-client-port"
	HeaderHelo         = "smtp-helo"
	HeaderDeclaredSize = "smtp-declared-size"
	HeaderBody         = "smtp-body"
	HeaderUTF8         = "smtp-utf8"
	HeaderReceivedAt   = "smtp-received-at"
	HeaderNode         = "smtp-node"
	// TLS and AUTH of the session (RFC 3207, RFC 4954); "" when none.
	HeaderTLSVersion = "smtp-tls-version"
	HeaderTLSCipher  = "smtp-tls-cipher"
	HeaderAuthUser   = "smtp-auth-user"
)

// Properties of the message contract.
const (
	ContentType = "message/rfc822"
	AppID       = "lsmtp"
	// ReceivedAtLayout is RFC 3339 with milliseconds, always in UTC ("Z").
	ReceivedAtLayout = "2006-01-02T15:04:05.000Z07:00"
)

// bodyValues are the smtp-body values, boxed once so that filling the
// header table does not allocate for them.
var bodyValues = [...]any{
	sink.Body7Bit:       sink.Body7Bit.String(),
	sink.Body8BitMIME:   sink.Body8BitMIME.String(),
	sink.BodyBinaryMIME: sink.BodyBinaryMIME.String(),
}

func containsDomain(key string) bool { return strings.Contains(key, DomainPlaceholder) }

// publishBuilder turns a sink.Message into the publishings of its copies.
// Each worker has one and reuses its header table and slices: amqp091-go
// encodes the table during the publish call and keeps no reference to it.
type publishBuilder struct {
	b            *Broker
	headers      amqp.Table // nil without the smtp-* headers (EnvelopeTrace)
	trace        bool       // the body carries the envelope's trace fields
	all          []any      // every recipient, for a static routing key
	domainGroups            // per-domain recipients, for a {domain} routing key
	pub          amqp.Publishing

	// From the routing key template, for check: its octets outside the
	// {domain} placeholders and how many there are.
	keyFixed, keyDomains int
	// maxCopies is the most copies one message may have.
	maxCopies int
}

// domainGroups splits a message's recipients by domain, for a {domain}
// routing key or subject, and builds each copy's body. Both transports'
// builders embed it.
type domainGroups struct {
	groups  []domainGroup
	ngroups int
	// copyBody is the body of the copy last built with its own trace
	// fields (body), until releaseCopy.
	copyBody *bytebufferpool.ByteBuffer
}

type domainGroup struct {
	domain string   // lower-cased
	rcpts  []any    // as strings, for the AMQP smtp-recipients header
	names  []string // as strings, for the NATS smtp-recipients header
	raw    [][]byte // as received, for the copy's X-Original-To fields
}

// split groups m's recipients by domain, filling rcpts (asAny) or names
// (asString) too, and returns the number of groups.
func (d *domainGroups) split(m *sink.Message, asAny, asString bool) int {
	d.ngroups = 0
	for _, r := range m.Recipients {
		g := d.group(domainOf(r))
		g.raw = append(g.raw, r)
		if asAny {
			g.rcpts = append(g.rcpts, string(r))
		}
		if asString {
			g.names = append(g.names, string(r))
		}
	}
	if d.ngroups == 0 {
		// No recipient at all (not possible after a valid SMTP
		// transaction): one copy for the empty domain, so the message is
		// stored rather than silently confirmed.
		d.group(nil)
	}
	return d.ngroups
}

// body is the body of copy i: with trace fields and more than one
// recipient domain, each copy's body names only its own recipients, so
// that no domain's consumer learns another's: the copy is the message's
// own trace fields rewritten for the copy and the rest of Data, in a
// pooled buffer that the caller gives back with releaseCopy once the
// publish call returned (both clients write the body during the call
// and keep no reference to it). A message of one domain, the common
// case, is published from Data as it is.
func (d *domainGroups) body(m *sink.Message, i int, trace bool) []byte {
	var body []byte
	if m.Data != nil {
		body = m.Data.B
	}
	if trace && d.ngroups > 1 && m.Data != nil && m.TraceLen > 0 {
		d.releaseCopy()
		d.copyBody = bytebufferpool.Get()
		b := sink.AppendTrace(d.copyBody.B[:0], m, d.groups[i].raw)
		d.copyBody.B = append(b, m.Data.B[m.TraceLen:]...)
		body = d.copyBody.B
	}
	return body
}

func (p *publishBuilder) init(b *Broker) {
	p.b = b
	if b.cfg.headers() {
		p.headers = make(amqp.Table, 13)
	}
	p.trace = b.cfg.trace()
	p.keyFixed, p.keyDomains = routingKeyParts(b.cfg.RoutingKey)
	p.maxCopies = 1
	if b.templated {
		p.maxCopies = b.cfg.MaxDomains
	}
}

// prepare fills the parts common to all copies of m and returns the number
// of copies: 1 for a static routing key, else one per distinct domain.
func (p *publishBuilder) prepare(m *sink.Message) int {
	received := m.Received
	if received.IsZero() {
		received = time.Now()
	}
	if p.headers != nil {
		p.fillHeaders(m, received)
	}
	var body []byte
	if m.Data != nil {
		body = m.Data.B
	}
	p.pub = amqp.Publishing{
		ContentType:  ContentType,
		DeliveryMode: amqp.Persistent,
		MessageId:    m.QueueID,
		Timestamp:    received,
		AppId:        AppID,
		Body:         body,
	}
	if p.headers != nil {
		p.pub.Headers = p.headers
	}

	if !p.b.templated {
		if p.headers != nil {
			p.all = p.all[:0]
			for _, r := range m.Recipients {
				p.all = append(p.all, string(r))
			}
		}
		return 1
	}
	return p.split(m, p.headers != nil, false)
}

// fillHeaders fills the smtp-* header table but smtp-recipients, which
// copyOf sets per copy.
func (p *publishBuilder) fillHeaders(m *sink.Message, received time.Time) {
	h := p.headers
	h[HeaderSender] = string(m.Sender)
	h[HeaderClientIP] = m.ClientIP
	h[HeaderClientPort] = m.ClientPort // encoded as a signed 32-bit field
	h[HeaderHelo] = string(m.Helo)
	h[HeaderDeclaredSize] = m.Size // signed 64-bit
	if int(m.Body) < len(bodyValues) {
		h[HeaderBody] = bodyValues[m.Body]
	} else {
		h[HeaderBody] = m.Body.String()
	}
	h[HeaderUTF8] = m.SMTPUTF8
	h[HeaderReceivedAt] = received.UTC().Format(ReceivedAtLayout)
	h[HeaderNode] = p.b.nodeValue
	// "" boxes without allocating: a session in the clear costs nothing.
	h[HeaderTLSVersion] = m.TLSVersion
	h[HeaderTLSCipher] = m.TLSCipher
	h[HeaderAuthUser] = string(m.AuthUser)
}

// group returns the group of domain d, adding it when new.
func (p *domainGroups) group(d []byte) *domainGroup {
	for i := 0; i < p.ngroups; i++ {
		if equalFoldASCII(p.groups[i].domain, d) {
			return &p.groups[i]
		}
	}
	if p.ngroups == len(p.groups) {
		p.groups = append(p.groups, domainGroup{})
	}
	g := &p.groups[p.ngroups]
	p.ngroups++
	g.domain = lowerDomain(d)
	g.rcpts = g.rcpts[:0]
	g.names = g.names[:0]
	g.raw = g.raw[:0]
	return g
}

// copyOf returns the routing key and publishing of copy i of the message
// last prepared, its body from domainGroups.body (amqp091-go writes the
// body during the publish call and keeps no reference to it).
func (p *publishBuilder) copyOf(m *sink.Message, i int) (string, amqp.Publishing) {
	if !p.b.templated {
		if p.headers != nil {
			p.headers[HeaderRecipients] = p.all
		}
		return p.b.cfg.RoutingKey, p.pub
	}
	g := &p.groups[i]
	if p.headers != nil {
		p.headers[HeaderRecipients] = g.rcpts
	}
	pub := p.pub
	pub.MessageId = p.copyID(m.QueueID, i, true)
	pub.Body = p.body(m, i, p.trace)
	return strings.ReplaceAll(p.b.cfg.RoutingKey, DomainPlaceholder, g.domain), pub
}

// emptyDomainID stands for the domain of a recipient without one (a bare
// "postmaster", RFC 5321 §4.5.1) in a copy's ID and a {domain} subject:
// a subject token may not be empty, and an ID ending in "." would read
// as a mistake.
const emptyDomainID = "_"

// copyID is the message ID of copy i of the message last split (AMQP
// message_id, NATS Nats-Msg-Id): the queue ID for a message published
// once (a static routing key or subject), "<queue ID>.<domain>" for a
// per-domain copy, so that a consumer that drops duplicates by ID keeps
// every copy, and a copy published again (a retry, the spool's replay)
// carries the ID of its first publish, which depends on nothing else.
func (d *domainGroups) copyID(queueID string, i int, templated bool) string {
	if !templated {
		return queueID
	}
	dom := d.groups[i].domain
	if dom == "" {
		dom = emptyDomainID
	}
	return queueID + "." + dom
}

// releaseCopy gives back the body built for a copy, if any.
func (p *domainGroups) releaseCopy() {
	if p.copyBody != nil {
		bytebufferpool.Put(p.copyBody)
		p.copyBody = nil
	}
}

// domainOf returns the domain of a forward-path: what follows its last
// "@" (a quoted local part may contain "@"). A bare "postmaster" (RFC 5321
// §4.5.1) has no domain and yields nil.
func domainOf(addr []byte) []byte {
	i := bytes.LastIndexByte(addr, '@')
	if i < 0 {
		return nil
	}
	return addr[i+1:]
}

// lowerDomain lower-cases a domain for the routing key. ASCII is the
// common case; an internationalized domain (RFC 6531) is lower-cased by
// Unicode rules.
func lowerDomain(d []byte) string {
	for _, c := range d {
		if c >= 0x80 {
			return strings.ToLower(string(d))
		}
	}
	b := make([]byte, len(d))
	for i, c := range d {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	return string(b)
}

// equalFoldASCII compares a lower-cased domain with a domain as received.
func equalFoldASCII(lower string, d []byte) bool {
	if bytes.IndexFunc(d, func(r rune) bool { return r >= 0x80 }) >= 0 {
		return lower == strings.ToLower(string(d))
	}
	if len(lower) != len(d) {
		return false
	}
	for i := 0; i < len(d); i++ {
		c := d[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if lower[i] != c {
			return false
		}
	}
	return true
}

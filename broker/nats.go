package broker

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/lsmtp/lsmtp/internal/queueid"
	"github.com/lsmtp/lsmtp/internal/sink"
)

// This file is the NATS JetStream transport. The connection and the
// stream are here; each worker publishes through its own JetStream
// context on the shared connection, asynchronously, with at most
// Config.NATSMaxPending publishes waiting for their PubAck, and the
// PubAcks come back to it through a channel that the context's ack and
// error handlers fill without blocking. The shared half (transport.go)
// does the rest, as for RabbitMQ.
//
// nats.go's own reconnecting is off: the supervisor dials the servers in
// turn as it does RabbitMQ's, so that a lost connection ends the
// workers' sessions the same way (what was unacknowledged is published
// again on the next connection, and JetStream's duplicate window, keyed
// by Nats-Msg-Id, stores it once).

// Header names of the NATS message contract (doc.go); the smtp-* ones are
// the AMQP contract's.
const (
	// HeaderMsgID is JetStream's deduplication key (jetstream.MsgIDHeader).
	HeaderMsgID = jetstream.MsgIDHeader
)

// natsSchemes are the URL schemes nats.go dials.
var natsSchemes = map[string]bool{"nats": true, "tls": true, "ws": true, "wss": true}

// natsMinDuplicates is the least duplicate window the stream is declared
// with (JetStream's default).
const natsMinDuplicates = 2 * time.Minute

// natsMaxSubject bounds a subject: the HPUB control line that carries it
// with the reply subject and the sizes must fit the server's
// max_control_line (4096 by default).
const natsMaxSubject = 3072

// natsEmptyDomain stands for the domain of a recipient without one in a
// {domain} subject, as in the copy's ID (copyID).
const natsEmptyDomain = emptyDomainID

// Outcomes of a PubAck error JetStream sends (its err_code values).
const (
	natsErrStoreFailed  = 10077 // JSStreamStoreFailedF: "maximum bytes/messages exceeded" and other store errors
	natsErrInsufficient = 10047 // JSInsufficientResourcesErr
)

// validateNATS checks the NATS fields, as Validate does the others.
func (c *Config) validateNATS() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("broker: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	if len(c.NATSURLs) == 0 {
		bad("NATSURLs", "no NATS URL")
	}
	for _, u := range c.NATSURLs {
		p, err := url.Parse(u)
		switch {
		case err != nil:
			bad("NATSURLs", "%s: not a URL", RedactURL(u))
		case !natsSchemes[p.Scheme]:
			bad("NATSURLs", "%s: scheme %q: want nats, tls, ws or wss", RedactURL(u), p.Scheme)
		case p.Host == "":
			bad("NATSURLs", "%s: no host", RedactURL(u))
		case strings.Contains(u, ","):
			// nats.go would take it as a list of servers, and the log
			// lines would show every password but the first.
			bad("NATSURLs", "a URL with a comma: one server per URL (give the option once per server)")
		}
	}
	kinds := 0
	for _, set := range []bool{c.NATSUser != "", c.NATSToken != "", c.NATSCreds != ""} {
		if set {
			kinds++
		}
	}
	if kinds > 1 {
		bad("NATSUser", "give one kind of NATS credentials: NATSUser and NATSPassword, NATSToken or NATSCreds")
	}
	if c.NATSPassword != "" && c.NATSUser == "" {
		bad("NATSPassword", "set without NATSUser: it would be ignored")
	}
	if c.NATSCreds != "" {
		if _, err := os.Stat(c.NATSCreds); err != nil {
			bad("NATSCreds", "%v", err)
		}
	}
	if c.NATSStream == "" || strings.ContainsAny(c.NATSStream, " \t\r\n.*>/\\") {
		bad("NATSStream", "%q: want a name without spaces, '.', '*', '>' or path separators", c.NATSStream)
	}
	if err := checkSubject(c.NATSSubject); err != nil {
		bad("NATSSubject", "%q: %v", c.NATSSubject, err)
	}
	if c.NATSReplicas < 1 || c.NATSReplicas > 5 {
		bad("NATSReplicas", "%d: want 1..5", c.NATSReplicas)
	}
	if c.NATSMaxBytes < 0 {
		bad("NATSMaxBytes", "must not be negative")
	}
	if c.NATSWorkers < 1 || c.NATSWorkers > 64 {
		bad("NATSWorkers", "%d: want 1..64", c.NATSWorkers)
	}
	if c.NATSMaxPending < 1 || c.NATSMaxPending > 65535 {
		bad("NATSMaxPending", "%d: want 1..65535", c.NATSMaxPending)
	}
	return errs
}

// checkSubject checks a subject to publish to: tokens separated by dots,
// none empty or a wildcard, no white space; {domain} only as the whole
// last token.
func checkSubject(s string) error {
	if s == "" {
		return errors.New("empty")
	}
	if len(s) > natsMaxSubject/2 {
		return fmt.Errorf("%d octets: at most %d", len(s), natsMaxSubject/2)
	}
	if n := strings.Count(s, DomainPlaceholder); n > 1 || n == 1 && !strings.HasSuffix(s, "."+DomainPlaceholder) {
		return fmt.Errorf("%s must be the last token, once (as in lsmtp.inbound.%s)", DomainPlaceholder, DomainPlaceholder)
	}
	if strings.ContainsAny(s, " \t\r\n") {
		return errors.New("contains white space")
	}
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return errors.New("an empty or wildcard token: a message is published to one subject")
		}
	}
	return nil
}

// natsTransport dials NATS servers for the shared half.
type natsTransport struct {
	b         *Broker
	templated bool   // NATSSubject ends in .{domain}
	prefix    string // NATSSubject without ".{domain}" when templated
	trace     bool   // the body carries the envelope's trace fields
	headers   bool   // the smtp-* headers are sent
	// duplicates is the stream's duplicate window: at least the longest
	// time within which the broker republishes a message whose client
	// waits.
	duplicates time.Duration
	// reserve is what a message's payload holds besides the client's
	// octets, at its largest (reserveFor): max_payload less this is the
	// size advertised.
	reserve int64
}

func newNATSTransport(b *Broker) *natsTransport {
	t := &natsTransport{b: b, trace: b.cfg.trace(), headers: b.cfg.headers()}
	if containsDomain(b.cfg.NATSSubject) {
		t.templated = true
		t.prefix = strings.TrimSuffix(b.cfg.NATSSubject, "."+DomainPlaceholder)
	}
	t.duplicates = max(natsMinDuplicates, b.cfg.maxWait()+b.cfg.ConfirmTimeout)
	t.reserve = t.reserveFor()
	// Until a server says its max_payload (learnMaxPayload, at every
	// connect), assume nats-server's default: a message accepted, or
	// spooled, before the first connect must fit the server it goes to.
	b.maxSize.Store(max(natsDefaultMaxPayload-t.reserve, 1))
	return t
}

// natsDefaultMaxPayload is nats-server's max_payload unless configured.
const natsDefaultMaxPayload = 1 << 20

// maxIDLen bounds a Nats-Msg-Id: the queue ID, and for a per-domain copy
// a dot and the lower-cased domain, which the engine bounds by
// limits().MaxDomain (lower-casing can lengthen a domain, so the input's
// 255 octets are no bound).
func (t *natsTransport) maxIDLen() int {
	if !t.templated {
		return queueid.Len
	}
	return queueid.Len + 1 + t.limits().MaxDomain
}

func (t *natsTransport) kind() string             { return "NATS" }
func (t *natsTransport) urls() []string           { return t.b.cfg.NATSURLs }
func (t *natsTransport) redact(url string) string { return RedactURL(url) }

// streamSubject is the subject the stream is declared to take.
func (t *natsTransport) streamSubject() string {
	if t.templated {
		return t.prefix + ".>"
	}
	return t.b.cfg.NATSSubject
}

// limits: the domain becomes a subject token (its length is bounded by
// the control line, far beyond what SMTP allows a domain); the envelope
// travels in the body or in headers that share the message's payload
// limit, and is bounded (natsMaxEnvelope) so that the size advertised
// can leave room for it (reserveFor). publish still checks every message
// against the server's max_payload.
func (t *natsTransport) limits() sink.Limits {
	var l sink.Limits
	if t.templated {
		l.MaxDomain = natsMaxSubject - len(t.prefix) - 1
		l.MaxDomains = t.b.cfg.MaxDomains
		l.CopyPerDomain = true
	}
	l.TraceFields = t.trace
	l.MaxEnvelope = natsMaxEnvelope
	l.RecipientOverhead = natsRecipientOverhead
	return l
}

// The envelope's bound for NATS: the sender and every recipient, each
// with natsRecipientOverhead, in at most natsMaxEnvelope octets. 32 KiB
// holds 100 recipients (the default max-recipients) of the longest path
// RFC 5321 §4.5.3.1.3 allows; past it RCPT gets 452 4.5.3.
const (
	natsMaxEnvelope = 32 << 10
	// natsRecipientOverhead is the most a recipient's line adds to its
	// octets: "X-Original-To: " and CRLF in the trace fields (17), its
	// smtp-recipients header line, as size counts it (19).
	natsRecipientOverhead = len(HeaderRecipients) + 4
)

// reserveFor is what a payload holds besides the client's octets at its
// largest: the engine's Received: field (sink.MaxReceived); the trace
// fields and the smtp-* headers (as configured) of the largest envelope
// Limits lets through, every other field at its largest (largestFields,
// as amqpLimits reserves them); Nats-Msg-Id and the subject, as size counts them.
func (t *natsTransport) reserveFor() int64 {
	m := largestFields()
	p := &natsPublisher{t: t}
	if t.headers {
		p.common = make(nats.Header, 13)
		p.fillHeaders(&m)
	}
	n := int64(sink.MaxReceived) + int64(p.fixedSize())
	if t.headers {
		n += natsMaxEnvelope // the sender's and recipients' header values
	}
	if t.trace {
		// Return-Path's and X-Lsmtp-Envelope's fixed parts, X-Lsmtp-Auth,
		// and the addresses with their lines.
		n += int64(len(sink.AppendTrace(nil, &m, nil))) + natsMaxEnvelope
	}
	return n
}

// natsLink is one NATS connection.
type natsLink struct {
	nc     *nats.Conn
	url    string
	closed chan struct{} // closed by nats.go's closed handler
	once   sync.Once
	reason atomic.Pointer[string] // why the connection went
	sock   atomic.Pointer[net.Conn]
}

// natsDialer dials with the broker's timeout and keeps the socket, which
// kill closes under a publish stuck in a write.
type natsDialer struct {
	timeout time.Duration
	l       *natsLink
}

func (d natsDialer) Dial(network, address string) (net.Conn, error) {
	c, err := (&net.Dialer{Timeout: d.timeout}).Dial(network, address)
	if err == nil {
		d.l.sock.Store(&c)
	}
	return c, err
}

// dial connects to url and declares the stream.
func (t *natsTransport) dial(url string) (link, error) {
	b := t.b
	l := &natsLink{url: RedactURL(url), closed: make(chan struct{})}
	opts := []nats.Option{
		nats.Name("lsmtp " + b.cfg.Node),
		nats.NoReconnect(), // the supervisor reconnects
		nats.Timeout(b.cfg.DialTimeout),
		nats.SetCustomDialer(natsDialer{timeout: b.cfg.DialTimeout, l: l}),
		// A write that hangs this long fails the connection, as the
		// watchdog does for RabbitMQ.
		nats.FlusherTimeout(b.cfg.ConfirmTimeout),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				s := err.Error()
				l.reason.CompareAndSwap(nil, &s)
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { l.once.Do(func() { close(l.closed) }) }),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if b.limits.connect.allow(b.now()) {
				b.log.Warn("NATS asynchronous error", "url", l.url, "err", err,
					"suppressed", b.limits.connect.suppressedSince())
			}
		}),
	}
	if b.cfg.Heartbeat > 0 {
		opts = append(opts, nats.PingInterval(b.cfg.Heartbeat))
	}
	switch {
	case b.cfg.NATSUser != "":
		opts = append(opts, nats.UserInfo(b.cfg.NATSUser, b.cfg.NATSPassword))
	case b.cfg.NATSToken != "":
		opts = append(opts, nats.Token(b.cfg.NATSToken))
	case b.cfg.NATSCreds != "":
		opts = append(opts, nats.UserCredentials(b.cfg.NATSCreds))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, err
	}
	l.nc = nc
	if !nc.HeadersSupported() {
		nc.Close()
		return nil, errors.New("the server does not support headers (NATS 2.2 or later needed)")
	}
	check := t.inspect
	if b.cfg.NATSDeclare {
		check = t.declare
	}
	if err := check(nc); err != nil {
		nc.Close()
		return nil, err
	}
	t.learnMaxPayload(l)
	return l, nil
}

// inspect, without declaring, refuses a stream that would drop what it
// acknowledges (checkRetention). A stream it cannot look up (absent, or
// the account may publish but not read stream info) is left to the
// publishes: their errors are answered as always.
func (t *natsTransport) inspect(nc *nats.Conn) error {
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), t.b.cfg.DialTimeout)
	defer cancel()
	s, err := js.Stream(ctx, t.b.cfg.NATSStream)
	if err != nil {
		return nil
	}
	cur := s.CachedInfo().Config
	if cur.Discard == jetstream.DiscardOld && (cur.MaxMsgs > 0 || cur.MaxBytes > 0) {
		// declare sets discard new; a stream lsmtp only uses keeps its own.
		t.b.log.Warn("NATS stream discards its oldest messages when full, read or not: mail answered 250 can be removed unread; use discard new",
			"stream", cur.Name, "max_msgs", cur.MaxMsgs, "max_bytes", cur.MaxBytes)
	}
	return t.checkRetention(cur)
}

// learnMaxPayload sets the size the engine advertises from the server's
// max_payload, before the connection is marked ready, so that no EHLO
// on it offers more. nats-server's default is 1 MiB, below lsmtp's
// default max-message-size: one line per connect says what SMTP now
// offers.
func (t *natsTransport) learnMaxPayload(l *natsLink) {
	b := t.b
	mp := l.nc.MaxPayload()
	if mp <= 0 {
		return
	}
	if mp <= t.reserve {
		// No SIZE fits every envelope: advertising one would have clients
		// told 552 (permanent) for a setting of ours. Advertise none of the
		// server's; a message its max_payload cannot carry is answered 451
		// by the publisher's check (publisher.check), one that fits is
		// taken.
		b.maxSize.Store(0)
		b.log.Error("NATS server's max_payload leaves no room for what lsmtp adds to a message: SIZE follows max-message-size, and messages larger than max_payload allows are answered 451 until it is raised",
			"url", l.url, "max_payload", mp, "reserved", t.reserve)
		return
	}
	size := mp - t.reserve
	b.maxSize.Store(size)
	if b.cfg.MaxMessageSize == 0 || size < b.cfg.MaxMessageSize {
		b.log.Warn("NATS server's max_payload is below max-message-size: advertising the smaller SIZE; larger messages get 552 5.3.4",
			"url", l.url, "max_payload", mp, "reserved", t.reserve, "size", size, "max_message_size", b.cfg.MaxMessageSize)
		return
	}
	b.log.Info("NATS server's max_payload is above max-message-size", "url", l.url, "max_payload", mp,
		"max_message_size", b.cfg.MaxMessageSize)
}

// declare creates the stream, or updates the one that exists so that it
// has lsmtp's settings; what else an operator set on it stays. A stream
// of another storage type is refused, since JetStream cannot change it.
func (t *natsTransport) declare(nc *nats.Conn) error {
	cfg := &t.b.cfg
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
	defer cancel()
	maxBytes := cfg.NATSMaxBytes
	if maxBytes == 0 {
		maxBytes = -1
	}
	s, err := js.Stream(ctx, cfg.NATSStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_, err = js.CreateStream(ctx, jetstream.StreamConfig{
			Name:       cfg.NATSStream,
			Subjects:   []string{t.streamSubject()},
			Storage:    jetstream.FileStorage,
			Replicas:   cfg.NATSReplicas,
			MaxBytes:   maxBytes,
			Discard:    jetstream.DiscardNew,
			Duplicates: t.duplicates,
		})
		if err != nil {
			return fmt.Errorf("create stream %q: %w", cfg.NATSStream, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up stream %q: %w", cfg.NATSStream, err)
	}
	cur := s.CachedInfo().Config
	if cur.Storage != jetstream.FileStorage {
		return fmt.Errorf("stream %q exists with %s storage: lsmtp needs file storage", cfg.NATSStream, cur.Storage)
	}
	if err := t.checkRetention(cur); err != nil {
		return err
	}
	want := cur
	want.Subjects = append([]string(nil), cur.Subjects...)
	if !containsString(want.Subjects, t.streamSubject()) {
		want.Subjects = append(want.Subjects, t.streamSubject())
	}
	want.Replicas = cfg.NATSReplicas
	want.MaxBytes = maxBytes
	want.Discard = jetstream.DiscardNew
	want.Duplicates = max(cur.Duplicates, t.duplicates)
	if cur.MaxAge > 0 && want.Duplicates > cur.MaxAge {
		want.Duplicates = cur.MaxAge // JetStream bounds the window by MaxAge
	}
	if want.Replicas == cur.Replicas && want.MaxBytes == cur.MaxBytes && want.Discard == cur.Discard &&
		want.Duplicates == cur.Duplicates && len(want.Subjects) == len(cur.Subjects) {
		return nil
	}
	if _, err := js.UpdateStream(ctx, want); err != nil {
		return fmt.Errorf("update stream %q: %w", cfg.NATSStream, err)
	}
	return nil
}

// checkRetention refuses a stream that acknowledges a message and then
// drops it unread: with interest retention JetStream removes a message
// no consumer is interested in as soon as it is stored, so every 250
// would be a silent loss while no consumer is bound. Limits that remove
// old mail (an age, a per-subject cap that discards old messages) are
// the operator's policy, said once at connect.
func (t *natsTransport) checkRetention(cur jetstream.StreamConfig) error {
	if cur.Retention == jetstream.InterestPolicy {
		return fmt.Errorf("stream %q has interest retention: JetStream drops a message no consumer is bound for right after its PubAck; use limits or work-queue retention", cur.Name)
	}
	if cur.MaxAge > 0 || cur.MaxMsgsPerSubject > 0 && !cur.DiscardNewPerSubject {
		t.b.log.Warn("NATS stream removes stored mail that may not have been read: messages older than max_age, or past max_msgs_per_subject (oldest first)",
			"stream", cur.Name, "max_age", cur.MaxAge, "max_msgs_per_subject", cur.MaxMsgsPerSubject)
	}
	return nil
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func (l *natsLink) kill() {
	if c := l.sock.Load(); c != nil {
		(*c).Close()
	}
}

// watch follows l until it is lost (false) or stop closes (true).
func (l *natsLink) watch(b *Broker, stop <-chan struct{}) (stopped bool) {
	tick := time.NewTicker(b.watchdogInterval())
	defer tick.Stop()
	for {
		select {
		case <-l.closed:
			b.stats.disconnects.Add(1)
			reason := "closed"
			if r := l.reason.Load(); r != nil {
				reason = *r
			}
			b.log.Warn("NATS connection lost, reconnecting", "url", l.url, "reason", reason,
				"messages_wait", b.cfg.PublishRetryWindow > 0)
			return false
		case <-tick.C:
			b.watchdog(l, l.url)
		case <-stop:
			// The workers are gone: nothing waits for a PubAck.
			t := time.AfterFunc(time.Second, l.kill)
			l.nc.Close()
			t.Stop()
			return true
		}
	}
}

// natsAck is one PubAck, or the error in its place, as the JetStream
// context's handlers hand it to the worker.
type natsAck struct {
	msg *nats.Msg
	ack *jetstream.PubAck
	err error
}

// natsPublisher is one worker's JetStream context.
type natsPublisher struct {
	t    *natsTransport
	l    *natsLink
	js   jetstream.JetStream
	acks chan natsAck
	// sent maps each publish waiting for its PubAck to its tag. Only the
	// worker touches it: the handlers hand the message over on acks.
	sent       map[*nats.Msg]uint64
	opts       []jetstream.PublishOpt
	maxPayload int64
	dropped    atomic.Int64 // PubAcks the handlers could not hand over (settled as timed out)
	closing    atomic.Bool  // close has begun: the handlers hand nothing over

	domainGroups
	common nats.Header // the smtp-* headers but smtp-recipients, of the message last prepared
	all    []string    // every recipient, for a static subject
	// dataLen is the message's Data: a copy's trace fields name a subset
	// of its recipients, so its body is not longer.
	dataLen int
}

// publisher opens w's JetStream context on l. Its window is bounded by
// the worker (Window publishes, each of at most MaxDomains copies); the
// context's own bound is above that so that a publish never stalls in
// it. The context has no timeout of its own: nats.go would free the
// timed-out publish's reply token, and once freed a token can be drawn
// again for a later publish (unlikely: 6 random base-62 characters),
// which would then be handed the late PubAck, a 250 for a message the
// stream may have refused. The worker times publishes out (expire), and
// a session whose publish timed out ends (retire), so that its context,
// with every token it still holds, goes with it.
func (l *natsLink) publisher(w *worker) (publisher, error) {
	t := w.b.tr.(*natsTransport)
	room := 2 * (w.b.cfg.Window + maxCopies)
	p := &natsPublisher{t: t, l: l, acks: make(chan natsAck, room), sent: make(map[*nats.Msg]uint64, w.b.cfg.Window),
		maxPayload: l.nc.MaxPayload()}
	hand := func(a natsAck) {
		if p.closing.Load() {
			return // CleanupPublisher fails what is pending: the worker settled it already
		}
		select {
		case p.acks <- a:
		default:
			p.dropped.Add(1)
		}
	}
	js, err := jetstream.New(l.nc,
		jetstream.WithPublishAsyncMaxPending(room),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, a *jetstream.PubAck) {
			hand(natsAck{msg: m, ack: a})
		}),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			hand(natsAck{msg: m, err: err})
		}))
	if err != nil {
		return nil, err
	}
	p.js = js
	// No responders is answered by the deferred path, with its backoff
	// and deadline, not by nats.go's own retries: a retry of its own
	// would read a copy's body after it was given back.
	p.opts = []jetstream.PublishOpt{jetstream.WithRetryAttempts(0)}
	if t.headers {
		p.common = make(nats.Header, 13)
	}
	return p, nil
}

func (p *natsPublisher) prepare(m *sink.Message) int {
	if p.common != nil {
		p.fillHeaders(m)
	}
	p.dataLen = 0
	if m.Data != nil {
		p.dataLen = m.Data.Len()
	}
	if !p.t.templated {
		if p.common != nil {
			p.all = p.all[:0]
			for _, r := range m.Recipients {
				p.all = append(p.all, string(r))
			}
		}
		return 1
	}
	return p.split(m, false, p.common != nil)
}

// fillHeaders fills the smtp-* headers but smtp-recipients, which each
// copy sets; the value slices are shared by the copies' headers, which
// nobody changes.
func (p *natsPublisher) fillHeaders(m *sink.Message) {
	received := m.Received
	if received.IsZero() {
		received = time.Now()
	}
	h := p.common
	h[HeaderSender] = []string{string(m.Sender)}
	h[HeaderClientIP] = []string{m.ClientIP}
	h[HeaderClientPort] = []string{strconv.Itoa(m.ClientPort)}
	h[HeaderHelo] = []string{string(m.Helo)}
	h[HeaderDeclaredSize] = []string{strconv.FormatInt(m.Size, 10)}
	h[HeaderBody] = []string{m.Body.String()}
	h[HeaderUTF8] = []string{strconv.FormatBool(m.SMTPUTF8)}
	h[HeaderReceivedAt] = []string{received.UTC().Format(ReceivedAtLayout)}
	h[HeaderNode] = []string{p.t.b.cfg.Node}
	h[HeaderTLSVersion] = []string{m.TLSVersion}
	h[HeaderTLSCipher] = []string{m.TLSCipher}
	h[HeaderAuthUser] = []string{string(m.AuthUser)}
}

// subject and msgID of copy i of the message last prepared.
func (p *natsPublisher) subject(i int) string {
	if !p.t.templated {
		return p.t.b.cfg.NATSSubject
	}
	d := p.groups[i].domain
	if d == "" {
		d = natsEmptyDomain
	}
	return p.t.prefix + "." + d
}

func (p *natsPublisher) msgID(m *sink.Message, i int) string {
	return p.copyID(m.QueueID, i, p.t.templated)
}

func (p *natsPublisher) check(copies int) problem {
	if p.t.templated {
		if copies > p.t.b.cfg.MaxDomains {
			return problem{what: "distinct recipient domains", size: copies, limit: p.t.b.cfg.MaxDomains}
		}
		for i := 0; i < copies; i++ {
			d := p.groups[i].domain
			if n := len(p.t.prefix) + 1 + len(d); n > natsMaxSubject {
				return problem{what: "subject", size: n, limit: natsMaxSubject}
			}
			if !subjectToken(d) {
				return problem{what: "subject (a domain that is not a subject token)", size: len(d), limit: natsMaxSubject}
			}
		}
	}
	if p.maxPayload <= 0 {
		return problem{}
	}
	for i := 0; i < copies; i++ {
		if n := p.size(i); int64(n) > p.maxPayload {
			return problem{what: "message (headers and body) over the server's max_payload", size: n, limit: int(p.maxPayload)}
		}
	}
	return problem{}
}

// subjectToken reports whether a lower-cased domain makes subject tokens:
// no white space, no empty token, no wildcard token (an address literal
// may hold any of "*" and ">" between dots).
func subjectToken(d string) bool {
	if d == "" {
		return true // natsEmptyDomain
	}
	start := 0
	for i := 0; i <= len(d); i++ {
		if i == len(d) || d[i] == '.' {
			tok := d[start:i]
			if tok == "" || tok == "*" || tok == ">" {
				return false
			}
			start = i + 1
			continue
		}
		if c := d[i]; c == ' ' || c == '\t' || c == '\r' || c == '\n' {
			return false
		}
	}
	return true
}

// size is what copy i of the message last prepared takes of the payload
// limit: its headers as nats.go encodes them and its body (with its own
// trace fields, which name only its recipients and so are not longer
// than the message's).
func (p *natsPublisher) size(i int) int {
	n := p.fixedSize()
	rcpts := p.all
	if p.t.templated {
		rcpts = p.groups[i].names
	}
	if p.common != nil {
		for _, r := range rcpts {
			n += len(HeaderRecipients) + 4 + len(r)
		}
	}
	return n + p.dataLen
}

func (p *natsPublisher) send(m *sink.Message, i int, tag uint64) (id, key string, err error) {
	id, key = p.msgID(m, i), p.subject(i)
	h := make(nats.Header, len(p.common)+2)
	for k, v := range p.common {
		h[k] = v
	}
	h[HeaderMsgID] = []string{id}
	if p.common != nil {
		if p.t.templated {
			h[HeaderRecipients] = p.groups[i].names
		} else {
			h[HeaderRecipients] = p.all
		}
	}
	msg := &nats.Msg{Subject: key, Header: h, Data: p.body(m, i, p.t.trace)}
	_, err = p.js.PublishMsgAsync(msg, p.opts...)
	p.releaseCopy() // nats.go copied the body into its write buffer
	if err != nil {
		return id, key, err
	}
	p.sent[msg] = tag
	return id, key, nil
}

// fixedSize is what copy i's payload holds but its body and its
// recipients' headers: the header block, Nats-Msg-Id, the other smtp-*
// headers; the subject is counted too, though the server does not.
func (p *natsPublisher) fixedSize() int {
	n := len("NATS/1.0\r\n\r\n") + len(HeaderMsgID) + 4 + len(p.t.b.cfg.NATSSubject) + p.t.maxIDLen()
	for k, vs := range p.common {
		for _, v := range vs {
			n += len(k) + 4 + len(v)
		}
	}
	return n
}

// nats.go writes from its own buffer, flushed by its flusher goroutine as
// soon as it has something: there is nothing to gather.
func (p *natsPublisher) cork()         {}
func (p *natsPublisher) uncork() error { return nil }

func (p *natsPublisher) wait(w *worker) (woke, error) {
	ws := &w.ws
	select {
	case a := <-p.acks:
		p.settle(w, a)
		p.drain(w)
		return wokeConfirm, nil
	case <-ws.closed:
		return 0, errChannelClosed
	case <-ws.wake:
		return wokeWake, nil
	case <-ws.kick:
		return wokeWake, nil
	case <-ws.deferred:
		return wokeDeferred, nil
	case <-ws.timeout:
		return wokeTimeout, nil
	case <-ws.stop:
		return wokeStop, nil
	}
}

// retire says whether a publish the worker timed out still waits in the
// context for its PubAck (its tag is below the window's first): then the
// session must end (with its context and every reply token it holds)
// once the rest of its window is settled. It runs only after the
// window's timer fired, so its scan (at most the window) costs nothing
// on the path of a message.
func (p *natsPublisher) retire(w *worker) bool {
	first := w.nextTag
	if w.fifo.len() > 0 {
		first = w.fifo.front().tag
	}
	for _, tag := range p.sent {
		if tag < first {
			return true
		}
	}
	return false
}

func (p *natsPublisher) drain(w *worker) {
	for {
		select {
		case a := <-p.acks:
			p.settle(w, a)
		default:
			return
		}
	}
}

func (p *natsPublisher) close(err error) error {
	p.closing.Store(true)
	p.js.CleanupPublisher()
	if n := p.dropped.Swap(0); n > 0 {
		p.t.b.log.Warn("NATS PubAcks arrived faster than the worker took them; their publishes were settled as timed out",
			"publishes", n)
	}
	return err
}

// settle maps a PubAck, or the error in its place, to an outcome.
func (p *natsPublisher) settle(w *worker, a natsAck) {
	tag, ok := p.sent[a.msg]
	if !ok {
		return
	}
	delete(p.sent, a.msg)
	b := w.b
	if a.err == nil {
		if a.ack != nil && a.ack.Duplicate {
			b.stats.duplicates.Add(1)
		}
		w.settleTag(tag, outAcked)
		return
	}
	o := outNacked
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(a.err, nats.ErrDisconnected), errors.Is(a.err, nats.ErrConnectionClosed):
		b.stats.lost.Add(1)
		o = outUnknown
	case errors.Is(a.err, jetstream.ErrNoStreamResponse):
		b.stats.nacked.Add(1)
		if b.limits.nack.allow(b.now()) {
			b.log.Warn("no JetStream stream took a message (no responders: no stream for the subject, or JetStream unavailable)",
				"worker", w.id, "subject", a.msg.Subject, "suppressed", b.limits.nack.suppressedSince())
		}
	case errors.As(a.err, &apiErr) && (apiErr.ErrorCode == natsErrStoreFailed && strings.Contains(apiErr.Description, "maximum") ||
		apiErr.ErrorCode == natsErrInsufficient):
		b.stats.nacked.Add(1)
		o = outFull
		if b.limits.nack.allow(b.now()) {
			b.log.Warn("JetStream refused a message: the stream is full", "worker", w.id, "stream", b.cfg.NATSStream,
				"reason", apiErr.Description, "err_code", int(apiErr.ErrorCode), "suppressed", b.limits.nack.suppressedSince())
		}
	default:
		b.stats.nacked.Add(1)
		if b.limits.nack.allow(b.now()) {
			b.log.Warn("JetStream refused a message", "worker", w.id, "err", a.err,
				"suppressed", b.limits.nack.suppressedSince())
		}
	}
	w.settleTag(tag, o)
}

package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// DefaultURL is the broker tried when no URL is configured.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// Queue types accepted in Config.QueueType (RabbitMQ's x-queue-type).
const (
	QueueQuorum  = "quorum"
	QueueClassic = "classic"
)

// Envelope encodings accepted in Config.Envelope.
const (
	// EnvelopeTrace: the envelope as trace fields at the head of the
	// body (sink/trace.go), no header table.
	EnvelopeTrace = "trace"
	// EnvelopeHeaders: the ten smtp-* headers (doc.go), the body
	// without trace fields.
	EnvelopeHeaders = "headers"
	// EnvelopeBoth: trace fields and headers.
	EnvelopeBoth = "both"
)

// Exchange types lsmtp declares (Config.ExchangeType).
const (
	ExchangeDirect = "direct"
	ExchangeTopic  = "topic"
)

// DomainPlaceholder in Config.RoutingKey makes the broker publish one copy
// of a message per distinct recipient domain.
const DomainPlaceholder = "{domain}"

// Sinks accepted in Config.Sink.
const (
	SinkAMQP = "amqp" // RabbitMQ over AMQP 0-9-1 (amqp.go)
	SinkNATS = "nats" // NATS JetStream (nats.go)
)

// DefaultNATSURL is the NATS server tried when none is configured.
const DefaultNATSURL = "nats://127.0.0.1:4222"

// Config configures the broker sink. Start from DefaultConfig: the zero
// value is not usable (Declare would be off and nothing named).
type Config struct {
	// Sink is the broker: SinkAMQP (RabbitMQ, the default) or SinkNATS
	// (NATS JetStream). Everything from Workers on applies to either,
	// except where a field says otherwise; the NATS* fields apply to
	// SinkNATS only, the others above them to SinkAMQP only.
	Sink string

	// URLs are the nodes of a cluster, tried in turn on every (re)connect.
	URLs []string
	// Username and Password, when Username is not empty, replace the
	// credentials of every URL, so that the URLs (which end up in process
	// listings and logs) need carry none. They are never logged.
	Username string
	Password string

	Exchange string // exchange messages are published to; "" is the default exchange
	// ExchangeType is the type the exchange is declared with. Empty
	// chooses (Config.exchangeType): "direct" when the binding key has no
	// wildcard word ("*" or "#"), as for a static routing key, since a
	// direct exchange costs RabbitMQ less per publish (bench/factors.md);
	// "topic" when it has one, as the default binding key of a {domain}
	// routing key ("inbound.#") does.
	ExchangeType string
	Queue        string // queue declared and bound when Declare is set
	RoutingKey   string // static key, or a template containing {domain}
	// BindingKey binds Queue to Exchange. Empty means RoutingKey, with
	// {domain} replaced by "#" so that every domain's copy reaches the queue.
	BindingKey string
	// MaxDomains, with a {domain} routing key, bounds the distinct
	// recipient domains of one message, each of which is a copy of the
	// body in RabbitMQ; the engine answers the RCPT past it 452 (RFC 5321
	// §4.5.3.1.10: the client sends those recipients in a later
	// transaction). Ignored with a static routing key (one copy).
	MaxDomains int

	// Declare makes the broker declare the durable exchange, the durable
	// queue and the binding on every connect. Turn it off when the topology
	// is managed elsewhere.
	Declare bool
	// QueueType is "quorum" (default) or "classic".
	QueueType string
	// DeadLetterExchange sets x-dead-letter-exchange when not empty.
	DeadLetterExchange string
	// MaxLength and MaxLengthBytes set x-max-length / x-max-length-bytes when > 0.
	MaxLength      int64
	MaxLengthBytes int64
	// Overflow sets x-overflow ("drop-head", "reject-publish",
	// "reject-publish-dlx") when not empty. With reject-publish a full queue
	// NACKs, which the client sees as 451.
	Overflow string
	// QueueArgs are extra queue arguments, applied last.
	QueueArgs map[string]any

	// Workers is the number of publisher goroutines, each with its own
	// AMQP channel in confirm mode.
	Workers int
	// Window bounds the unconfirmed publishes per worker.
	Window int
	// RingSize bounds the messages waiting for a worker (in the ring, or
	// deferred) beyond the Workers×Window that can be unconfirmed: the
	// broker holds at most RingSize+Workers×Window messages between
	// Submit and Complete, or MaxWaiting if that is more; past it Submit
	// answers ErrBusy at once.
	RingSize int
	// MaxWaiting is the most messages the engine can have submitted and
	// not yet completed: its connection limit, since an SMTP session holds
	// at most one message in the sink (its reply waits for Complete, and
	// pipelined commands behind it wait with it, RFC 2920 §3.1). Sized
	// from it, the hand-off never answers ErrBusy. 0: RingSize alone.
	MaxWaiting int
	// ConfirmTimeout is how long one publish may wait for its confirm (and
	// how long a publish call may hang on a stuck socket).
	ConfirmTimeout time.Duration
	// PublishRetryWindow is how long after it was received a message
	// RabbitMQ cannot take now (not connected, connection.blocked,
	// basic.nack, lost with its channel or connection before the confirm,
	// confirm timeout) is kept and republished, with backoff, before the
	// client gets 451. The client keeps waiting for its reply meanwhile
	// (RFC 5321 §4.5.3.2.6 gives it 10 minutes after the final dot). A
	// ConfirmTimeout set longer widens it to ConfirmTimeout: a message's
	// deadline is received + max(PublishRetryWindow, ConfirmTimeout). 0
	// turns retrying off: every such failure is answered 451 at once.
	PublishRetryWindow time.Duration
	// DialTimeout bounds TCP connect plus the AMQP handshake.
	DialTimeout time.Duration
	// Heartbeat is the AMQP heartbeat interval.
	Heartbeat time.Duration
	// ReconnectMin and ReconnectMax bound the exponential reconnect backoff
	// (with full jitter).
	ReconnectMin time.Duration
	ReconnectMax time.Duration

	// SpoolDir, when not empty, is the durable spool (internal/spool): a
	// message RabbitMQ cannot take now is written there, fsynced, and
	// answered 250 at once instead of waiting in memory; the workers
	// publish it from there and remove it after its confirm. Empty: no
	// spool, the deferred path is memory only. Needs PublishRetryWindow.
	SpoolDir string
	// SpoolMaxBytes bounds the spool's files on disk; past it a message
	// waits in memory as without a spool.
	SpoolMaxBytes int64
	// SpoolMaxAge: a spooled message older than this is alarmed on
	// (logged, and in Stats.SpoolOverAge), never dropped.
	SpoolMaxAge time.Duration
	// Envelope is how the envelope travels: EnvelopeTrace (default),
	// EnvelopeHeaders or EnvelopeBoth (doc.go, "Message contract").
	Envelope string

	// Node names this lsmtp node in the smtp-node header (the hostname by default).
	Node string
	// MaxMessageSize is the SMTP side's largest message as configured at
	// start, only for the log line at connect that says when the
	// broker's own bound is smaller (Broker.MaxMessageSize); 0: unknown.
	MaxMessageSize int64
	// Logger receives the broker's logs; nil means slog.Default().
	Logger *slog.Logger

	// NATSURLs are the NATS servers of a cluster, tried in turn on every
	// (re)connect, as URLs are for RabbitMQ.
	NATSURLs []string
	// Credentials, at most one kind: NATSUser and NATSPassword, or
	// NATSToken, or NATSCreds (a .creds file: a user JWT and its NKey
	// seed). They are never logged.
	NATSUser     string
	NATSPassword string
	NATSToken    string
	NATSCreds    string
	// NATSStream is the JetStream stream that stores the messages.
	NATSStream string
	// NATSSubject is the subject messages are published to; one ending in
	// ".{domain}" publishes one copy per recipient domain, as a {domain}
	// routing key does.
	NATSSubject string
	// NATSDeclare makes the broker create the stream, or update it to this
	// configuration, on every connect: file storage, NATSReplicas,
	// NATSMaxBytes with discard new, the subject (with {domain}: its
	// prefix and ">"), and a duplicate window of at least two minutes.
	NATSDeclare bool
	// NATSReplicas is the stream's replica count (1 on a single server).
	NATSReplicas int
	// NATSMaxBytes bounds the stream's octets (0: no limit); past it
	// JetStream refuses new messages, answered 451 4.3.1 once their
	// deadline passes.
	NATSMaxBytes int64
	// NATSWorkers and NATSMaxPending are Workers and Window for
	// SinkNATS: publisher goroutines, each with its own JetStream context
	// on the shared connection, and the asynchronous publishes each has
	// waiting for their PubAck.
	NATSWorkers    int
	NATSMaxPending int
}

// DefaultConfig returns the defaults: one local RabbitMQ, a durable
// exchange "lsmtp" (direct, as its binding key "inbound" has no
// wildcard), a durable quorum queue "lsmtp.inbound" bound with routing
// key "inbound", the envelope as trace fields, 2 workers with 256
// unconfirmed publishes each.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		Sink:               SinkAMQP,
		URLs:               []string{DefaultURL},
		Exchange:           "lsmtp",
		Queue:              "lsmtp.inbound",
		RoutingKey:         "inbound",
		MaxDomains:         50,
		Declare:            true,
		QueueType:          QueueQuorum,
		Workers:            2,
		Window:             256,
		RingSize:           4096,
		ConfirmTimeout:     10 * time.Second,
		PublishRetryWindow: 30 * time.Second,
		DialTimeout:        5 * time.Second,
		Heartbeat:          10 * time.Second,
		ReconnectMin:       100 * time.Millisecond,
		ReconnectMax:       5 * time.Second,
		SpoolMaxBytes:      10 << 30,
		SpoolMaxAge:        7 * 24 * time.Hour,
		Envelope:           EnvelopeTrace,
		Node:               host,
		NATSURLs:           []string{DefaultNATSURL},
		NATSStream:         "LSMTP",
		NATSSubject:        "lsmtp.inbound",
		NATSDeclare:        true,
		NATSReplicas:       1,
		NATSWorkers:        2,
		NATSMaxPending:     256,
	}
}

// exchangeType is the type the exchange is declared with: ExchangeType,
// or when it is empty, topic if a word of the binding key is a topic
// wildcard (a direct exchange matches the key as it is and would route
// nothing to "inbound.#"), direct otherwise.
func (c *Config) exchangeType() string {
	if c.ExchangeType != "" {
		return c.ExchangeType
	}
	for _, w := range strings.Split(c.bindingKey(), ".") {
		if w == "*" || w == "#" {
			return ExchangeTopic
		}
	}
	return ExchangeDirect
}

// headers says whether messages carry the smtp-* header table.
func (c *Config) headers() bool { return c.Envelope != EnvelopeTrace }

// trace says whether messages carry the envelope as trace fields.
func (c *Config) trace() bool { return c.Envelope != EnvelopeHeaders }

// maxReplyWait is how long an SMTP client waits for the reply to the
// final dot (RFC 5321 §4.5.3.2.6).
const maxReplyWait = 10 * time.Minute

// capacity is the most messages the broker holds at once.
func (c *Config) capacity() int { return max(c.RingSize+c.Workers*c.Window, c.MaxWaiting) }

// maxWait is how long after it was received a message may still be
// published: received + maxWait is its deadline.
func (c *Config) maxWait() time.Duration { return max(c.PublishRetryWindow, c.ConfirmTimeout) }

// maxCopies bounds the copies of one message under a {domain} routing key:
// the confirm channel handed to amqp091-go has room for Window+maxCopies
// confirms, so that its reader goroutine never waits for a worker.
const maxCopies = 1024

// minSpoolBytes is the least SpoolMaxBytes: below it the spool would
// refuse most messages anyway.
const minSpoolBytes = 1 << 20

// Validate reports every unusable setting, each as "broker: Field: what
// is wrong", Field naming the field of Config, joined. Its messages never
// repeat a URL's password.
func (c *Config) Validate() error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("broker: %s: %s", field, fmt.Sprintf(format, args...)))
	}
	switch c.Sink {
	case SinkAMQP, SinkNATS:
	default:
		bad("Sink", "%q: want %s or %s", c.Sink, SinkAMQP, SinkNATS)
	}
	if c.Sink == SinkNATS {
		errs = append(errs, c.validateNATS()...)
	}
	if len(c.URLs) == 0 {
		bad("URLs", "no AMQP URL")
	}
	for _, u := range c.URLs {
		if err := checkURL(u); err != nil {
			bad("URLs", "%s: %v", RedactURL(u), err)
		}
	}
	if c.Password != "" && c.Username == "" {
		bad("Password", "set without Username: it would be ignored")
	}
	if c.QueueType != QueueQuorum && c.QueueType != QueueClassic {
		bad("QueueType", "%q: want %s or %s", c.QueueType, QueueQuorum, QueueClassic)
	}
	if c.Exchange == "" && strings.Contains(c.RoutingKey, DomainPlaceholder) {
		bad("RoutingKey", "a %s routing key needs a named Exchange", DomainPlaceholder)
	}
	// AMQP short strings (0-9-1 §4.2.5.3): amqp091-go closes the
	// connection on one it cannot encode. Node is not one, but a header
	// of every message: a hostname's bound keeps it from eating the frame.
	for _, f := range []struct {
		field string
		n     int
	}{{"Exchange", len(c.Exchange)}, {"Queue", len(c.Queue)}, {"BindingKey", len(c.bindingKey())}, {"Node", len(c.Node)}} {
		if f.n > shortstrMax {
			bad(f.field, "%d octets: AMQP short strings hold at most %d", f.n, shortstrMax)
		}
	}
	if fixed, n := routingKeyParts(c.RoutingKey); fixed+n > shortstrMax {
		bad("RoutingKey", "%d octets without its domains: AMQP short strings hold at most %d, and a domain needs room", fixed, shortstrMax)
	}
	if (containsDomain(c.RoutingKey) || c.Sink == SinkNATS && containsDomain(c.NATSSubject)) && (c.MaxDomains < 1 || c.MaxDomains > maxCopies) {
		bad("MaxDomains", "%d: want 1..%d", c.MaxDomains, maxCopies)
	}
	switch c.Envelope {
	case EnvelopeTrace, EnvelopeHeaders, EnvelopeBoth:
	default:
		bad("Envelope", "%q: want %s, %s or %s", c.Envelope, EnvelopeTrace, EnvelopeHeaders, EnvelopeBoth)
	}
	for _, r := range []struct {
		field    string
		v        int
		min, max int
	}{{"Workers", c.Workers, 1, 64}, {"Window", c.Window, 1, 65535}, {"RingSize", c.RingSize, 2, 1 << 24}} {
		if r.v < r.min || r.v > r.max {
			bad(r.field, "%d: want %d..%d", r.v, r.min, r.max)
		}
	}
	for _, d := range []struct {
		field string
		v     time.Duration
	}{{"ConfirmTimeout", c.ConfirmTimeout}, {"DialTimeout", c.DialTimeout}, {"ReconnectMin", c.ReconnectMin}} {
		if d.v <= 0 {
			bad(d.field, "must be more than 0")
		}
	}
	if c.Heartbeat < 0 {
		bad("Heartbeat", "must not be negative")
	}
	if c.ReconnectMin > 0 && c.ReconnectMax < c.ReconnectMin {
		bad("ReconnectMax", "%s is less than ReconnectMin (%s)", c.ReconnectMax, c.ReconnectMin)
	}
	if c.MaxWaiting < 0 || c.MaxWaiting > 1<<24 {
		bad("MaxWaiting", "%d: want 0..%d", c.MaxWaiting, 1<<24)
	}
	// The client stops waiting for the reply to the final dot after 10
	// minutes (RFC 5321 §4.5.3.2.6) and sends the message again.
	if c.PublishRetryWindow < 0 || c.PublishRetryWindow > 0 && max(c.PublishRetryWindow, c.ConfirmTimeout) >= maxReplyWait {
		bad("PublishRetryWindow", "%s (with ConfirmTimeout %s): want 0 or a deadline under %s",
			c.PublishRetryWindow, c.ConfirmTimeout, maxReplyWait)
	}
	if c.MaxLength < 0 {
		bad("MaxLength", "must not be negative")
	}
	if c.MaxLengthBytes < 0 {
		bad("MaxLengthBytes", "must not be negative")
	}
	if c.SpoolDir != "" {
		if c.PublishRetryWindow == 0 {
			bad("SpoolDir", "needs PublishRetryWindow: the spool backs the retry path, which 0 turns off")
		}
		if c.SpoolMaxBytes < minSpoolBytes {
			bad("SpoolMaxBytes", "%d: want at least %d", c.SpoolMaxBytes, minSpoolBytes)
		}
		if c.SpoolMaxAge <= 0 {
			bad("SpoolMaxAge", "must be more than 0")
		}
	}
	switch c.Overflow {
	case "", "drop-head", "reject-publish", "reject-publish-dlx":
	default:
		bad("Overflow", "%q: want drop-head, reject-publish or reject-publish-dlx", c.Overflow)
	}
	return errors.Join(errs...)
}

// checkURL parses u as the AMQP client will. Its errors never repeat the
// URL, which may hold a password.
func checkURL(u string) error {
	p, err := url.Parse(u)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return fmt.Errorf("not a URL: %v", err)
	}
	if p.Scheme != "amqp" && p.Scheme != "amqps" {
		return fmt.Errorf("scheme %q: want amqp or amqps", p.Scheme)
	}
	if p.Host == "" {
		return errors.New("no host")
	}
	_, err = amqp.ParseURI(u)
	return err
}

// bindingKey is the key the queue is bound with.
func (c *Config) bindingKey() string {
	if c.BindingKey != "" {
		return c.BindingKey
	}
	return strings.ReplaceAll(c.RoutingKey, DomainPlaceholder, "#")
}

// queueArgs are the x-arguments the queue is declared with.
func (c *Config) queueArgs() map[string]any {
	args := map[string]any{"x-queue-type": c.QueueType}
	if c.DeadLetterExchange != "" {
		args["x-dead-letter-exchange"] = c.DeadLetterExchange
	}
	if c.MaxLength > 0 {
		args["x-max-length"] = c.MaxLength
	}
	if c.MaxLengthBytes > 0 {
		args["x-max-length-bytes"] = c.MaxLengthBytes
	}
	if c.Overflow != "" {
		args["x-overflow"] = c.Overflow
	}
	for k, v := range c.QueueArgs {
		args[k] = v
	}
	return args
}

// RedactURL returns u with its password replaced by "xxxxx", fit for logs.
// An unparsable URL is replaced as a whole, since it may hold a password.
// A NATS URL's user without a password is a token, and is replaced too.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "<unparsable URL>"
	}
	if _, hasPassword := p.User.Password(); p.User != nil && !hasPassword && natsSchemes[p.Scheme] {
		p.User = url.User("xxxxx")
	}
	return p.Redacted()
}

package broker

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// DefaultURL is the broker tried when no URL is configured.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// Environment variables read by Config.ApplyEnv. Credentials given here win
// over the ones in the URLs, so that the URLs (which end up in process
// listings and logs) need carry none.
const (
	EnvURL      = "LSMTP_AMQP_URL"      // comma-separated list, used when no --amqp-url is given
	EnvUsername = "LSMTP_AMQP_USERNAME" // overrides the user of every URL
	EnvPassword = "LSMTP_AMQP_PASSWORD" // overrides the password of every URL
)

// Queue types accepted in Config.QueueType (RabbitMQ's x-queue-type).
const (
	QueueQuorum  = "quorum"
	QueueClassic = "classic"
)

// DomainPlaceholder in Config.RoutingKey makes the broker publish one copy
// of a message per distinct recipient domain.
const DomainPlaceholder = "{domain}"

// Config configures the RabbitMQ sink. Start from DefaultConfig: the zero
// value is not usable (Declare would be off and nothing named).
type Config struct {
	// URLs are the nodes of a cluster, tried in turn on every (re)connect.
	URLs []string
	// Username and Password, when Username is not empty, replace the
	// credentials of every URL (see ApplyEnv). They are never logged.
	Username string
	Password string

	Exchange     string // exchange messages are published to; "" is the default exchange
	ExchangeType string // "topic" by default
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

	// Node names this lsmtp node in the smtp-node header (the hostname by default).
	Node string
	// Logger receives the broker's logs; nil means slog.Default().
	Logger *slog.Logger
}

// DefaultConfig returns the defaults: one local RabbitMQ, a durable topic
// exchange "lsmtp", a durable quorum queue "lsmtp.inbound" bound with
// routing key "inbound", 2 workers with 256 unconfirmed publishes each.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	return Config{
		URLs:               []string{DefaultURL},
		Exchange:           "lsmtp",
		ExchangeType:       "topic",
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
		Node:               host,
	}
}

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

// Validate reports the first unusable setting.
func (c *Config) Validate() error {
	if len(c.URLs) == 0 {
		return errors.New("broker: no AMQP URL")
	}
	for _, u := range c.URLs {
		if _, err := url.Parse(u); err != nil {
			return fmt.Errorf("broker: bad AMQP URL %s", RedactURL(u))
		}
		if !strings.HasPrefix(u, "amqp://") && !strings.HasPrefix(u, "amqps://") {
			return fmt.Errorf("broker: AMQP URL %s: scheme must be amqp or amqps", RedactURL(u))
		}
	}
	switch c.QueueType {
	case QueueQuorum, QueueClassic:
	default:
		return fmt.Errorf("broker: queue type %q: want %q or %q", c.QueueType, QueueQuorum, QueueClassic)
	}
	if c.Exchange == "" && strings.Contains(c.RoutingKey, DomainPlaceholder) {
		return errors.New("broker: a {domain} routing key needs a named exchange")
	}
	// AMQP short strings (0-9-1 §4.2.5.3): amqp091-go closes the
	// connection on one it cannot encode. Node is not one, but a header
	// of every message: a hostname's bound keeps it from eating the frame.
	if fixed, n := routingKeyParts(c.RoutingKey); fixed+n > shortstrMax || len(c.Exchange) > shortstrMax ||
		len(c.Queue) > shortstrMax || len(c.bindingKey()) > shortstrMax || len(c.Node) > shortstrMax {
		return fmt.Errorf("broker: exchange, queue, binding key, node and routing key (with a domain) are limited to %d octets", shortstrMax)
	}
	if containsDomain(c.RoutingKey) && (c.MaxDomains < 1 || c.MaxDomains > maxCopies) {
		return fmt.Errorf("broker: max domains %d: want 1..%d", c.MaxDomains, maxCopies)
	}
	if c.Declare && c.Exchange != "" && c.ExchangeType == "" {
		return errors.New("broker: exchange type is empty")
	}
	if c.Workers < 1 || c.Workers > 64 {
		return fmt.Errorf("broker: workers %d: want 1..64", c.Workers)
	}
	if c.Window < 1 || c.Window > 65535 {
		return fmt.Errorf("broker: window %d: want 1..65535", c.Window)
	}
	if c.RingSize < 2 || c.RingSize > 1<<24 {
		return fmt.Errorf("broker: ring size %d: want 2..%d", c.RingSize, 1<<24)
	}
	if c.MaxWaiting < 0 || c.MaxWaiting > 1<<24 {
		return fmt.Errorf("broker: max waiting %d: want 0..%d", c.MaxWaiting, 1<<24)
	}
	if c.ConfirmTimeout <= 0 || c.DialTimeout <= 0 {
		return errors.New("broker: confirm and dial timeouts must be positive")
	}
	// The client stops waiting for the reply to the final dot after 10
	// minutes (RFC 5321 §4.5.3.2.6) and sends the message again.
	if c.PublishRetryWindow < 0 || c.PublishRetryWindow > 0 && max(c.PublishRetryWindow, c.ConfirmTimeout) >= maxReplyWait {
		return fmt.Errorf("broker: publish retry window %s (with confirm timeout %s): want 0 or a deadline under %s",
			c.PublishRetryWindow, c.ConfirmTimeout, maxReplyWait)
	}
	if c.ReconnectMin <= 0 || c.ReconnectMax < c.ReconnectMin {
		return errors.New("broker: reconnect backoff must satisfy 0 < min <= max")
	}
	return nil
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

// ApplyEnv reads the EnvURL, EnvUsername and EnvPassword variables through
// getenv (os.Getenv in production). EnvURL replaces URLs only when they are
// still the single default.
func (c *Config) ApplyEnv(getenv func(string) string) {
	if v := getenv(EnvURL); v != "" && len(c.URLs) == 1 && c.URLs[0] == DefaultURL {
		c.URLs = nil
		for _, u := range strings.Split(v, ",") {
			if u = strings.TrimSpace(u); u != "" {
				c.URLs = append(c.URLs, u)
			}
		}
	}
	if v := getenv(EnvUsername); v != "" {
		c.Username = v
		c.Password = getenv(EnvPassword)
	}
}

// RedactURL returns u with its password replaced by "xxxxx", fit for logs.
// An unparsable URL is replaced as a whole, since it may hold a password.
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "<unparsable AMQP URL>"
	}
	return p.Redacted()
}

// RegisterFlags adds the broker's flags to fs, writing into c. Call it on a
// Config from DefaultConfig; the defaults shown are c's values.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Var(&urlList{urls: &c.URLs}, "amqp-url", "AMQP URL of a RabbitMQ node; repeat for the nodes of a cluster, tried in turn (credentials also from $"+EnvUsername+"/$"+EnvPassword+")")
	fs.StringVar(&c.Exchange, "exchange", c.Exchange, "exchange messages are published to")
	fs.StringVar(&c.ExchangeType, "exchange-type", c.ExchangeType, "type of the declared exchange")
	fs.StringVar(&c.Queue, "queue", c.Queue, "queue declared and bound to the exchange")
	fs.StringVar(&c.RoutingKey, "routing-key", c.RoutingKey, "routing key; with "+DomainPlaceholder+" one copy is published per recipient domain")
	fs.StringVar(&c.BindingKey, "binding-key", c.BindingKey, "binding key of the queue (default: the routing key, "+DomainPlaceholder+" replaced by #)")
	fs.BoolVar(&c.Declare, "declare", c.Declare, "declare exchange, queue and binding on connect; false when the topology is managed elsewhere")
	fs.Var(negBool{&c.Declare}, "no-declare", "same as --declare=false")
	fs.StringVar(&c.QueueType, "queue-type", c.QueueType, "quorum or classic")
	fs.StringVar(&c.DeadLetterExchange, "dead-letter-exchange", c.DeadLetterExchange, "x-dead-letter-exchange of the queue")
	fs.Int64Var(&c.MaxLength, "max-length", c.MaxLength, "x-max-length of the queue (0: none)")
	fs.Int64Var(&c.MaxLengthBytes, "max-length-bytes", c.MaxLengthBytes, "x-max-length-bytes of the queue (0: none)")
	fs.StringVar(&c.Overflow, "overflow", c.Overflow, "x-overflow of the queue: drop-head, reject-publish, reject-publish-dlx")
	fs.IntVar(&c.Workers, "amqp-workers", c.Workers, "publisher workers, each with its own channel")
	fs.IntVar(&c.Window, "amqp-window", c.Window, "unconfirmed publishes per worker")
	fs.IntVar(&c.RingSize, "amqp-ring", c.RingSize, "messages waiting for a publisher or deferred, beyond the unconfirmed windows, before a new one is answered 451 4.3.2 (the connection limit is always room enough)")
	fs.DurationVar(&c.ConfirmTimeout, "confirm-timeout", c.ConfirmTimeout, "how long one publish waits for the broker's confirm")
	fs.DurationVar(&c.PublishRetryWindow, "publish-retry-window", c.PublishRetryWindow, "how long after the final dot a message the broker cannot take now is republished before the client gets 451 (at least the confirm timeout; 0: no retry)")
	fs.DurationVar(&c.DialTimeout, "amqp-dial-timeout", c.DialTimeout, "bound on TCP connect plus the AMQP handshake")
	fs.DurationVar(&c.Heartbeat, "amqp-heartbeat", c.Heartbeat, "AMQP heartbeat interval")
	fs.DurationVar(&c.ReconnectMin, "amqp-reconnect-min", c.ReconnectMin, "first wait before reconnecting to RabbitMQ (doubles, with jitter)")
	fs.DurationVar(&c.ReconnectMax, "amqp-reconnect-max", c.ReconnectMax, "longest wait between reconnect attempts")
	fs.StringVar(&c.Node, "node", c.Node, "node name in the smtp-node header")
}

// urlList is a repeatable flag: the first use replaces the default list.
type urlList struct {
	urls *[]string
	set  bool
}

func (l *urlList) String() string {
	if l == nil || l.urls == nil {
		return ""
	}
	red := make([]string, len(*l.urls))
	for i, u := range *l.urls {
		red[i] = RedactURL(u)
	}
	return strings.Join(red, ",")
}

func (l *urlList) Set(v string) error {
	if !l.set {
		*l.urls = nil
		l.set = true
	}
	*l.urls = append(*l.urls, v)
	return nil
}

// negBool is a boolean flag that clears *b when given.
type negBool struct{ b *bool }

func (n negBool) String() string {
	if n.b == nil {
		return "false"
	}
	return strconv.FormatBool(!*n.b)
}

func (n negBool) Set(v string) error {
	on, err := strconv.ParseBool(v)
	if err != nil {
		return err
	}
	*n.b = !on
	return nil
}

func (n negBool) IsBoolFlag() bool { return true }
